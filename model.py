"""Model: ResNet encoder, projection head, supervised head, and training helpers.

Mirrors `tf2/model.py` of the original release, but is backend-neutral (keras,
keras.ops and numpy only) and takes its configuration as arguments instead of
reading absl flags, so tests and notebooks can build any variant directly.

The training model takes images whose channels hold the augmented views side
by side ([b, H, W, c·V], c = `view_channels` channels per view), stacks the
views along the batch axis (rows v·b .. (v+1)·b − 1 are view v), and returns

    (output, logits_sup [V·b, Σ classes] or None),

output being the projection head's [V·b, proj_dim] in pretraining, the
decoder's reconstruction [V·b, H, W, c] of the views with
`train_mode="autoencoder"`, and None in fine-tuning. With several labels
(`num_classes` a sequence), logits_sup holds one linear classifier per
label side by side: columns Σ_{i<j} C_i .. Σ_{i≤j} C_i − 1 are label j's
(`label_logits`).
"""
import math

import keras
from keras import ops

import autoencoder
import initializers
import lars_optimizer
import resnet

# Variables whose path contains one of these are excluded from LARS weight
# decay and trust-ratio adaptation: batch-norm parameters and biases as in the
# original, and the supervised head, whose decay is an explicit L2 term instead.
LARS_EXCLUDE = ["batch_normalization", "bias", "head_supervised"]

PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
TRAIN_MODES = ("pretrain", "finetune", "autoencoder")
# Train modes that learn a representation without labels and train the
# online probe beside it.
REPRESENTATION_MODES = ("pretrain", "autoencoder")
PROBE_VIEWS = ("augmented", "clean")
OPTIMIZERS = ("momentum", "adam", "lars")
# Keras dtype policies of --precision: under the mixed ones layers compute in
# the reduced type and keep float32 variables.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
LEARNING_RATE_SCALINGS = ("linear", "sqrt")
# Channels of a view's image: the augmentations produce RGB.
RGB_CHANNELS = 3
# Images up to this side are small (CIFAR-size): the ResNet takes the CIFAR
# stem (a 3x3 stride-1 convolution, no max-pool), evaluation resizes them
# whole instead of centre-cropping, and their preset is the CIFAR recipe.
SMALL_IMAGE_SIDE = 32


def view_channels(num_rand_bits=0):
    """Channels of one view: RGB, then the `num_rand_bits` RandBits planes."""
    return RGB_CHANNELS + num_rand_bits


def augmented_views(train_mode):
    """Augmented views of each training example: the two of a positive pair
    in pretraining, one in autoencoder training and in fine-tuning."""
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"train_mode={train_mode!r}; allowed: {', '.join(TRAIN_MODES)}")
    return 2 if train_mode == "pretrain" else 1


def dense_initializer():
    """N(0, 0.01²), the original's initialiser for head kernels."""
    return initializers.Normal(stddev=0.01)


class LinearLayer(keras.layers.Layer):
    """Dense layer, optionally followed by batch norm.

    With `use_bn` the dense bias is dropped and batch norm's β plays its role
    (`center=use_bias`), exactly as the original's projection head does.
    """

    def __init__(self, num_classes, use_bias=True, use_bn=False,
                 batch_norm_decay=0.9, global_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.use_bn = use_bn
        self.dense = keras.layers.Dense(
            num_classes, kernel_initializer=dense_initializer(),
            use_bias=use_bias and not use_bn, name="dense")
        if use_bn:
            self.bn = resnet.batch_norm("batch_normalization", batch_norm_decay,
                                        resnet.synchronized_bn(global_bn), center=use_bias)

    def call(self, inputs, training=None):
        x = self.dense(inputs)
        if self.use_bn:
            x = self.bn(x, training=training)
        return x


class ProjectionHead(keras.layers.Layer):
    """Projection head g(h) of SimCLR.

    Modes:
      - `none`: z = h.
      - `linear`: z = BN(W h), one layer of `proj_out_dim` units.
      - `nonlinear`: `num_proj_layers` layers; layers 0..L−2 are
        ReLU(BN(W_j a)) with the width of their input, the last is BN(W a)
        with `proj_out_dim` units, BN without centre and no ReLU.

    `call` returns (z, hiddens[ft_proj_selector]) where hiddens is
    [h, a_1, ..., a_L]: the supervised head reads the selected layer.
    """

    def __init__(self, mode="nonlinear", proj_out_dim=128, num_proj_layers=3,
                 ft_proj_selector=0, batch_norm_decay=0.9, global_bn=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in PROJ_HEAD_MODES:
            raise ValueError(f"proj_head_mode={mode!r}; allowed: {', '.join(PROJ_HEAD_MODES)}")
        self.mode = mode
        self.proj_out_dim = proj_out_dim
        self.num_proj_layers = num_proj_layers
        self.ft_proj_selector = ft_proj_selector
        self.bn_kwargs = dict(batch_norm_decay=batch_norm_decay, global_bn=global_bn)
        self.linear_layers = []

    def build(self, input_shape):
        width = int(input_shape[-1])
        if self.mode == "linear":
            self.linear_layers = [LinearLayer(self.proj_out_dim, use_bias=False, use_bn=True,
                                              name="l_0", **self.bn_kwargs)]
        elif self.mode == "nonlinear":
            self.linear_layers = [
                LinearLayer(width, use_bias=True, use_bn=True, name=f"nl_{j}", **self.bn_kwargs)
                for j in range(self.num_proj_layers - 1)]
            self.linear_layers.append(
                LinearLayer(self.proj_out_dim, use_bias=False, use_bn=True,
                            name=f"nl_{self.num_proj_layers - 1}", **self.bn_kwargs))

    def call(self, h, training=None):
        hiddens = [h]
        x = h
        for j, layer in enumerate(self.linear_layers):
            x = layer(x, training=training)
            if self.mode == "nonlinear" and j != len(self.linear_layers) - 1:
                x = ops.relu(x)
            hiddens.append(x)
        return x, hiddens[self.ft_proj_selector]


class SupervisedHead(keras.layers.Layer):
    """Linear classifier logits = W x + b, named `head_supervised`.

    With `input_bn`, x is first standardised per feature by batch norm
    without scale or offset, x̂ = (x − μ) / √(σ² + ε) (batch statistics in
    training, moving averages in inference), so the classifier sees
    unit-scale inputs however the encoder's feature scale drifts; the map
    stays linear in x. This is the linear probe of He et al. (MAE, 2022).
    """

    def __init__(self, num_classes, input_bn=False, batch_norm_decay=0.9, global_bn=False,
                 name="head_supervised", **kwargs):
        super().__init__(name=name, **kwargs)
        self.input_bn = None
        if input_bn:
            self.input_bn = resnet.batch_norm("batch_normalization", batch_norm_decay,
                                              resnet.synchronized_bn(global_bn),
                                              center=False, scale=False)
        self.linear = LinearLayer(num_classes, use_bias=True, use_bn=False, name="linear")

    def call(self, inputs, training=None):
        if self.input_bn is not None:
            inputs = self.input_bn(inputs, training=training)
        return self.linear(inputs, training=training)


def label_logits(logits, label_classes):
    """The per-label logits [n, C_j] of each label j of a supervised head's
    logits [n, Σ C_j] (see the module docstring)."""
    if len(label_classes) == 1:
        return [logits]
    starts = [sum(label_classes[:j]) for j in range(len(label_classes))]
    return [logits[:, start:start + count] for start, count in zip(starts, label_classes)]


class Model(keras.Model):
    """ResNet encoder + projection head + supervised head (+ decoder).

    The projection head is always built (fine-tuning reads a layer of it);
    `train_mode="pretrain"` trains it. `train_mode="autoencoder"` adds an
    `autoencoder.Decoder` of h and trains encoder and decoder to
    reconstruct the views. The supervised head exists when
    `lineareval_while_pretraining` (pretrain and autoencoder; it then reads
    stop_gradient of its input: the online linear probe) or in
    `train_mode="finetune"`; `num_classes` is its number of classes, or a
    sequence of them, one linear classifier per label.

    Inputs are views stacked on the channel axis, [b, H, W, c·k] with
    c = `view_channels` (3 for RGB views; more when the pipeline appends
    channels to every view). The online
    probe reads the features of those views (`probe_view="augmented"`, as in
    the original), or, with `probe_view="clean"` and k > 1 in training, only
    the last view, the evaluation view of the same images, encoded in
    inference mode as at evaluation; the other k − 1 views feed the
    projection head. The probe then trains on the distribution it is scored
    on, instead of on augmented views of it.
    """

    def __init__(self, num_classes, *, image_size=224, train_mode="pretrain",
                 resnet_depth=50, width_multiplier=1.0, sk_ratio=0.0, se_ratio=0.0,
                 batch_norm_decay=0.9, global_bn=True, fine_tune_after_block=-1,
                 proj_head_mode="nonlinear", proj_out_dim=128, num_proj_layers=3,
                 ft_proj_selector=0, lineareval_while_pretraining=True, probe_batch_norm=False,
                 probe_view="augmented", view_channels=3, name="model", **kwargs):
        super().__init__(name=name, **kwargs)
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode={train_mode!r}; allowed: {', '.join(TRAIN_MODES)}")
        if probe_view not in PROBE_VIEWS:
            raise ValueError(f"probe_view={probe_view!r}; allowed: {', '.join(PROBE_VIEWS)}")
        if train_mode != "finetune" and fine_tune_after_block > -1:
            raise ValueError(f"fine_tune_after_block must be -1 when train_mode={train_mode} "
                             "(freezing layers only applies to finetune)")
        if view_channels < 1:
            raise ValueError(f"view_channels must be >= 1, got {view_channels}")
        self.label_classes = (tuple(int(n) for n in num_classes)
                              if isinstance(num_classes, (tuple, list)) else (int(num_classes),))
        self.train_mode = train_mode
        self.view_channels = view_channels
        self.lineareval_while_pretraining = lineareval_while_pretraining
        self.probe_view = probe_view
        self.resnet_model = resnet.resnet(
            resnet_depth=resnet_depth, width_multiplier=width_multiplier,
            cifar_stem=image_size <= SMALL_IMAGE_SIDE, sk_ratio=sk_ratio, se_ratio=se_ratio,
            batch_norm_decay=batch_norm_decay, global_bn=global_bn,
            fine_tune_after_block=fine_tune_after_block, name="resnet")
        self._projection_head = ProjectionHead(
            proj_head_mode, proj_out_dim, num_proj_layers, ft_proj_selector,
            batch_norm_decay=batch_norm_decay, global_bn=global_bn, name="projection_head")
        self.decoder = None
        if train_mode == "autoencoder":
            self.decoder = autoencoder.Decoder(
                image_size, view_channels, width_multiplier=width_multiplier,
                batch_norm_decay=batch_norm_decay, global_bn=global_bn)
        self.supervised_head = None
        if (train_mode == "finetune" or lineareval_while_pretraining) and sum(self.label_classes):
            self.supervised_head = SupervisedHead(
                sum(self.label_classes), input_bn=probe_batch_norm,
                batch_norm_decay=batch_norm_decay, global_bn=global_bn)

    def call(self, inputs, training=None):
        num_views = inputs.shape[-1] // self.view_channels
        if num_views < 1 or num_views * self.view_channels != inputs.shape[-1]:
            raise ValueError(f"input channels must be a multiple of view_channels="
                             f"{self.view_channels}, got {inputs.shape[-1]}")
        views = ops.split(inputs, num_views, axis=-1) if num_views > 1 else [inputs]
        clean_probe = (self.probe_view == "clean" and self.train_mode != "finetune"
                       and self.supervised_head is not None and training and num_views > 1)
        if clean_probe:
            views, clean = views[:-1], views[-1]
        features = ops.concatenate(views, axis=0)
        hiddens = self.resnet_model(features, training=training)
        projection_head_outputs, supervised_head_inputs = self._projection_head(
            hiddens, training=training)
        if clean_probe:
            _, supervised_head_inputs = self._projection_head(
                self.resnet_model(clean, training=False), training=False)
        if self.decoder is not None:
            projection_head_outputs = self.decoder(hiddens, training=training)
        supervised_head_outputs = None
        if self.train_mode == "finetune":
            supervised_head_outputs = self.supervised_head(supervised_head_inputs, training=training)
            projection_head_outputs = None
        elif self.supervised_head is not None:
            supervised_head_outputs = self.supervised_head(
                ops.stop_gradient(supervised_head_inputs), training=training)
        return projection_head_outputs, supervised_head_outputs

    def encode(self, images, training=False):
        """h = f(images): the encoder output the probes read, for one view
        per image, [b, H, W, view_channels]."""
        return self.resnet_model(images, training=training)

    def endpoints(self, images, training=False):
        """The named tensors of one view per image, those of the original's
        SavedModel: the encoder's `resnet.ENDPOINT_NAMES` (`final_avg_pool`
        is h), `proj_head_input` (h), `proj_head_output` (z = g(h), not
        normalised) and, when a supervised head exists, `logits_sup` (the
        head on the projection layer `ft_proj_selector` selects)."""
        h, outputs = self.resnet_model(images, training=training, return_endpoints=True)
        z, head_input = self._projection_head(h, training=training)
        outputs.update(proj_head_input=h, proj_head_output=z)
        if self.supervised_head is not None:
            outputs["logits_sup"] = self.supervised_head(head_input, training=training)
        return outputs


class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then cosine decay to 0.

    η₀ = base·B/256 (`linear`) or base·√B (`sqrt`);
    warm-up steps w = round(⌊warmup_epochs·N / B⌋);
    lr(s) = η₀·s/w for s < w, else η₀·½(1 + cos(π·(s − w)/(T − w))).
    """

    def __init__(self, base_learning_rate, num_examples, train_batch_size,
                 warmup_epochs, total_steps, learning_rate_scaling="linear", name=None):
        super().__init__()
        if learning_rate_scaling not in LEARNING_RATE_SCALINGS:
            raise ValueError(f"learning_rate_scaling={learning_rate_scaling!r}; "
                             f"allowed: {', '.join(LEARNING_RATE_SCALINGS)}")
        self.base_learning_rate = base_learning_rate
        self.num_examples = num_examples
        self.train_batch_size = train_batch_size
        self.warmup_epochs = warmup_epochs
        self.total_steps = total_steps
        self.learning_rate_scaling = learning_rate_scaling
        self.name = name
        self.warmup_steps = int(round(warmup_epochs * num_examples // train_batch_size))
        if learning_rate_scaling == "linear":
            self.scaled_lr = base_learning_rate * train_batch_size / 256.0
        else:
            self.scaled_lr = base_learning_rate * math.sqrt(train_batch_size)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        warm = self.scaled_lr * step / warmup
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = self.scaled_lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps <= 0:
            return cosine
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return dict(base_learning_rate=self.base_learning_rate, num_examples=self.num_examples,
                    train_batch_size=self.train_batch_size, warmup_epochs=self.warmup_epochs,
                    total_steps=self.total_steps,
                    learning_rate_scaling=self.learning_rate_scaling, name=self.name)


def build_optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0):
    """The original's three optimizers.

    `lars`: LARS with weight decay inside the update (BN, biases and the
    supervised head excluded); `momentum`: Nesterov SGD; `adam`: Adam.
    For the last two, weight decay is an explicit loss term (`weight_decay_loss`).
    """
    if name == "lars":
        return lars_optimizer.LARSOptimizer(
            learning_rate, momentum=momentum, weight_decay=weight_decay,
            exclude_from_weight_decay=LARS_EXCLUDE)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(f"optimizer={name!r}; allowed: {', '.join(OPTIMIZERS)}")


def weight_decay_loss(model, optimizer_name, weight_decay, head_weight_decay=None):
    """Explicit L2 term wd·½Σw² (+ wd_head·½Σw² over the supervised head).

    As in the original: with LARS only the supervised head's kernels (LARS
    decays the rest itself and, like the original, excludes biases);
    otherwise every trainable variable outside batch norm, biases included.
    `head_weight_decay`, when not None, replaces wd for the supervised head's
    variables (the online probe's own regularisation).
    """
    if head_weight_decay is None:
        head_weight_decay = weight_decay
    head = {id(v) for v in model.supervised_head.trainable_variables} if model.supervised_head else set()
    if optimizer_name == "lars":
        variables = [v for v in model.trainable_variables
                     if id(v) in head and "bias" not in v.path]
    else:
        variables = [v for v in model.trainable_variables if "batch_normalization" not in v.path]
    total = ops.zeros((), "float32")
    for rate, group in ((weight_decay, [v for v in variables if id(v) not in head]),
                        (head_weight_decay, [v for v in variables if id(v) in head])):
        if rate and group:
            total += rate * 0.5 * sum(ops.sum(ops.square(ops.cast(v, "float32"))) for v in group)
    return total


def get_train_steps(num_examples, train_steps, train_epochs, train_batch_size):
    """train_steps if > 0, else ⌊N·epochs / B⌋ + 1 (the original's count)."""
    return train_steps or num_examples * train_epochs // train_batch_size + 1
