"""Tests for the dataset sources (`datasets/`) and input pipelines (`data.py`).

Everything runs offline: the digits ship with scikit-learn, image folders and
a tiny TFDS dataset are generated into temporary directories, and the TFDS
tests refuse any network access.
"""

import collections
import socket
import struct
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import config
import data
import datasets
from datasets import digits as digits_module
from datasets import image_folder

TINY_SHAPE = (6, 7, 3)
TINY_SIZES = {"train": 9, "test": 4}


def _tiny_image(split, index):
    """The image a tiny TFDS example holds, recomputable by the tests."""
    seed = (0 if split == "train" else 1000) + index
    return np.random.default_rng(seed).integers(
        0, 256, TINY_SHAPE, dtype=np.uint8)


def _tiny_label(index):
    return index % 3


class SimclrTestTinyImages(tfds.core.GeneratorBasedBuilder):
    """Tiny generated image-classification dataset, prepared by the tests."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=TINY_SHAPE),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
            }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in TINY_SIZES}

    def _generate_examples(self, split):
        for index in range(TINY_SIZES[split]):
            yield f"{split}-{index}", {"image": _tiny_image(split, index),
                                       "label": _tiny_label(index)}


class SimclrTestNeverPrepared(SimclrTestTinyImages):
    """Registered like any TFDS builder, but never prepared anywhere."""


def _refuse(*args, **kwargs):
    raise AssertionError("network access or dataset download attempted")


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test if it opens a socket, downloads, or asks GCS for
    dataset metadata (what tfds.builder does for datasets not on disk)."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        _refuse)
    monkeypatch.setattr(tfds.core.DatasetInfo, "initialize_from_bucket",
                        _refuse)


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds.disable_progress_bar()
    SimclrTestTinyImages(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir


@pytest.fixture(scope="module")
def digits_source():
    return datasets.get_dataset("digits")


def _pairs(images, labels):
    """Multiset of (image bytes, label) pairs."""
    return collections.Counter(
        (image.tobytes(), int(label)) for image, label in zip(images, labels))


def _collect(dataset):
    images, labels = [], []
    for image_batch, label_batch in dataset:
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _context(pipeline_id):
    return tf.distribute.InputContext(num_input_pipelines=2,
                                      input_pipeline_id=pipeline_id,
                                      num_replicas_in_sync=2)


# ----------------------------------------------------------------- digits ---

def test_digits_split_sizes_and_metadata(digits_source):
    assert digits_source.name == "digits"
    assert digits_source.num_classes == 10
    assert digits_source.image_shape == (8, 8, 1)
    assert digits_source.splits == ("train", "test")
    assert digits_source.num_examples("train") == 1297
    assert digits_source.num_examples("test") == 500


def test_digits_splits_are_disjoint_cover_all_and_are_stratified():
    indices = digits_module.split_indices()
    train, test = indices["train"], indices["test"]
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(1797))

    labels = load_digits().target
    class_counts = np.bincount(labels, minlength=10)
    test_counts = np.bincount(labels[test], minlength=10)
    proportional = 500 * class_counts / len(labels)
    assert np.all(np.abs(test_counts - proportional) <= 1)


def test_digits_pixels_and_labels_match_sklearn(digits_source):
    raw = load_digits()
    indices = digits_module.split_indices()
    for split in ("train", "test"):
        images, labels = digits_source.as_numpy(split)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        assert images.shape == (len(indices[split]), 8, 8, 1)
        for position in (0, 1, 17, len(labels) - 1):
            index = indices[split][position]
            expected = np.floor(raw.images[index] * 255 / 16 + 0.5)
            np.testing.assert_array_equal(images[position, :, :, 0], expected)
            assert labels[position] == raw.target[index]
    assert images.max() == 255 and images.min() == 0


def test_digits_is_deterministic_across_calls(digits_source):
    again = datasets.get_dataset("digits")
    for split in ("train", "test"):
        first, second = digits_source.as_numpy(split), again.as_numpy(split)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])


def test_digits_as_dataset_matches_as_numpy(digits_source):
    dataset = digits_source.as_dataset("test")
    assert dataset.element_spec[0].dtype == tf.uint8
    assert dataset.element_spec[1].dtype == tf.int64
    images, labels = _collect(dataset.batch(128))
    expected_images, expected_labels = digits_source.as_numpy("test")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_in_memory_sharding_is_disjoint_and_complete(digits_source):
    parts = [_collect(digits_source.as_dataset(
        "train", input_context=_context(k)).batch(256)) for k in (0, 1)]
    assert [len(labels) for _, labels in parts] == [649, 648]
    union = _pairs(*parts[0]) + _pairs(*parts[1])
    assert union == _pairs(*digits_source.as_numpy("train"))


def test_unknown_split_names_the_split_flags(digits_source):
    with pytest.raises(datasets.DatasetError) as info:
        digits_source.num_examples("validation")
    message = str(info.value)
    assert "--train_split" in message and "--eval_split" in message
    assert "train, test" in message and "\n" not in message
    with pytest.raises(datasets.DatasetError):
        digits_source.as_dataset("validation")


# ----------------------------------------------------------- image_folder ---

CLASSES = ("cat", "dog", "emu")  # sorted: ids 0, 1, 2


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


def _make_folder(root, shape=(5, 6, 3), per_class=None):
    """Writes root/<split>/<class>/<i>.png and returns what it wrote, as
    {split: (images, labels)}."""
    per_class = per_class or {"train": 3, "test": 2}
    rng = np.random.default_rng(7)
    written = {}
    for split, count in per_class.items():
        images, labels = [], []
        # Classes written in reverse so that ids cannot come from write order.
        for name in reversed(CLASSES):
            for i in range(count):
                image = rng.integers(0, 256, shape, dtype=np.uint8)
                _write_png(root / split / name / f"{i}.png", image)
                images.append(image)
                labels.append(CLASSES.index(name))
        written[split] = (np.stack(images), np.asarray(labels))
    return written


def test_image_folder_round_trips_pixels_and_labels(tmp_path):
    written = _make_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    source = datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    assert source.splits == ("test", "train")
    assert source.labelled and source.skipped == ()
    assert source.num_classes == 3
    assert source.class_names == CLASSES
    assert source.image_shape == (5, 6, 3)
    assert source.num_examples("train") == 9
    assert source.num_examples("test") == 6
    for split, (images, labels) in written.items():
        assert _pairs(*source.as_numpy(split)) == _pairs(images, labels)
        streamed = _collect(source.as_dataset(split).batch(4))
        assert streamed[0].dtype == np.uint8 and streamed[1].dtype == np.int64
        assert _pairs(*streamed) == _pairs(images, labels)


def test_image_folder_converts_grey_images_to_the_first_images_channels(
        tmp_path):
    _make_folder(tmp_path, per_class={"train": 1})
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6, 1)
    _write_png(tmp_path / "train" / "dog" / "grey.png", grey)
    source = datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    images, labels = source.as_numpy("train")
    converted = [image for image in images
                 if np.array_equal(image, np.repeat(grey, 3, axis=-1))]
    assert images.shape == (4, 5, 6, 3) and len(converted) == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match="--data_dir"):
        datasets.get_dataset("image_folder", data_dir=None)
    with pytest.raises(datasets.DatasetError, match="--data_dir"):
        datasets.get_dataset("image_folder", data_dir=str(tmp_path / "none"))
    with pytest.raises(datasets.DatasetError, match="--data_dir"):
        datasets.get_dataset("image_folder", data_dir=str(tmp_path))

    _make_folder(tmp_path)
    source = datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    with pytest.raises(datasets.DatasetError, match="--eval_split"):
        source.num_examples("validation")

    odd = tmp_path / "train" / "dog" / "odd.png"
    _write_png(odd, np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(datasets.DatasetError, match="odd.png"):
        datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    odd.unlink()

    _write_png(tmp_path / "test" / "fox" / "0.png", np.zeros((5, 6, 3),
                                                              np.uint8))
    with pytest.raises(datasets.DatasetError, match="class"):
        datasets.get_dataset("image_folder", data_dir=str(tmp_path))


def test_image_folder_reads_a_flat_folder_as_unlabelled(tmp_path):
    rng = np.random.default_rng(3)
    # Written out of order; "10" sorts before "2" by name.
    names = ("2.png", "10.png", "a.png", "B.jpg")
    written = {name: rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
               for name in names}
    for name, image in written.items():
        encode = tf.io.encode_jpeg if name.endswith(".jpg") else tf.io.encode_png
        (tmp_path / name).write_bytes(encode(image).numpy())
    _write_png(tmp_path / ".hidden.png", written["a.png"])
    (tmp_path / "notes.txt").write_text("not an image")

    source = datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    assert source.splits == ("train",) and not source.labelled
    assert source.label_names == () and source.label_classes == ()
    assert source.num_classes == 0 and source.class_names == ()
    assert source.image_shape == (4, 5, 3) and source.num_examples("train") == 4
    images, labels = source.as_numpy("train")
    assert labels.dtype == np.int64 and list(labels) == [-1] * 4
    order = sorted(names)
    assert order == ["10.png", "2.png", "B.jpg", "a.png"]
    jpeg = tf.io.decode_jpeg((tmp_path / "B.jpg").read_bytes()).numpy()
    expected = [jpeg if name == "B.jpg" else written[name] for name in order]
    np.testing.assert_array_equal(images, np.stack(expected))
    streamed = _collect(source.as_dataset("train").batch(3))
    assert source.as_dataset("train").element_spec[1].shape == ()
    np.testing.assert_array_equal(streamed[0], images)
    np.testing.assert_array_equal(streamed[1], labels)


def test_image_folder_ignores_top_level_files_beside_split_directories(
        tmp_path):
    written = _make_folder(tmp_path, per_class={"train": 1})
    # Another size: reading it would be an error.
    _write_png(tmp_path / "preview.png", np.zeros((9, 9, 3), np.uint8))
    source = datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    assert source.labelled and source.splits == ("train",)
    assert _pairs(*source.as_numpy("train")) == _pairs(*written["train"])


def _unreadable_files(directory, stem):
    """Writes a corrupt, a truncated PNG, a truncated JPEG and an empty file
    into `directory`; returns their paths, sorted."""
    image = np.random.default_rng(5).integers(0, 256, (5, 6, 3), np.uint8)
    png = tf.io.encode_png(image).numpy()
    jpeg = tf.io.encode_jpeg(image).numpy()
    contents = {f"{stem}corrupt.png": b"not an image at all",
                f"{stem}truncated.png": png[:len(png) // 2],
                f"{stem}truncated.jpg": jpeg[:len(jpeg) // 2],
                f"{stem}empty.jpeg": b""}
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (directory / name).write_bytes(content)
    return sorted(str(directory / name) for name in contents)


def test_image_folder_skips_and_counts_unreadable_images(tmp_path, caplog):
    written = _make_folder(tmp_path)
    # "-" sorts before the digits: the very first file is unreadable, so the
    # first readable image must fix the shape.
    bad_test = _unreadable_files(tmp_path / "test" / "cat", "-")
    bad_train = _unreadable_files(tmp_path / "train" / "emu", "x")
    with caplog.at_level("WARNING"):
        source = datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    assert source.skipped == tuple(bad_test + bad_train)
    assert source.image_shape == (5, 6, 3)
    assert source.num_examples("train") == 9 and source.num_examples("test") == 6
    for split, (images, labels) in written.items():
        assert _pairs(*source.as_numpy(split)) == _pairs(images, labels)
    warnings = [r.getMessage() for r in caplog.records
                if "image_folder: skipped" in r.getMessage()]
    assert warnings == [f"image_folder: skipped 8 unreadable image(s) in "
                        f"{tmp_path}, e.g. {bad_test[0]}"]


def _grey_png(height, width):
    """A valid 8-bit grey PNG of zeros, written without materialising the
    image: zlib compresses the rows as they stream (about 1 KB per 1 M px)."""
    def chunk(kind, payload):
        body = kind + payload
        return (struct.pack(">I", len(payload)) + body
                + struct.pack(">I", zlib.crc32(body)))

    compressor = zlib.compressobj(1)
    row = bytes(1 + width)  # filter byte 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_a_small_png_of_ours_decodes_to_what_it_declares():
    """The PNG writer the next test uses, checked on a small image."""
    contents = _grey_png(7, 9)
    image = tf.io.decode_png(contents).numpy()
    assert image.shape == (7, 9, 1) and not image.any()
    assert image_folder.declared_size(contents) == (7, 9)
    jpeg = tf.io.encode_jpeg(np.zeros((5, 6, 3), np.uint8)).numpy()
    assert image_folder.declared_size(jpeg) == (5, 6)


def test_image_folder_skips_an_enormous_image_without_decoding_it(
        tmp_path, caplog):
    """A valid 8,000 x 12,000 PNG (96 M pixels, 288 MB as RGB, 100 KB on
    disk), sorted first: it is skipped from its header and named in its own
    warning with its size; the rest reads as without it."""
    written = _make_folder(tmp_path)
    enormous = tmp_path / "train" / "cat" / "-enormous.png"
    enormous.write_bytes(_grey_png(8000, 12000))
    assert 8000 * 12000 > image_folder.MAX_PIXELS
    with caplog.at_level("WARNING"):
        source = datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    assert source.skipped == (str(enormous),)
    assert source.too_large == {str(enormous): (8000, 12000)}
    assert source.image_shape == (5, 6, 3)
    for split, (images, labels) in written.items():
        assert _pairs(*source.as_numpy(split)) == _pairs(images, labels)
    warnings = [r.getMessage() for r in caplog.records
                if "image_folder: skipped" in r.getMessage()]
    assert warnings == [
        f"image_folder: skipped 1 image(s) of more than "
        f"{image_folder.MAX_PIXELS} pixels in {tmp_path}, e.g. {enormous} "
        f"(8000x12000)"]


def test_image_folder_without_a_readable_image_is_an_error(tmp_path):
    flat = tmp_path / "flat"
    bad = _unreadable_files(flat, "")
    with pytest.raises(datasets.DatasetError) as info:
        datasets.get_dataset("image_folder", data_dir=str(flat))
    message = str(info.value)
    assert "--data_dir" in message and "no readable image" in message
    assert bad[0] in message and "\n" not in message

    labelled = tmp_path / "labelled"
    _make_folder(labelled, per_class={"train": 1})
    _unreadable_files(labelled / "test" / "cat", "")
    for name in CLASSES[1:]:
        (labelled / "test" / name).mkdir()
    with pytest.raises(datasets.DatasetError, match="split 'test'.*no readable"):
        datasets.get_dataset("image_folder", data_dir=str(labelled))


def test_image_folder_flat_folder_without_images_is_an_error(tmp_path):
    _write_png(tmp_path / ".hidden.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(datasets.DatasetError) as info:
        datasets.get_dataset("image_folder", data_dir=str(tmp_path))
    message = str(info.value)
    assert "--data_dir" in message and "no image files" in message
    assert "\n" not in message


# ------------------------------------------------------------------- TFDS ---

def test_tfds_reads_a_prepared_dataset_back(tiny_tfds_dir, no_network):
    source = datasets.get_dataset("simclr_test_tiny_images",
                                  data_dir=str(tiny_tfds_dir))
    assert source.num_classes == 3
    assert source.image_shape == TINY_SHAPE
    assert set(source.splits) == {"train", "test"}
    for split, size in TINY_SIZES.items():
        assert source.num_examples(split) == size
        expected = _pairs([_tiny_image(split, i) for i in range(size)],
                          [_tiny_label(i) for i in range(size)])
        assert _pairs(*source.as_numpy(split)) == expected
        streamed = _collect(source.as_dataset(split, shuffle_files=True)
                            .batch(5))
        assert streamed[0].dtype == np.uint8 and streamed[1].dtype == np.int64
        assert _pairs(*streamed) == expected
    with pytest.raises(datasets.DatasetError, match="--train_split"):
        source.num_examples("validation")


@pytest.mark.parametrize("split", ["train", "train+test"])
def test_tfds_input_pipelines_read_disjoint_parts(tiny_tfds_dir, no_network,
                                                  split):
    # 'train' is one record file, so it is divided by example; 'train+test'
    # is two files, which TFDS hands one to each pipeline.
    source = datasets.get_dataset("simclr_test_tiny_images",
                                  data_dir=str(tiny_tfds_dir))
    parts = [_collect(source.as_dataset(split, input_context=_context(k),
                                        shuffle_files=True).batch(16))
             for k in (0, 1)]
    assert all(len(labels) > 0 for _, labels in parts)
    assert _pairs(*parts[0]) + _pairs(*parts[1]) == _pairs(
        *source.as_numpy(split))


@pytest.mark.parametrize("name", ["simclr_test_never_prepared", "mnist"])
def test_tfds_registered_but_not_prepared_fails_fast(tmp_path, no_network,
                                                     name):
    start = time.monotonic()
    with pytest.raises(datasets.DatasetError) as info:
        datasets.get_dataset(name, data_dir=str(tmp_path))
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "not prepared" in message and "--data_dir" in message
    assert str(tmp_path) in message and "\n" not in message


@pytest.mark.parametrize("name", ["no_such_dataset_xyz", "bad name!",
                                  "community:some_dataset"])
def test_unknown_dataset_names_the_dataset_flag(tmp_path, no_network, name):
    with pytest.raises(datasets.DatasetError) as info:
        datasets.get_dataset(name, data_dir=str(tmp_path))
    message = str(info.value)
    assert "--dataset" in message and "digits, image_folder" in message
    assert "\n" not in message


# ---------------------------------------------------------- input pipeline ---

def binomial_ok(count, n, p, z=4.0):
    """`count` successes of `n` draws are within z standard deviations of n p."""
    return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p))


def _one_batch(input_fn, input_context=None):
    images, labels = next(iter(input_fn(input_context)))
    return images.numpy(), labels.numpy()


def _indexed_source(count, side=8, seed=0):
    """Random uint8 RGB images labelled by their index, so that each row of a
    batch names its image."""
    images = np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    return datasets.InMemorySource("indexed", count, {"train": (images, np.arange(count))}), images


def _flips(views, images, labels, size):
    """Per view of `views` [b, size, size, 3k]: True where it is the mirror
    image of the bicubic resize of its image, False where it is the resize
    itself; fails when it is neither."""
    resized = np.clip(tf.image.resize(images[labels] / 255.0, [size, size],
                                      method="bicubic").numpy(), 0.0, 1.0)
    flips = []
    for view in np.split(views, views.shape[-1] // 3, axis=-1):
        plain = np.abs(view - resized).max(axis=(1, 2, 3))
        mirrored = np.abs(view - resized[:, :, ::-1]).max(axis=(1, 2, 3))
        np.testing.assert_array_less(np.minimum(plain, mirrored), 1e-5)
        flips.append(mirrored < plain)
    return np.stack(flips, axis=1)


def test_pretrain_batches_hold_two_independently_flipped_views():
    # Crops of the whole area and no colour or blur leave a view the resized
    # image, mirrored with probability 1/2 independently per view.
    source, images = _indexed_source(64)
    input_fn = data.build_input_fn(source, 64, True, split="train", image_size=12,
                                   area_range=(1.0, 1.0), color_jitter_strength=0.0,
                                   use_blur=False)
    batch, labels = _one_batch(input_fn)
    assert batch.shape == (64, 12, 12, 6) and batch.dtype == np.float32
    assert labels.dtype == np.int32 and len(set(labels)) == 64
    flips = _flips(batch, images, labels, 12)
    assert binomial_ok(flips.sum(), 128, 0.5)
    assert binomial_ok((flips[:, 0] != flips[:, 1]).sum(), 64, 0.5)


def test_pretrain_batches_of_the_default_augmentation_hold_two_different_views(digits_source):
    input_fn = data.build_input_fn(digits_source, 32, True, split="train",
                                   image_size=16)
    images, labels = _one_batch(input_fn)
    assert images.shape == (32, 16, 16, 6) and images.dtype == np.float32
    assert labels.shape == (32,) and labels.dtype == np.int32
    view_differs = np.any(images[..., :3] != images[..., 3:], axis=(1, 2, 3))
    assert view_differs.mean() >= 0.9


def test_pretrain_with_more_views_stacks_them_on_channels():
    # Each three channels are a view of the row's image, flipped on its own.
    source, images = _indexed_source(32)
    input_fn = data.build_input_fn(source, 32, True, split="train", image_size=8,
                                   num_views=3, area_range=(1.0, 1.0),
                                   color_jitter_strength=0.0, use_blur=False,
                                   cache_dataset=True)
    batch, labels = _one_batch(input_fn)
    assert batch.shape == (32, 8, 8, 9)
    flips = _flips(batch, images, labels, 8)
    assert binomial_ok(flips.sum(), 96, 0.5)
    # All three views flipped alike with probability 1/4.
    assert binomial_ok((flips.min(axis=1) == flips.max(axis=1)).sum(), 32, 0.25)


def test_clean_view_is_the_eval_view_of_the_same_example_after_the_augmented_ones():
    # Label = index, so each row names its source image; blur is on and must
    # leave the clean view alone. Crops of at most half the area make every
    # augmented view differ from the whole image (with crops up to the whole
    # area, a view that also drew no jitter and no blur equals the clean one).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    source = datasets.InMemorySource("distinct", 24, {"train": (images, np.arange(24))})
    input_fn = data.build_input_fn(source, 16, True, split="train", image_size=16,
                                   use_blur=True, color_jitter_strength=0.5,
                                   area_range=(0.2, 0.5), clean_view=True)
    batch, labels = _one_batch(input_fn)
    assert batch.shape == (16, 16, 16, 9)
    expected = np.clip(tf.image.resize(images[labels] / 255.0, [16, 16],
                                       method="bicubic").numpy(), 0.0, 1.0)
    np.testing.assert_allclose(batch[..., 6:], expected, atol=1e-5)
    for view in (batch[..., :3], batch[..., 3:6]):
        assert np.abs(view - expected).max(axis=(1, 2, 3)).min() > 1e-3


def test_clean_view_only_in_pretraining(digits_source):
    for is_training, train_mode in ((False, "pretrain"), (True, "finetune")):
        input_fn = data.build_input_fn(digits_source, 8, is_training, split="train",
                                       image_size=8, train_mode=train_mode,
                                       clean_view=True)
        assert _one_batch(input_fn)[0].shape == (8, 8, 8, 3)


def _flat_colour_source():
    """Two classes of single-colour RGB images: each class one colour."""
    colours = np.array([[40, 120, 200], [200, 90, 10]], np.uint8)
    labels = np.arange(40) % 2
    images = np.broadcast_to(colours[labels][:, None, None, :],
                             (40, 12, 12, 3))
    source = datasets.InMemorySource("flat", 2, {"train": (images, labels)})
    return source, colours / 255.0


def test_finetune_is_one_view_with_crop_and_flip_only():
    # Cropping, flipping and resizing keep a single-colour image the same
    # colour; colour distortion or blur (zero-padded at the border) would not.
    # At 20 pixels the blur kernel is 3 wide; with one sigma per batch, four
    # batches make a blur that is too weak to see unlikely.
    source, colours = _flat_colour_source()
    input_fn = data.build_input_fn(source, 16, True, split="train",
                                   image_size=20, train_mode="finetune")
    for images, labels in input_fn(None).take(4):
        images, labels = images.numpy(), labels.numpy()
        assert images.shape == (16, 20, 20, 3) and labels.dtype == np.int32
        expected = np.broadcast_to(colours[labels][:, None, None, :],
                                   images.shape)
        np.testing.assert_allclose(images, expected, atol=1e-3)


def test_pretrain_distorts_colour_with_the_published_probabilities():
    # Per view, jitter with p = 0.8 and, independently, grey with p = 0.2
    # (`data_util.batch_random_color_jitter`). A flat colour stays flat;
    # grey makes R = G = B, which jitter alone does not; and the colour is
    # left as it is (within 0.02) only with neither, p = 0.2 x 0.8 = 0.16
    # (a jitter whose factors all fall within ~2% of 1 has p < 1e-4).
    source, colours = _flat_colour_source()
    input_fn = data.build_input_fn(source, 128, True, split="train",
                                   image_size=8, use_blur=False)
    changed = grey = 0
    for images, labels in input_fn(None).take(8):
        images, labels = images.numpy(), labels.numpy()
        expected = colours[labels][:, None, None, :]
        for view in (images[..., :3], images[..., 3:]):
            assert np.ptp(view, axis=(1, 2)).max() < 1e-5, "a flat image stays flat"
            changed += (np.abs(view - expected).max(axis=(1, 2, 3)) > 0.02).sum()
            grey += (np.ptp(view[:, 0, 0], axis=-1) < 1e-5).sum()
    assert binomial_ok(changed, 2048, 0.84), changed
    assert binomial_ok(grey, 2048, 0.2), grey


def test_eval_keeps_order_and_the_last_partial_batch(digits_source):
    input_fn = data.build_input_fn(digits_source, 64, False, split="test",
                                   image_size=8)
    batches = [(x.numpy(), y.numpy()) for x, y in input_fn(None)]
    assert [len(y) for _, y in batches] == [64] * 7 + [52]
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    assert images.shape == (500, 8, 8, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32
    raw_images, raw_labels = digits_source.as_numpy("test")
    # At its own size and without the test crop, an eval image is the raw
    # image scaled to [0, 1], grey copied to three channels.
    np.testing.assert_allclose(images, np.repeat(raw_images, 3, -1) / 255.0,
                               atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)


def test_input_context_halves_the_batch_and_splits_the_data(digits_source):
    train_fn = data.build_input_fn(digits_source, 32, True, split="train",
                                   image_size=8)
    images, labels = _one_batch(train_fn, _context(1))
    assert images.shape == (16, 8, 8, 6) and labels.shape == (16,)

    eval_fn = data.build_input_fn(digits_source, 64, False, split="test",
                                  image_size=8)
    seen = collections.Counter()
    for k in (0, 1):
        batches = [(x.numpy(), y.numpy()) for x, y in eval_fn(_context(k))]
        assert max(len(y) for _, y in batches) == 32
        images = np.concatenate([x for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        assert len(labels) == 250
        seen += _pairs(np.round(images[..., :1] * 255).astype(np.uint8),
                       labels)
    assert seen == _pairs(*digits_source.as_numpy("test"))


def test_missing_split_fails_when_the_input_fn_is_built(digits_source):
    with pytest.raises(datasets.DatasetError, match="--eval_split"):
        data.build_input_fn(digits_source, 8, False, split="validation",
                            image_size=8)


def test_distributed_dataset_gives_each_replica_half_the_batch(digits_source, mirrored_strategy):
    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2
    input_fn = data.build_input_fn(digits_source, 16, True, split="train",
                                   image_size=8)
    dist_dataset = data.build_distributed_dataset(input_fn, strategy)
    images, labels = next(iter(dist_dataset))
    local_images = strategy.experimental_local_results(images)
    local_labels = strategy.experimental_local_results(labels)
    assert len(local_images) == 2
    for replica_images, replica_labels in zip(local_images, local_labels):
        assert replica_images.shape == (8, 8, 8, 6)
        assert replica_labels.shape == (8,)
        assert replica_labels.dtype == tf.int32


def _batches(input_fn, count):
    iterator = iter(input_fn())
    return [tuple(t.numpy() for t in next(iterator)) for _ in range(count)]


def test_deterministic_pipeline_repeats_and_resumes_where_it_left_off(digits_source):
    """--deterministic: the same seed gives the same batches (order and
    augmentation) in a fresh pipeline; start_step=2 gives batches 2, 3, ...
    of a pipeline started at 0; another seed gives other batches."""
    def make(seed=3, start_step=0):
        return data.build_input_fn(digits_source, 32, True, split="train", image_size=8,
                                   color_jitter_strength=1.0, clean_view=True, seed=seed,
                                   deterministic=True, start_step=start_step)

    first, again = _batches(make(), 4), _batches(make(), 4)
    for (x, y), (x2, y2) in zip(first, again):
        assert x.tobytes() == x2.tobytes() and np.array_equal(y, y2)
    for (x, y), (x2, y2) in zip(first[2:], _batches(make(start_step=2), 2)):
        assert x.tobytes() == x2.tobytes() and np.array_equal(y, y2)
    other_x, _ = _batches(make(seed=4), 1)[0]
    assert not np.allclose(other_x, first[0][0])


# The CIFAR-10 recipe of the original SimCLR (Chen et al. 2020, Appendix B.9):
# LARS at learning rate 1.0 with linear scaling (1.0 x batch / 256), weight
# decay 1e-4, temperature 0.5, colour distortion of strength 0.5, no blur.
SIMCLR_CIFAR10_RECIPE = dict(optimizer="lars", learning_rate=1.0,
                             learning_rate_scaling="linear", weight_decay=1e-4,
                             temperature=0.5, color_jitter_strength=0.5, use_blur=False)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (32, 20, 3), (8, 8, 1)])
def test_images_of_side_at_most_32_get_the_published_cifar_recipe(shape):
    preset = config.image_size_preset(shape, ("train", "test"))
    assert {k: preset.get(k) for k in SIMCLR_CIFAR10_RECIPE} == SIMCLR_CIFAR10_RECIPE
    assert (preset["image_size"], preset["resnet_depth"]) == (max(shape[:2]), 18), preset
    assert preset["mode"] == "train_then_eval", preset


@pytest.mark.parametrize("shape", [(33, 33, 3), (20, 33, 3), (96, 96, 3), (160, 160, 3),
                                   (160, 100, 1)])
def test_images_of_side_33_to_160_get_resnet18_at_their_size_without_the_cifar_recipe(shape):
    preset = config.image_size_preset(shape, ("train", "test"))
    assert (preset["image_size"], preset["resnet_depth"]) == (max(shape[:2]), 18), preset
    assert preset["mode"] == "train_then_eval", preset
    assert not set(SIMCLR_CIFAR10_RECIPE) & set(preset), preset


@pytest.mark.parametrize("shape", [(161, 161, 3), (100, 161, 3), (224, 224, 3),
                                   (None, None, 3), (None, 32, 3)])
def test_images_over_160_or_of_varying_size_get_no_preset(shape):
    assert config.image_size_preset(shape, ("train", "validation", "test")) == {}


@pytest.mark.parametrize("splits,train_split,eval_split", [
    (("train", "validation", "test"), "train", "test"),
    (("validation", "train", "unlabelled"), "train", "validation"),
    (("train", "unlabelled", "extra"), "train", "unlabelled"),
    (("train", "test"), "test", "train"),
    (("train",), "train", None),
])
def test_preset_evaluates_on_test_else_validation_else_the_first_other_split(
        splits, train_split, eval_split):
    for shape in ((32, 32, 3), (96, 96, 3)):
        preset = config.image_size_preset(shape, splits, train_split=train_split)
        assert preset.get("eval_split") == eval_split, (shape, preset)
