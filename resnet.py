"""ResNet v1 encoder of the SimCLR TF2 release, written for Keras 3.

Post-activation residual networks (He et al., "Deep Residual Learning for Image
Recognition", arXiv:1512.03385) with the options of the original release:

- "fixed padding": a strided convolution pads its input explicitly by
  `(k - 1) // 2` before and `k - 1 - (k - 1) // 2` after, then runs VALID, so
  the result does not depend on whether the input size is even or odd;
- the last batch norm of every residual branch starts with gamma = 0, so each
  block initially outputs `relu(shortcut)`;
- the first block of every block group has a projection shortcut (1x1 conv +
  batch norm), even where channels and stride would allow the identity (block
  group 1 of ResNet-18/34);
- `sk_ratio > 0`: Selective Kernel bottlenecks (Li et al., arXiv:1903.06586),
  the ResNet-D deep stem and ResNet-D projection shortcuts (He et al.,
  arXiv:1812.01187);
- `se_ratio > 0`: Squeeze-and-Excitation (Hu et al., arXiv:1709.01507) at the
  end of every residual branch.

Only `keras` and `keras.ops` are used, so the model runs on any Keras backend.
Images are channels-last.
"""

import keras
from keras import ops

import initializers

BATCH_NORM_EPSILON = 1e-5

# Smallest width of the descriptor inside a Selective Kernel unit.
SELECTIVE_KERNEL_MIN_DIM = 32

# resnet_depth -> (uses bottleneck blocks, residual blocks per block group).
ARCHITECTURES = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
}

GROUP_FILTERS = (64, 128, 256, 512)
GROUP_STRIDES = (1, 2, 2, 2)
ENDPOINT_NAMES = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
)


def scaled_channels(channels, width_multiplier):
    """Channel count of a layer at a given width: max(1, round(c * w))."""
    return max(1, int(round(channels * width_multiplier)))


def conv_kernel_initializer():
    """The original's kernel initialiser: truncated normal, var = 1 / fan_in."""
    return initializers.FanInTruncatedNormal(scale=1.0)


def fixed_padding_amounts(kernel_size):
    """(before, after) padding of a k-wide window: ((k-1)//2, k-1-(k-1)//2)."""
    total = kernel_size - 1
    return total // 2, total - total // 2


def pad_spatial(inputs, before, after):
    """Zero-pads the two spatial axes of an NHWC tensor."""
    paddings = [[0, 0], [before, after], [before, after], [0, 0]]
    return ops.pad(inputs, paddings)


def channels_shape(channels):
    """Shape of an NHWC input with `channels` channels, for `build()`."""
    return (None, None, None, channels)


def synchronized_bn(global_bn):
    """Whether batch norm can synchronise across replicas: Keras implements
    synchronized batch norm on TensorFlow only."""
    return bool(global_bn) and keras.backend.backend() == "tensorflow"


class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training-mode call on a 4-D
    batch runs the fused kernel of the Keras backend when one is registered
    in `fused_training` (`tf_kernels.py` registers TensorFlow's, the same
    normalisation, gradients and moving averages, about 4 times faster
    forward and backward on CPU). Inference, a frozen layer, a backend
    without one, and a kernel that declines (returns None) take Keras's
    own path."""

    # {backend name: fn(layer, inputs) -> outputs, or None to decline}.
    fused_training = {}

    def call(self, inputs, training=None, mask=None):
        kernel = self.fused_training.get(keras.backend.backend())
        if (kernel is not None and training and self.trainable and mask is None
                and not self.renorm and len(inputs.shape) == 4 and self.axis in (-1, 3)):
            outputs = kernel(self, inputs)
            if outputs is not None:
                return outputs
        return super().call(inputs, training=training, mask=mask)


def batch_norm(name, batch_norm_decay, synchronized, zero_init=False,
               center=True, scale=True):
    """BatchNormalization as in the original: eps 1e-5, momentum = decay.

    `zero_init=True` starts gamma at 0; it is used for the last batch norm of
    a residual branch, so that the branch initially contributes nothing.
    `center`/`scale` switch the offset β and the scale γ on or off.
    """
    return BatchNormalization(
        momentum=batch_norm_decay,
        epsilon=BATCH_NORM_EPSILON,
        center=center,
        scale=scale,
        gamma_initializer="zeros" if zero_init else "ones",
        synchronized=synchronized,
        name=name,
    )


class Conv2DFixedPadding(keras.layers.Conv2D):
    """Bias-free 2-D convolution with the original's "fixed padding".

    With stride 1 the convolution is SAME. With stride s > 1 the input is
    zero-padded by `fixed_padding_amounts(k)` on each spatial axis and the
    convolution is VALID, so an H-wide input gives floor((H - 1) / s) + 1
    outputs and the padding is placed identically for even and odd H (TF's
    SAME would pad less in front for even H).
    """

    def __init__(self, filters, kernel_size, strides=1, **kwargs):
        # `from_config` passes the (s, s) tuple that Conv2D stores.
        stride = strides[0] if isinstance(strides, (tuple, list)) else strides
        super().__init__(
            filters=filters,
            kernel_size=kernel_size,
            strides=stride,
            padding="same" if stride == 1 else "valid",
            use_bias=False,
            kernel_initializer=conv_kernel_initializer(),
            **kwargs,
        )
        self.fixed_padding = (
            fixed_padding_amounts(self.kernel_size[0]) if stride > 1 else None
        )

    def call(self, inputs):
        if self.fixed_padding is not None:
            inputs = pad_spatial(inputs, *self.fixed_padding)
        return super().call(inputs)

    def compute_output_shape(self, input_shape):
        if self.fixed_padding is not None:
            pad = sum(self.fixed_padding)
            input_shape = list(input_shape)
            for axis in (1, 2):
                if input_shape[axis] is not None:
                    input_shape[axis] += pad
        return super().compute_output_shape(tuple(input_shape))

    def get_config(self):
        config = super().get_config()
        # Fixed by the constructor; passing them back would clash.
        for key in ("padding", "use_bias", "kernel_initializer"):
            config.pop(key, None)
        return config


class SelectiveKernelConv(keras.layers.Layer):
    """Selective Kernel unit replacing a bottleneck's 3x3 conv + BN-ReLU.

    With F = `filters` and r = `sk_ratio`:
        u = relu(BN(conv3x3_stride(x)))          # 2F channels
        u1, u2 = split(u, 2, channels)           # two streams
        s = spatial_mean(u1 + u2)                # [b, 1, 1, F]
        z = relu(BN(conv1x1(s)))                 # max(int(F r), 32) channels
        a1, a2 = split(conv1x1(z), 2, channels)  # 2F channels -> 2 x F
        w1, w2 = softmax over the two streams of (a1, a2), per channel
        y = w1 * u1 + w2 * u2
    """

    def __init__(
        self,
        filters,
        strides,
        sk_ratio,
        batch_norm_decay=0.9,
        synchronized_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.mid_dim = max(int(filters * sk_ratio), SELECTIVE_KERNEL_MIN_DIM)
        self.conv = Conv2DFixedPadding(2 * filters, 3, strides, name="conv")
        self.batch_norm = batch_norm(
            "batch_normalization", batch_norm_decay, synchronized_bn
        )
        self.reduce = Conv2DFixedPadding(self.mid_dim, 1, name="reduce")
        self.reduce_batch_norm = batch_norm(
            "reduce_batch_normalization", batch_norm_decay, synchronized_bn
        )
        self.expand = Conv2DFixedPadding(2 * filters, 1, name="expand")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.batch_norm.build(channels_shape(2 * self.filters))
        self.reduce.build(channels_shape(self.filters))
        self.reduce_batch_norm.build(channels_shape(self.mid_dim))
        self.expand.build(channels_shape(self.mid_dim))

    def call(self, inputs, training=None):
        streams = self.batch_norm(self.conv(inputs), training=training)
        streams = ops.stack(ops.split(ops.relu(streams), 2, axis=-1), axis=0)

        descriptor = ops.mean(
            ops.sum(streams, axis=0), axis=(1, 2), keepdims=True
        )
        descriptor = self.reduce_batch_norm(
            self.reduce(descriptor), training=training
        )
        logits = self.expand(ops.relu(descriptor))
        logits = ops.stack(ops.split(logits, 2, axis=-1), axis=0)
        weights = ops.softmax(logits, axis=0)
        return ops.sum(streams * weights, axis=0)


class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-Excitation gate on channels-last features.

        y = x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)

    W1 squeezes to `squeeze_channels` and W2 expands back to `channels`, the
    width of x. As in the original, both 1x1 convs have a bias and the squeeze
    width is computed by the caller from the block's base width F (not from
    the 4F output of a bottleneck): max(1, int(F * se_ratio)).
    """

    def __init__(self, squeeze_channels, channels, **kwargs):
        super().__init__(**kwargs)
        self.squeeze_channels = squeeze_channels
        self.reduce = keras.layers.Conv2D(
            squeeze_channels,
            1,
            use_bias=True,
            kernel_initializer=conv_kernel_initializer(),
            name="reduce",
        )
        self.expand = keras.layers.Conv2D(
            channels,
            1,
            use_bias=True,
            kernel_initializer=conv_kernel_initializer(),
            name="expand",
        )

    def build(self, input_shape):
        self.reduce.build(input_shape)
        self.expand.build(channels_shape(self.squeeze_channels))

    def call(self, inputs):
        squeezed = ops.mean(inputs, axis=(1, 2), keepdims=True)
        gate = self.expand(ops.relu(self.reduce(squeezed)))
        return ops.sigmoid(gate) * inputs


class ProjectionShortcut(keras.layers.Layer):
    """Projection shortcut of the first block of a block group: BN(conv1x1(x)).

    Plain form: a 1x1 conv with the block's stride. ResNet-D form
    (`resnet_d=True`, used with Selective Kernels): a 2x2 average pool with
    the block's stride, then a stride-1 1x1 conv. For stride s > 1 the pool is
    VALID after padding one zero row/column at the end (so odd sizes round up,
    like the strided convs of the branch); for stride 1 it is SAME.
    """

    def __init__(
        self,
        channels,
        strides,
        resnet_d=False,
        batch_norm_decay=0.9,
        synchronized_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = channels
        self.strides = strides
        self.pool = None
        if resnet_d:
            self.pool = keras.layers.AveragePooling2D(
                pool_size=2,
                strides=strides,
                padding="same" if strides == 1 else "valid",
                name="avg_pool",
            )
            conv_strides = 1
        else:
            conv_strides = strides
        self.conv = Conv2DFixedPadding(channels, 1, conv_strides, name="conv")
        self.batch_norm = batch_norm(
            "batch_normalization", batch_norm_decay, synchronized_bn
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.batch_norm.build(channels_shape(self.channels))

    def call(self, inputs, training=None):
        if self.pool is not None:
            if self.strides > 1:
                inputs = pad_spatial(inputs, *fixed_padding_amounts(2))
            inputs = self.pool(inputs)
        return self.batch_norm(self.conv(inputs), training=training)


class _Block(keras.layers.Layer):
    """A residual block: relu(shortcut(x) + F(x)).

    The shortcut is the identity, or `ProjectionShortcut` when
    `use_projection` (in its ResNet-D form when `sk_ratio > 0`); an SE gate
    of max(1, int(filters * se_ratio)) channels ends F when `se_ratio > 0`.
    Subclasses make F: its layers in `_make_residual`, which it builds in
    `_build_residual` and runs in `_residual`; F has
    `expansion * filters` output channels.
    """

    expansion = 1

    def __init__(
        self,
        filters,
        strides,
        use_projection=False,
        sk_ratio=0.0,
        se_ratio=0.0,
        batch_norm_decay=0.9,
        synchronized_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.out_channels = self.expansion * filters
        self.projection = None
        if use_projection:
            self.projection = ProjectionShortcut(
                self.out_channels,
                strides,
                resnet_d=sk_ratio > 0,
                batch_norm_decay=batch_norm_decay,
                synchronized_bn=synchronized_bn,
                name="projection",
            )
        self._make_residual(
            strides,
            sk_ratio,
            dict(batch_norm_decay=batch_norm_decay, synchronized=synchronized_bn),
        )
        self.squeeze_excitation = None
        if se_ratio > 0:
            self.squeeze_excitation = SqueezeExcitation(
                max(1, int(filters * se_ratio)),
                self.out_channels,
                name="squeeze_excitation",
            )

    def build(self, input_shape):
        if self.projection is not None:
            self.projection.build(input_shape)
        self._build_residual(input_shape)
        if self.squeeze_excitation is not None:
            self.squeeze_excitation.build(channels_shape(self.out_channels))

    def call(self, inputs, training=None):
        shortcut = inputs
        if self.projection is not None:
            shortcut = self.projection(inputs, training=training)
        x = self._residual(inputs, training)
        if self.squeeze_excitation is not None:
            x = self.squeeze_excitation(x)
        return ops.relu(x + shortcut)


class ResidualBlock(_Block):
    """Basic block (ResNet-18/34): F(x) = BN0(conv3x3(relu(BN(conv3x3_stride(x))))),
    with BN0's gamma initialised to 0 (see `_Block` for the shortcut and SE).
    Selective Kernels apply to bottlenecks only, so here `sk_ratio > 0`
    changes only the projection to its ResNet-D form.
    """

    def _make_residual(self, strides, sk_ratio, bn_args):
        del sk_ratio
        self.conv_0 = Conv2DFixedPadding(self.filters, 3, strides, name="conv_0")
        self.batch_norm_0 = batch_norm("batch_normalization_0", **bn_args)
        self.conv_1 = Conv2DFixedPadding(self.filters, 3, 1, name="conv_1")
        self.batch_norm_1 = batch_norm(
            "batch_normalization_1", zero_init=True, **bn_args
        )

    def _build_residual(self, input_shape):
        inner = channels_shape(self.filters)
        self.conv_0.build(input_shape)
        self.batch_norm_0.build(inner)
        self.conv_1.build(inner)
        self.batch_norm_1.build(inner)

    def _residual(self, inputs, training):
        x = self.batch_norm_0(self.conv_0(inputs), training=training)
        return self.batch_norm_1(self.conv_1(ops.relu(x)), training=training)


class BottleneckBlock(_Block):
    """Bottleneck block (ResNet-50 and deeper):
    F(x) = BN0(conv1x1_4F(relu(BN(conv3x3_stride(relu(BN(conv1x1_F(x)))))))),
    with BN0's gamma initialised to 0 and the stride on the 3x3 conv; with
    `sk_ratio > 0` the 3x3 conv and its BN-ReLU are a `SelectiveKernelConv`.
    The output has 4F channels (see `_Block` for the shortcut and SE).
    """

    expansion = 4

    def _make_residual(self, strides, sk_ratio, bn_args):
        filters = self.filters
        self.conv_0 = Conv2DFixedPadding(filters, 1, 1, name="conv_0")
        self.batch_norm_0 = batch_norm("batch_normalization_0", **bn_args)
        if sk_ratio > 0:
            self.selective_kernel = SelectiveKernelConv(
                filters,
                strides,
                sk_ratio,
                batch_norm_decay=bn_args["batch_norm_decay"],
                synchronized_bn=bn_args["synchronized"],
                name="selective_kernel_1",
            )
        else:
            self.selective_kernel = None
            self.conv_1 = Conv2DFixedPadding(filters, 3, strides, name="conv_1")
            self.batch_norm_1 = batch_norm("batch_normalization_1", **bn_args)
        self.conv_2 = Conv2DFixedPadding(self.out_channels, 1, 1, name="conv_2")
        self.batch_norm_2 = batch_norm(
            "batch_normalization_2", zero_init=True, **bn_args
        )

    def _build_residual(self, input_shape):
        inner = channels_shape(self.filters)
        self.conv_0.build(input_shape)
        self.batch_norm_0.build(inner)
        if self.selective_kernel is not None:
            self.selective_kernel.build(inner)
        else:
            self.conv_1.build(inner)
            self.batch_norm_1.build(inner)
        self.conv_2.build(inner)
        self.batch_norm_2.build(channels_shape(self.out_channels))

    def _residual(self, inputs, training):
        x = ops.relu(self.batch_norm_0(self.conv_0(inputs), training=training))
        if self.selective_kernel is not None:
            x = self.selective_kernel(x, training=training)
        else:
            x = ops.relu(self.batch_norm_1(self.conv_1(x), training=training))
        return self.batch_norm_2(self.conv_2(x), training=training)


class BlockGroup(keras.layers.Layer):
    """`num_blocks` residual blocks; the first has the stride and projects."""

    def __init__(self, filters, block_class, num_blocks, strides, block_args,
                 **kwargs):
        super().__init__(**kwargs)
        self.blocks = [
            block_class(
                filters,
                strides if i == 0 else 1,
                use_projection=i == 0,
                name=f"block_{i}",
                **block_args,
            )
            for i in range(num_blocks)
        ]
        self.out_channels = self.blocks[-1].out_channels

    def build(self, input_shape):
        for block in self.blocks:
            block.build(input_shape)
            input_shape = channels_shape(block.out_channels)

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x


class Stem(keras.layers.Layer):
    """Layers before the first block group; returns (initial_conv, output).

    - CIFAR: conv3x3 (64w, stride 1), BN-ReLU; no pooling.
    - ImageNet: conv7x7 (64w, stride 2), BN-ReLU, max-pool 3x3 stride 2 SAME.
    - ImageNet with `deep=True` (ResNet-D, used with Selective Kernels):
      conv3x3 (32w, stride 2), BN-ReLU, conv3x3 (32w), BN-ReLU, conv3x3 (64w),
      BN-ReLU, then the same max-pool.

    `initial_conv` is the last conv's output before its batch norm, as in the
    original's endpoints; the second value is the stem's output (the
    `initial_max_pool` endpoint, which has no pooling for the CIFAR stem).
    """

    def __init__(
        self,
        width_multiplier,
        cifar_stem=False,
        deep=False,
        batch_norm_decay=0.9,
        synchronized_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        bn_args = dict(
            batch_norm_decay=batch_norm_decay, synchronized=synchronized_bn
        )
        width_64 = scaled_channels(64, width_multiplier)
        if cifar_stem:
            specs = [(width_64, 3, 1)]
        elif deep:
            width_32 = scaled_channels(32, width_multiplier)
            specs = [(width_32, 3, 2), (width_32, 3, 1), (width_64, 3, 1)]
        else:
            specs = [(width_64, 7, 2)]
        self.convs = [
            Conv2DFixedPadding(filters, size, strides, name=f"conv_{i}")
            for i, (filters, size, strides) in enumerate(specs)
        ]
        self.batch_norms = [
            batch_norm(f"batch_normalization_{i}", **bn_args)
            for i in range(len(specs))
        ]
        self.out_channels = width_64
        self.max_pool = None
        if not cifar_stem:
            self.max_pool = keras.layers.MaxPooling2D(
                pool_size=3, strides=2, padding="same", name="max_pool"
            )

    def build(self, input_shape):
        for conv, norm in zip(self.convs, self.batch_norms):
            conv.build(input_shape)
            input_shape = channels_shape(conv.filters)
            norm.build(input_shape)

    def call(self, inputs, training=None):
        x = inputs
        for conv, norm in zip(self.convs, self.batch_norms):
            initial_conv = conv(x)
            x = ops.relu(norm(initial_conv, training=training))
        if self.max_pool is not None:
            x = self.max_pool(x)
        return initial_conv, x


class ResNet(keras.Model):
    """ResNet v1 encoder: images [b, H, W, 3] -> h [b, output_dim].

    h is the global spatial mean of block group 4. Call as
    `model(images, training=False, return_endpoints=False)`; with
    `return_endpoints=True` it returns `(h, endpoints)`, a dict keyed by
    `ENDPOINT_NAMES`.

    `fine_tune_after_block = k` freezes the stem (k >= 0) and block groups
    1..k: their layers are made non-trainable, which also makes their batch
    norms use (and keep) their moving statistics even when called with
    `training=True`, and a stop-gradient is placed at the input of block group
    k + 1 (on h for k = 4). Setting `trainable = True` on the model afterwards
    would unfreeze them again.
    """

    def __init__(
        self,
        resnet_depth,
        width_multiplier=1.0,
        cifar_stem=False,
        sk_ratio=0.0,
        se_ratio=0.0,
        batch_norm_decay=0.9,
        global_bn=False,
        fine_tune_after_block=-1,
        **kwargs,
    ):
        if resnet_depth not in ARCHITECTURES:
            raise ValueError(
                f"resnet_depth must be one of {sorted(ARCHITECTURES)}; "
                f"received {resnet_depth!r}."
            )
        if not width_multiplier > 0:
            raise ValueError(
                f"width_multiplier must be > 0; received {width_multiplier!r}."
            )
        if sk_ratio < 0 or se_ratio < 0:
            raise ValueError(
                "sk_ratio and se_ratio must be >= 0; received "
                f"{sk_ratio!r} and {se_ratio!r}."
            )
        if fine_tune_after_block not in (-1, 0, 1, 2, 3, 4):
            raise ValueError(
                "fine_tune_after_block must be an integer in -1..4; received "
                f"{fine_tune_after_block!r}."
            )
        super().__init__(**kwargs)
        self.resnet_depth = resnet_depth
        self.width_multiplier = width_multiplier
        self.cifar_stem = cifar_stem
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = global_bn
        self.fine_tune_after_block = fine_tune_after_block

        synchronized = synchronized_bn(global_bn)
        bottleneck, num_blocks = ARCHITECTURES[resnet_depth]
        block_class = BottleneckBlock if bottleneck else ResidualBlock
        block_args = dict(
            sk_ratio=sk_ratio,
            se_ratio=se_ratio,
            batch_norm_decay=batch_norm_decay,
            synchronized_bn=synchronized,
        )

        self.stem = Stem(
            width_multiplier,
            cifar_stem=cifar_stem,
            deep=sk_ratio > 0,
            batch_norm_decay=batch_norm_decay,
            synchronized_bn=synchronized,
            name="stem",
        )
        self.block_groups = []
        for i, (filters, strides, blocks) in enumerate(
            zip(GROUP_FILTERS, GROUP_STRIDES, num_blocks)
        ):
            self.block_groups.append(
                BlockGroup(
                    scaled_channels(filters, width_multiplier),
                    block_class,
                    blocks,
                    strides,
                    block_args,
                    name=f"block_group{i + 1}",
                )
            )
        last_width = scaled_channels(GROUP_FILTERS[-1], width_multiplier)
        self.output_dim = 4 * last_width if bottleneck else last_width

        # The setter recurses into sublayers, so the inner batch norms see
        # trainable=False too (and therefore run in inference mode); variables
        # created later by a lazy build inherit trainable=False.
        if fine_tune_after_block >= 0:
            self.stem.trainable = False
        for group in self.block_groups[: max(fine_tune_after_block, 0)]:
            group.trainable = False

    def build(self, input_shape):
        # Weights depend only on channel counts, so the layers are built from
        # those directly rather than by tracing a forward pass.
        self.stem.build(input_shape)
        input_shape = channels_shape(self.stem.out_channels)
        for group in self.block_groups:
            group.build(input_shape)
            input_shape = channels_shape(group.out_channels)

    def call(self, images, training=False, return_endpoints=False):
        initial_conv, x = self.stem(images, training=training)
        endpoints = {"initial_conv": initial_conv, "initial_max_pool": x}
        for i, group in enumerate(self.block_groups):
            if i == self.fine_tune_after_block:
                x = ops.stop_gradient(x)
            x = group(x, training=training)
            endpoints[group.name] = x
        h = ops.mean(x, axis=(1, 2))
        if self.fine_tune_after_block == 4:
            h = ops.stop_gradient(h)
        endpoints["final_avg_pool"] = h
        if return_endpoints:
            # Ordered from the stem to the pooled output; the names are the
            # original release's (its SavedModel outputs).
            return h, {name: endpoints[name] for name in ENDPOINT_NAMES}
        return h

    def get_config(self):
        config = super().get_config()
        config.update(
            resnet_depth=self.resnet_depth,
            width_multiplier=self.width_multiplier,
            cifar_stem=self.cifar_stem,
            sk_ratio=self.sk_ratio,
            se_ratio=self.se_ratio,
            batch_norm_decay=self.batch_norm_decay,
            global_bn=self.global_bn,
            fine_tune_after_block=self.fine_tune_after_block,
        )
        return config


def resnet(
    resnet_depth,
    width_multiplier=1.0,
    cifar_stem=False,
    sk_ratio=0.0,
    se_ratio=0.0,
    batch_norm_decay=0.9,
    global_bn=False,
    fine_tune_after_block=-1,
    name="resnet",
):
    """Returns a `ResNet`: images [b, H, W, 3] -> h [b, model.output_dim].

    Args:
        resnet_depth: 18 or 34 (basic blocks), 50, 101, 152 or 200
            (bottleneck blocks).
        width_multiplier: float > 0; a layer of c channels in ResNet-1x has
            max(1, round(c * width_multiplier)).
        cifar_stem: 3x3 stride-1 stem without max-pool (for 32x32 images).
        sk_ratio: > 0 enables Selective Kernels, the ResNet-D stem (ImageNet
            stem only) and ResNet-D projection shortcuts.
        se_ratio: > 0 enables Squeeze-and-Excitation.
        batch_norm_decay: batch-norm momentum of the moving statistics.
        global_bn: synchronise batch statistics across replicas (TensorFlow
            backend under a tf.distribute strategy; ignored elsewhere).
        fine_tune_after_block: -1 trains everything; k in 0..4 freezes the
            stem and block groups 1..k (see `ResNet`).
        name: model name, the first component of every variable path.
    """
    return ResNet(
        resnet_depth,
        width_multiplier=width_multiplier,
        cifar_stem=cifar_stem,
        sk_ratio=sk_ratio,
        se_ratio=se_ratio,
        batch_norm_decay=batch_norm_decay,
        global_bn=global_bn,
        fine_tune_after_block=fine_tune_after_block,
        name=name,
    )
