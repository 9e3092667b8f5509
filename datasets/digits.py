"""The embedded default dataset: scikit-learn's handwritten digits.

`sklearn.datasets.load_digits()` ships inside scikit-learn, so this source
works without a network or a data directory. It holds 1,797 grey 8x8 images
with integer intensities 0..16 and labels 0..9. Each image becomes
uint8 [8, 8, 1] with intensity round(v * 255 / 16).

The data has no official split. A stratified split with a fixed seed is used:
`sklearn.model_selection.train_test_split(test_size=500, stratify=labels,
random_state=0)` over the example indices, each part then sorted ascending,
giving `train` (1,297 examples) and `test` (500), identical on every machine
with the pinned scikit-learn.
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .base import InMemorySource

NAME = "digits"
NUM_CLASSES = 10
NUM_TEST = 500
SPLIT_SEED = 0
MAX_INTENSITY = 16


def to_uint8(values):
    """Maps intensities 0..16 to uint8 0..255: round(v * 255 / 16)."""
    scaled = np.asarray(values, np.float64) * (255.0 / MAX_INTENSITY)
    return np.round(scaled).astype(np.uint8)


def split_indices():
    """Indices into `load_digits()` of each split.

    Returns:
        dict with 'train' and 'test' -> sorted int64 index arrays; they are
        disjoint, cover all 1,797 examples, and each class is represented in
        `test` in proportion to its frequency (stratified, seed 0).
    """
    labels = load_digits().target
    train, test = train_test_split(
        np.arange(len(labels)), test_size=NUM_TEST, stratify=labels,
        random_state=SPLIT_SEED)
    return {"train": np.sort(train).astype(np.int64),
            "test": np.sort(test).astype(np.int64)}


class DigitsSource(InMemorySource):
    """scikit-learn digits as uint8 [8, 8, 1] images, 10 classes.

    Splits `train` (1,297) and `test` (500); see the module docstring.
    """

    def __init__(self):
        digits = load_digits()
        images = to_uint8(digits.images)[..., np.newaxis]
        labels = digits.target.astype(np.int64)
        arrays = {split: (images[idx], labels[idx])
                  for split, idx in split_indices().items()}
        super().__init__(NAME, NUM_CLASSES, arrays)
