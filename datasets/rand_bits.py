"""RandBits: a few random bits per image, derived from its content.

The feature-suppression experiment of Chen & Li (2021, §3; the original's
`randbits_mnist.ipynb`) attaches K bits to every image that are a fixed
function of the image and carry no information about its label: a
deterministic hash of the pixels into 2^K buckets, written least
significant bit first. Both augmented views of an image and its
evaluation view carry the same bits (they are computed from the stored
image, before any augmentation), so the bits are an easy feature that
identifies the image across views; with K ≈ log2(N) they are nearly a
unique id of each of the N images.

The hash is TensorFlow's `to_hash_bucket_fast` (FarmHash Fingerprint64,
stable across platforms and versions) of the serialised uint8 tensor,
which holds its shape and its raw bytes: bucket = fingerprint mod 2^K, so
the bits of a smaller K are the low bits of a larger K's. The original
hashed the JPEG encoding instead, which depends on the JPEG library.
"""

import tensorflow as tf

# 2^K buckets must fit the int64 of to_hash_bucket_fast.
MAX_BITS = 62


def bucket(image, num_bits):
    """The hash bucket in [0, 2^num_bits) of a uint8 image [H, W, C], int64."""
    return tf.strings.to_hash_bucket_fast(
        tf.io.serialize_tensor(tf.convert_to_tensor(image, tf.uint8)),
        2 ** num_bits)


def hash_bits(image, num_bits):
    """The `num_bits` bits of `bucket(image, num_bits)`, least significant
    first, as float32 [num_bits] of 0s and 1s."""
    if not 0 <= num_bits <= MAX_BITS:
        raise ValueError(f"num_bits must be in [0, {MAX_BITS}], got {num_bits}")
    value = bucket(image, num_bits)
    shifts = tf.range(num_bits, dtype=tf.int64)
    return tf.cast(tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(value, shifts), 1), tf.float32)


def bit_channels(bits, height, width):
    """Bits [K] as K constant channels [height, width, K]."""
    return tf.broadcast_to(bits[tf.newaxis, tf.newaxis, :],
                           [height, width, tf.shape(bits)[0]])
