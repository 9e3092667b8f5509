"""Tests for data_util.py, the SimCLR augmentations.

Each op is checked against a numpy re-derivation written here, against
TensorFlow's own per-image ops (the batched colour jitter), or against
sampling statistics with binomial tolerances. Random ops draw fresh values on
every call, so the deterministic checks recover the draw from the output (a
blur's sigma, a crop's box) and then require the whole output to match the
numpy formula with that draw, and the draw to lie in its documented range.
"""
import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize

import data
import data_util
import datasets

LUMA = np.array([0.2989, 0.5870, 0.1140])


# ---------------------------------------------------------------------------
# numpy references


def np_gaussian_taps(kernel_size, sigma):
    radius = kernel_size // 2
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-k ** 2 / (2.0 * sigma ** 2))
    return g / g.sum()


def np_blur(image, kernel_size, sigma):
    """Zero-padded separable Gaussian blur of an [H, W, C] image, with loops."""
    g = np_gaussian_taps(kernel_size, sigma)
    r = len(g) // 2
    h, w, c = image.shape
    padded = np.zeros((h + 2 * r, w + 2 * r, c))
    padded[r:r + h, r:r + w] = image
    rows = np.zeros((h + 2 * r, w, c))
    for j in range(w):
        for t in range(2 * r + 1):
            rows[:, j] += g[t] * padded[:, j + t]
    out = np.zeros((h, w, c))
    for i in range(h):
        for t in range(2 * r + 1):
            out[i] += g[t] * rows[i + t]
    return out


def fit_sigma(original, blurred, kernel_size):
    """The sigma whose numpy blur of `original` best matches `blurred`."""
    def loss(sigma):
        return np.sum((np_blur(original, kernel_size, sigma) - blurred) ** 2)
    res = optimize.minimize_scalar(loss, bounds=(0.05, 3.0), method="bounded",
                                   options=dict(xatol=1e-9))
    return res.x


def sample(fn, n, batch=500):
    """Stacks n draws of fn() made inside a tf.data map (graph mode)."""
    ds = tf.data.Dataset.range(n).map(lambda _: fn()).batch(batch)
    return np.concatenate([b.numpy() for b in ds])


def binomial_ok(count, n, p, z=4.0):
    return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p))


# ---------------------------------------------------------------------------
# Gaussian blur


@pytest.mark.parametrize("kernel_size,sigma", [(3, 0.7), (5, 1.5), (7, 3.0)])
def test_gaussian_blur_matches_numpy(kernel_size, sigma):
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(9, 7, 3)).astype(np.float32)
    out = data_util.gaussian_blur(tf.constant(image), kernel_size, sigma)
    assert out.shape == image.shape
    np.testing.assert_allclose(out.numpy(), np_blur(image, kernel_size, sigma),
                               atol=1e-6)

    batch = rng.uniform(size=(2, 9, 7, 3)).astype(np.float32)
    out = data_util.gaussian_blur(tf.constant(batch), kernel_size, sigma)
    assert out.shape == batch.shape
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(),
                                   np_blur(batch[b], kernel_size, sigma),
                                   atol=1e-6)


def test_gaussian_blur_kernel_is_normalised_gaussian():
    kernel_size, sigma = 5, 1.2
    delta = np.zeros((11, 11, 1), np.float32)
    delta[5, 5, 0] = 1.0
    response = data_util.gaussian_blur(tf.constant(delta), kernel_size, sigma)
    response = response.numpy()[..., 0]
    g = np_gaussian_taps(kernel_size, sigma)
    np.testing.assert_allclose(response[3:8, 3:8], np.outer(g, g), atol=1e-7)
    np.testing.assert_allclose(response.sum(), 1.0, atol=1e-6)

    # Weights summing to 1 keep a constant image constant away from the
    # zero-padded border, and the border darkens.
    constant = np.full((12, 12, 3), 0.6, np.float32)
    out = data_util.gaussian_blur(tf.constant(constant), 7, 2.0).numpy()
    np.testing.assert_allclose(out[3:9, 3:9], 0.6, atol=1e-6)
    assert out[0, 0, 0] < 0.5


def test_random_blur_kernel_size_follows_height():
    tf.random.set_seed(1)
    image = np.random.default_rng(1).uniform(size=(12, 12, 3)).astype(np.float32)
    # Below 20 pixels the radius (height // 10) // 2 is 0: a 1-tap kernel.
    out = data_util.random_blur(tf.constant(image), 12, 12, p=1.0)
    np.testing.assert_allclose(out.numpy(), image, atol=1e-7)
    # height 40 gives radius 2, a 5-tap kernel, with sigma in [0.1, 2].
    for _ in range(3):
        out = data_util.random_blur(tf.constant(image), 40, 40, p=1.0).numpy()
        sigma = fit_sigma(image, out, 5)
        np.testing.assert_allclose(out, np_blur(image, 5, sigma), atol=1e-5)
        assert 0.1 - 1e-3 <= sigma <= 2.0 + 1e-3


def test_batch_random_blur_one_sigma_per_batch():
    tf.random.set_seed(2)
    rng = np.random.default_rng(2)
    height = 24  # kernel size 3
    blurred_count = total = 0
    sigmas = []
    for _ in range(3):
        views = [rng.uniform(size=(16, 10, 10, 3)).astype(np.float32)
                 for _ in range(8)]
        outs = data_util.batch_random_blur([tf.constant(v) for v in views],
                                           height, height)
        for view, out in zip(views, outs):
            out = out.numpy()
            assert out.shape == view.shape
            assert out.min() >= 0.0 and out.max() <= 1.0
            changed = [b for b in range(len(view))
                       if np.abs(out[b] - view[b]).max() > 1e-3]
            if not changed:
                continue  # sigma too small to tell, or nothing selected
            sigma = fit_sigma(view[changed[0]], out[changed[0]], 3)
            assert 0.1 - 1e-3 <= sigma <= 2.0 + 1e-3
            sigmas.append(sigma)
            # Every example is either untouched or blurred with the same sigma.
            for b in range(len(view)):
                if b in changed:
                    np.testing.assert_allclose(out[b], np_blur(view[b], 3, sigma),
                                               atol=1e-5)
                else:
                    np.testing.assert_allclose(out[b], view[b], atol=1e-3)
            if sigma > 0.4:  # blur clearly visible: count it
                blurred_count += len(changed)
                total += len(view)
    assert len(sigmas) >= 10
    assert np.ptp(sigmas) > 0.3  # a fresh sigma for each batch
    assert total >= 200
    assert binomial_ok(blurred_count, total, 0.5)


# ---------------------------------------------------------------------------
# Colour


def test_to_grayscale_uses_luma_weights():
    rng = np.random.default_rng(4)
    image = rng.uniform(size=(2, 5, 6, 3)).astype(np.float32)
    luma = image @ LUMA
    gray = data_util.to_grayscale(tf.constant(image[0])).numpy()
    assert gray.shape == (5, 6, 3)
    np.testing.assert_allclose(gray, np.repeat(luma[0][..., None], 3, -1),
                               atol=1e-6)
    gray = data_util.to_grayscale(tf.constant(image[0]), keep_channels=False)
    np.testing.assert_allclose(gray.numpy()[..., 0], luma[0], atol=1e-6)
    gray = data_util.to_grayscale(tf.constant(image)).numpy()
    np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-6)


def test_random_apply_probability():
    tf.random.set_seed(10)
    x = tf.zeros([])
    for p in (0.0, 0.3, 1.0):
        hits = sample(lambda: data_util.random_apply(lambda v, _: v + 1.0, p, x),
                      1000)
        if p in (0.0, 1.0):
            assert hits.sum() == 1000 * p
        else:
            assert binomial_ok(int(hits.sum()), 1000, p)


# ---------------------------------------------------------------------------
# Crops and flips


def coordinate_image(height, width):
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)


def test_distorted_bounding_box_crop_is_a_subimage_within_ranges():
    tf.random.set_seed(11)
    image = coordinate_image(30, 50)
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    for _ in range(60):
        crop = data_util.distorted_bounding_box_crop(
            tf.constant(image), bbox, min_object_covered=0.1,
            aspect_ratio_range=(0.75, 1.33), area_range=(0.3, 0.9)).numpy()
        h, w = crop.shape[:2]
        top, left = int(crop[0, 0, 0]), int(crop[0, 0, 1])
        np.testing.assert_array_equal(crop, image[top:top + h, left:left + w])
        area = h * w / (30 * 50)
        aspect = w / h
        if (h, w) != (30, 50):  # the whole image is the fallback
            assert 0.3 <= area <= 0.9
            assert 0.75 - 0.5 / h <= aspect <= 1.33 + 0.5 / h


def recover_box(out, image_size, axis):
    """Recovers (offset, length) of the crop along `axis` from a coordinate ramp.

    Bicubic resizing with half-pixel centres samples the crop at
    s = (d + 0.5) L / n - 0.5 for output index d. Keys' cubic reproduces
    linear ramps exactly where all 4 taps are inside the crop, which holds
    for the middle half of the output rows when the crop is more than 8
    pixels long.
    """
    n = out.shape[axis]
    d = np.arange(n // 4, 3 * n // 4)
    ramp = out[:, n // 2, axis] if axis == 0 else out[n // 2, :, axis]
    ramp = ramp[d]
    slope, intercept = np.polyfit(d, ramp, 1)
    length = slope * n
    offset = intercept - 0.5 * slope + 0.5
    np.testing.assert_allclose(ramp, slope * d + intercept, atol=1e-3)
    assert abs(length - round(length)) < 1e-2 and abs(offset - round(offset)) < 1e-2
    length, offset = int(round(length)), int(round(offset))
    assert 0 <= offset and offset + length <= image_size
    return offset, length


def test_crop_and_resize_area_and_aspect():
    tf.random.set_seed(12)
    image = coordinate_image(40, 60)
    out_h, out_w = 24, 36  # output aspect a = 1.5
    a = out_w / out_h
    aspects, areas = [], []
    for _ in range(80):
        out = data_util.crop_and_resize(tf.constant(image), out_h, out_w).numpy()
        assert out.shape == (out_h, out_w, 3)
        _, h = recover_box(out, 40, axis=0)
        _, w = recover_box(out, 60, axis=1)
        areas.append(h * w / (40 * 60))
        aspects.append(w / h)
        assert 0.08 <= areas[-1] <= 1.0
        assert 0.75 * a - 0.5 / h <= aspects[-1] <= 4 / 3 * a + 0.5 / h
    # The draws spread over the ranges rather than sitting at one value.
    assert min(aspects) < a < max(aspects)
    assert min(areas) < 0.4 and max(areas) > 0.7


def test_crop_and_resize_full_area_returns_whole_image():
    tf.random.set_seed(13)
    image = np.random.default_rng(13).uniform(size=(20, 30, 3)).astype(np.float32)
    for _ in range(5):
        # Same output size: bicubic resampling at the pixel centres is exact.
        out = data_util.crop_and_resize(tf.constant(image), 20, 30,
                                        area_range=(1.0, 1.0))
        np.testing.assert_allclose(out.numpy(), image, atol=1e-6)
    out = data_util.crop_and_resize(tf.constant(image), 10, 15,
                                    area_range=(1.0, 1.0))
    expected = tf.image.resize(image, [10, 15], method="bicubic")
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "image_hw,out_hw,proportion,window",
    [
        # Image wider than the output: the height limits, h = 0.5 * 16.
        ((16, 32), (8, 12), 0.5, (4, 10, 8, 12)),
        # Output wider than the image: the width limits, w = 0.75 * 16.
        ((32, 16), (8, 12), 0.75, (12, 2, 8, 12)),
        # Square: 0.875 * 16 = 14, centred.
        ((16, 16), (14, 14), 0.875, (1, 1, 14, 14)),
    ])
def test_center_crop_keeps_proportion_of_limiting_side(image_hw, out_hw,
                                                       proportion, window):
    image = coordinate_image(*image_hw)
    out = data_util.center_crop(tf.constant(image), out_hw[0], out_hw[1],
                                proportion).numpy()
    top, left, h, w = window
    # Crop size equals output size, so the resize is the identity.
    np.testing.assert_allclose(out, image[top:top + h, left:left + w], atol=1e-5)


def test_preprocess_for_train_flips_half_the_time():
    tf.random.set_seed(14)
    image = np.random.default_rng(14).uniform(size=(6, 6, 3)).astype(np.float32)
    n = 600
    outs = sample(lambda: data_util.preprocess_for_train(
        tf.constant(image), 6, 6, crop=False, flip=True), n)
    same = np.all(outs == image, axis=(1, 2, 3))
    flipped = np.all(outs == image[:, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ flipped)
    assert binomial_ok(int(flipped.sum()), n, 0.5)


# ---------------------------------------------------------------------------
# Whole pipelines


def test_preprocess_image_grayscale_uint8():
    tf.random.set_seed(15)
    rng = np.random.default_rng(15)
    image = rng.integers(0, 256, size=(8, 8, 1), dtype=np.uint8)
    for is_training in (True, False):
        out = data_util.preprocess_image(tf.constant(image), 16, 16,
                                         is_training=is_training)
        assert out.dtype == tf.float32 and out.shape == (16, 16, 3)
        assert out.numpy().min() >= 0.0 and out.numpy().max() <= 1.0

    # Eval is deterministic.
    first = data_util.preprocess_image(tf.constant(image), 16, 16).numpy()
    second = data_util.preprocess_image(tf.constant(image), 16, 16).numpy()
    np.testing.assert_array_equal(first, second)

    # Without the test crop at the same size, the view is x / 255 replicated.
    out = data_util.preprocess_image(tf.constant(image), 8, 8, test_crop=False)
    expected = np.repeat(image.astype(np.float64) / 255.0, 3, axis=-1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)

    # The test crop keeps 87.5% of the side: 14 of 16 pixels, centred.
    big = rng.integers(0, 256, size=(16, 16, 1), dtype=np.uint8)
    out = data_util.preprocess_image(tf.constant(big), 14, 14)
    expected = np.repeat(big[1:15, 1:15].astype(np.float64) / 255.0, 3, axis=-1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_preprocess_image_in_dataset_map():
    tf.random.set_seed(16)
    rng = np.random.default_rng(16)
    images = rng.integers(0, 256, size=(12, 32, 32, 1), dtype=np.uint8)
    ds = tf.data.Dataset.from_tensor_slices(images)
    train = ds.map(lambda im: data_util.preprocess_image(im, 16, 16, is_training=True),
                   num_parallel_calls=tf.data.AUTOTUNE)
    evaluation = ds.map(lambda im: data_util.preprocess_image(im, 16, 16))
    for pipeline in (train, evaluation):
        assert pipeline.element_spec.shape == (16, 16, 3)
        assert pipeline.element_spec.dtype == tf.float32
        out = next(iter(pipeline.batch(12))).numpy()
        assert out.shape == (12, 16, 16, 3)
        assert out.min() >= 0.0 and out.max() <= 1.0
    # Training views of the same image differ between passes (epochs) of one
    # input pipeline; a 32-pixel image has enough crop boxes that two crops and
    # flips rarely coincide. (Two fresh iterators may repeat the same draws:
    # their seeds come from the graph seed the map was traced under.)
    both = next(iter(train.repeat(2).batch(24))).numpy()
    assert not np.any([np.allclose(a, b) for a, b in zip(both[:12], both[12:])])

    # Colour images of unknown channel count go through the same path.
    rgb = rng.uniform(size=(4, 20, 20, 3)).astype(np.float32)
    gen = tf.data.Dataset.from_generator(
        lambda: iter(rgb), output_signature=tf.TensorSpec([None, None, None],
                                                          tf.float32))
    out = next(iter(gen.map(lambda im: data_util.preprocess_image(
        im, 16, 16, is_training=True)).batch(4))).numpy()
    assert out.shape == (4, 16, 16, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0


# --------------------------------------------------------------------------
# Seeds and the batched colour distortion of the input pipeline.
# --------------------------------------------------------------------------
def test_a_view_is_a_function_of_its_seed():
    image = tf.constant(np.random.default_rng(20).uniform(size=(12, 12, 3)), tf.float32)

    def view(seed):
        return data_util.preprocess_for_train(image, 8, 8,
                                              seed=tf.constant(seed, tf.int64)).numpy()

    np.testing.assert_array_equal(view([3, 4]), view([3, 4]))
    assert not np.allclose(view([3, 4]), view([3, 5]))


def test_zero_colour_strength_skips_jitter_and_grayscale():
    """As the original: strength 0 distorts no colour, grayscale included.

    The input pipeline decides it (`data.build_input_fn`), so there, with no
    blur, whole-image crops and no flip, every pretraining view is the
    image's bicubic resize; at strength 0.5 most views are not.
    """
    n, size = 32, 16
    images = np.random.default_rng(21).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    # Label = index, so each row names its source image.
    source = datasets.InMemorySource("random", n, {"train": (images, np.arange(n))})
    resized = np.clip(tf.image.resize(images / 255.0, [size, size],
                                      method="bicubic").numpy(), 0.0, 1.0)

    def view_errors(strength):
        """Max |view - resized image| of every pretraining view of one batch."""
        input_fn = data.build_input_fn(source, n, True, split="train", image_size=size,
                                       color_jitter_strength=strength, use_blur=False,
                                       area_range=(1.0, 1.0), flip=False)
        batch, labels = (t.numpy() for t in next(iter(input_fn())))
        views = batch.reshape(n, size, size, -1, 3)  # view k: channels 3k .. 3k + 2
        assert views.shape[3] >= 2
        expected = resized[labels][:, :, :, np.newaxis]
        return np.abs(views - expected).max(axis=(1, 2, 4)).ravel()

    assert view_errors(0.0).max() < 1e-5
    errors = view_errors(0.5)
    assert np.mean(errors > 1e-3) > 0.5, errors


def reference_jitter(image, factors, order, jitter, grayscale):
    """One example through TensorFlow's own per-image ops, in its order."""
    ops = (lambda x: x * factors["brightness"],
           lambda x: tf.image.adjust_contrast(x, factors["contrast"]),
           lambda x: tf.image.adjust_saturation(x, factors["saturation"]),
           lambda x: tf.image.adjust_hue(x, factors["hue"]))
    if jitter:
        for k in order:
            image = tf.clip_by_value(ops[k](image), 0.0, 1.0)
    if grayscale:
        image = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    return image.numpy()


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_batch_color_jitter_applies_each_examples_draws_in_its_order(strength):
    images = np.random.default_rng(22).uniform(size=(24, 5, 5, 3)).astype(np.float32)
    seed = tf.constant([7, 1], tf.int64)
    out = data_util.batch_random_color_jitter(tf.constant(images), strength, seed).numpy()
    factors, order, jitter, grayscale = data_util.batch_color_jitter_draws(24, strength, seed)
    factors = {k: v.numpy() for k, v in factors.items()}
    assert len({tuple(o) for o in order.numpy()}) > 4  # the orders differ
    for i in range(24):
        expected = reference_jitter(tf.constant(images[i]), {k: v[i] for k, v in factors.items()},
                                    order.numpy()[i], bool(jitter[i]), bool(grayscale[i]))
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=2e-5, err_msg=str(i))


def test_batch_color_jitter_draws_follow_the_simclr_law():
    strength = 0.5
    factors, order, jitter, grayscale = data_util.batch_color_jitter_draws(
        20000, strength, tf.constant([8, 2], tf.int64))
    for name in ("brightness", "contrast", "saturation"):
        values = factors[name].numpy()
        assert values.min() >= 1 - 0.8 * strength and values.max() <= 1 + 0.8 * strength
        assert values.mean() == pytest.approx(1.0, abs=0.01)
    hue = factors["hue"].numpy()
    assert hue.min() >= -0.2 * strength and hue.max() <= 0.2 * strength
    assert np.mean(jitter.numpy()) == pytest.approx(0.8, abs=0.01)
    assert np.mean(grayscale.numpy()) == pytest.approx(0.2, abs=0.01)
    orders = order.numpy()
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders[:100])
    # Each op is first in a quarter of the examples.
    np.testing.assert_allclose(np.bincount(orders[:, 0], minlength=4) / 20000, 0.25, atol=0.015)
