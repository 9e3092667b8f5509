"""Tests for `--dataset=digits_on_flowers` (`datasets/digits_on_flowers.py`).

The real tf_flowers and mnist are never read: two tiny TFDS datasets with
other names are generated into a temporary data directory, and the module's
dataset-name constants are pointed at them. Nothing touches a network.
"""

import collections
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import datasets
from datasets import digits_on_flowers as dof
from test_data import _collect
from test_data import _context

# Flowers of varying sizes, smaller and larger than 224 on either side.
FLOWER_SHAPES = [(40, 60), (50, 50), (30, 70), (64, 48), (33, 41), (45, 45),
                 (60, 40), (52, 38), (240, 300), (28, 90), (70, 30), (41, 57)]
NUM_TEST = 4  # the last 4 of the 12 flowers
MNIST_SIZES = {"train": 20, "test": 20}  # more than the pool of 16
OFFSETS = (33, 100, 168)  # int(224 * 0.15), int(224 * 0.45), int(224 * 0.75)


def _flower(index):
    # At most 200, so that the digit's white strokes stand out.
    rng = np.random.default_rng(index)
    return rng.integers(0, 201, FLOWER_SHAPES[index] + (3,), dtype=np.uint8)


def _digit(split, index):
    """A sparse stroke-like pattern, different for every split and index."""
    rng = np.random.default_rng((100 if split == "train" else 200) + index)
    return rng.choice(np.array([0, 0, 0, 0, 90, 180, 255], np.uint8),
                      (28, 28, 1))


def _digit_label(split, index):
    return (index * 3 + (split == "test")) % 10


class SimclrFakeFlowers(tfds.core.GeneratorBasedBuilder):
    """Twelve flowers of varying sizes in five classes, one split."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(num_classes=5),
            }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index in range(len(FLOWER_SHAPES)):
            yield index, {"image": _flower(index), "label": index % 5}


class SimclrFakeMnist(tfds.core.GeneratorBasedBuilder):
    """Twenty 28x28 grey digits per split, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in MNIST_SIZES}

    def _generate_examples(self, split):
        for index in range(MNIST_SIZES[split]):
            yield index, {"image": _digit(split, index),
                          "label": _digit_label(split, index)}


def _refuse(*args, **kwargs):
    raise AssertionError("network access or dataset download attempted")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds.disable_progress_bar()
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    for builder in (SimclrFakeFlowers, SimclrFakeMnist):
        builder(data_dir=str(data_dir)).download_and_prepare(
            download_config=config)
    return str(data_dir)


def _refuse_network(monkeypatch):
    """Makes opening a socket, downloading, or asking GCS for dataset
    metadata fail the test."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        _refuse)
    monkeypatch.setattr(tfds.core.DatasetInfo, "initialize_from_bucket",
                        _refuse)


def _use_fakes(monkeypatch):
    monkeypatch.setattr(dof, "FLOWERS", "simclr_fake_flowers")
    monkeypatch.setattr(dof, "MNIST", "simclr_fake_mnist")
    monkeypatch.setattr(dof, "NUM_TEST", NUM_TEST)


@pytest.fixture
def no_network(monkeypatch):
    _refuse_network(monkeypatch)


@pytest.fixture
def fake(tfds_dir, no_network, monkeypatch):
    """The fake datasets under the names the source reads; returns the
    data directory."""
    _use_fakes(monkeypatch)
    return tfds_dir


@pytest.fixture(scope="module")
def source(tfds_dir):
    """The source over the fakes, opened once (it reads the names when it
    is opened)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _refuse_network(monkeypatch)
        _use_fakes(monkeypatch)
        return datasets.get_dataset("digits_on_flowers", data_dir=tfds_dir)


@pytest.fixture(scope="module")
def flowers(tfds_dir):
    """The fake flowers and their labels, in stored order."""
    return _raw("simclr_fake_flowers", "train", tfds_dir)


def _raw(name, split, data_dir):
    """(images, labels) of a fake dataset's split, in stored order."""
    source = datasets.TFDSSource(name, data_dir)
    pairs = list(source.as_dataset(split).as_numpy_iterator())
    return [image for image, _ in pairs], [int(label) for _, label in pairs]


def _resized(flower):
    """The flower resized by tf.image.resize (bilinear) to 224x224, uint8."""
    resized = tf.image.resize(flower, [224, 224]).numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def _expected(resized, digit):
    """The composite recomputed from the resized flower, with the digit
    placed by hand at the 9 grid offsets."""
    canvas = np.zeros((224, 224, 3), np.uint8)
    size = digit.shape[0]
    for row in OFFSETS:
        for col in OFFSETS:
            canvas[row:row + size, col:col + size] = digit  # grey -> RGB
    return np.maximum(resized, canvas)


def _identify(image, flower, candidates):
    """The keys of the candidate digits whose composite with `flower` is
    `image`."""
    resized = _resized(flower)
    return [key for key, digit in candidates.items()
            if np.array_equal(image, _expected(resized, digit))]


def _mnist(data_dir, size=28):
    """{(split, stored position): digit resized to `size`} over both MNIST
    splits, and {(split, position): label}."""
    digits, labels = {}, {}
    for split in MNIST_SIZES:
        images, split_labels = _raw("simclr_fake_mnist", split, data_dir)
        for position, (image, label) in enumerate(zip(images, split_labels)):
            if size != 28:
                image = np.round(tf.image.resize(
                    image, [size, size], antialias=True).numpy()).clip(
                        0, 255).astype(np.uint8)
            digits[split, position] = image
            labels[split, position] = label
    return digits, labels


def _pairs(images, labels):
    return collections.Counter((image.tobytes(), tuple(label))
                               for image, label in zip(images, labels))


def test_metadata_and_preset(source):
    assert isinstance(source, dof.DigitsOnFlowersSource)
    assert datasets.OPTIONS["digits_on_flowers"] == ("digit_sizes",)
    assert source.splits == ("train", "test")
    assert source.label_names == ("object", "digit")
    assert source.label_classes == (5, 10) and source.num_classes == 5
    assert source.image_shape == (224, 224, 3) and source.digit_size == 28
    assert source.num_examples("train") == 8 and source.num_examples("test") == 4
    preset = source.preset()
    assert preset["use_flip"] is False and preset["image_size"] == 224
    assert preset["resnet_depth"] == 18 and preset["eval_split"] == "test"
    assert preset["mode"] == "train_then_eval"
    with pytest.raises(datasets.DatasetError, match="--eval_split"):
        source.num_examples("validation")


def test_each_image_is_its_flower_under_a_pool_digit_on_the_grid(
        source, flowers, tfds_dir):
    flowers, flower_labels = flowers
    parts = {"train": slice(0, 8), "test": slice(8, 12)}
    digits, digit_labels = _mnist(tfds_dir)
    used = set()
    for split, part in parts.items():
        dataset = source.as_dataset(split)
        assert dataset.element_spec[0].shape == (224, 224, 3)
        assert dataset.element_spec[1].shape == (2,)
        images, labels = _collect(dataset.batch(3))
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        assert images.shape == (len(flowers[part]), 224, 224, 3)
        for image, label, flower, flower_label in zip(
                images, labels, flowers[part], flower_labels[part]):
            found = _identify(image, flower, digits)
            assert len(found) == 1, found
            digit_split, position = found[0]
            # Train images take train digits, test images test digits, and
            # only the first 16 of each.
            assert digit_split == split and position < dof.POOL
            assert list(label) == [flower_label, digit_labels[found[0]]]
            used.add(found[0])
    # The choice varies from image to image.
    assert len(used) >= 4


def test_an_image_keeps_its_digit_in_every_read(source, fake):
    again = datasets.get_dataset("digits_on_flowers", data_dir=fake)
    images, labels = source.as_numpy("train")
    assert labels.shape == (8, 2)
    second = _collect(again.as_dataset("train", shuffle_files=True,
                                       seed=3).batch(5))
    assert _pairs(*second) == _pairs(images, labels)
    # Each input pipeline reads every other flower, so an image's place in
    # its stream differs from its place in the split.
    parts = [_collect(source.as_dataset("train", input_context=_context(k))
                      .batch(5)) for k in (0, 1)]
    assert _pairs(*parts[0]) + _pairs(*parts[1]) == _pairs(images, labels)


def test_digit_sizes_resizes_the_digit(fake, flowers):
    source = datasets.get_dataset("digits_on_flowers", data_dir=fake,
                                  digit_sizes=["20"])
    assert source.digit_size == 20
    digits, _ = source.pool("test")
    assert digits.shape == (16, 20, 20, 1)
    candidates, _ = _mnist(fake, size=20)
    images, _ = source.as_numpy("test")
    for image, flower in zip(images, flowers[0][8:]):
        found = _identify(image, flower, candidates)
        assert len(found) == 1 and found[0][0] == "test", found


def test_composite_and_masks():
    flower = _flower(0)
    digit = _digit("train", 0)
    image = dof.composite(flower, digit).numpy()
    assert image.dtype == np.uint8 and image.shape == (224, 224, 3)
    np.testing.assert_array_equal(image, _expected(_resized(flower), digit))
    rgb = dof.composite(flower, np.repeat(digit, 3, axis=-1)).numpy()
    np.testing.assert_array_equal(rgb, image)
    assert dof.grid_offsets() == OFFSETS

    canvas = _expected(np.zeros((224, 224, 3), np.uint8), digit)  # digit only
    np.testing.assert_array_equal(dof.digit_mask(digit).numpy(),
                                  canvas.max(axis=-1) > 0)
    cells = dof.grid_mask(digit_size=20).numpy()
    assert cells.dtype == bool and cells.sum() == 9 * 20 * 20
    for row in OFFSETS:
        for col in OFFSETS:
            assert cells[row:row + 20, col:col + 20].all()
    with pytest.raises(ValueError, match="does not fit"):
        dof.composite(flower, digit, digit_size=57)


@pytest.mark.parametrize("digit_sizes", [[28, 14], "28,14", 57, 0, ["big"]])
def test_bad_digit_sizes_name_the_flag(tmp_path, no_network, digit_sizes):
    with pytest.raises(datasets.DatasetError) as info:
        datasets.get_dataset("digits_on_flowers", data_dir=str(tmp_path),
                             digit_sizes=digit_sizes)
    message = str(info.value)
    assert "--digit_sizes" in message and "\n" not in message


def test_missing_datasets_are_one_line_errors(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(dof, "FLOWERS", "tf_flowers")
    with pytest.raises(datasets.DatasetError) as info:
        datasets.get_dataset("digits_on_flowers", data_dir=str(tmp_path))
    message = str(info.value)
    assert "'tf_flowers' is not prepared" in message and "--data_dir" in message
    assert str(tmp_path) in message and "\n" not in message

    monkeypatch.setattr(dof, "FLOWERS", "simclr_fake_flowers")
    monkeypatch.setattr(dof, "MNIST", "mnist")
    with pytest.raises(datasets.DatasetError, match="'mnist' is not prepared"):
        datasets.get_dataset("digits_on_flowers", data_dir=fake)

    monkeypatch.setattr(dof, "MNIST", "simclr_fake_mnist")
    monkeypatch.setattr(dof, "NUM_TEST", len(FLOWER_SHAPES))
    with pytest.raises(datasets.DatasetError, match="holds 12 images"):
        datasets.get_dataset("digits_on_flowers", data_dir=fake)
