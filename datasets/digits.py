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
from .registry import register

NAME = "digits"
NUM_CLASSES = 10
NUM_TEST = 500
SPLIT_SEED = 0
MAX_INTENSITY = 16

# The default job, sized for a laptop: the 8x8 digits at their own
# resolution, a quarter-width ResNet-18 with the CIFAR stem, a few minutes on
# 2 CPU cores under either backend. sk_ratio > 0 gives a ResNet-18 ResNet-D
# shortcuts and nothing else (selective kernels live in bottleneck blocks
# only): a plain stride-2 1x1 shortcut reads one position in four, and while
# the residual branches are small (their last batch norm starts at gamma = 0)
# a view reaches the output mostly through three of them; the average-pooled
# ones read every position. Flips are off because a mirrored 2 reads as a 5.
# The online probe trains on the clean view with its own weight decay: on
# augmented views it scored 1-3 points under a logistic regression on the
# same encoder, on clean views without decay it memorised the 1,297 images
# (README, "What python run.py does").
PRESET = dict(
    mode="train_then_eval", image_size=8, resnet_depth=18,
    width_multiplier=0.25, sk_ratio=0.0625, train_batch_size=256,
    train_epochs=60, warmup_epochs=5, optimizer="adam", learning_rate=3e-3,
    weight_decay=1e-6, temperature=0.2, proj_out_dim=64, num_proj_layers=2,
    eval_split="test", eval_batch_size=500, checkpoint_epochs=10,
    use_blur=False, use_flip=False, color_jitter_strength=0.3,
    crop_min_area=0.7, probe_batch_norm=True, probe_learning_rate=0.3,
    probe_view="clean", probe_weight_decay=1e-3, compute_baselines=True)


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


@register(NAME)
class DigitsSource(InMemorySource):
    """scikit-learn digits as uint8 [8, 8, 1] images, 10 classes.

    Splits `train` (1,297) and `test` (500); see the module docstring.

    Args:
        data_dir: unused (the data ships with scikit-learn).
    """

    def __init__(self, data_dir=None):
        del data_dir
        digits = load_digits()
        images = to_uint8(digits.images)[..., np.newaxis]
        labels = digits.target.astype(np.int64)
        arrays = {split: (images[idx], labels[idx])
                  for split, idx in split_indices().items()}
        super().__init__(NAME, NUM_CLASSES, arrays)

    def preset(self):
        """The default job's flags (`PRESET`)."""
        return dict(PRESET)
