"""MultiDigits: a large and a small digit in every image, built offline.

The project site of Chen & Li (2021) describes MultiDigits, images that
hold two digits of different sizes, to show that learning the larger digit
suppresses the learning of the smaller one; the datasets are not in the
release. This source builds them from scikit-learn's 8x8 digits
(intensities mapped by `digits.to_uint8`): grey images uint8 [32, 32, 1],
each with

- a large digit (20 px by default), resized bilinearly, at a uniform
  position fully inside the image among those that leave room for the small
  digit (for 20 and 8 px, 160 of the 169 positions);
- a small digit (8 px, scikit-learn's own size, by default) at a uniform
  position inside the image whose box does not overlap the large digit's
  box (rejection sampling);

composited by the per-pixel maximum on a black canvas. The two digits are
drawn independently and uniformly from the digits source's `train` split
for train examples and its `test` split for test examples. Labels are int64
[N, 2]: ("large", "small"), each its digit's class.

Splits `train` (2,000 examples) and `test` (500), generated with numpy's
`default_rng` from fixed seeds, different for the two splits: the same
arrays on every call and machine with the pinned packages.
"""

import operator

import numpy as np

from . import digits
from .base import DatasetError
from .base import InMemorySource
from .digits_on_photos import PRESET
from .digits_on_photos import check_size
from .digits_on_photos import digit_bank
from .digits_on_photos import split_digits
from .registry import register

NAME = "multi_digits"
LABEL_NAMES = ("large", "small")
NUM_CLASSES = (digits.NUM_CLASSES, digits.NUM_CLASSES)
NUM_EXAMPLES = {"train": 2000, "test": 500}
SEEDS = {"train": 20212, "test": 20213}
IMAGE_SIZE = 32
DIGIT_SIZES = (20, 8)

# (split, sizes, image_size) -> (images, labels, masks).
_CACHE = {}


def check_sizes(sizes, image_size=IMAGE_SIZE):
    """`sizes` as (large, small) ints, or DatasetError naming --digit_sizes
    unless they are two integers with 0 < small <= large whose boxes fit side
    by side in an `image_size` canvas."""
    if (isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__")
            or len(sizes) != 2):
        raise DatasetError(f"--digit_sizes must be two sizes (large, small) for "
                           f"--dataset={NAME}, got {sizes!r}")
    large, small = (check_size(size) for size in sizes)
    if not 0 < small <= large:
        raise DatasetError(f"--digit_sizes must be (large, small) with "
                           f"0 < small <= large for --dataset={NAME}, got "
                           f"{tuple(sizes)}")
    if large + small > image_size:
        raise DatasetError(
            f"--digit_sizes {tuple(sizes)}: a {large} px and a {small} px digit "
            f"cannot be placed without overlap in a {image_size} px image "
            f"(large + small must be <= {image_size})")
    return large, small


def _overlaps(row_a, col_a, size_a, row_b, col_b, size_b):
    """Whether two square boxes (top-left, side) share a pixel."""
    return (row_a < row_b + size_b and row_b < row_a + size_a
            and col_a < col_b + size_b and col_b < col_a + size_a)


def _large_positions(large, small, image_size):
    """Top-left corners [P, 2] of the large digit that leave room for the
    small one: a margin of at least `small` on some side."""
    last = image_size - large
    corners = np.stack(np.meshgrid(np.arange(last + 1), np.arange(last + 1),
                                   indexing="ij"), axis=-1).reshape(-1, 2)
    margins = np.concatenate([corners, last - corners], axis=1)
    return corners[(margins >= small).any(axis=1)]


def _generate(split, large, small, image_size):
    num_examples = NUM_EXAMPLES[split]
    rng = np.random.default_rng(SEEDS[split])
    pool = split_digits(split)
    chosen = pool[rng.integers(0, len(pool), size=(num_examples, 2))]
    corners = _large_positions(large, small, image_size)
    large_corners = corners[rng.integers(0, len(corners), size=num_examples)]
    small_corners = np.zeros_like(large_corners)
    for i, (row, col) in enumerate(large_corners):
        # Terminates: `corners` holds only positions with room for it.
        while True:
            small_row, small_col = rng.integers(0, image_size - small,
                                                size=2, endpoint=True)
            if not _overlaps(row, col, large, small_row, small_col, small):
                break
        small_corners[i] = small_row, small_col

    canvases = np.zeros((num_examples, 2, image_size, image_size), np.uint8)
    labels = np.zeros((num_examples, 2), np.int64)
    for j, (size, corners_j) in enumerate([(large, large_corners),
                                           (small, small_corners)]):
        bank, bank_labels = digit_bank(size)
        labels[:, j] = bank_labels[chosen[:, j]]
        for i, (row, col) in enumerate(corners_j):
            canvases[i, j, row:row + size, col:col + size] = bank[chosen[i, j]]
    images = canvases.max(axis=1)[..., np.newaxis]
    return images, labels, canvases > 0


def generate(split, sizes=DIGIT_SIZES, image_size=IMAGE_SIZE):
    """The examples of `split` (see the module docstring).

    Args:
        split: "train" or "test".
        sizes: (large, small) digit sides in pixels, 0 < small <= large,
            large + small <= image_size; 8 is scikit-learn's size, others
            resize bilinearly.
        image_size: the image side S.

    Returns:
        (images uint8 [N, S, S, 1], labels int64 [N, 2] (large, small),
        masks bool [N, 2, S, S]: mask j is where digit j is drawn, > 0).
        Arrays are generated once per process and argument set; each call
        returns copies.

    Raises:
        DatasetError: bad sizes (names --digit_sizes).
    """
    if split not in NUM_EXAMPLES:
        raise ValueError(f"split must be one of {', '.join(NUM_EXAMPLES)}, "
                         f"got {split!r}")
    image_size = operator.index(image_size)
    large, small = check_sizes(sizes, image_size)
    key = (split, large, small, image_size)
    if key not in _CACHE:
        _CACHE[key] = _generate(split, large, small, image_size)
    return tuple(array.copy() for array in _CACHE[key])


@register(NAME, options=("digit_sizes",))
class MultiDigitsSource(InMemorySource):
    """A large and a small digit per image, uint8 [32, 32, 1], labels
    (large, small); splits `train` (2,000) and `test` (500). See the module
    docstring.

    Args:
        data_dir: unused (the data ships with scikit-learn).
        digit_sizes: None ((20, 8)) or (large, small).

    Raises:
        DatasetError: bad `digit_sizes`.
    """

    def __init__(self, data_dir=None, digit_sizes=None):
        del data_dir
        self.digit_sizes = check_sizes(
            DIGIT_SIZES if digit_sizes is None else digit_sizes)
        arrays, self._masks = {}, {}
        for split in NUM_EXAMPLES:
            images, labels, masks = generate(split, self.digit_sizes)
            arrays[split] = (images, labels)
            self._masks[split] = masks
        super().__init__(NAME, NUM_CLASSES, arrays, label_names=LABEL_NAMES)

    def digit_masks(self, split):
        """bool [N, 2, 32, 32]: where each image of `split` shows its large
        (0) and small (1) digit."""
        self.check_split(split)
        return self._masks[split].copy()

    def preset(self):
        """`digits_on_photos.PRESET`: the digits job at 32 px, with fewer
        epochs."""
        return dict(PRESET)
