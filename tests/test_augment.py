"""`augment.py`, the augmentation of `--augment_in_step`, against the host
pipeline's (`data_util.py`, TensorFlow image ops), under either backend
(tests/test_backends.py runs this file under JAX too):

- each op gives the host op's output for the same parameters, to float32
  rounding: the bicubic crop-resize (`tf.image.resize` of the box), the
  flip, the colour jitter in every order with grayscale, and the blur at
  the kernel sizes of 32 and 224 pixels;
- the parameters drawn from uniforms follow the host's laws: crop boxes
  against `tf.image.stateless_sample_distorted_bounding_box` (chi-square
  on the box sides and corners), jitter factors (Kolmogorov-Smirnov), the
  orders (24 permutations), and the probability of each branch (jitter,
  grayscale, flip, blur) against the host's own draws, on many fixed-seed
  draws;
- `augment_views` lays the views out as the host does (RandBits planes
  after each view, the clean view last).

The pipeline that feeds it (TensorFlow edge) is tests/test_augment_pipeline.py's.
"""
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import augment
import data_util

# A law test fails when the two samples differ at this p-value; the draws
# are seeded, so a pass is not luck that can run out.
P_MIN = 1e-3
DRAWS = 8000


def uniforms(shape, seed):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def images_01(shape, seed=0):
    """uint8 images and the same as float32 / 255, as the host reads them."""
    pixels = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    return pixels, tf.image.convert_image_dtype(pixels, tf.float32).numpy()


# ---------------------------------------------------------------------------
# Each op against its host op, on the same parameters.
# ---------------------------------------------------------------------------
# At 96 pixels the sample positions fall between the steps of TensorFlow's
# kernel table (at powers of two they fall on them).
@pytest.mark.parametrize("size", [32, 96])
def test_resize_boxes_is_the_host_bicubic_resize_of_the_box(size):
    rng = np.random.default_rng(size)
    n = 12
    height = rng.integers(1, size + 1, n)
    width = rng.integers(1, size + 1, n)
    # The whole image, a one-pixel box, boxes against every edge.
    height[:3], width[:3] = (size, 1, size), (size, 1, 3)
    top = (rng.random(n) * (size - height + 1)).astype(int)
    left = (rng.random(n) * (size - width + 1)).astype(int)
    top[3], left[4] = size - height[3], size - width[4]
    _, images = images_01((n, size, size, 3), seed=size)
    boxes = [np.asarray(v, np.int32) for v in (top, left, height, width)]
    got = np.asarray(augment.resize_boxes(images, *boxes, size))
    want = np.stack([data_util.resize_box(images[i], top[i], left[i], height[i], width[i],
                                          size, size).numpy() for i in range(n)])
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_flip_is_the_host_flip():
    _, images = images_01((4, 6, 5, 3))
    flip = np.array([True, False, True, False])
    got = np.asarray(augment.flip_left_right(images, flip))
    want = np.where(flip[:, None, None, None], tf.image.flip_left_right(images).numpy(), images)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_color_jitter_is_the_host_jitter_in_every_order(strength):
    n = 200
    draws = uniforms((n, augment.DRAWS), seed=int(strength * 10))
    factors, order, jitter, grayscale = augment.color_jitter_params(draws, strength)
    order = np.asarray(order)
    # The batch holds every branch and all 24 orders.
    assert len({tuple(o) for o in order}) == 24
    assert set(np.asarray(jitter)) == {True, False} and set(np.asarray(grayscale)) == {True, False}
    _, images = images_01((n, 16, 16, 3), seed=1)
    got = np.asarray(augment.color_jitter(images, factors, order, jitter, grayscale))
    want = data_util.batch_color_jitter(
        tf.constant(images), {k: tf.constant(np.asarray(v)) for k, v in factors.items()},
        tf.constant(order), tf.constant(np.asarray(jitter)),
        tf.constant(np.asarray(grayscale))).numpy()
    # Hue goes through HSV and back; float32 rounding differs by a few ulps.
    np.testing.assert_allclose(got, want, atol=5e-6, rtol=0)


@pytest.mark.parametrize("size,sigma", [(32, 0.1), (32, 2.0), (224, 1.3)])
def test_blur_is_the_host_blur(size, sigma):
    keep = np.array([True, False, True])
    _, images = images_01((3, size, size, 3), seed=size)
    got = np.asarray(augment.blend_blur(images, np.float32(sigma), keep, size))
    want = data_util.blend_blur(tf.constant(images), tf.constant(sigma, tf.float32),
                                tf.constant(keep), size).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert augment.blur_kernel_size(size) == data_util._blur_kernel_size(size)


# ---------------------------------------------------------------------------
# The laws of the draws against the host's.
# ---------------------------------------------------------------------------
def host_boxes(shape, area_range, n, seed=1):
    """(top, left, height, width) [n] of the host's crop sampler for an
    image of `shape` (H, W), as `data_util.crop_and_resize` calls it for a
    square output, for n seeds."""
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])

    @tf.function
    def sample(seeds):
        def one(seed):
            begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
                [*shape, 3], whole, seed=seed, min_object_covered=0.1,
                aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0), area_range=area_range,
                max_attempts=100, use_image_if_no_bounding_boxes=True)
            return tf.concat([begin[:2], extent[:2]], 0)
        return tf.map_fn(one, seeds, fn_output_signature=tf.int32)

    seeds = tf.random.stateless_uniform([n, 2], [seed, 0], maxval=2 ** 31 - 1, dtype=tf.int64)
    return sample(seeds).numpy().T


def assert_same_law(a, b, bins, what):
    """Chi-square test of homogeneity of two samples over `bins`."""
    counts = np.stack([np.histogram(a, bins)[0], np.histogram(b, bins)[0]])
    counts = counts[:, counts.sum(0) > 0]
    p = stats.chi2_contingency(counts).pvalue
    assert p > P_MIN, f"{what}: p = {p:.2e}\nhost {counts[0]}\nstep {counts[1]}"


@pytest.mark.parametrize("shape,area_range", [((32, 32), (0.08, 1.0)), ((224, 224), (0.08, 1.0)),
                                              ((32, 32), (0.5, 1.0)), ((24, 40), (0.08, 1.0))])
def test_crop_boxes_follow_the_host_sampler(shape, area_range):
    host = host_boxes(shape, area_range, DRAWS)
    u = uniforms((DRAWS, 2 * augment.CROP_ATTEMPTS + 2), seed=sum(shape))
    k = augment.CROP_ATTEMPTS
    step = [np.asarray(v) for v in augment.crop_boxes(
        u[:, :k], u[:, k:2 * k], u[:, 2 * k], u[:, 2 * k + 1], *shape, area_range)]
    side = max(shape)
    bins = np.arange(side + 2) - 0.5 if side <= 40 else np.linspace(-0.5, side + 0.5, 25)
    for name, a, b in zip(("top", "left", "height", "width"), host, step):
        assert_same_law(a, b, bins, name)
    # Boxes fit, and cover at least 10% and the area range.
    top, left, height, width = step
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= shape[0]).all() and (left + width <= shape[1]).all()
    area = height * width / (shape[0] * shape[1])
    assert area.min() >= max(0.1, area_range[0]) - 1e-6
    host_area = host[2] * host[3] / (shape[0] * shape[1])
    assert_same_law(host_area, area, np.linspace(0, 1, 21), "area")
    assert_same_law(host[3] / host[2], width / height, np.linspace(0.6, 1.5, 19), "aspect")


def test_jitter_draws_follow_the_host_draws():
    strength = 0.5
    factors, order, jitter, grayscale = (
        {k: np.asarray(v) for k, v in f.items()} if isinstance(f, dict) else np.asarray(f)
        for f in augment.color_jitter_params(uniforms((DRAWS, augment.DRAWS), 3), strength))
    host = data_util.batch_color_jitter_draws(DRAWS, strength, tf.constant([5, 6]))
    host_factors, host_order, host_jitter, host_gray = (
        {k: v.numpy() for k, v in f.items()} if isinstance(f, dict) else f.numpy() for f in host)
    for name in factors:
        p = stats.ks_2samp(factors[name], host_factors[name]).pvalue
        assert p > P_MIN, f"{name}: KS p = {p:.2e}"
        assert factors[name].min() >= host_factors[name].min() - 0.01
        assert factors[name].max() <= host_factors[name].max() + 0.01

    def permutation_ids(o):
        return (o * np.array([64, 16, 4, 1])).sum(1)

    bins = np.arange(256 + 1) - 0.5
    assert_same_law(permutation_ids(host_order), permutation_ids(order), bins, "order")
    assert len(np.unique(permutation_ids(order))) == 24
    for name, a, b in (("jitter", host_jitter, jitter), ("grayscale", host_gray, grayscale)):
        assert_same_law(a.astype(int), b.astype(int), [-0.5, 0.5, 1.5], name)


def test_flip_and_blur_branches_follow_the_host_draws():
    draws = uniforms((DRAWS, augment.DRAWS), 4)
    slices = augment.draw_slices()
    # The host's flip: an image whose left and right halves differ.
    image = np.zeros((DRAWS, 1, 2, 1), np.float32)
    image[:, :, 1] = 1.0
    flipped = tf.image.stateless_random_flip_left_right(image, [7, 8]).numpy()[:, 0, 0, 0] == 1
    step_flip = draws[:, slices["flip"]][:, 0] < 0.5
    assert_same_law(flipped.astype(int), step_flip.astype(int), [-0.5, 0.5, 1.5], "flip")
    sigma, keep = data_util.batch_blur_draws(DRAWS, tf.constant([9, 10]))
    step_keep = draws[:, slices["blur"]][:, 0] < 0.5
    assert_same_law(keep.numpy().astype(int), step_keep.astype(int), [-0.5, 0.5, 1.5], "blur")
    host_sigmas = np.array([data_util.batch_blur_draws(1, tf.constant([s, 1]))[0].numpy()
                            for s in range(400)])
    step_sigmas = draws[:400, slices["blur_sigma"]][:, 0] * 1.9 + 0.1
    assert stats.ks_2samp(host_sigmas, step_sigmas).pvalue > P_MIN
    assert 0.1 <= step_sigmas.min() and step_sigmas.max() <= 2.0


# ---------------------------------------------------------------------------
# Layout and pipeline.
# ---------------------------------------------------------------------------
def test_views_are_laid_out_as_the_host_lays_them_out():
    n, size, bits = 4, 16, 2
    pixels, images = images_01((n, size, size, 3), seed=5)
    draws = uniforms((n, 2, augment.DRAWS), seed=6)
    clean = uniforms((n, size, size, 3), seed=7)
    bit_values = (uniforms((n, bits), seed=8) < 0.5).astype(np.float32)
    kwargs = dict(size=size, area_range=(0.3, 1.0), flip=True, color_jitter_strength=0.5,
                  blur=True)
    out = np.asarray(augment.augment_views(
        {"images": pixels, "draws": draws, "bits": bit_values, "clean": clean}, views=2,
        **kwargs))
    c = 3 + bits
    assert out.shape == (n, size, size, 3 * c)
    for v in range(2):
        want = np.asarray(augment.augment_view(images, draws[:, v], **kwargs))
        np.testing.assert_allclose(out[..., v * c:v * c + 3], want, atol=1e-6)
    for v in range(3):
        np.testing.assert_array_equal(
            out[..., v * c + 3:(v + 1) * c],
            np.broadcast_to(bit_values[:, None, None], (n, size, size, bits)))
    np.testing.assert_array_equal(out[..., 2 * c:2 * c + 3], clean)
    # The two views differ (their draws do), each in [0, 1].
    assert np.abs(out[..., :3] - out[..., c:c + 3]).mean() > 0.01
    assert out.min() >= 0.0 and out.max() <= 1.0
