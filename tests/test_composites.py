"""Tests for the generated two-feature datasets (`datasets.digits_on_photos`,
`datasets.multi_digits`) and their TFDS builders (`datasets.builders`).

The checks rest on facts independent of the generators' random draws: the
scikit-learn digits themselves, what a per-pixel maximum implies about the
composited pixels, the photographs' colour and texture statistics, and
`rand_bits.hash_bits`. Each split is generated once per module; the TFDS
builders write a shortened copy into a temporary directory, offline.
"""

import collections
import hashlib
import socket

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import datasets
from datasets import builders
from datasets import digits as digits_module
from datasets import digits_on_photos
from datasets import multi_digits
from datasets import rand_bits

SPLITS = ("train", "test")
SIZES = {"train": 2000, "test": 500}
OFFSETS = (4, 14, 24)  # int(32 * f) for f in (0.15, 0.45, 0.75)
GREY_PHOTOS = {"brick", "camera", "coins", "grass", "gravel", "moon"}
# Examples per split the TFDS builders write in these tests.
TFDS_EXAMPLES = 100
# The digits job at the images' 32 px, narrower and shorter.
EXPECTED_PRESET = dict(digits_module.PRESET, image_size=32, width_multiplier=0.125,
                       train_batch_size=128, train_epochs=15, warmup_epochs=2,
                       checkpoint_epochs=5, eval_batch_size=500)


@pytest.fixture(scope="module")
def sklearn_digits():
    """(images uint8 [1797, 8, 8], labels [1797], split -> index set)."""
    data = load_digits()
    splits = {split: set(indices.tolist())
              for split, indices in digits_module.split_indices().items()}
    return digits_module.to_uint8(data.images), data.target, splits


def _bilinear_digits(images, size):
    """The digits resized to size x size as the sources document it:
    bilinear, rounded to uint8."""
    resized = tf.image.resize(images[..., np.newaxis].astype(np.float32),
                              (size, size), method="bilinear").numpy()[..., 0]
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos_data():
    return {split: digits_on_photos.generate(split) for split in SPLITS}


@pytest.fixture(scope="module")
def multi_data():
    return {split: multi_digits.generate(split) for split in SPLITS}


# ------------------------------------------------------- digits_on_photos ---

def test_digits_on_photos_source_shapes_labels_and_preset(photos_data):
    source = datasets.get_dataset("digits_on_photos")
    assert isinstance(source, datasets.DigitsOnPhotosSource)
    assert source.name == "digits_on_photos" and source.splits == SPLITS
    assert source.label_names == ("object", "digit")
    assert source.label_classes == (10, 10) and source.num_classes == 10
    assert source.image_shape == (32, 32, 3)
    assert source.preset() == EXPECTED_PRESET
    for split in SPLITS:
        images, labels, masks = photos_data[split]
        assert images.shape == (SIZES[split], 32, 32, 3) and images.dtype == np.uint8
        assert labels.shape == (SIZES[split], 2) and labels.dtype == np.int64
        assert masks.shape == (SIZES[split], 32, 32) and masks.dtype == bool
        assert source.num_examples(split) == SIZES[split]
        read_images, read_labels = source.as_numpy(split)
        np.testing.assert_array_equal(read_images, images)
        np.testing.assert_array_equal(read_labels, labels)
        np.testing.assert_array_equal(source.digit_masks(split), masks)
        # Every photograph equally often; digits of all ten classes.
        assert np.bincount(labels[:, 0], minlength=10).tolist() == [
            SIZES[split] // 10] * 10
        assert set(labels[:, 1].tolist()) == set(range(10))


def _grid_patches(array, size):
    """The 9 grid windows of `array` [N, 32, 32, ...]: [N, 9, size, size, ...]."""
    return np.stack([array[:, r:r + size, c:c + size]
                     for r in OFFSETS for c in OFFSETS], axis=1)


def _consistent_digits(images, masks, bank, size):
    """For each image, the indices of the digits of `bank` [M, size, size]
    that, tiled at the 9 grid offsets and composited with some photo by the
    per-pixel maximum, give the image's grid windows and its mask.

    Where a maximum shows the digit d (mask true), every channel equals d;
    elsewhere every channel is >= d, and a pixel equal to d on all channels
    with d > 0 is one the digit wins or ties, hence in the mask.
    """
    patches = _grid_patches(images, size).astype(np.int16)   # [N, 9, s, s, 3]
    patch_masks = _grid_patches(masks, size)                  # [N, 9, s, s]
    grey = np.where((patches == patches[..., :1]).all(-1), patches[..., 0], -1)
    floor = patches.min(-1)
    # The digit's value wherever some window shows it.
    known = patch_masks.any(1)
    shown = np.where(patch_masks, patches[..., 0], 0).max(1)
    flat_bank = bank.reshape(len(bank), -1).astype(np.int16)
    result = []
    for i in range(len(images)):
        keep = known[i].ravel()
        candidates = np.flatnonzero(
            (flat_bank[:, keep] == shown[i].ravel()[keep]).all(1))
        matches = []
        for m in candidates:
            digit = bank[m].astype(np.int16)
            expected_mask = (digit > 0) & (grey[i] == digit)
            if (floor[i] >= digit).all() and (expected_mask == patch_masks[i]).all():
                matches.append(int(m))
        result.append(matches)
    return result


def _outside_grid(size):
    inside = np.zeros((32, 32), bool)
    for r in OFFSETS:
        for c in OFFSETS:
            inside[r:r + size, c:c + size] = True
    return ~inside


@pytest.fixture(scope="module")
def photo_digit_matches(photos_data, sklearn_digits):
    """split -> for each image, the scikit-learn digits that explain it."""
    return {split: _consistent_digits(images, masks, sklearn_digits[0], 8)
            for split, (images, _, masks) in photos_data.items()}


@pytest.mark.parametrize("split", SPLITS)
def test_digits_on_photos_digit_is_its_label_tiled_on_the_grid_by_max(
        photos_data, sklearn_digits, photo_digit_matches, split):
    _, labels, masks = photos_data[split]
    _, bank_labels, _ = sklearn_digits
    assert not masks[:, _outside_grid(8)].any()
    assert masks.any(axis=(1, 2)).all()
    matches = photo_digit_matches[split]
    assert all(matches), "an image no 8x8 digit tiled by max explains"
    for found, label in zip(matches, labels[:, 1]):
        assert set(bank_labels[found].tolist()) == {label}


@pytest.mark.parametrize("split", SPLITS)
def test_digits_on_photos_digits_come_from_their_own_split(
        sklearn_digits, photo_digit_matches, split):
    digit_splits = sklearn_digits[2]
    matches = photo_digit_matches[split]
    own = [any(m in digit_splits[split] for m in found) for found in matches]
    assert all(own)
    # Drawn from the whole split, not from a few digits of it.
    used = {found[0] for found in matches}
    assert len(used) > 0.5 * min(len(digit_splits[split]), SIZES[split])


def _photo_bank(per_side=10):
    """Crops of every photograph, independent of the generator's draws:
    sides 0.25..0.5 x min(H, W), antialiased to 32x32; (images, ids)."""
    rng = np.random.default_rng(123)
    images, ids = [], []
    for index, name in enumerate(digits_on_photos.PHOTOS):
        photo = getattr(skimage.data, name)()
        if photo.ndim == 2:
            photo = np.repeat(photo[..., np.newaxis], 3, axis=-1)
        height, width = photo.shape[:2]
        for fraction in np.linspace(0.25, 0.5, 4):
            side = int(min(height, width) * fraction)
            rows = rng.integers(0, height - side + 1, per_side)
            cols = rng.integers(0, width - side + 1, per_side)
            crops = np.stack([photo[r:r + side, c:c + side]
                              for r, c in zip(rows, cols)])
            resized = tf.image.resize(crops, (32, 32), antialias=True).numpy()
            images.append(np.clip(np.round(resized), 0, 255).astype(np.uint8))
            ids += [index] * per_side
    return np.concatenate(images), np.array(ids)


def _photo_features(images, masks):
    """Colour and texture statistics of the pixels outside `masks`: mean and
    spread per channel, mean saturation (max - min channel), and mean
    absolute horizontal and vertical grey differences."""
    x = images.astype(np.float64)
    keep = (~masks).astype(np.float64)
    count = keep.sum((1, 2))
    mean = (x * keep[..., None]).sum((1, 2)) / count[:, None]
    spread = np.sqrt((((x - mean[:, None, None]) ** 2) * keep[..., None])
                     .sum((1, 2)) / count[:, None])
    saturation = ((x.max(-1) - x.min(-1)) * keep).sum((1, 2)) / count
    grey = x.mean(-1)
    pairs_x = keep[:, :, 1:] * keep[:, :, :-1]
    pairs_y = keep[:, 1:] * keep[:, :-1]
    diff_x = (np.abs(np.diff(grey, axis=2)) * pairs_x).sum((1, 2)) / pairs_x.sum((1, 2))
    diff_y = (np.abs(np.diff(grey, axis=1)) * pairs_y).sum((1, 2)) / pairs_y.sum((1, 2))
    return np.column_stack([mean, spread, saturation, diff_x, diff_y])


def test_digits_on_photos_object_label_is_the_photograph(photos_data):
    bank, bank_ids = _photo_bank()
    bank_features = _photo_features(bank, np.zeros(bank.shape[:3], bool))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(bank_features, bank_ids)
    centres = np.stack([bank_features[bank_ids == k].mean(0) for k in range(10)])
    scale = bank_features.std(0)
    grey_ids = [k for k, name in enumerate(digits_on_photos.PHOTOS)
                if name in GREY_PHOTOS]
    for split in SPLITS:
        images, labels, masks = photos_data[split]
        objects = labels[:, 0]
        # Grey photographs are replicated to RGB, and the digit is grey.
        is_grey = (images == images[..., :1]).all(axis=(1, 2, 3))
        np.testing.assert_array_equal(is_grey, np.isin(objects, grey_ids))
        features = _photo_features(images, masks)
        assert (classifier.predict(features) == objects).mean() > 0.85
        # Each class's mean statistics are closest to its own photograph's.
        means = np.stack([features[objects == k].mean(0) for k in range(10)])
        distances = (((means[:, None] - centres[None]) / scale) ** 2).sum(-1)
        assert distances.argmin(1).tolist() == list(range(10))


def test_digits_on_photos_crops_are_resized_with_antialiasing():
    photo_list = digits_on_photos.photos()
    assert [p.shape[2] for p in photo_list] == [3] * 10
    # Crops of equal and of different sides, resampled in shared batches.
    objects = np.array([0, 3, 1, 8, 0])
    sides = np.array([128, 100, 128, 200, 256])
    rows = np.array([0, 50, 300, 10, 256])
    cols = np.array([5, 7, 11, 300, 256])
    crops = digits_on_photos._resized_crops(photo_list, objects, sides, rows, cols, 32)
    for crop, k, side, r, c in zip(crops, objects, sides, rows, cols):
        photo = getattr(skimage.data, digits_on_photos.PHOTOS[k])()
        if photo.ndim == 2:
            photo = np.repeat(photo[..., np.newaxis], 3, axis=-1)
        expected = tf.image.resize(photo[r:r + side, c:c + side], (32, 32),
                                   antialias=True).numpy()
        np.testing.assert_array_equal(crop, np.round(expected).astype(np.uint8))


def test_digits_on_photos_digit_size_resizes_the_tiled_digit(sklearn_digits):
    images, labels, masks = digits_on_photos.generate("test", digit_size=6)
    bank, bank_labels, _ = sklearn_digits
    assert masks.any() and not masks[:, _outside_grid(6)].any()
    matches = _consistent_digits(images, masks, _bilinear_digits(bank, 6), 6)
    assert all(matches)
    for found, label in zip(matches, labels[:, 1]):
        assert set(bank_labels[found].tolist()) == {label}
    source = datasets.get_dataset("digits_on_photos", digit_sizes=[6])
    assert source.digit_size == 6
    np.testing.assert_array_equal(source.as_numpy("test")[0], images)


@pytest.mark.parametrize("digit_sizes, message", [
    ((8, 8), "--digit_sizes must be one size for --dataset=digits_on_photos, got"),
    (8, "--digit_sizes must be one size"),
    ("8", "--digit_sizes must be one size"),
    ((9,), "--digit_sizes"),
    ((-1,), "--digit_sizes"),
    ((6.0,), "--digit_sizes must hold integers"),
])
def test_digits_on_photos_rejects_bad_digit_sizes(digit_sizes, message):
    with pytest.raises(datasets.DatasetError, match=message) as info:
        datasets.get_dataset("digits_on_photos", digit_sizes=digit_sizes)
    assert "\n" not in str(info.value)


def test_digits_on_photos_without_a_digit_is_the_same_crops_and_labels(photos_data):
    """--digit_sizes=0, the control: the photo crops the digits were
    drawn on, the same labels, no digit pixel."""
    images, labels, masks = photos_data["test"]
    plain, plain_labels, plain_masks = digits_on_photos.generate("test", digit_size=0)
    np.testing.assert_array_equal(plain_labels, labels)
    assert not plain_masks.any()
    # The composite is the per-pixel max of these crops and the digit grid:
    # never darker, brighter only inside the grid's windows.
    assert np.all(images >= plain)
    window = np.zeros((32, 32), bool)
    for row in digits_on_photos.grid_offsets(32):
        for col in digits_on_photos.grid_offsets(32):
            window[row:row + 8, col:col + 8] = True
    assert not np.any((images != plain).any(axis=-1) & ~window)
    assert np.mean((images > plain).any(axis=-1)[masks]) > 0.9


def test_digits_on_photos_generate_rejects_a_digit_off_the_grid():
    with pytest.raises(datasets.DatasetError, match="--digit_sizes.*1..8"):
        digits_on_photos.generate("test", digit_size=9)


def _fingerprint(*arrays):
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def test_generators_are_deterministic(photos_data, multi_data, monkeypatch):
    for module in (digits_on_photos, multi_digits):
        monkeypatch.setattr(module, "_CACHE", {})
    monkeypatch.setattr(digits_on_photos, "_DRAW_CACHE", {})
    again = digits_on_photos.generate("test")
    for first, second in zip(photos_data["test"], again):
        np.testing.assert_array_equal(first, second)
    again = multi_digits.generate("test")
    for first, second in zip(multi_data["test"], again):
        np.testing.assert_array_equal(first, second)
    # The splits are drawn from different seeds.
    assert not np.array_equal(photos_data["train"][1][:500], photos_data["test"][1])
    assert not np.array_equal(multi_data["train"][1][:500], multi_data["test"][1])


def test_generated_labels_are_pinned(photos_data, multi_data):
    # Labels depend on the seeded draws only: the same on every machine.
    assert _fingerprint(photos_data["test"][1]) == "2dd7f6b809d6a9d7"
    assert _fingerprint(multi_data["test"][1]) == "654ed02f2f8c26e5"


# ------------------------------------------------------------ multi_digits ---

def _bounding_boxes(masks):
    """(top, left, bottom, right) [N, 4] of each mask [N, H, W], exclusive
    bottom and right."""
    rows, cols = masks.any(2), masks.any(1)
    first = lambda a: a.argmax(1)
    last = lambda a: a.shape[1] - a[:, ::-1].argmax(1)
    return np.stack([first(rows), first(cols), last(rows), last(cols)], axis=1)


def test_multi_digits_source_shapes_labels_and_preset(multi_data):
    source = datasets.get_dataset("multi_digits")
    assert isinstance(source, datasets.MultiDigitsSource)
    assert source.name == "multi_digits" and source.splits == SPLITS
    assert source.label_names == ("large", "small")
    assert source.label_classes == (10, 10)
    assert source.image_shape == (32, 32, 1) and source.digit_sizes == (20, 8)
    assert source.preset() == EXPECTED_PRESET
    for split in SPLITS:
        images, labels, masks = multi_data[split]
        assert images.shape == (SIZES[split], 32, 32, 1) and images.dtype == np.uint8
        assert labels.shape == (SIZES[split], 2) and labels.dtype == np.int64
        assert masks.shape == (SIZES[split], 2, 32, 32) and masks.dtype == bool
        read_images, read_labels = source.as_numpy(split)
        np.testing.assert_array_equal(read_images, images)
        np.testing.assert_array_equal(read_labels, labels)
        np.testing.assert_array_equal(source.digit_masks(split), masks)
        for j in range(2):
            counts = np.bincount(labels[:, j], minlength=10) / SIZES[split]
            assert counts.min() > 0.05 and counts.max() < 0.16


def _digit_lookup(bank):
    """Each digit of `bank` [M, s, s] cropped to its non-zero box, as bytes
    (with the crop's shape) -> the digit indices with that crop."""
    lookup = collections.defaultdict(set)
    for index, digit in enumerate(bank):
        rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
        crop = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        lookup[(crop.shape, crop.tobytes())].add(index)
    return lookup


def _identify(images, masks, lookup):
    """The digit indices whose non-zero box is what each image shows under
    its mask [N, H, W]."""
    boxes = _bounding_boxes(masks)
    found = []
    for image, mask, (top, left, bottom, right) in zip(images[..., 0], masks, boxes):
        crop = np.where(mask, image, 0)[top:bottom, left:right]
        found.append(lookup.get((crop.shape, crop.tobytes()), set()))
    return found


def _check_multi_digits(data, sizes, sklearn_digits, split):
    images, labels, masks = data
    bank, bank_labels, digit_splits = sklearn_digits
    large, small = sizes
    # Composited by maximum on black: the image is each digit where it is
    # drawn and black elsewhere.
    assert not (masks[:, 0] & masks[:, 1]).any()
    np.testing.assert_array_equal(images[..., 0] > 0, masks.any(1))
    np.testing.assert_array_equal(
        images[..., 0], np.where(masks, images[:, None, ..., 0], 0).max(1))
    boxes = [_bounding_boxes(masks[:, j]) for j in range(2)]
    heights = [b[:, 2] - b[:, 0] for b in boxes]
    widths = [b[:, 3] - b[:, 1] for b in boxes]
    for j, size in enumerate(sizes):
        assert heights[j].max() <= size and widths[j].max() <= size
    if large > small:
        assert (np.maximum(heights[0], widths[0]) > small).all()
    disjoint = ((boxes[0][:, 2] <= boxes[1][:, 0]) | (boxes[1][:, 2] <= boxes[0][:, 0])
                | (boxes[0][:, 3] <= boxes[1][:, 1]) | (boxes[1][:, 3] <= boxes[0][:, 1]))
    assert disjoint.all()
    for j, size in enumerate(sizes):
        resized = bank if size == 8 else _bilinear_digits(bank, size)
        found = _identify(images, masks[:, j], _digit_lookup(resized))
        assert all(found), f"digit {j} is not a {size} px scikit-learn digit"
        for indices, label in zip(found, labels[:, j]):
            assert set(bank_labels[sorted(indices)].tolist()) == {label}
            assert indices & digit_splits[split]
    return boxes


@pytest.mark.parametrize("split", SPLITS)
def test_multi_digits_composites_a_large_and_a_small_labelled_digit(
        multi_data, sklearn_digits, split):
    boxes = _check_multi_digits(multi_data[split], (20, 8), sklearn_digits, split)
    # Uniform positions: the small digit lies on every side of the large one,
    # and the large one reaches every edge of the canvas.
    large, small = boxes
    sides = [small[:, 2] <= large[:, 0], small[:, 0] >= large[:, 2],
             small[:, 3] <= large[:, 1], small[:, 1] >= large[:, 3]]
    assert min(side.mean() for side in sides) > 0.1
    assert large[:, 0].min() <= 1 and large[:, 1].min() <= 1
    assert large[:, 2].max() >= 31 and large[:, 3].max() >= 31


@pytest.mark.parametrize("sizes", [(16, 8), (8, 8)])
def test_multi_digits_sizes_are_respected(sizes, sklearn_digits):
    _check_multi_digits(multi_digits.generate("test", sizes), sizes,
                        sklearn_digits, "test")


@pytest.mark.parametrize("digit_sizes, message", [
    ((20,), "--digit_sizes must be two sizes"),
    ((20, 8, 4), "--digit_sizes must be two sizes"),
    (20, "--digit_sizes must be two sizes"),
    ((8, 20), "--digit_sizes must be .large, small. with 0 < small <= large"),
    ((0, 0), "--digit_sizes must be .large, small. with 0 < small <= large"),
    ((26, 8), "--digit_sizes .* cannot be placed without overlap"),
    ((33, 1), "--digit_sizes .* cannot be placed without overlap"),
    ((20, 8.0), "--digit_sizes must hold integers"),
])
def test_multi_digits_rejects_bad_digit_sizes(digit_sizes, message):
    with pytest.raises(datasets.DatasetError, match=message) as info:
        datasets.get_dataset("multi_digits", digit_sizes=digit_sizes)
    assert "\n" not in str(info.value)


def test_registry_passes_digit_sizes_only_to_the_sources_that_take_them():
    assert datasets.OPTIONS["digits_on_photos"] == ("digit_sizes",)
    assert datasets.OPTIONS["multi_digits"] == ("digit_sizes",)
    source = datasets.get_dataset("multi_digits", digit_sizes=(16, 8))
    assert source.digit_sizes == (16, 8)
    images, labels, _ = multi_digits.generate("train", (16, 8))
    np.testing.assert_array_equal(source.as_numpy("train")[0], images)
    np.testing.assert_array_equal(source.as_numpy("train")[1], labels)
    with pytest.raises(datasets.DatasetError, match="--digit_sizes") as info:
        datasets.get_dataset("digits", digit_sizes=(8,))
    assert "digits_on_photos" in str(info.value)


# -------------------------------------------------------------------- TFDS ---

def _refuse(*args, **kwargs):
    raise AssertionError("network access or dataset download attempted")


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", _refuse)
    monkeypatch.setattr(tfds.core.DatasetInfo, "initialize_from_bucket", _refuse)


TFDS_NAMES = ("digits_on_photos_tfds", "multi_digits_tfds",
              "multi_digits_tfds/large8_small8", "randbits_digits/bits_0",
              "randbits_digits/bits_5", "randbits_digits/bits_20")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, photos_data, multi_data):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builders, "MAX_EXAMPLES", TFDS_EXAMPLES)
        for name in TFDS_NAMES:
            tfds.builder(name, data_dir=data_dir).download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir


def _records(name, data_dir, split, keys):
    """The split's examples read by tfds.load, as a Counter of tuples of the
    features `keys` (arrays as bytes)."""
    rows = collections.Counter()
    for example in tfds.as_numpy(tfds.load(name, data_dir=data_dir, split=split)):
        rows[tuple(np.asarray(example[k]).tobytes() if k in ("image", "bits")
                   else int(example[k]) for k in keys)] += 1
    return rows


def _expected(images, *columns):
    return collections.Counter(
        (image.tobytes(),) + tuple(int(c) for c in values)
        for image, *values in zip(images, *columns))


def test_tfds_digits_on_photos_reads_back_the_generated_examples(
        tfds_dir, no_network, photos_data):
    source = datasets.get_dataset("digits_on_photos_tfds", tfds_dir)
    assert isinstance(source, datasets.TFDSSource)
    assert source.num_classes == 10 and source.image_shape == (32, 32, 3)
    assert set(source.splits) == set(SPLITS)
    names = tfds.builder("digits_on_photos_tfds", data_dir=tfds_dir).info.features[
        "object"].names
    assert tuple(names) == digits_on_photos.PHOTOS
    for split in SPLITS:
        images, labels, _ = (a[:TFDS_EXAMPLES] for a in photos_data[split])
        assert source.num_examples(split) == TFDS_EXAMPLES
        assert _expected(*source.as_numpy(split)) == _expected(images, labels[:, 0])
        assert _records("digits_on_photos_tfds", tfds_dir, split,
                        ("image", "object", "digit", "label")) == _expected(
            images, labels[:, 0], labels[:, 1], labels[:, 0])


@pytest.mark.parametrize("name, sizes", [("multi_digits_tfds", (20, 8)),
                                         ("multi_digits_tfds/large8_small8", (8, 8))])
def test_tfds_multi_digits_reads_back_the_generated_examples(
        tfds_dir, no_network, multi_data, name, sizes):
    source = datasets.get_dataset(name, tfds_dir)
    assert isinstance(source, datasets.TFDSSource)
    assert source.num_classes == 10 and source.image_shape == (32, 32, 1)
    for split in SPLITS:
        data = multi_data[split] if sizes == (20, 8) else multi_digits.generate(split, sizes)
        images, labels = data[0][:TFDS_EXAMPLES], data[1][:TFDS_EXAMPLES]
        assert _expected(*source.as_numpy(split)) == _expected(images, labels[:, 0])
        assert _records(name, tfds_dir, split, ("image", "large", "small", "label")) == (
            _expected(images, labels[:, 0], labels[:, 1], labels[:, 0]))


def _randbits(name, data_dir, split):
    """{image bytes: (label, bits)} of a prepared randbits_digits split."""
    found = {}
    for example in tfds.as_numpy(tfds.load(name, data_dir=data_dir, split=split)):
        found[example["image"].tobytes()] = (int(example["label"]), example["bits"])
    return found


def test_tfds_randbits_digits_hold_the_hash_bits_of_their_images(
        tfds_dir, no_network, sklearn_digits):
    bank, bank_labels, _ = sklearn_digits
    for split, indices in digits_module.split_indices().items():
        kept = indices[:TFDS_EXAMPLES]
        source = datasets.get_dataset("randbits_digits/bits_5", tfds_dir)
        assert source.image_shape == (8, 8, 1) and source.num_classes == 10
        assert _expected(*source.as_numpy(split)) == _expected(
            bank[kept][..., np.newaxis], bank_labels[kept])
        by_k = {k: _randbits(f"randbits_digits/bits_{k}", tfds_dir, split)
                for k in (0, 5, 20)}
        images = set(by_k[5])
        assert images == {image.tobytes() for image in bank[kept][..., np.newaxis]}
        assert images == set(by_k[0]) == set(by_k[20])
        hash_bits = tf.function(rand_bits.hash_bits)
        codes = set()
        for image_bytes in images:
            image = np.frombuffer(image_bytes, np.uint8).reshape(8, 8, 1)
            for k, found in by_k.items():
                label, bits = found[image_bytes]
                assert bits.dtype == np.uint8 and bits.shape == (k,)
                np.testing.assert_array_equal(
                    bits, hash_bits(image, k).numpy().astype(np.uint8))
            np.testing.assert_array_equal(by_k[5][image_bytes][1],
                                          by_k[20][image_bytes][1][:5])
            codes.add(by_k[20][image_bytes][1].tobytes())
        # 20 bits nearly identify each of the images.
        assert len(codes) > 0.95 * len(images)
