"""RandBits (`--num_rand_bits`): the hash bits of each image, as constant
planes after the RGB of every view, the same in both views, the probe's
clean view, the evaluation pipeline and the baselines' inputs.

Checked against the documented hash re-implemented here (FarmHash
Fingerprint64 of the serialised TensorProto, both written from their
specifications) with golden values for fixed images, against the pipeline
without bits (the RGB must not change), and against invariants of a hash: a
smaller K keeps the low bits of a larger K, equal images get equal bits, and
the buckets of 1,797 digits spread evenly.
"""
import struct

import numpy as np
import pytest
import tensorflow as tf

import configs
import data
import datasets
import evaluation
import model as model_lib
from datasets import rand_bits


@pytest.fixture(scope="module")
def digits():
    return datasets.get_dataset("digits")


# ---------------------------------------------------------------------------
# The hash, re-implemented: FarmHash's Fingerprint64 (farmhashna::Hash64, as
# in Google's farmhash.cc) of the bytes of a TensorProto (tensor.proto:
# dtype = 1, tensor_shape = 2 with one dim = 2 {size = 1} per axis,
# tensor_content = 4; DT_UINT8 = 4) in protobuf's wire format.
# ---------------------------------------------------------------------------
M = (1 << 64) - 1
K0, K1, K2 = 0xc3a5c85c97cb3127, 0xb492b66fbe98f273, 0x9ae16a3b2f90404f


def fetch64(s, i):
    return struct.unpack_from("<Q", s, i)[0]


def fetch32(s, i):
    return struct.unpack_from("<I", s, i)[0]


def rotate(v, shift):
    return ((v >> shift) | (v << (64 - shift))) & M


def shift_mix(v):
    return v ^ (v >> 47)


def hash_len16(u, v, mul):
    a = ((u ^ v) * mul) & M
    a ^= a >> 47
    b = ((v ^ a) * mul) & M
    b ^= b >> 47
    return (b * mul) & M


def len_0_to_16(s):
    n = len(s)
    if n >= 8:
        mul = K2 + n * 2
        a = (fetch64(s, 0) + K2) & M
        b = fetch64(s, n - 8)
        c = (rotate(b, 37) * mul + a) & M
        d = ((rotate(a, 25) + b) * mul) & M
        return hash_len16(c, d, mul)
    if n >= 4:
        mul = K2 + n * 2
        return hash_len16((n + (fetch32(s, 0) << 3)) & M, fetch32(s, n - 4), mul)
    if n > 0:
        y = s[0] + (s[n >> 1] << 8)
        z = n + (s[n - 1] << 2)
        return (shift_mix(((y * K2) ^ (z * K0)) & M) * K2) & M
    return K2


def len_17_to_32(s):
    n = len(s)
    mul = K2 + n * 2
    a = (fetch64(s, 0) * K1) & M
    b = fetch64(s, 8)
    c = (fetch64(s, n - 8) * mul) & M
    d = (fetch64(s, n - 16) * K2) & M
    return hash_len16((rotate((a + b) & M, 43) + rotate(c, 30) + d) & M,
                      (a + rotate((b + K2) & M, 18) + c) & M, mul)


def len_33_to_64(s):
    n = len(s)
    mul = K2 + n * 2
    a = (fetch64(s, 0) * K2) & M
    b = fetch64(s, 8)
    c = (fetch64(s, n - 8) * mul) & M
    d = (fetch64(s, n - 16) * K2) & M
    y = (rotate((a + b) & M, 43) + rotate(c, 30) + d) & M
    z = hash_len16(y, (a + rotate((b + K2) & M, 18) + c) & M, mul)
    e = (fetch64(s, 16) * mul) & M
    f = fetch64(s, 24)
    g = ((y + fetch64(s, n - 32)) * mul) & M
    h = ((z + fetch64(s, n - 24)) * mul) & M
    return hash_len16((rotate((e + f) & M, 43) + rotate(g, 30) + h) & M,
                      (e + rotate((f + a) & M, 18) + g) & M, mul)


def weak_32(s, i, a, b):
    w, x, y, z = (fetch64(s, i + 8 * k) for k in range(4))
    a = (a + w) & M
    b = rotate((b + a + z) & M, 21)
    c = a
    a = (a + x + y) & M
    b = (b + rotate(a, 44)) & M
    return (a + z) & M, (b + c) & M


def fingerprint64(s):
    """FarmHash Fingerprint64 of the bytes `s`, as an int in [0, 2^64)."""
    n = len(s)
    if n <= 16:
        return len_0_to_16(s)
    if n <= 32:
        return len_17_to_32(s)
    if n <= 64:
        return len_33_to_64(s)
    seed = 81
    x = seed
    y = (seed * K1 + 113) & M
    z = (shift_mix((y * K2 + 113) & M) * K2) & M
    v = (0, 0)
    w = (0, 0)
    x = (x * K2 + fetch64(s, 0)) & M
    i = 0
    end = ((n - 1) // 64) * 64
    last64 = end + ((n - 1) & 63) - 63
    while True:
        x = (rotate((x + y + v[0] + fetch64(s, i + 8)) & M, 37) * K1) & M
        y = (rotate((y + v[1] + fetch64(s, i + 48)) & M, 42) * K1) & M
        x ^= w[1]
        y = (y + v[0] + fetch64(s, i + 40)) & M
        z = (rotate((z + w[0]) & M, 33) * K1) & M
        v = weak_32(s, i, (v[1] * K1) & M, (x + w[0]) & M)
        w = weak_32(s, i + 32, (z + w[1]) & M, (y + fetch64(s, i + 16)) & M)
        z, x = x, z
        i += 64
        if i == end:
            break
    mul = K1 + ((z & 0xff) << 1)
    i = last64
    w = ((w[0] + ((n - 1) & 63)) & M, w[1])
    v = ((v[0] + w[0]) & M, v[1])
    w = ((w[0] + v[0]) & M, w[1])
    x = (rotate((x + y + v[0] + fetch64(s, i + 8)) & M, 37) * mul) & M
    y = (rotate((y + v[1] + fetch64(s, i + 48)) & M, 42) * mul) & M
    x ^= (w[1] * 9) & M
    y = (y + v[0] * 9 + fetch64(s, i + 40)) & M
    z = (rotate((z + w[0]) & M, 33) * mul) & M
    v = weak_32(s, i, (v[1] * mul) & M, (x + w[0]) & M)
    w = weak_32(s, i + 32, (z + w[1]) & M, (y + fetch64(s, i + 16)) & M)
    z, x = x, z
    return hash_len16((hash_len16(v[0], w[0], mul) + shift_mix(y) * K0 + z) & M,
                      (hash_len16(v[1], w[1], mul) + x) & M, mul)


def varint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7f, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def serialized_uint8(image):
    """The TensorProto bytes of a non-empty uint8 array."""
    shape = b"".join(length_delimited(2, varint(1 << 3) + varint(size)) for size in image.shape)
    return (varint(1 << 3) + varint(4) + length_delimited(2, shape)
            + length_delimited(4, np.ascontiguousarray(image, np.uint8).tobytes()))


def reference_bucket(image, k):
    return fingerprint64(serialized_uint8(np.asarray(image))) % 2 ** k


def bits_numpy(images, k):
    """The bits of each image, LSB first, of its bucket computed here."""
    buckets = np.array([reference_bucket(image, k) for image in images], dtype=object)
    return np.array([[(int(b) >> j) & 1 for j in range(k)] for b in buckets], np.float32)


# Fixed images, whose serialisations (19, 43, 82 and 211 bytes) take each
# length branch of Fingerprint64 above 16 bytes, and their fingerprints.
GOLDEN = [
    (np.full((1, 1, 1), 7, np.uint8), 0x02ff97814fbe814d),
    (np.arange(25, dtype=np.uint8).reshape(5, 5, 1), 0xfcfcfa8adfc7fd96),
    (np.zeros((8, 8, 1), np.uint8), 0x023502496fdbd8df),
    (np.arange(192, dtype=np.uint8).reshape(8, 8, 3), 0xad514da5103c9788),
]


def test_the_reimplemented_hash_gives_the_golden_fingerprints():
    assert [len(serialized_uint8(image)) for image, _ in GOLDEN] == [19, 43, 82, 211]
    for image, fingerprint in GOLDEN:
        assert fingerprint64(serialized_uint8(image)) == fingerprint, image.shape


@pytest.mark.parametrize("k", [1, 5, 20, 62])
def test_buckets_and_bits_of_fixed_images_are_the_fingerprints_low_bits(k):
    for image, fingerprint in GOLDEN:
        assert int(rand_bits.bucket(image, k)) == fingerprint % 2 ** k, (image.shape, k)
        np.testing.assert_array_equal(rand_bits.hash_bits(image, k).numpy(),
                                      [(fingerprint >> j) & 1 for j in range(k)])


def test_hash_bits_are_the_buckets_binary_digits_least_significant_first(digits):
    images, _ = digits.as_numpy("test")
    for k in (1, 5, 20):
        got = np.stack([rand_bits.hash_bits(image, k).numpy() for image in images[:50]])
        np.testing.assert_array_equal(got, bits_numpy(images[:50], k))


def project_bits(images, k):
    """`rand_bits.hash_bits` of each image."""
    return np.stack([rand_bits.hash_bits(image, k).numpy() for image in images])


def test_fewer_bits_are_the_low_bits_of_more(digits):
    images, _ = digits.as_numpy("test")
    wide = np.stack([rand_bits.hash_bits(image, 20).numpy() for image in images[:100]])
    narrow = np.stack([rand_bits.hash_bits(image, 5).numpy() for image in images[:100]])
    np.testing.assert_array_equal(narrow, wide[:, :5])


def test_bits_depend_on_the_content_only_and_spread_over_the_buckets(digits):
    images, _ = digits.as_numpy("train")
    again = images.copy()
    np.testing.assert_array_equal(project_bits(images[:20], 8), project_bits(again[:20], 8))
    # Changing one pixel changes the bucket (with 2^20 buckets, a collision
    # has chance ~1e-6).
    changed = images[:20].copy()
    changed[:, 0, 0, 0] ^= 1
    assert np.all(np.any(project_bits(changed, 20) != project_bits(images[:20], 20), axis=1))
    # 1,297 distinct-ish images over 8 buckets: each holds about 162; a
    # chi-square of 7 degrees of freedom above 24.3 has probability 0.001.
    counts = np.bincount((project_bits(images, 3) @ [1, 2, 4]).astype(int), minlength=8)
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
    c = model_lib.view_channels(k)
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
