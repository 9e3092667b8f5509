"""Image augmentations for SimCLR, written with TensorFlow image ops.

This module follows the augmentation module of the original SimCLR TF2
release. Images are float32 tensors in [0, 1] with shape [H, W, 3]. Nothing
here subtracts a mean or divides by a standard deviation.

A pretraining view is, in this order:

1. a random resized crop covering a fraction of the image area in [0.08, 1]
   (at least 0.1 in practice, see `crop_and_resize`), with aspect ratio in
   [3/4, 4/3] relative to the output, resized bicubically;
2. a horizontal flip with probability 1/2;
3. colour distortion, when its strength is above 0 (`data.build_input_fn`
   skips it at 0, grayscale included): colour jitter with probability 0.8,
   then grayscale with probability 0.2 (`batch_random_color_jitter`);
4. a Gaussian blur with one random sigma per batch, kept for each example
   with probability 1/2 (`batch_random_blur`).

Steps 1-2 run per example (`preprocess_for_train`), steps 3-4 on whole
batches of views (`batch_random_color_jitter`, `batch_random_blur`); the
input pipeline (`data.py`) chains them.

Randomness. Every random function takes `seed`, a [2] int32/int64 tensor,
and draws with stateless ops only (`tf.random.stateless_*`,
`tf.image.stateless_*`), splitting the seed for each decision: the same seed
gives the same view on every run and every machine, whatever order a
parallel pipeline runs in. `seed=None` draws one seed from TensorFlow's
global generator (so `tf.random.set_seed` makes a run repeatable).
"""

import tensorflow as tf

import augment

# Fraction of the limiting image side that the evaluation centre crop keeps.
CROP_PROPORTION = 0.875
_INT32_MAX = 2 ** 31 - 1


def _seeds(seed, num):
    """`num` independent [2] seeds derived from `seed` (None: a fresh one)."""
    if seed is None:
        seed = tf.random.uniform([2], maxval=_INT32_MAX, dtype=tf.int32)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform(seed, minval=0.0, maxval=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, minval=minval,
                                       maxval=maxval, dtype=tf.float32)


def random_apply(func, p, x, seed=None):
    """Returns `func(x, seed')` with probability `p`, and `x` otherwise.

    `seed'` is a seed derived from `seed`, independent of the draw that
    decides. `func` must return a tensor of the same dtype as `x`.
    """
    draw_seed, func_seed = _seeds(seed, 2)
    draw = _uniform(draw_seed)
    return tf.cond(draw < tf.cast(p, tf.float32), lambda: func(x, func_seed),
                   lambda: x)


def to_grayscale(image, keep_channels=True):
    """Converts RGB to luma, Y = 0.2989 R + 0.5870 G + 0.1140 B.

    These are the ITU-R BT.601 weights that `tf.image.rgb_to_grayscale`
    uses. With `keep_channels`, Y is copied to three channels so that the
    result has the same shape as the input. Works on any rank >= 3.
    """
    image = tf.image.rgb_to_grayscale(image)
    if keep_channels:
        image = tf.image.grayscale_to_rgb(image)
    return image


def _per_example(values):
    """[b] values shaped to broadcast over [b, H, W, C] images."""
    return tf.reshape(values, [-1, 1, 1, 1])


def _batch_contrast(images, factors):
    """m + f (x - m) per example, m its per-channel mean over the image (as
    `tf.image.adjust_contrast`)."""
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return mean + _per_example(factors) * (images - mean)


def _batch_saturation(images, factors):
    """HSV saturation scaled by f per example, clipped to [0, 1] (as
    `tf.image.adjust_saturation`)."""
    hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
    saturation = tf.clip_by_value(saturation * tf.reshape(factors, [-1, 1, 1]), 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))


def _batch_hue(images, deltas):
    """HSV hue rotated by d turns per example (as `tf.image.adjust_hue`)."""
    hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
    hue = tf.math.floormod(hue + tf.reshape(deltas, [-1, 1, 1]), 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))


def batch_color_jitter_draws(batch_size, strength, seed):
    """The random draws of `batch_random_color_jitter`, per example:
    (factors {brightness, contrast, saturation: [b], hue: [b] deltas},
    order [b, 4] int32 (a permutation of the ops brightness, contrast,
    saturation, hue), jitter [b] bool (p = 0.8), grayscale [b] bool (p = 0.2))."""
    seeds = _seeds(seed, 7)
    delta = 0.8 * strength
    lower = max(1.0 - delta, 0.0)
    shape = [batch_size]
    factors = {
        "brightness": _uniform(seeds[0], lower, 1.0 + delta, shape),
        "contrast": _uniform(seeds[1], lower, 1.0 + delta, shape),
        "saturation": _uniform(seeds[2], lower, 1.0 + delta, shape),
        "hue": _uniform(seeds[3], -0.2 * strength, 0.2 * strength, shape),
    }
    order = tf.argsort(_uniform(seeds[4], shape=[batch_size, 4]), axis=1)
    jitter = _uniform(seeds[5], shape=shape) < 0.8
    grayscale = _uniform(seeds[6], shape=shape) < 0.2
    return factors, order, jitter, grayscale


def batch_color_jitter(images, factors, order, jitter, grayscale):
    """The colour distortion of `batch_random_color_jitter` for given draws
    (`batch_color_jitter_draws`): per example, its jitter ops in its order,
    each clipped to [0, 1], where `jitter`, then grayscale where
    `grayscale`. The ops run on the whole batch: at each of the four
    positions all four run and each example keeps the one its order puts
    there, which costs a fraction of one small-op chain per example in a
    tf.data map."""
    ops = (lambda x: x * _per_example(factors["brightness"]),
           lambda x: _batch_contrast(x, factors["contrast"]),
           lambda x: _batch_saturation(x, factors["saturation"]),
           lambda x: _batch_hue(x, factors["hue"]))
    jittered = images
    for position in range(4):
        candidates = tf.stack([tf.clip_by_value(op(jittered), 0.0, 1.0) for op in ops], axis=1)
        jittered = tf.gather(candidates, order[:, position], axis=1, batch_dims=1)
    images = tf.where(_per_example(jitter), jittered, images)
    return tf.where(_per_example(grayscale), to_grayscale(images), images)


def batch_random_color_jitter(images, strength, seed=None):
    """SimCLR's colour distortion at strength s = `strength` for a batch
    [b, H, W, 3], every example with draws of its own.

    Per example: with probability 0.8 colour jitter — brightness (y = f x),
    contrast, saturation (factors f ~ U[max(0, 1 - 0.8 s), 1 + 0.8 s]) and
    hue (shift U[-0.2 s, 0.2 s] turns) in a random order, clipped to [0, 1]
    after each — then, independently, grayscale with probability 0.2.
    Contrast, saturation and hue compute what `tf.image.adjust_contrast`,
    `adjust_saturation` and `adjust_hue` compute per image.
    """
    draws = batch_color_jitter_draws(tf.shape(images)[0], strength, seed)
    return batch_color_jitter(images, *draws)


def distorted_bounding_box_crop(image,
                                bbox,
                                min_object_covered=0.1,
                                aspect_ratio_range=(0.75, 1.33),
                                area_range=(0.05, 1.0),
                                max_attempts=100,
                                seed=None):
    """Crops a random rectangle from `image`, without resizing.

    `tf.image.stateless_sample_distorted_bounding_box` draws the rectangle. Its aspect
    ratio (width / height, in pixels) is uniform in `aspect_ratio_range`, up
    to rounding of the width to whole pixels. Its area, as a fraction of the
    image, lies in `area_range`. It covers at least `min_object_covered` of
    the area of `bbox`. If no rectangle is found in `max_attempts` tries, the
    whole image is returned.

    Args:
      image: [H, W, C] tensor.
      bbox: float tensor [1, num_boxes, 4] of boxes (ymin, xmin, ymax, xmax),
        in coordinates relative to the image size.
    """
    begin, size = _sample_box(image, bbox, min_object_covered, aspect_ratio_range,
                              area_range, max_attempts, seed)
    return tf.slice(image, begin, size)


def _sample_box(image, bbox, min_object_covered, aspect_ratio_range, area_range,
                max_attempts, seed):
    """(begin, size) of `distorted_bounding_box_crop`'s rectangle; both
    cover the channel axis too, as (0, -1)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=bbox,
        seed=_seeds(seed, 1)[0],
        min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True)
    return begin, size


def resize_box(image, top, left, box_height, box_width, height, width):
    """The box of `image` [H, W, C] with top-left corner (top, left) and
    size box_height x box_width, resized bicubically to [height, width]
    (`tf.image.resize`: Keys' cubic, a = -0.5, half-pixel centres, no
    antialiasing)."""
    box = tf.image.crop_to_bounding_box(image, top, left, box_height, box_width)
    return tf.image.resize(box, [height, width], method="bicubic")


def crop_and_resize(image, height, width, area_range=(0.08, 1.0), seed=None):
    """Takes a random resized crop, then a bicubic resize to [height, width].

    Let a = width / height be the output aspect ratio. The crop's aspect
    ratio lies in [3/4 a, 4/3 a] and its area fraction in `area_range`. It
    must also cover at least 10% of the image, so in practice the area
    fraction is at least max(0.1, area_range[0]). After 100 failed tries the
    whole image is used.
    """
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    aspect_ratio = width / height
    begin, size = _sample_box(
        image, whole_image, min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0 * aspect_ratio, 4.0 / 3.0 * aspect_ratio),
        area_range=area_range, max_attempts=100, seed=seed)
    return resize_box(image, begin[0], begin[1], size[0], size[1], height, width)


def _center_crop_size(image_height, image_width, aspect_ratio, crop_proportion):
    """Returns the size of the largest centred crop with `aspect_ratio`, shrunk.

    Let a = aspect_ratio (width / height) and p = crop_proportion. If the
    target is wider than the image (a > W / H), the width limits the crop:
    w = rint(p W) and h = rint(p W / a). Otherwise the height limits it:
    h = rint(p H) and w = rint(p H a).
    """
    image_height = tf.cast(image_height, tf.float32)
    image_width = tf.cast(image_width, tf.float32)
    width_limited = aspect_ratio > image_width / image_height
    crop_height = tf.where(width_limited,
                           crop_proportion * image_width / aspect_ratio,
                           crop_proportion * image_height)
    crop_width = tf.where(width_limited,
                          crop_proportion * image_width,
                          crop_proportion * image_height * aspect_ratio)
    crop_height = tf.maximum(tf.cast(tf.math.rint(crop_height), tf.int32), 1)
    crop_width = tf.maximum(tf.cast(tf.math.rint(crop_width), tf.int32), 1)
    return crop_height, crop_width


def center_crop(image, height, width, crop_proportion):
    """Takes a centred crop, then a bicubic resize to [height, width].

    The crop has the output's aspect ratio (width / height). Along the image
    side that limits such a crop, it keeps the fraction `crop_proportion`.
    When the margin is odd, the extra pixel goes to the top or left.

    Note: the original release passes height / width as the aspect ratio
    here. The two agree for square outputs, the only case it uses.
    """
    shape = tf.shape(image)
    image_height, image_width = shape[0], shape[1]
    crop_height, crop_width = _center_crop_size(
        image_height, image_width, width / height, crop_proportion)
    offset_height = (image_height - crop_height + 1) // 2
    offset_width = (image_width - crop_width + 1) // 2
    image = tf.image.crop_to_bounding_box(
        image, offset_height, offset_width, crop_height, crop_width)
    return tf.image.resize(image, [height, width], method="bicubic")


def random_crop_with_resize(image, height, width, p=1.0,
                            area_range=(0.08, 1.0), seed=None):
    """Applies `crop_and_resize` with probability `p`.

    When p < 1, an image that is not cropped keeps its size. It should then
    already be [height, width].
    """
    def crop(image, seed):
        return crop_and_resize(image, height, width, area_range=area_range,
                               seed=seed)

    return random_apply(crop, p=p, x=image, seed=seed)


def gaussian_blur(image, kernel_size, sigma, padding="SAME"):
    """Blurs `image` with a normalised Gaussian kernel, one channel at a time.

    Let r = kernel_size // 2 (an even size becomes 2r + 1). The 1-D kernel
    has taps at k = -r..r with weights
        g_k = exp(-k^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)).
    The image is convolved with g along the width and then along the height,
    as depthwise convolutions. With padding "SAME" the borders are
    zero-padded.

    Args:
      image: [H, W, C] or [B, H, W, C] float tensor.
      kernel_size: Python int or scalar int tensor.
      sigma: scalar; the standard deviation in pixels.
    """
    radius = tf.cast(kernel_size, tf.int32) // 2
    offsets = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    sigma = tf.cast(sigma, tf.float32)
    taps = tf.exp(-tf.square(offsets) / (2.0 * tf.square(sigma)))
    taps = taps / tf.reduce_sum(taps)

    num_channels = image.shape[-1]
    if num_channels is None:
        num_channels = tf.shape(image)[-1]
    # Depthwise filters are [rows, cols, channels, multiplier].
    horizontal = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, num_channels, 1])
    vertical = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, num_channels, 1])

    unbatched = image.shape.rank == 3
    if unbatched:
        image = image[tf.newaxis]
    strides = [1, 1, 1, 1]
    blurred = tf.nn.depthwise_conv2d(image, horizontal, strides, padding)
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, strides, padding)
    if unbatched:
        blurred = blurred[0]
    return blurred


def _blur_kernel_size(height):
    """Kernel size for an image of `height`: 2r + 1 with r = (height // 10) // 2.

    This is 23 for 224-pixel images and 1 (no blur) below 20 pixels; the
    in-step augmentation's own rule (`augment.blur_kernel_size`).
    """
    return augment.blur_kernel_size(height)


def random_blur(image, height, width, p=1.0, seed=None):
    """Blurs with probability `p`, using a random sigma ~ U(0.1, 2.0).

    The kernel size is set from `height` alone (see `_blur_kernel_size`), as
    in the original. `width` is accepted for symmetry and not used.
    """
    del width

    def _blur(image, seed):
        sigma = _uniform(seed, 0.1, 2.0)
        return gaussian_blur(image, _blur_kernel_size(height), sigma)

    return random_apply(_blur, p=p, x=image, seed=seed)


def batch_random_blur(images_list, height, width, blur_probability=0.5,
                      seed=None):
    """Blurs each batch in `images_list` with one random sigma per batch.

    For every [b, H, W, C] batch, sigma ~ U(0.1, 2.0) is drawn once and the
    whole batch is blurred with it. Each example then keeps its blurred
    version with probability `blur_probability`, independently. The results
    are clipped to [0, 1].

    Returns:
      A list of batches, in the order of `images_list`.
    """
    blurred_list = []
    for images, batch_seed in zip(images_list, _seeds(seed, len(images_list))):
        sigma, keep = batch_blur_draws(tf.shape(images)[0], batch_seed, blur_probability)
        blurred_list.append(blend_blur(images, sigma, keep, height))
    return blurred_list


def batch_blur_draws(batch_size, seed, blur_probability=0.5):
    """(sigma ~ U(0.1, 2.0), keep [b] bool with probability
    `blur_probability`): the draws of one batch in `batch_random_blur`."""
    sigma_seed, keep_seed = _seeds(seed, 2)
    # The seed random_blur(p=1) draws sigma with: the same views as ever
    # for a seed.
    sigma = _uniform(_seeds(sigma_seed, 2)[1], 0.1, 2.0)
    return sigma, _uniform(keep_seed, shape=[batch_size]) < blur_probability


def blend_blur(images, sigma, keep, height):
    """`images` [b, H, W, C] blurred with `sigma` (`gaussian_blur`, kernel
    size of `height`) where `keep` [b] holds, as they are elsewhere; clipped
    to [0, 1]."""
    blurred = gaussian_blur(images, _blur_kernel_size(height), sigma)
    keep = tf.cast(_per_example(keep), images.dtype)
    return tf.clip_by_value(keep * blurred + (1.0 - keep) * images, 0.0, 1.0)


def preprocess_for_train(image,
                         height,
                         width,
                         crop=True,
                         flip=True,
                         area_range=(0.08, 1.0),
                         seed=None):
    """Makes the per-example part of a training view of `image`, a float
    [H, W, 3] tensor in [0, 1] (steps 1-2 of the module docstring).

    The steps are a random resized crop (if `crop`) and a horizontal flip
    with probability 1/2 (if `flip`). The result is clipped to [0, 1].
    Without `crop`, the image must already be [height, width].

    Returns:
      A [height, width, 3] float32 tensor.
    """
    crop_seed, flip_seed = _seeds(seed, 2)
    if crop:
        image = random_crop_with_resize(image, height, width,
                                        area_range=area_range, seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.reshape(image, [height, width, 3])
    return tf.clip_by_value(image, 0.0, 1.0)


def preprocess_for_eval(image, height, width, crop=True):
    """Makes the evaluation view of `image`, a float [H, W, 3] in [0, 1].

    With `crop`, this is a centre crop keeping `CROP_PROPORTION` (87.5%) of
    the limiting side, resized to [height, width]. Without it, this is a
    bicubic resize of the whole image. The result is clipped to [0, 1].
    """
    if crop:
        image = center_crop(image, height, width,
                            crop_proportion=CROP_PROPORTION)
    else:
        image = tf.image.resize(image, [height, width], method="bicubic")
    image = tf.reshape(image, [height, width, 3])
    return tf.clip_by_value(image, 0.0, 1.0)


def fixed_size_uint8(image, size):
    """`image` (any dtype, 1 or 3 channels) as uint8 [H, W, 3] with (H, W)
    = `size` (an int: square): as it is when it has that size, else resized
    whole (bicubic) and rounded. The images `--augment_in_step` crops in
    the training step."""
    height, width = (size, size) if isinstance(size, int) else size
    image = _ensure_rgb(image)
    if image.shape[:2] == (height, width):
        return tf.ensure_shape(tf.image.convert_image_dtype(image, tf.uint8, saturate=True),
                               [height, width, 3])
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, [height, width], method="bicubic")
    image = tf.image.convert_image_dtype(tf.clip_by_value(image, 0.0, 1.0), tf.uint8,
                                         saturate=True)
    return tf.ensure_shape(image, [height, width, 3])


def _ensure_rgb(image):
    """Copies a single-channel [H, W, 1] image to three channels."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels is None:
        return tf.cond(tf.equal(tf.shape(image)[-1], 1),
                       lambda: tf.tile(image, [1, 1, 3]),
                       lambda: image)
    return image


def preprocess_image(image,
                     height,
                     width,
                     is_training=False,
                     test_crop=True,
                     area_range=(0.08, 1.0),
                     flip=True,
                     seed=None):
    """Converts an image to float32 in [0, 1] and makes a train or eval view.

    Integer images are scaled to [0, 1] (uint8: x / 255). Float images are
    taken to be in [0, 1] already. A single-channel image is copied to three
    channels first.

    Returns:
      A [height, width, 3] float32 tensor. It comes from
      `preprocess_for_train` when `is_training` is set, and from
      `preprocess_for_eval` (centre crop if `test_crop`) otherwise.
    """
    image = tf.image.convert_image_dtype(image, dtype=tf.float32)
    image = _ensure_rgb(image)
    if is_training:
        return preprocess_for_train(
            image, height, width, area_range=area_range, flip=flip, seed=seed)
    return preprocess_for_eval(image, height, width, crop=test_crop)
