"""SimCLR's training augmentation inside the compiled training step.

With `--augment_in_step` the input pipeline (`data.py`) delivers each
training example as its decoded image, uint8 [H, W, 3] (`data.py`), and
the uniform random numbers its views need, `draws` float32 [V, DRAWS]
(drawn on the host from the example's stateless seed); `augment_views`
turns a batch of them into the views the host pipeline would make, with
the same channel layout and the same law, in `keras.ops` only, so that each
backend compiles the augmentation into its step (the jitted JAX program,
the TensorFlow step on the strategy's devices) and the host only decodes.

A view is made as `data_util` makes it on the host (Chen et al. 2020,
"A Simple Framework for Contrastive Learning of Visual Representations",
appendix A):

1. a random resized crop (`crop_boxes`, the law of
   `tf.image.sample_distorted_bounding_box` as `data_util.crop_and_resize`
   calls it: aspect ratio in [3/4, 4/3], area fraction in `area_range` and at
   least 0.1), resized bicubically (`resize_boxes`, as `tf.image.resize`);
2. a horizontal flip with probability 1/2;
3. colour jitter with probability 0.8 (brightness, contrast, saturation,
   hue in a random order) and grayscale with probability 0.2
   (`color_jitter`, as `data_util.batch_color_jitter`);
4. a Gaussian blur with one sigma ~ U(0.1, 2) per batch, kept for each
   example with probability 1/2 (`blend_blur`, as `data_util.blend_blur`).

Each op takes its parameters explicitly, so the tests compare it with its
host counterpart on the same parameters, and the parameters' laws (the maps
from `draws`) with the host's draws. The crop makes `CROP_ATTEMPTS` tries
where TensorFlow makes 100: a try fails with probability about 0.1 at the
default `--crop_min_area`, so all of them fail about once in 10^10 views
(the whole image is then used, as on the host). The images are the
dataset's own when they all share one size, so the views are the host's;
images of varying sizes are resized whole to the training size on the host
first (`data_util.fixed_size_uint8`), and the crop is taken from that.

Everything here is float32 and elementwise, gathers and reductions: no
matrix product or convolution, whose float32 may run in TF32 on GPUs.
"""
import numpy as np
from keras import ops

# Tries of the crop sampler before it falls back to the whole image.
CROP_ATTEMPTS = 10
# The uniform draws of one view: (name, count), in their order in `draws`.
DRAW_LAYOUT = (
    ("crop_aspect", CROP_ATTEMPTS), ("crop_height", CROP_ATTEMPTS),
    ("crop_top", 1), ("crop_left", 1), ("flip", 1),
    ("jitter_factors", 4), ("jitter_order", 4), ("jitter", 1), ("grayscale", 1),
    ("blur_sigma", 1), ("blur", 1))
DRAWS = sum(count for _, count in DRAW_LAYOUT)
# ITU-R BT.601 luma weights, those of tf.image.rgb_to_grayscale.
LUMA = (0.2989, 0.5870, 0.1140)
# Keys' cubic convolution kernel parameter of tf.image.resize's bicubic.
KEYS_A = -0.5
# TensorFlow's bicubic reads the kernel from a table of this many steps
# per pixel; the position is rounded the same way, so the pixels agree.
KERNEL_TABLE_STEPS = 1024
# Smallest area fraction of the image the crop covers (the host passes
# min_object_covered=0.1 for the whole image).
MIN_OBJECT_COVERED = 0.1


def draw_slices():
    """{name: slice of the draws of one view} of `DRAW_LAYOUT`."""
    slices, start = {}, 0
    for name, count in DRAW_LAYOUT:
        slices[name] = slice(start, start + count)
        start += count
    return slices


_SLICES = draw_slices()


def _take(draws, name):
    """The draws [b, count] of `name` from the draws [b, DRAWS] of a view."""
    return draws[:, _SLICES[name]]


def _f32(value):
    return np.float32(value)


# ---------------------------------------------------------------------------
# 1. Random resized crop.
# ---------------------------------------------------------------------------
def crop_boxes(aspect, height, top, left, image_height, image_width,
               area_range=(0.08, 1.0)):
    """(top, left, box height, box width), int32 [b] each, of random crops
    of an image_height x image_width image: the rectangle that
    `tf.image.sample_distorted_bounding_box` draws for
    `data_util.crop_and_resize` (square output), from uniforms in [0, 1).

    With H x W the image and A = `area_range` x H W, try k of
    `CROP_ATTEMPTS` (uniforms `aspect[:, k]`, `height[:, k]`): the aspect
    ratio (width / height) is a ~ U[3/4, 4/3]; the height is uniform among
    the whole numbers h in [rint(sqrt(A_min / a)), h_max], h_max =
    min(rint(sqrt(A_max / a)), H) lowered until rint(h_max a) <= W; the
    width is w = rint(h a), and h moves by one when h w leaves [A_min,
    A_max]. A try succeeds when h w is in [A_min, A_max], the box fits, and
    it covers at least `MIN_OBJECT_COVERED` of the image; the first success
    is kept, the whole image when none succeeds. Its corner is uniform:
    top = floor(u (H - h)), left = floor(u' (W - w)), as TensorFlow's
    integer draws in [0, H - h).

    The arithmetic is float32, in TensorFlow's order (rint rounds half to
    even, as lrintf).
    """
    rows, cols = _f32(image_height), _f32(image_width)
    min_area = _f32(area_range[0]) * cols * rows
    max_area = _f32(area_range[1]) * cols * rows
    low, high = _f32(3.0 / 4.0), _f32(4.0 / 3.0)
    aspect = ops.cast(aspect, "float32") * (high - low) + low
    height_draw = ops.cast(height, "float32")
    h = ops.round(ops.sqrt(min_area / aspect))
    h_max = ops.round(ops.sqrt(max_area / aspect))
    # The largest h_max with rint(h_max a) <= W, as TensorFlow finds it.
    fitted = ops.floor((cols + _f32(0.5) - _f32(1e-7)) / aspect)
    fitted = ops.where(ops.round(fitted * aspect) > cols, fitted - 1.0, fitted)
    h_max = ops.where(ops.round(h_max * aspect) > cols, fitted, h_max)
    h_max = ops.minimum(h_max, rows)
    h = ops.minimum(h, h_max)
    h = h + ops.floor(height_draw * (h_max - h + 1.0))
    w = ops.round(h * aspect)
    h = ops.where(w * h < min_area, h + 1.0, h)
    w = ops.round(h * aspect)
    h = ops.where(w * h > max_area, h - 1.0, h)
    w = ops.round(h * aspect)
    area = w * h
    valid = ((area >= min_area) & (area <= max_area) & (w <= cols) & (h <= rows)
             & (w > 0) & (h > 0) & (area / (rows * cols) >= _f32(MIN_OBJECT_COVERED)))
    # The first success: the one try that succeeds with none before it.
    first = valid & (ops.cumsum(ops.cast(valid, "int32"), axis=1) == 1)
    found = ops.any(valid, axis=1)
    h = ops.where(found, ops.sum(ops.where(first, h, 0.0), axis=1), rows)
    w = ops.where(found, ops.sum(ops.where(first, w, 0.0), axis=1), cols)
    top = ops.floor(ops.cast(top, "float32") * (rows - h))
    left = ops.floor(ops.cast(left, "float32") * (cols - w))
    return tuple(ops.cast(v, "int32") for v in (top, left, h, w))


def _keys_cubic(x):
    """Keys' cubic kernel (a = `KEYS_A`) at |x| = x for x in [0, 1] and at
    x + 1 for the outer taps, as TensorFlow's table holds them:
    ((x, 1 + x) weights)."""
    a = _f32(KEYS_A)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    y = x + 1.0
    outer = ((a * y - 5.0 * a) * y + 8.0 * a) * y - 4.0 * a
    return inner, outer


def _bicubic_taps(start, length, size):
    """(source indices int32 [b, size, 4], weights float32 [b, size, 4]) of
    the bicubic resize of the segment [start, start + length) of an image
    axis to `size` samples, as TensorFlow's `resize_bicubic` with half-pixel
    centres: output o reads the segment at p = (o + 1/2) length / size - 1/2,
    its taps are floor(p) - 1 .. floor(p) + 2 weighted by Keys' kernel at
    the table-rounded fraction, taps outside the segment get weight 0 and
    the others are rescaled to sum to 1."""
    length = ops.cast(ops.expand_dims(length, 1), "float32")
    scale = length / _f32(size)
    position = (ops.cast(ops.arange(size), "float32")[None, :] + 0.5) * scale - 0.5
    base = ops.floor(position)
    steps = _f32(KERNEL_TABLE_STEPS)
    fraction = ops.round((position - base) * steps)
    near_inner, near_outer = _keys_cubic(fraction / steps)
    far_inner, far_outer = _keys_cubic((steps - fraction) / steps)
    weights = ops.stack([near_outer, near_inner, far_inner, far_outer], axis=-1)
    local = ops.expand_dims(base, -1) + ops.cast(ops.arange(-1, 3), "float32")
    inside = (local >= 0.0) & (local <= ops.expand_dims(length, -1) - 1.0)
    weights = ops.where(inside, weights, 0.0)
    weights = weights / ops.sum(weights, axis=-1, keepdims=True)
    local = ops.clip(local, 0.0, ops.expand_dims(length, -1) - 1.0)
    indices = ops.cast(local, "int32") + ops.reshape(ops.cast(start, "int32"), (-1, 1, 1))
    return indices, weights


def resize_boxes(images, top, left, box_height, box_width, size):
    """Each image of `images` [b, H, W, C] cropped to its box (corner (top,
    left), box_height x box_width, int32 [b] each) and resized bicubically
    to [size, size]: per example `data_util.resize_box`, as separable
    4-tap gathers (rows, then columns)."""
    row_index, row_weight = _bicubic_taps(top, box_height, size)
    col_index, col_weight = _bicubic_taps(left, box_width, size)
    rows = 0.0
    for k in range(4):
        picked = ops.take_along_axis(images, row_index[:, :, k, None, None], axis=1)
        rows = rows + row_weight[:, :, k, None, None] * picked
    out = 0.0
    for k in range(4):
        picked = ops.take_along_axis(rows, col_index[:, None, :, k, None], axis=2)
        out = out + col_weight[:, None, :, k, None] * picked
    return out


def flip_left_right(images, flip):
    """`images` [b, H, W, C] mirrored left-right where `flip` [b] holds."""
    return ops.where(flip[:, None, None, None], ops.flip(images, axis=2), images)


# ---------------------------------------------------------------------------
# 3. Colour distortion.
# ---------------------------------------------------------------------------
def color_jitter_params(draws, strength):
    """(factors {brightness, contrast, saturation, hue} [b] each, order
    int32 [b, 4], jitter bool [b], grayscale bool [b]) of uniforms: the law
    of `data_util.batch_color_jitter_draws` at strength s — factors
    U[max(0, 1 - 0.8 s), 1 + 0.8 s], hue shift U[-0.2 s, 0.2 s], the
    order the argsort of four uniforms, jitter with probability 0.8,
    grayscale with 0.2."""
    delta = 0.8 * strength
    lower = max(1.0 - delta, 0.0)
    factors = ops.cast(_take(draws, "jitter_factors"), "float32")
    scaled = factors * _f32(1.0 + delta - lower) + _f32(lower)
    hue = factors[:, 3] * _f32(0.4 * strength) + _f32(-0.2 * strength)
    return ({"brightness": scaled[:, 0], "contrast": scaled[:, 1],
             "saturation": scaled[:, 2], "hue": hue},
            ops.cast(ops.argsort(_take(draws, "jitter_order"), axis=1), "int32"),
            _take(draws, "jitter")[:, 0] < 0.8,
            _take(draws, "grayscale")[:, 0] < 0.2)


def _per_example(values):
    return ops.reshape(values, (-1, 1, 1, 1))


def to_grayscale(images):
    """Luma Y = 0.2989 R + 0.5870 G + 0.1140 B copied to three channels."""
    luma = ops.sum(images * ops.convert_to_tensor(np.array(LUMA, "float32")), axis=-1,
                   keepdims=True)
    return ops.concatenate([luma] * 3, axis=-1)


def _adjust_hsv(images, saturation=None, hue=None):
    """HSV saturation scaled by [b] factors (clipped to [0, 1]) or hue
    rotated by [b] turns, as `tf.image.adjust_saturation` / `adjust_hue`."""
    hsv = ops.image.rgb_to_hsv(images)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    if saturation is not None:
        s = ops.clip(s * ops.reshape(saturation, (-1, 1, 1)), 0.0, 1.0)
    if hue is not None:
        h = ops.mod(h + ops.reshape(hue, (-1, 1, 1)), 1.0)
    return ops.image.hsv_to_rgb(ops.stack([h, s, v], axis=-1))


def color_jitter(images, factors, order, jitter, grayscale):
    """`data_util.batch_color_jitter` of `images` [b, H, W, 3] for given
    parameters (`color_jitter_params`): per example, brightness (y = f x),
    contrast (m + f (x - m), m the channel means), saturation and hue in
    its order, each clipped to [0, 1], where `jitter`; then grayscale where
    `grayscale`. At each position all four ops run on the batch and each
    example keeps its own."""
    jittered = images
    for position in range(4):
        mean = ops.mean(jittered, axis=(1, 2), keepdims=True)
        candidates = ops.stack([
            jittered * _per_example(factors["brightness"]),
            mean + _per_example(factors["contrast"]) * (jittered - mean),
            _adjust_hsv(jittered, saturation=factors["saturation"]),
            _adjust_hsv(jittered, hue=factors["hue"])], axis=1)
        candidates = ops.clip(candidates, 0.0, 1.0)
        chosen = ops.reshape(order[:, position], (-1, 1, 1, 1, 1))
        jittered = ops.take_along_axis(candidates, chosen, axis=1)[:, 0]
    images = ops.where(_per_example(jitter), jittered, images)
    return ops.where(_per_example(grayscale), to_grayscale(images), images)


# ---------------------------------------------------------------------------
# 4. Blur.
# ---------------------------------------------------------------------------
def blur_kernel_size(size):
    """2r + 1 with r = (size // 10) // 2, the original's rule, which the
    host's blur (`data_util`) uses too: 23 at 224 pixels, 3 at 32, 1 (no
    blur) below 20."""
    return 2 * ((size // 10) // 2) + 1


def gaussian_blur(images, sigma, kernel_size):
    """`images` [b, H, W, C] convolved with the normalised Gaussian
    g_k = exp(-k^2 / 2 sigma^2) / sum_j exp(-j^2 / 2 sigma^2), k = -r..r, along
    the width and then the height, zero-padded ('SAME'), as
    `data_util.gaussian_blur`; written as 2r + 1 shifted sums per axis."""
    radius = kernel_size // 2
    offsets = ops.cast(ops.arange(-radius, radius + 1), "float32")
    taps = ops.exp(-ops.square(offsets) / (2.0 * ops.square(ops.cast(sigma, "float32"))))
    taps = taps / ops.sum(taps)
    for axis in (2, 1):
        padding = [(0, 0)] * 4
        padding[axis] = (radius, radius)
        padded = ops.pad(images, padding)
        length = images.shape[axis]
        total = 0.0
        for k in range(2 * radius + 1):
            window = padded[:, k:k + length] if axis == 1 else padded[:, :, k:k + length]
            total = total + taps[k] * window
        images = total
    return images


def blend_blur(images, sigma, keep, size):
    """`data_util.blend_blur`: `images` blurred with `sigma` where `keep`
    [b] holds, as they are elsewhere, clipped to [0, 1]."""
    blurred = gaussian_blur(images, sigma, blur_kernel_size(size))
    keep = ops.cast(_per_example(keep), "float32")
    return ops.clip(keep * blurred + (1.0 - keep) * images, 0.0, 1.0)


# ---------------------------------------------------------------------------
# The views of a batch.
# ---------------------------------------------------------------------------
def augment_view(images, draws, *, size, area_range=(0.08, 1.0), flip=True,
                 color_jitter_strength=1.0, blur=True):
    """One augmented view float32 [b, size, size, 3] in [0, 1] of `images`
    float32 [b, H, W, 3] in [0, 1], from the view's `draws` [b, DRAWS]:
    crop and resize, flip (if `flip`), clip; colour distortion when the
    strength is above 0; blur (if `blur`) with the sigma of the batch's
    first example."""
    boxes = crop_boxes(_take(draws, "crop_aspect"), _take(draws, "crop_height"),
                       _take(draws, "crop_top")[:, 0], _take(draws, "crop_left")[:, 0],
                       images.shape[1], images.shape[2], area_range)
    view = resize_boxes(images, *boxes, size)
    if flip:
        view = flip_left_right(view, _take(draws, "flip")[:, 0] < 0.5)
    view = ops.clip(view, 0.0, 1.0)
    if color_jitter_strength > 0:
        view = color_jitter(view, *color_jitter_params(draws, color_jitter_strength))
    if blur:
        sigma = _take(draws, "blur_sigma")[0, 0] * _f32(1.9) + _f32(0.1)
        view = blend_blur(view, sigma, _take(draws, "blur")[:, 0] < 0.5, size)
    return view


def augment_views(inputs, *, views, size, area_range=(0.08, 1.0), flip=True,
                  color_jitter_strength=1.0, blur=True):
    """The training batch float32 [b, size, size, c · (views + clean)] that
    the host pipeline would deliver, from the in-step inputs:

        images  uint8 [b, H, W, 3]   the decoded images (any fixed size),
        draws   float32 [b, views, DRAWS]   uniforms in [0, 1),
        bits    float32 [b, K]   (with K RandBits planes) their bits,
        clean   float32 [b, size, size, 3]   (with the probe's clean view)
                its evaluation view, made on the host.

    View v is `augment_view` of the images with draws[:, v], followed by the
    K constant bit planes (c = 3 + K); the clean view, with its planes,
    comes last. Nothing here is differentiated: the inputs are data.
    """
    images = ops.cast(inputs["images"], "float32") * _f32(1.0 / 255.0)
    bits = inputs.get("bits")
    planes = None
    if bits is not None and bits.shape[-1]:
        planes = ops.broadcast_to(ops.cast(bits, "float32")[:, None, None, :],
                                  (ops.shape(images)[0], size, size, bits.shape[-1]))
    parts = []
    for v in range(views):
        parts.append(augment_view(images, inputs["draws"][:, v], size=size,
                                  area_range=area_range, flip=flip,
                                  color_jitter_strength=color_jitter_strength, blur=blur))
        if planes is not None:
            parts.append(planes)
    if "clean" in inputs:
        parts.append(ops.cast(inputs["clean"], "float32"))
        if planes is not None:
            parts.append(planes)
    return ops.concatenate(parts, axis=-1)
