"""Tests for resnet.py: sizes, parameter counts, layer maths and freezing.

Reference values come from outside the implementation: torchvision's published
parameter counts, an independent per-layer parameter formula, and numpy
re-implementations of the layers (loops and einsum).
"""
import keras
import numpy as np
import pytest

import initializers
import resnet as resnet_lib
from backend import deep
from backend import tensorflow_only
from backend import value_and_grad
from backend import variable_gradients
from resnet import resnet

EPS = 1e-5


def num_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def built(depth, *, input_shape=(None, None, None, 3), **kwargs):
    model = resnet(depth, **kwargs)
    model.build(input_shape)
    return model


# --------------------------------------------------------------------------
# Independent parameter-count formula.
# --------------------------------------------------------------------------
# (bottleneck, blocks per group) as published: He et al. 2016, "Deep Residual
# Learning for Image Recognition", Table 1 (18 to 152 layers), and He et al.
# 2016, "Identity Mappings in Deep Residual Networks" (200 layers:
# 3, 24, 36, 3 bottlenecks). Depths 18 to 152 are anchored below to
# torchvision's published parameter counts; 200, which torchvision does not
# publish, to this table alone.
BLOCKS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
}


def expected_trainable_params(depth, width=1.0, cifar_stem=False, sk_ratio=0.0,
                              se_ratio=0.0):
    """Counts conv kernels (k*k*cin*cout), BN gamma+beta (2c) and SE biases."""
    bottleneck, blocks = BLOCKS[depth]

    def ch(c):
        return max(1, int(round(c * width)))

    def conv(k, cin, cout):
        return k * k * cin * cout

    def bn(c):
        return 2 * c

    if cifar_stem:
        total = conv(3, 3, ch(64)) + bn(ch(64))
    elif sk_ratio > 0:  # ResNet-D deep stem.
        total = (conv(3, 3, ch(32)) + bn(ch(32)) + conv(3, ch(32), ch(32))
                 + bn(ch(32)) + conv(3, ch(32), ch(64)) + bn(ch(64)))
    else:
        total = conv(7, 3, ch(64)) + bn(ch(64))

    cin = ch(64)
    for base, n in zip((64, 128, 256, 512), blocks):
        f = ch(base)
        out = 4 * f if bottleneck else f
        for b in range(n):
            if bottleneck:
                total += conv(1, cin, f) + bn(f)
                if sk_ratio > 0:
                    mid = max(int(f * sk_ratio), 32)
                    # The descriptor is the mean of the two streams' sum: f wide.
                    total += (conv(3, f, 2 * f) + bn(2 * f) + conv(1, f, mid)
                              + bn(mid) + conv(1, mid, 2 * f))
                else:
                    total += conv(3, f, f) + bn(f)
                total += conv(1, f, out) + bn(out)
            else:
                total += conv(3, cin, f) + bn(f) + conv(3, f, f) + bn(f)
            if se_ratio > 0:
                s = max(1, int(f * se_ratio))
                total += (out * s + s) + (s * out + out)
            if b == 0:  # The original projects in every group's first block.
                total += conv(1, cin, out) + bn(out)
            cin = out
    return total


# torchvision's published trainable-parameter counts of its ImageNet ResNets
# (with their 1000-way fc layer).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032,
                      101: 44_549_160, 152: 60_192_808}


def torchvision_encoder_params(depth):
    """The published count without the fc layer (512 or 2048 inputs x 1000
    + 1000 biases), plus, for the basic-block nets, the 1x1 projection
    (64 -> 64) and its BN of group 1's first block, which the original has
    and torchvision does not (a bottleneck's group 1 projects 64 -> 256 in
    both)."""
    bottleneck, _ = BLOCKS[depth]
    fc = (2048 if bottleneck else 512) * 1000 + 1000
    group1_projection = 0 if bottleneck else 64 * 64 + 2 * 64
    return TORCHVISION_PARAMS[depth] - fc + group1_projection


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_the_formula_gives_torchvisions_published_counts(depth):
    assert expected_trainable_params(depth) == torchvision_encoder_params(depth)


@pytest.mark.parametrize("depth", [18, deep(34), deep(50), deep(101), deep(152)])
def test_trainable_parameters_match_torchvision(depth):
    model = built(depth)
    assert num_params(model.trainable_variables) == torchvision_encoder_params(depth)
    # Keras keeps BN moving mean/variance as non-trainable: as many as gamma+beta.
    bn_affine = [v for v in model.trainable_variables
                 if v.path.endswith(("/gamma", "/beta"))]
    assert num_params(model.non_trainable_variables) == num_params(bn_affine)


@pytest.mark.parametrize("depth", [deep(200)])
def test_resnet200_has_the_parameters_of_its_published_blocks(depth):
    assert num_params(built(depth).trainable_variables) == expected_trainable_params(depth)


@pytest.mark.parametrize("depth, kwargs", [
    (18, dict(width=0.125, cifar_stem=True)),
    (18, dict(width=0.125, se_ratio=0.25)),
    (18, dict(width=0.125, sk_ratio=0.0625)),
    deep(34, dict(width=0.3)),
    deep(50, dict(width=0.125)),
    (50, dict(width=0.125, sk_ratio=0.0625)),
    deep(50, dict(width=0.125, se_ratio=0.25)),
    deep(50, dict(width=0.3, sk_ratio=0.0625, se_ratio=0.25)),
    deep(50, dict(width=0.125, sk_ratio=0.0625, cifar_stem=True)),
    deep(101, dict(width=0.0625)),
    deep(152, dict(width=0.0625)),
    deep(200, dict(width=0.0625, sk_ratio=0.0625, se_ratio=0.0625)),
])
def test_parameter_counts_follow_the_formula(depth, kwargs):
    width = kwargs.pop("width")
    model = built(depth, width_multiplier=width, **kwargs)
    assert num_params(model.trainable_variables) == expected_trainable_params(
        depth, width, **kwargs)


def test_se_adds_the_hand_computed_parameters():
    # ResNet-18 at width 1/8: F = 8, 16, 32, 64, two blocks per group. With
    # se_ratio 1/4 each block gets F*s + s + s*F + F weights, s = F/4.
    plain = built(18, width_multiplier=0.125, cifar_stem=True)
    with_se = built(18, width_multiplier=0.125, cifar_stem=True, se_ratio=0.25)
    # F = 8: 8*2 + 2 + 2*8 + 8 = 42; F = 16: 148; F = 32: 552; F = 64: 2128.
    delta = 2 * (42 + 148 + 552 + 2128)
    assert delta == 2 * sum(2 * f * (f // 4) + f // 4 + f
                            for f in (8, 16, 32, 64))
    assert (num_params(with_se.trainable_variables)
            - num_params(plain.trainable_variables)) == delta


def test_sk_changes_the_parameters_as_computed_by_hand():
    # ResNet-50 at width 1/16, CIFAR stem (so the stem is unchanged): F = 4, 8,
    # 16, 32 with 3, 4, 6, 3 blocks. SK replaces a 3x3 F->F conv + BN by a
    # 3x3 F->2F conv + BN(2F), a 1x1 F->32 conv + BN(32) and a 1x1 32->2F
    # conv (the descriptor is pooled from the sum of the two F-wide streams;
    # 32 = max(int(F / 16), 32)). The ResNet-D projection only adds pooling.
    plain = built(50, width_multiplier=0.0625, cifar_stem=True)
    with_sk = built(50, width_multiplier=0.0625, cifar_stem=True,
                    sk_ratio=0.0625)
    delta = sum(
        n * ((9 * f * 2 * f + 4 * f + f * 32 + 64 + 32 * 2 * f)
             - (9 * f * f + 2 * f))
        for f, n in zip((4, 8, 16, 32), (3, 4, 6, 3)))
    assert (num_params(with_sk.trainable_variables)
            - num_params(plain.trainable_variables)) == delta


# --------------------------------------------------------------------------
# Shapes.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("depth, kwargs, size, stem, groups, channels", [
    # CIFAR stem, 32x32: no downsampling before block group 1.
    (18, dict(width_multiplier=0.125, cifar_stem=True), 32,
     (32, 32), (32, 16, 8, 4), (8, 8, 16, 32, 64)),
    # ImageNet stem, 64x64: /2 conv, /2 max-pool.
    (50, dict(width_multiplier=0.0625), 64,
     (32, 16), (16, 8, 4, 2), (4, 16, 32, 64, 128)),
    # Fractional width, odd size: ceil halving everywhere.
    deep(34, dict(width_multiplier=0.3), 33,
         (17, 9), (9, 5, 3, 2), (19, 19, 38, 77, 154)),
    # SK: deep stem of 3x3 convs (64w channels at initial_conv).
    deep(50, dict(width_multiplier=0.125, sk_ratio=0.0625, se_ratio=0.25), 33,
         (17, 9), (9, 5, 3, 2), (8, 32, 64, 128, 256)),
    (18, dict(width_multiplier=0.125, cifar_stem=True, sk_ratio=0.0625,
              se_ratio=0.25), 15,
     (15, 15), (15, 8, 4, 2), (8, 8, 16, 32, 64)),
])
def test_endpoint_shapes(depth, kwargs, size, stem, groups, channels):
    model = resnet(depth, **kwargs)
    images = np.random.default_rng(0).uniform(size=(2, size, size, 3))
    h, endpoints = model(images.astype("float32"), training=True,
                         return_endpoints=True)
    # The original's endpoint names, from the stem to the pooled output.
    assert list(endpoints) == [
        "initial_conv", "initial_max_pool", "block_group1", "block_group2",
        "block_group3", "block_group4", "final_avg_pool"]
    expected = {
        "initial_conv": (2, stem[0], stem[0], channels[0]),
        "initial_max_pool": (2, stem[1], stem[1], channels[0]),
    }
    for i in range(4):
        expected[f"block_group{i + 1}"] = (2, groups[i], groups[i],
                                           channels[i + 1])
    expected["final_avg_pool"] = (2, channels[4])
    assert {k: tuple(v.shape) for k, v in endpoints.items()} == expected
    assert model.output_dim == channels[4]
    np.testing.assert_allclose(
        h, np.mean(keras.ops.convert_to_numpy(endpoints["block_group4"]),
                   axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(h)))


@pytest.mark.parametrize("depth, width, output_dim", [
    (18, 1.0, 512), deep(34, 2.0, 1024), deep(50, 1.0, 2048), deep(101, 0.5, 1024),
    deep(152, 0.1, 4 * 51), (200, 0.01, 4 * 5), (18, 0.001, 1)])
def test_output_dim(depth, width, output_dim):
    assert resnet(depth, width_multiplier=width).output_dim == output_dim


# --------------------------------------------------------------------------
# Layer maths against numpy.
# --------------------------------------------------------------------------
def np_conv(x, kernel, stride, pad_before, pad_after):
    x = np.pad(x, [(0, 0), (pad_before, pad_after), (pad_before, pad_after),
                   (0, 0)])
    k = kernel.shape[0]
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out


def np_batch_norm_inference(x, layer):
    g, b, m, v = (keras.ops.convert_to_numpy(w) for w in (
        layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance))
    return (x - m) / np.sqrt(v + EPS) * g + b


def randomize_batch_norms(model, rng):
    for v in model.variables:
        name = v.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif name in ("beta", "moving_mean"):
            v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))


@pytest.mark.parametrize("size", [16, 15])
def test_strided_stem_conv_uses_fixed_symmetric_padding(size):
    # A 7x7 stride-2 conv pads 3 on both sides; TF's SAME would pad (2, 3)
    # for even sizes.
    model = resnet(18, width_multiplier=0.125)
    x = np.random.default_rng(1).normal(size=(2, size, size, 3))
    _, endpoints = model(x.astype("float32"), return_endpoints=True)
    kernel = keras.ops.convert_to_numpy(model.stem.convs[0].kernel)
    assert kernel.shape == (7, 7, 3, 8)
    np.testing.assert_allclose(endpoints["initial_conv"],
                               np_conv(x, kernel, 2, 3, 3),
                               rtol=1e-4, atol=1e-4)


def test_initializers():
    model = built(50, width_multiplier=0.5)
    kernels = [v for v in model.trainable_variables if v.path.endswith("/kernel")]
    kernel = max(kernels, key=lambda v: int(np.prod(v.shape)))
    k = keras.ops.convert_to_numpy(kernel)
    fan_in = np.prod(k.shape[:-1])
    # Truncated normal at 2 stddevs with var 1/fan_in: the keras VarianceScaling
    # rescales so the truncated distribution has the target variance.
    np.testing.assert_allclose(k.std(), 1 / np.sqrt(fan_in), rtol=0.05)
    assert np.abs(k).max() <= 2 * 1 / np.sqrt(fan_in) / 0.87962566103423978 + 1e-6
    for v in model.variables:
        # Every BN is named so the LARS exclusion can find it; convs have
        # no bias.
        assert not v.path.endswith("/bias")
        if v.path.endswith(("/gamma", "/beta", "/moving_mean",
                            "/moving_variance")):
            assert "batch_normalization" in v.path, v.path
        else:
            assert v.path.endswith("/kernel"), v.path
    assert all(layer.epsilon == EPS and layer.momentum == pytest.approx(0.9)
               for layer in model._flatten_layers()
               if isinstance(layer, keras.layers.BatchNormalization))


def test_initial_weights_follow_the_seed():
    """keras.utils.set_random_seed fixes the numpy-drawn initial weights."""
    def kernels(seed):
        keras.utils.set_random_seed(seed)
        model = built(18, width_multiplier=0.125)
        return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables
                if v.path.endswith("/kernel")]
    first, again, other = kernels(3), kernels(3), kernels(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))


def test_normal_initializer_has_its_stddev():
    keras.utils.set_random_seed(0)
    values = keras.ops.convert_to_numpy(initializers.Normal(stddev=0.01)((400, 300)))
    assert values.dtype == np.float32
    assert abs(values.mean()) < 3 * 0.01 / np.sqrt(values.size)
    np.testing.assert_allclose(values.std(), 0.01, rtol=0.01)


def test_batch_norm_decay_and_global_bn_are_passed_on():
    model = resnet(18, width_multiplier=0.125, batch_norm_decay=0.99,
                   global_bn=True)
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 1 + 8 * 2 + 4
    assert all(n.momentum == pytest.approx(0.99) for n in norms)
    # Keras synchronises batch norm on TensorFlow only; under JAX the trainer
    # shards one program over the devices, whose statistics are global.
    assert all(n.synchronized == (keras.backend.backend() == "tensorflow") for n in norms)
    assert not any(n.synchronized for n in resnet(18)._flatten_layers()
                   if isinstance(n, keras.layers.BatchNormalization))


def test_selective_kernel_matches_numpy():
    rng = np.random.default_rng(2)
    f = 4
    layer = resnet_lib.SelectiveKernelConv(f, strides=2, sk_ratio=0.0625)
    x = rng.normal(size=(3, 7, 7, 5)).astype("float32")
    layer(x)
    randomize_batch_norms(layer, rng)
    y = keras.ops.convert_to_numpy(layer(x, training=False))

    conv = keras.ops.convert_to_numpy(layer.conv.kernel)
    reduce = keras.ops.convert_to_numpy(layer.reduce.kernel)
    expand = keras.ops.convert_to_numpy(layer.expand.kernel)
    assert conv.shape == (3, 3, 5, 2 * f) and reduce.shape == (1, 1, f, 32)
    u = np.maximum(np_batch_norm_inference(np_conv(x, conv, 2, 1, 1),
                                           layer.batch_norm), 0)
    u1, u2 = u[..., :f], u[..., f:]
    s = (u1 + u2).mean(axis=(1, 2))
    z = np.maximum(np_batch_norm_inference(s @ reduce[0, 0],
                                           layer.reduce_batch_norm), 0)
    a = z @ expand[0, 0]
    w1 = 1 / (1 + np.exp(a[:, f:] - a[:, :f]))
    expected = w1[:, None, None] * u1 + (1 - w1[:, None, None]) * u2
    assert y.shape == (3, 4, 4, f)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_squeeze_excitation_matches_numpy():
    rng = np.random.default_rng(3)
    layer = resnet_lib.SqueezeExcitation(3, 12)
    x = rng.normal(size=(2, 5, 5, 12)).astype("float32")
    layer(x)
    for v in layer.variables:  # Biases start at 0: make them matter.
        v.assign(rng.normal(size=v.shape).astype("float32"))
    w1, b1 = (keras.ops.convert_to_numpy(v) for v in layer.reduce.weights)
    w2, b2 = (keras.ops.convert_to_numpy(v) for v in layer.expand.weights)
    s = x.mean(axis=(1, 2))
    gate = 1 / (1 + np.exp(-(np.maximum(s @ w1[0, 0] + b1, 0) @ w2[0, 0] + b2)))
    np.testing.assert_allclose(layer(x), x * gate[:, None, None], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("resnet_d", [False, True])
@pytest.mark.parametrize("strides", [1, 2])
def test_projection_shortcut_matches_numpy(resnet_d, strides):
    rng = np.random.default_rng(4)
    layer = resnet_lib.ProjectionShortcut(6, strides, resnet_d=resnet_d)
    x = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    layer(x)
    randomize_batch_norms(layer, rng)
    kernel = keras.ops.convert_to_numpy(layer.conv.kernel)[0, 0]

    if not resnet_d:
        pooled = x[:, ::strides, ::strides]
    else:
        # 2x2 average; windows clipped at the far edge for stride 1 (SAME
        # ignores padding); for stride 2 a zero row/column is appended and
        # counted, but windows of a 5-wide input only reach it at index 4.
        n = 5 if strides == 1 else 3
        pooled = np.zeros((2, n, n, 3))
        for i in range(n):
            for j in range(n):
                r, c = i * strides, j * strides
                if strides == 1:
                    pooled[:, i, j] = x[:, r:r + 2, c:c + 2].mean(axis=(1, 2))
                else:
                    padded = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
                    pooled[:, i, j] = padded[:, r:r + 2, c:c + 2].mean(
                        axis=(1, 2))
    expected = np_batch_norm_inference(pooled @ kernel, layer.batch_norm)
    np.testing.assert_allclose(layer(x, training=False), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sk_ratio, reads_pixel", [(0.0, False), (0.0625, True)])
def test_fresh_resnet18_reads_every_pixel_only_with_resnet_d_shortcuts(sk_ratio, reads_pixel):
    # Why the digits preset sets sk_ratio: while residual branches are zero, a
    # 16x16 input reaches the 2x2 output only through the shortcuts. Plain
    # stride-2 1x1 shortcuts subsample (16 -> 8 -> 4 -> 2 keeps stem rows and
    # columns 0 and 8), so the 3x3 stem's output at (4, 4), and the input
    # pixel there, is never read; ResNet-D's average pool reads every position.
    model = built(18, input_shape=(None, 16, 16, 3), width_multiplier=0.125,
                  cifar_stem=True, sk_ratio=sk_ratio)
    x = np.random.default_rng(5).uniform(size=(1, 16, 16, 3)).astype("float32")
    y = x.copy()
    y[:, 4, 4] += 1.0
    change = np.abs(keras.ops.convert_to_numpy(
        model(y, training=False) - model(x, training=False))).max()
    assert (change > 1e-4) == reads_pixel, change


@pytest.mark.parametrize("depth, kwargs", [
    (18, dict(width_multiplier=0.125)),
    deep(50, dict(width_multiplier=0.0625, sk_ratio=0.0625, se_ratio=0.25)),
])
@pytest.mark.parametrize("training", [False, True])
def test_fresh_blocks_output_relu_of_shortcut(depth, kwargs, training):
    rng = np.random.default_rng(5)
    model = built(depth, **kwargs)
    in_channels = model.stem.convs[-1].filters
    for group in model.block_groups:
        for i, block in enumerate(group.blocks):
            x = rng.normal(size=(4, 6, 6, in_channels)).astype("float32")
            y = keras.ops.convert_to_numpy(block(x, training=training))
            if i == 0:
                shortcut = keras.ops.convert_to_numpy(
                    block.projection(x, training=training))
            else:
                shortcut = x
            np.testing.assert_allclose(y, np.maximum(shortcut, 0), atol=1e-6)
            in_channels = y.shape[-1]


# --------------------------------------------------------------------------
# fine_tune_after_block.
# --------------------------------------------------------------------------
def frozen_prefixes(k):
    prefixes = ["resnet/stem/"] if k >= 0 else []
    return prefixes + [f"resnet/block_group{j}/" for j in range(1, k + 1)]


@pytest.mark.parametrize("k", [-1, 0, 2, 4])
def test_fine_tune_after_block_freezes_weights_and_statistics(k):
    rng = np.random.default_rng(6)
    model = resnet(18, width_multiplier=0.125, cifar_stem=True,
                   fine_tune_after_block=k)
    head = keras.layers.Dense(3, name="head")
    images = rng.uniform(size=(4, 12, 12, 3)).astype("float32")
    head(model(images))
    # Non-zero gammas everywhere, so every encoder weight gets a gradient.
    for v in model.variables:
        if v.path.endswith("/gamma"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    before = {v.path: np.array(v) for v in model.variables}
    is_frozen = [p.startswith(tuple(frozen_prefixes(k))) for p in before]

    expected_trainable = {
        p for p, f in zip(before, is_frozen)
        if not f and not p.endswith(("moving_mean", "moving_variance"))}
    assert {v.path for v in model.trainable_variables} == expected_trainable

    weights = rng.normal(size=(4, 3)).astype("float32")

    def loss(images):
        return keras.ops.sum(head(model(images, training=True)) * weights)

    model(images, training=True)  # a training pass moves the unfrozen statistics
    variables = model.trainable_variables + head.trainable_variables
    _, grads = variable_gradients(lambda: loss(images), variables)
    assert all(np.any(g) for g in grads)
    keras.optimizers.SGD(learning_rate=0.1).apply_gradients(
        zip(grads, variables))

    # Gradients reach the images only when nothing is frozen.
    _, (image_grad,) = value_and_grad(loss, images)
    assert (not np.any(image_grad)) == (k >= 0)

    for v, frozen_var in zip(model.variables, is_frozen):
        changed = not np.array_equal(np.asarray(v), before[v.path])
        assert changed != frozen_var, (v.path, changed)


def test_fully_frozen_encoder_runs_batch_norm_in_inference_mode():
    rng = np.random.default_rng(7)
    model = resnet(18, width_multiplier=0.125, cifar_stem=True,
                   fine_tune_after_block=4)
    x = rng.uniform(size=(4, 8, 8, 3)).astype("float32")
    model(x)
    randomize_batch_norms(model, rng)
    np.testing.assert_allclose(model(x, training=True),
                               model(x, training=False), rtol=1e-5, atol=1e-6)
    assert model.trainable_variables == []


# --------------------------------------------------------------------------
# Cross-replica batch norm.
# --------------------------------------------------------------------------
@tensorflow_only
def test_global_bn_uses_statistics_of_the_global_batch(mirrored_strategy):
    import tensorflow as tf
    rng = np.random.default_rng(8)
    images = rng.uniform(size=(4, 8, 8, 3)).astype("float32")
    strategy = mirrored_strategy
    with strategy.scope():
        synced = built(18, width_multiplier=0.0625, cifar_stem=True,
                       global_bn=True)
    reference = built(18, width_multiplier=0.0625, cifar_stem=True)
    randomize_batch_norms(reference, rng)
    synced.set_weights(reference.get_weights())

    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    per_replica = strategy.run(
        tf.function(lambda x: synced(x, training=True)), args=(batch,))
    got = np.concatenate([t.numpy() for t in
                          strategy.experimental_local_results(per_replica)])
    want = keras.ops.convert_to_numpy(reference(images, training=True))
    # Synchronized BN computes the variance as E[x^2] - E[x]^2, which drifts
    # slightly from the two-pass variance over 20 batch norms.
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    # Local statistics (each replica's half alone) give a different answer.
    halves = np.concatenate([reference(images[:2], training=True),
                             reference(images[2:], training=True)])
    assert np.abs(halves - want).max() > 0.1


# --------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, 10, 26, 49, "50"])
def test_bad_depth_raises(depth):
    with pytest.raises(ValueError, match="18, 34, 50, 101, 152, 200"):
        resnet(depth)


@pytest.mark.parametrize("k", [-2, 5, 1.5, None])
def test_bad_fine_tune_after_block_raises(k):
    with pytest.raises(ValueError, match="fine_tune_after_block"):
        resnet(18, fine_tune_after_block=k)


@pytest.mark.parametrize("width", [0, -1.0])
def test_bad_width_raises(width):
    with pytest.raises(ValueError, match="width_multiplier"):
        resnet(18, width_multiplier=width)
