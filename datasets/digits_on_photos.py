"""Digits on photographs: two competing features in every image, built offline.

The feature-suppression experiment of Chen & Li (2021, §3; the original's
`digits_on_tf_flowers.ipynb`, a stand-in for DigitOnImageNet) overlays a
handwritten digit on a natural image, so that each image holds an object
and a digit to recognise. This source builds such images from data that
ships inside installed packages, with no download:

- objects: random square crops of 10 photographs of scikit-image's wheel
  (`skimage.data`; `PHOTOS`, one class per photograph, class ids in that
  alphabetical order; grey photographs replicated to RGB). The crop side is
  uniform in [0.25, 0.5] x min(H, W) (in whole pixels) at a uniform
  position, resized to 32x32 by `tf.image.resize(antialias=True)` and
  rounded to uint8;
- digits: scikit-learn's 8x8 digits (intensities mapped by
  `digits.to_uint8`), drawn uniformly from the digits source's `train`
  split for train examples and its `test` split for test examples, so that
  no test digit is seen in training;
- as in the notebook, ONE digit per image, placed at the 9 positions of a
  3x3 grid with top-left offsets (row, col) in {int(S * 0.15),
  int(S * 0.45), int(S * 0.75)}^2 (S = 32: 4, 14, 24), composited by the
  per-pixel maximum of the photo crop and the digit canvas (the digit's grey
  value on every channel), so that bright strokes overwrite the photo.

Splits `train` (2,000 examples) and `test` (500), each holding every
photograph equally often (200 and 50), generated with numpy's
`default_rng` from fixed seeds, different for the two splits: the same
arrays on every call and machine with the pinned packages. Labels are
int64 [N, 2]: ("object", "digit"), 10 classes each.
"""

import operator

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

from . import digits
from .base import DatasetError
from .base import InMemorySource
from .registry import register

NAME = "digits_on_photos"
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass",
          "gravel", "moon", "rocket")
LABEL_NAMES = ("object", "digit")
NUM_CLASSES = (len(PHOTOS), digits.NUM_CLASSES)
NUM_EXAMPLES = {"train": 2000, "test": 500}
SEEDS = {"train": 20210, "test": 20211}
IMAGE_SIZE = 32
DIGIT_SIZE = 8
# Fractions of the image side at which the 3x3 grid's digits start (the
# notebook's), and the range of the crop side as a fraction of min(H, W).
GRID_FRACTIONS = (0.15, 0.45, 0.75)
CROP_FRACTIONS = (0.25, 0.5)

# Sized for 2 CPU cores, like the digits preset it extends (the same recipe)
# at the images' native 32 px, where a step costs 16x an 8 px one: an
# eighth-width ResNet-18, batch 128, 15 epochs over the 2,000 training
# images (about two minutes per run).
PRESET = dict(digits.PRESET, image_size=IMAGE_SIZE, width_multiplier=0.125,
              train_batch_size=128, train_epochs=15, warmup_epochs=2,
              checkpoint_epochs=5, eval_batch_size=500)

# (split, digit_size, image_size) -> (images, labels, digit_masks), and
# (split, image_size) -> what `_draws` returns: resampling the photo crops
# takes about a second per split, and is shared by every digit size.
_CACHE = {}
_DRAW_CACHE = {}
_PHOTO_CACHE = []
_DIGIT_CACHE = {}
_SPLIT_CACHE = {}


def photos():
    """The photographs of `PHOTOS`, in that order, as uint8 [H, W, 3].

    Raises:
        DatasetError: scikit-image, whose wheel ships them, is missing.
    """
    if not _PHOTO_CACHE:
        try:
            import skimage.data
        except ImportError:
            raise DatasetError(
                f"--dataset={NAME} needs scikit-image for its photographs "
                f"(pip install -r requirements.txt)") from None
        loaded = []
        for name in PHOTOS:
            photo = np.asarray(getattr(skimage.data, name)())
            if photo.ndim == 2:
                photo = np.repeat(photo[..., np.newaxis], 3, axis=-1)
            loaded.append(np.ascontiguousarray(photo[..., :3], np.uint8))
        _PHOTO_CACHE.extend(loaded)
    return list(_PHOTO_CACHE)


def split_digits(split):
    """Indices into `load_digits()` of the digits split `split`
    (`digits.split_indices()`), int64 [M]."""
    if not _SPLIT_CACHE:
        _SPLIT_CACHE.update(digits.split_indices())
    if split not in _SPLIT_CACHE:
        raise ValueError(f"split must be one of {', '.join(_SPLIT_CACHE)}, "
                         f"got {split!r}")
    return _SPLIT_CACHE[split]


def digit_bank(size=DIGIT_SIZE):
    """All 1,797 scikit-learn digits at `size` x `size` pixels.

    Returns:
        (images uint8 [1797, size, size], labels int64 [1797]): the digits
        mapped by `digits.to_uint8`, resized from 8x8 by bilinear
        interpolation (`tf.image.resize`) and rounded when size != 8.
    """
    if size not in _DIGIT_CACHE:
        data = load_digits()
        images = digits.to_uint8(data.images)
        if size != DIGIT_SIZE:
            resized = tf.image.resize(images[..., np.newaxis].astype(np.float32),
                                      (size, size), method="bilinear")
            images = to_uint8_pixels(resized.numpy()[..., 0])
        _DIGIT_CACHE[size] = (images, data.target.astype(np.int64))
    images, labels = _DIGIT_CACHE[size]
    return images.copy(), labels.copy()


def to_uint8_pixels(values):
    """Float pixel values rounded (half to even) and clipped to uint8."""
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def grid_offsets(image_size=IMAGE_SIZE):
    """The row (= column) offsets of the 3x3 digit grid: int(S * f) for f in
    `GRID_FRACTIONS`."""
    return tuple(int(image_size * f) for f in GRID_FRACTIONS)


def check_size(value):
    """`value` as an int, or DatasetError naming --digit_sizes when it is not
    an integer (bools and floats included)."""
    message = f"--digit_sizes must hold integers; got {value!r}"
    if isinstance(value, bool):
        raise DatasetError(message)
    try:
        return operator.index(value)
    except TypeError:
        raise DatasetError(message) from None


def _check_digit_size(digit_size, image_size):
    digit_size = check_size(digit_size)
    offsets = grid_offsets(image_size)
    largest = image_size - offsets[-1]
    if not 0 <= digit_size <= largest:
        raise DatasetError(
            f"--digit_sizes: a {digit_size} px digit does not fit the 3x3 grid "
            f"of a {image_size} px image (offsets {', '.join(map(str, offsets))}); "
            f"it must be 1..{largest}, or 0 for no digit")
    return digit_size


def _resized_crops(photo_list, objects, sides, rows, cols, image_size):
    """Crops [N, S, S, 3] uint8: crop i is photo objects[i] at (rows[i],
    cols[i]) with side sides[i], resized with antialiasing and rounded."""
    crops = np.zeros((len(objects), image_size, image_size, 3), np.uint8)
    # Crops of one side stack into one resize call: one call per crop costs
    # milliseconds each in TensorFlow's per-op overhead.
    for side in np.unique(sides):
        members = np.flatnonzero(sides == side)
        batch = np.stack([photo_list[objects[i]][rows[i]:rows[i] + side,
                                                 cols[i]:cols[i] + side]
                          for i in members])
        resized = tf.image.resize(batch, (image_size, image_size),
                                  antialias=True)
        crops[members] = to_uint8_pixels(resized.numpy())
    return crops


def _draws(split, image_size):
    """(crops uint8 [N, S, S, 3], object ids [N], digit indices into
    `load_digits()` [N]) of `split`: everything but the digit's size."""
    key = (split, image_size)
    if key not in _DRAW_CACHE:
        num_examples = NUM_EXAMPLES[split]
        rng = np.random.default_rng(SEEDS[split])
        photo_list = photos()
        per_photo = num_examples // len(PHOTOS)
        objects = rng.permutation(np.repeat(np.arange(len(PHOTOS)), per_photo))
        heights = np.array([p.shape[0] for p in photo_list])[objects]
        widths = np.array([p.shape[1] for p in photo_list])[objects]
        shortest = np.minimum(heights, widths)
        sides = rng.integers(
            np.ceil(shortest * CROP_FRACTIONS[0]).astype(np.int64),
            np.floor(shortest * CROP_FRACTIONS[1]).astype(np.int64),
            endpoint=True)
        rows = rng.integers(0, heights - sides, endpoint=True)
        cols = rng.integers(0, widths - sides, endpoint=True)
        pool = split_digits(split)
        chosen = pool[rng.integers(0, len(pool), size=num_examples)]
        crops = _resized_crops(photo_list, objects, sides, rows, cols,
                               image_size)
        _DRAW_CACHE[key] = (crops, objects, chosen)
    return _DRAW_CACHE[key]


def _generate(split, digit_size, image_size):
    crops, objects, chosen = _draws(split, image_size)
    if digit_size == 0:
        # The control without a digit: the same crops and labels.
        _, digit_labels = digit_bank()
        labels = np.stack([objects, digit_labels[chosen]], axis=1).astype(np.int64)
        return crops.copy(), labels, np.zeros(crops.shape[:3], bool)
    bank, digit_labels = digit_bank(digit_size)
    canvas = np.zeros(crops.shape[:3], np.uint8)
    offsets = grid_offsets(image_size)
    for row in offsets:
        for col in offsets:
            window = canvas[:, row:row + digit_size, col:col + digit_size]
            np.maximum(window, bank[chosen], out=window)
    images = np.maximum(crops, canvas[..., np.newaxis])
    # The digit is drawn where its grey value wins or ties the crop on every
    # channel, i.e. where the pixel shows the digit and not the photo.
    masks = (canvas > 0) & (canvas >= crops.max(axis=-1))
    labels = np.stack([objects, digit_labels[chosen]], axis=1).astype(np.int64)
    return images, labels, masks


def generate(split, digit_size=DIGIT_SIZE, image_size=IMAGE_SIZE):
    """The examples of `split` (see the module docstring).

    Args:
        split: "train" or "test".
        digit_size: the digit's side in pixels; 8 is scikit-learn's, other
            sizes resize it bilinearly; the grid must fit in the image. 0
            draws no digit: the photo crops alone, with the digit labels
            the examples would carry (a control for the object probe).
        image_size: the image side S.

    Returns:
        (images uint8 [N, S, S, 3], labels int64 [N, 2] (object, digit),
        digit_masks bool [N, S, S]: the pixels that show the digit, where the
        digit canvas is > 0 and >= the photo crop on every channel). Arrays
        are generated once per process and argument set; each call returns
        copies.

    Raises:
        DatasetError: the digit does not fit the grid (names --digit_sizes).
    """
    if split not in NUM_EXAMPLES:
        raise ValueError(f"split must be one of {', '.join(NUM_EXAMPLES)}, "
                         f"got {split!r}")
    image_size = operator.index(image_size)
    digit_size = _check_digit_size(digit_size, image_size)
    key = (split, digit_size, image_size)
    if key not in _CACHE:
        _CACHE[key] = _generate(split, digit_size, image_size)
    return tuple(array.copy() for array in _CACHE[key])


def one_digit_size(digit_sizes):
    """The digit size that `--digit_sizes` asks of digits_on_photos: the
    default for None, else the one int of a one-element sequence."""
    if digit_sizes is None:
        return DIGIT_SIZE
    if (isinstance(digit_sizes, (str, bytes)) or not hasattr(digit_sizes, "__len__")
            or len(digit_sizes) != 1):
        raise DatasetError(f"--digit_sizes must be one size for --dataset={NAME}, "
                           f"got {digit_sizes!r}")
    return check_size(list(digit_sizes)[0])


@register(NAME, options=("digit_sizes",))
class DigitsOnPhotosSource(InMemorySource):
    """Photo crops with a 3x3 grid of one digit, uint8 [32, 32, 3], labels
    (object, digit); splits `train` (2,000) and `test` (500). See the module
    docstring.

    Args:
        data_dir: unused (the data ships with scikit-image and
            scikit-learn).
        digit_sizes: None (8 px) or a sequence of one digit size.

    Raises:
        DatasetError: bad `digit_sizes`, or scikit-image is missing.
    """

    def __init__(self, data_dir=None, digit_sizes=None):
        del data_dir
        self.digit_size = one_digit_size(digit_sizes)
        arrays, self._masks = {}, {}
        for split in NUM_EXAMPLES:
            images, labels, masks = generate(split, self.digit_size)
            arrays[split] = (images, labels)
            self._masks[split] = masks
        super().__init__(NAME, NUM_CLASSES, arrays, label_names=LABEL_NAMES)

    def digit_masks(self, split):
        """bool [N, 32, 32]: the pixels of each image of `split` that show
        its digit (see `generate`)."""
        self.check_split(split)
        return self._masks[split].copy()

    def preset(self):
        """`PRESET`: the digits job at 32 px, with fewer epochs."""
        return dict(PRESET)
