"""RandBits (`--num_rand_bits`): the hash bits of each image, as constant
planes after the RGB of every view, the same in both views, the probe's
clean view, the evaluation pipeline and the baselines' inputs.

Checked against the bucket of `datasets.rand_bits.bucket` decoded here bit
by bit, against the pipeline without bits (the RGB must not change), and
against invariants of a hash: a smaller K keeps the low bits of a larger K,
equal images get equal bits, and the buckets of 1,797 digits spread evenly.
"""
import numpy as np
import pytest
import tensorflow as tf

import configs
import data
import datasets
import evaluation
from datasets import rand_bits


@pytest.fixture(scope="module")
def digits():
    return datasets.get_dataset("digits")


def bits_numpy(images, k):
    """The bits of each image, LSB first, decoded here from its bucket."""
    buckets = np.array([int(rand_bits.bucket(image, k)) for image in images])
    return ((buckets[:, None] >> np.arange(k)) & 1).astype(np.float32)


def test_hash_bits_are_the_buckets_binary_digits_least_significant_first(digits):
    images, _ = digits.as_numpy("test")
    for k in (1, 5, 20):
        got = np.stack([rand_bits.hash_bits(image, k).numpy() for image in images[:50]])
        np.testing.assert_array_equal(got, bits_numpy(images[:50], k))


def test_fewer_bits_are_the_low_bits_of_more(digits):
    images, _ = digits.as_numpy("test")
    wide = np.stack([rand_bits.hash_bits(image, 20).numpy() for image in images[:100]])
    narrow = np.stack([rand_bits.hash_bits(image, 5).numpy() for image in images[:100]])
    np.testing.assert_array_equal(narrow, wide[:, :5])


def test_bits_depend_on_the_content_only_and_spread_over_the_buckets(digits):
    images, _ = digits.as_numpy("train")
    again = images.copy()
    np.testing.assert_array_equal(bits_numpy(images[:20], 8), bits_numpy(again[:20], 8))
    # Changing one pixel changes the bucket (with 2^20 buckets, a collision
    # has chance ~1e-6).
    changed = images[:20].copy()
    changed[:, 0, 0, 0] ^= 1
    assert np.all(np.any(bits_numpy(changed, 20) != bits_numpy(images[:20], 20), axis=1))
    # 1,297 distinct-ish images over 8 buckets: each holds about 162; a
    # chi-square of 7 degrees of freedom above 24.3 has probability 0.001.
    counts = np.bincount((bits_numpy(images, 3) @ [1, 2, 4]).astype(int), minlength=8)
    expected = len(images) / 8
    assert np.sum((counts - expected) ** 2 / expected) < 24.3, counts


def first_batch(input_fn):
    images, labels = next(iter(input_fn()))
    return images.numpy(), labels.numpy()


def test_views_carry_their_images_bits_after_unchanged_rgb(digits):
    """Two augmented views and the clean view of each example: 3 + K
    channels each, the last K constant planes of the bits of the stored
    image, the same in every view; the RGB is that of the pipeline without
    bits. The example behind a row is found by its clean view."""
    k = 6
    kwargs = dict(split="train", image_size=8, color_jitter_strength=0.5, use_blur=False,
                  area_range=(0.5, 1.0), flip=False, clean_view=True, seed=3,
                  deterministic=True)
    with_bits, labels = first_batch(data.build_input_fn(digits, 32, True, num_rand_bits=k,
                                                        **kwargs))
    without, labels0 = first_batch(data.build_input_fn(digits, 32, True, **kwargs))
    c = data.view_channels(k)
    assert c == 3 + k and with_bits.shape == (32, 8, 8, 3 * c)
    np.testing.assert_array_equal(labels, labels0)
    views = [with_bits[..., v * c:(v + 1) * c] for v in range(3)]
    np.testing.assert_array_equal(np.concatenate([v[..., :3] for v in views], -1), without)
    images, _ = digits.as_numpy("train")
    clean = np.round(views[2][..., 0] * 255).astype(np.uint8)
    rows = [int(np.flatnonzero(np.all(images[..., 0] == image, axis=(1, 2)))[0])
            for image in clean]
    expected = bits_numpy(images[rows], k)
    for view in views:
        planes = view[..., 3:]
        np.testing.assert_array_equal(planes, np.broadcast_to(
            expected[:, None, None, :], planes.shape))


def test_evaluation_pipeline_and_baselines_carry_the_same_bits(digits):
    k = 4
    images, labels = digits.as_numpy("test")
    expected = bits_numpy(images[:100], k)
    views, eval_labels = first_batch(data.build_input_fn(
        digits, 100, False, split="test", image_size=8, num_rand_bits=k))
    np.testing.assert_array_equal(eval_labels, labels[:100])
    np.testing.assert_allclose(views[..., :3], np.repeat(images[:100] / 255.0, 3, -1),
                               atol=1e-6)
    np.testing.assert_array_equal(views[..., 3:], np.broadcast_to(
        expected[:, None, None, :], (100, 8, 8, k)))
    cfg = configs.resolve(num_rand_bits=k)[0]
    pixels = evaluation.raw_pixels(cfg, images[:100])
    np.testing.assert_array_equal(pixels[:, -k:], expected)
    np.testing.assert_array_equal(pixels[:, :-k], images[:100].reshape(100, -1) / np.float32(255))


def test_more_bits_than_the_hash_holds_is_refused():
    with pytest.raises(ValueError, match="num_bits"):
        rand_bits.hash_bits(tf.zeros([2, 2, 1], tf.uint8), rand_bits.MAX_BITS + 1)
