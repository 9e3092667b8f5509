"""Digits on flowers: an object and a digit in every image, two labels.

The original's `digits_on_tf_flowers.ipynb` stands in for DigitOnImageNet
(Chen & Li 2021, Fig. 4(b)): each image holds two features that compete for
the representation, the flower (object) and a handwritten digit. It is
built from two TFDS datasets that must already be prepared in the TFDS data
directory `--data_dir` (`tfds build tf_flowers mnist --data_dir=DIR` on a
machine with network access); they are read through `TFDSSource`, which
never downloads and names the missing one in a `DatasetError`.

Each example, computed in the input pipeline (`composite`):

1. the flower image is resized to 224x224, bilinear and without keeping its
   aspect ratio, as the notebook does;
2. one MNIST digit, grey broadcast to RGB, is zero-padded onto a 224x224
   canvas at the 9 positions of a 3x3 grid, top-left offsets (row, col) in
   {int(224 * f) for f in (0.15, 0.45, 0.75)}^2 = {33, 100, 168}^2;
3. image = per-pixel maximum of the resized flower and the canvas (white
   strokes overwrite the flower), uint8 [224, 224, 3].

Labels are int64 [2]: ("object", "digit") = (the tf_flowers label, 5
classes; the MNIST label of the digit, 10 classes).

Splits. tf_flowers has one split, `train` (3,670 images). Its last
`NUM_TEST` = 500 examples, in the prepared copy's stored order, are `test`
and the others `train` (TFDS slices `train[:3170]` and `train[3170:]`).
TFDS fixes the stored order by hashing the examples' keys, so every copy of
the same tf_flowers version splits alike.

Digits. The notebook draws from the first 16 MNIST training digits. Here
the `train` split draws from the first `POOL` = 16 digits of MNIST `train`
and the `test` split from the first 16 of MNIST `test` (in stored order),
so that evaluation images carry digits no training image carries. The
notebook picks a digit at random; here an image's digit is fixed: the
FarmHash fingerprint of the decoded flower pixels modulo the pool size
(`digit_choice`), the same in every epoch and every process whatever the
read order, file shuffling or input sharding, which an example's position
in the stream would not be.

`--digit_sizes` takes one size (default 28, MNIST's own); another size
resizes the digit (bilinear, antialiased) before it is tiled. The grid must
fit: 168 + size <= 224, so sizes 1 to 56.

`as_numpy` returns whole splits (150,528 bytes per image: about 477 MB for
`train`, 75 MB for `test`), which the raw-pixel baselines hold in memory.
"""

import numpy as np
import tensorflow as tf

from .base import DatasetError
from .base import Source
from .registry import register
from .tfds_source import TFDSSource

NAME = "digits_on_flowers"
# The TFDS datasets read from --data_dir.
FLOWERS = "tf_flowers"
MNIST = "mnist"
# The last NUM_TEST examples of tf_flowers' one split are the test split.
NUM_TEST = 500
# Digits per split's pool: the notebook's first 16 MNIST digits.
POOL = 16
IMAGE_SIZE = 224
DIGIT_SIZE = 28
# Top-left corners of the 3x3 grid, as fractions of the image side.
GRID_FRACTIONS = (0.15, 0.45, 0.75)
LABEL_NAMES = ("object", "digit")
SPLITS = ("train", "test")

# The original's ImageNet defaults (ResNet-50 at batch 512) are sized for
# 1.28M images; 3,170 training images need far less: ResNet-18 at 224 px,
# batch 256 (12 steps an epoch, so a checkpoint every 10 epochs rather than
# every epoch), then evaluation on `test`, all on one GPU. Flips are off
# because a mirrored digit is another digit (or none). The rest of the
# ImageNet recipe (LARS, colour strength 1, blur, crops from 8% of the area)
# is kept.
PRESET = dict(mode="train_then_eval", image_size=IMAGE_SIZE, resnet_depth=18,
              train_batch_size=256, eval_batch_size=256, eval_split="test",
              use_flip=False, checkpoint_epochs=10)


def grid_offsets(image_size=IMAGE_SIZE):
    """The top-left row (and column) offsets of the 3x3 grid:
    int(image_size * f) for f in `GRID_FRACTIONS`; (33, 100, 168) at 224."""
    return tuple(int(image_size * f) for f in GRID_FRACTIONS)


def check_grid(image_size=IMAGE_SIZE, digit_size=DIGIT_SIZE):
    """Raises ValueError unless digits of `digit_size` at `grid_offsets`
    lie inside the image."""
    last = grid_offsets(image_size)[-1]
    if digit_size < 1 or last + digit_size > image_size:
        raise ValueError(
            f"a {digit_size}-pixel digit at offset {last} does not fit a "
            f"{image_size}-pixel image; sizes 1 to {image_size - last} fit")


def resize_image(image, image_size=IMAGE_SIZE):
    """`image` [H, W, C] resized to uint8 [image_size, image_size, C],
    bilinear, aspect ratio not kept, rounded to the nearest integer."""
    resized = tf.image.resize(image, [image_size, image_size],
                              method="bilinear")
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def resize_digit(digit, digit_size=DIGIT_SIZE):
    """`digit` [h, w, C] (or a batch [N, h, w, C]) as uint8 [digit_size,
    digit_size, C]: unchanged when it has that size, else resized bilinearly
    with antialiasing (which keeps thin strokes when shrinking)."""
    digit = tf.convert_to_tensor(digit)
    if tuple(digit.shape[-3:-1]) == (digit_size, digit_size):
        return tf.cast(digit, tf.uint8)
    resized = tf.image.resize(digit, [digit_size, digit_size],
                              method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def digit_canvas(digit, image_size=IMAGE_SIZE, digit_size=DIGIT_SIZE):
    """The digit tiled on the 3x3 grid: uint8 [image_size, image_size, 3],
    the per-pixel maximum of 9 zero-padded copies of `digit` (resized to
    `digit_size`, grey broadcast to RGB) with top-left corners at
    `grid_offsets(image_size)`."""
    check_grid(image_size, digit_size)
    digit = resize_digit(digit, digit_size)
    if digit.shape[-1] == 1:
        digit = tf.image.grayscale_to_rgb(digit)
    copies = []
    for row in grid_offsets(image_size):
        for col in grid_offsets(image_size):
            copies.append(tf.pad(digit, [
                [row, image_size - row - digit_size],
                [col, image_size - col - digit_size], [0, 0]]))
    return tf.reduce_max(tf.stack(copies), axis=0)


def composite(image, digit, image_size=IMAGE_SIZE, digit_size=DIGIT_SIZE):
    """The notebook's digit-on-object image, uint8 [image_size,
    image_size, 3]: the per-pixel maximum of `image` (uint8 [H, W, 3])
    resized by `resize_image` and `digit_canvas(digit)` (digit uint8
    [h, w, 1] or [h, w, 3])."""
    return tf.maximum(resize_image(image, image_size),
                      digit_canvas(digit, image_size, digit_size))


def digit_mask(digit, image_size=IMAGE_SIZE, digit_size=DIGIT_SIZE):
    """Where the digit's strokes are: bool [image_size, image_size], True
    where `digit_canvas(digit)` is non-zero in any channel."""
    return tf.reduce_any(digit_canvas(digit, image_size, digit_size) > 0,
                         axis=-1)


def grid_mask(image_size=IMAGE_SIZE, digit_size=DIGIT_SIZE):
    """Where digits may be: bool [image_size, image_size], True on the 9
    digit_size x digit_size cells of the grid."""
    return digit_mask(tf.fill([digit_size, digit_size, 1],
                              tf.constant(255, tf.uint8)),
                      image_size, digit_size)


def digit_choice(image, pool_size=POOL):
    """The pool index, int64 in [0, pool_size), of the digit that goes on
    `image` (the flower as read, uint8 [H, W, C]): the FarmHash fingerprint
    of its serialised pixels modulo `pool_size`."""
    return tf.strings.to_hash_bucket_fast(
        tf.io.serialize_tensor(tf.convert_to_tensor(image, tf.uint8)),
        pool_size)


def _digit_size(digit_sizes):
    """The one digit size `--digit_sizes` gives (int, "28", "28,14" or a
    sequence of them; None or empty: `DIGIT_SIZE`)."""
    if digit_sizes is None:
        return DIGIT_SIZE
    if isinstance(digit_sizes, (int, np.integer, str)):
        digit_sizes = [digit_sizes]
    sizes = []
    for value in digit_sizes:
        for part in str(value).split(","):
            if part.strip():
                try:
                    sizes.append(int(part))
                except ValueError:
                    raise DatasetError(
                        f"--digit_sizes must be whole numbers of pixels; got "
                        f"{part.strip()!r}") from None
    if not sizes:
        return DIGIT_SIZE
    if len(sizes) > 1:
        raise DatasetError(
            f"--digit_sizes takes one size for --dataset={NAME} (one digit "
            f"per image); got {len(sizes)}: {','.join(map(str, sizes))}")
    try:
        check_grid(IMAGE_SIZE, sizes[0])
    except ValueError as e:
        raise DatasetError(f"--digit_sizes={sizes[0]} for --dataset={NAME}: "
                           f"{e}") from None
    return sizes[0]


def _read_pool(mnist, split, size, digit_size):
    """The first `size` digits of MNIST `split`, resized to `digit_size`:
    (uint8 [size, digit_size, digit_size, C], int64 [size])."""
    if split not in mnist.splits:
        raise DatasetError(
            f"--data_dir: TFDS dataset {mnist.name!r} has splits "
            f"{', '.join(mnist.splits)}; {NAME} reads 'train' and 'test'")
    for digits, labels in mnist.as_dataset(split).take(size).batch(size):
        if len(labels) == size:
            return (resize_digit(digits, digit_size).numpy(),
                    labels.numpy().astype(np.int64))
    raise DatasetError(
        f"--data_dir: TFDS dataset {mnist.name!r} split {split!r} holds fewer "
        f"than {size} examples; {NAME} needs its first {size}")


@register(NAME, options=("digit_sizes",))
class DigitsOnFlowersSource(Source):
    """tf_flowers images with an MNIST digit tiled over them, read from a
    prepared TFDS data directory; see the module docstring.

    Args:
        data_dir: the TFDS data directory holding prepared `tf_flowers` and
            `mnist` (None: TFDS's default one).
        digit_sizes: `--digit_sizes`, one digit size in pixels (None: 28).

    Attributes:
        digit_size: the side of each tiled digit, in pixels.
        pool_size: the number of digits each split draws from.
    """

    def __init__(self, data_dir=None, digit_sizes=None):
        self.digit_size = _digit_size(digit_sizes)
        self._flowers = TFDSSource(FLOWERS, data_dir)
        mnist = TFDSSource(MNIST, data_dir)
        self.data_dir = self._flowers.data_dir
        if "train" not in self._flowers.splits:
            raise DatasetError(
                f"--data_dir: TFDS dataset {FLOWERS!r} has splits "
                f"{', '.join(self._flowers.splits)}; {NAME} reads its 'train'")
        total = self._flowers.num_examples("train")
        boundary = total - NUM_TEST
        if boundary <= 0:
            raise DatasetError(
                f"--data_dir: TFDS dataset {FLOWERS!r} holds {total} images; "
                f"{NAME} keeps the last {NUM_TEST} for testing and needs more")
        self._slices = {"train": f"train[:{boundary}]",
                        "test": f"train[{boundary}:]"}
        self.pool_size = POOL
        self._pools = {split: _read_pool(mnist, split, self.pool_size,
                                         self.digit_size)
                       for split in SPLITS}
        self.name = NAME
        self.label_names = LABEL_NAMES
        self.label_classes = (self._flowers.num_classes, mnist.num_classes)
        self.image_shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
        self.splits = SPLITS

    def pool(self, split):
        """The digits `split` draws from: (uint8 [pool_size, digit_size,
        digit_size, C], their MNIST labels int64 [pool_size])."""
        self.check_split(split)
        digits, labels = self._pools[split]
        return digits.copy(), labels.copy()

    def num_examples(self, split):
        self.check_split(split)
        return self._flowers.num_examples(self._slices[split])

    def preset(self):
        """`PRESET`: a ResNet-18 run at 224 px that fits one GPU."""
        return dict(PRESET)

    def as_dataset(self, split, input_context=None, shuffle_files=False,
                   seed=None):
        """See `Source.as_dataset`; labels are int64 [2] (object, digit).

        The flowers are read, shuffled and divided among input pipelines as
        `TFDSSource.as_dataset` does; the digit is added after that, from
        each flower's own pixels.
        """
        self.check_split(split)
        digits, digit_labels = self._pools[split]
        digits = tf.constant(digits)
        digit_labels = tf.constant(digit_labels)
        pool_size, digit_size = self.pool_size, self.digit_size

        def add_digit(image, label):
            choice = digit_choice(image, pool_size)
            image = composite(image, tf.gather(digits, choice), IMAGE_SIZE,
                              digit_size)
            return image, tf.stack([label, tf.gather(digit_labels, choice)])

        flowers = self._flowers.as_dataset(
            self._slices[split], input_context=input_context,
            shuffle_files=shuffle_files, seed=seed)
        return flowers.map(add_digit, num_parallel_calls=tf.data.AUTOTUNE)

    def as_numpy(self, split):
        """The whole split as (uint8 [N, 224, 224, 3], int64 [N, 2]); see
        the module docstring for its size."""
        images, labels = [], []
        for image_batch, label_batch in self.as_dataset(split).batch(256):
            images.append(image_batch.numpy())
            labels.append(label_batch.numpy())
        if not images:
            return (np.zeros((0,) + self.image_shape, np.uint8),
                    np.zeros((0, len(LABEL_NAMES)), np.int64))
        return np.concatenate(images), np.concatenate(labels)
