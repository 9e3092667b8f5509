"""What a run trains, and the training objective, for every backend.

Backend-neutral (keras, keras.ops and numpy only): the TensorFlow and JAX
edges (`trainer_tf.py`, `trainer_jax.py`) build the same model and
optimizers here and differentiate the same `Objective`; they only take the
gradients, apply them and distribute the batch.

The objective of one training step, for the rows a replica holds:

    total = contrastive(z) + Σ_labels CE(probe or supervised head) + weight decay,

each a mean over this replica's rows; with `--train_mode=autoencoder` the
balanced reconstruction loss of the views (`autoencoder.py`) replaces the
contrastive term. Under tf.distribute each of R replicas
differentiates total / R and the optimizer sums the gradients, which gives
the gradient of the global batch (the contrastive loss reaches other
replicas' rows through `gather`); under JAX the whole global batch is one
program sharded over the devices, R = 1 and `gather` is the identity.
"""
import contextlib

import keras
from keras import ops

import augment
import autoencoder
import metrics
import model as model_lib
import objective


# Dynamic loss scaling of mixed_float16 (Micikevicius et al. 2018, the
# values of keras.optimizers.LossScaleOptimizer).
INITIAL_LOSS_SCALE = 2.0 ** 15
LOSS_SCALE_GROWTH_STEPS = 2000


def clean_probe_view(cfg):
    """Whether training examples carry the clean view for the online probe."""
    return (cfg.probe_view == "clean" and cfg.train_mode in model_lib.REPRESENTATION_MODES
            and cfg.lineareval_while_pretraining)


def num_input_views(cfg):
    """Views per training example: the augmented ones
    (`model.augmented_views`) and the probe's clean view with
    --probe_view=clean."""
    return model_lib.augmented_views(cfg.train_mode) + int(clean_probe_view(cfg))


def view_channels(cfg):
    """Channels of one view: RGB and the --num_rand_bits planes."""
    return model_lib.view_channels(cfg.num_rand_bits)


def in_step_views(cfg, inputs):
    """The training batch of views [n, H, W, c · views] of a batch of
    --augment_in_step inputs (`augment.augment_views`): the run's
    augmentation, as the host pipeline's (`data.train_input_fn`) — no
    colour distortion or blur in fine-tuning."""
    return augment.augment_views(
        inputs, views=model_lib.augmented_views(cfg.train_mode), size=cfg.image_size,
        area_range=(cfg.crop_min_area, 1.0), flip=bool(cfg.use_flip),
        color_jitter_strength=cfg.color_jitter_strength or 0.0, blur=bool(cfg.use_blur))


def summary_hidden_norm(cfg):
    """Whether the contrast summaries normalise: as the loss does, and yes
    for losses that always work on unit vectors."""
    return cfg.loss_params.get("hidden_norm", True) is not False


@contextlib.contextmanager
def dtype_policy(precision):
    """Layers created inside compute in `precision` (one of
    `model.PRECISIONS`); Keras's global policy is restored on the way out.
    The losses, the projections' normalisation and every softmax cast to
    float32 first, whatever the policy."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def uses_loss_scale(cfg):
    """Whether the step scales the loss: float16 gradients underflow."""
    return cfg.precision == "mixed_float16"


def next_loss_scale(scale, good_steps, finite):
    """(scale, good_steps) after a step of dynamic loss scaling: non-finite
    gradients halve the scale and restart the count of finite steps (and
    the step is skipped); `LOSS_SCALE_GROWTH_STEPS` finite steps in a row
    double it."""
    good_steps = ops.where(finite, good_steps + 1, 0)
    grow = ops.greater_equal(good_steps, LOSS_SCALE_GROWTH_STEPS)
    scale = ops.where(finite, ops.where(grow, 2.0 * scale, scale), 0.5 * scale)
    return scale, ops.where(grow, 0, good_steps)


def scaled_step_finite(finite, scale):
    """The `gradients_finite` log of a loss-scaled step: a step the scaler
    skips is expected, not a failure, while its scale is above 1; below,
    the gradients are not finite even unscaled, and the run stops as an
    unscaled one would."""
    return ops.cast(ops.logical_or(finite, ops.greater(scale, 1.0)), "float32")


def build_model(cfg, num_classes, view_channels=None, precision=None):
    """The `model.Model` of the flags, built (variables created) by tracing
    a symbolic batch of `num_input_views(cfg)` views of `view_channels`
    each (by default `view_channels(cfg)`); `num_classes` is an int or one
    per label. Its layers compute in `precision` (by default
    --precision); its variables are float32 under every policy."""
    with dtype_policy(precision or cfg.precision):
        return _build_model(cfg, num_classes, view_channels)


def _build_model(cfg, num_classes, view_channels):
    if view_channels is None:
        view_channels = model_lib.view_channels(cfg.num_rand_bits)
    # A flag the run does not use is None (`config.unused_flags`): the
    # model gets the value that does nothing.
    finetune = cfg.train_mode == "finetune"
    model = model_lib.Model(
        num_classes, image_size=cfg.image_size, train_mode=cfg.train_mode,
        resnet_depth=cfg.resnet_depth, width_multiplier=cfg.width_multiplier,
        sk_ratio=cfg.sk_ratio, se_ratio=cfg.se_ratio, batch_norm_decay=cfg.batch_norm_decay,
        global_bn=cfg.global_bn,
        fine_tune_after_block=cfg.fine_tune_after_block if finetune else -1,
        proj_head_mode=cfg.proj_head_mode, proj_out_dim=cfg.proj_out_dim,
        num_proj_layers=cfg.num_proj_layers, ft_proj_selector=cfg.ft_proj_selector,
        lineareval_while_pretraining=bool(cfg.lineareval_while_pretraining),
        probe_batch_norm=bool(cfg.probe_batch_norm),
        probe_view="clean" if clean_probe_view(cfg) else "augmented",
        view_channels=view_channels)
    channels = view_channels * num_input_views(cfg)
    # Traced, not run: an eager forward pass would compile every op under JAX.
    # compute_output_spec (not a symbolic __call__) allows a None head output.
    # The model's name scope keeps the variable paths of a __call__.
    with keras.name_scope(model.name, caller=model):
        model.compute_output_spec(
            keras.KerasTensor((2, cfg.image_size, cfg.image_size, channels)), training=False)
    return model


def train_steps(cfg, num_train_examples):
    """Length of the run in steps (`model.get_train_steps`)."""
    return model_lib.get_train_steps(num_train_examples, cfg.train_steps,
                                     cfg.train_epochs, cfg.train_batch_size)


def learning_rate_schedule(cfg, base_learning_rate, num_train_examples):
    return model_lib.WarmUpAndCosineDecay(
        base_learning_rate, num_train_examples, cfg.train_batch_size, cfg.warmup_epochs,
        train_steps(cfg, num_train_examples), cfg.learning_rate_scaling)


def has_probe_optimizer(cfg, model):
    """Whether the online probe trains with its own optimizer."""
    return bool(cfg.probe_learning_rate) and model.supervised_head is not None \
        and cfg.train_mode in model_lib.REPRESENTATION_MODES


def build_optimizers(cfg, model, num_train_examples):
    """(optimizer, probe optimizer or None), built on the variables each
    updates: with --probe_learning_rate the online probe has an optimizer of
    the same kind at its own rate (its inputs' scale drifts while the
    encoder trains; at the encoder's rate it lagged far behind a converged
    linear classifier on small runs), and the main one updates the rest."""
    def make(base_learning_rate):
        schedule = learning_rate_schedule(cfg, base_learning_rate, num_train_examples)
        return model_lib.build_optimizer(cfg.optimizer, schedule, cfg.momentum,
                                         cfg.weight_decay)

    optimizer = make(cfg.learning_rate)
    probe_optimizer = None
    if has_probe_optimizer(cfg, model):
        probe_optimizer = make(cfg.probe_learning_rate)
        probe_variables, other_variables = split_probe(model, model.trainable_variables)
        probe_optimizer.build(probe_variables)
        optimizer.build(other_variables)
    else:
        optimizer.build(model.trainable_variables)
    return optimizer, probe_optimizer


def split_probe(model, items, variable=lambda item: item):
    """(items whose variable is one of the online probe's, the other items),
    order kept; `variable(item)` is the variable an item stands for."""
    probe = {id(v) for v in model.supervised_head.trainable_variables}
    return ([item for item in items if id(variable(item)) in probe],
            [item for item in items if id(variable(item)) not in probe])


def weight_decay_loss(model, cfg):
    """The explicit weight-decay term of the flags: --weight_decay, and
    --probe_weight_decay for the online probe when set."""
    representation = cfg.train_mode in model_lib.REPRESENTATION_MODES
    probe_rate = cfg.probe_weight_decay if representation else None
    return model_lib.weight_decay_loss(model, cfg.optimizer, cfg.weight_decay,
                                       head_weight_decay=probe_rate)


def single_device_gather(x):
    """The gather of one replica: its own rows, at index 0."""
    return x, 0


class Objective:
    """The training objective of one replica (see the module docstring).

    Args:
        model: a built `model.Model`.
        cfg: a `config.Config` (loss, loss_params, temperature, seed, ...).
        gather: x -> (rows of x from every replica in replica order, this
            replica's index); differentiable. `single_device_gather` when
            the batch is not split across replicas.
        normal_noise: (shape, step, stream) -> standard-normal noise, a
            stateless function of (cfg.seed, step, stream) and identical on
            every replica; the SWD loss draws its projections and prior
            samples with it.
        num_replicas: replicas that each hold a part of the global batch.
        label_names: with several labels, their names (the per-label logs
            `supervised_acc/<name>`).
    """

    def __init__(self, model, cfg, gather=single_device_gather, normal_noise=None,
                 num_replicas=1, label_names=None):
        self.model = model
        self.cfg = cfg
        self.label_names = tuple(label_names or ())
        self.gather = gather
        self.normal_noise = normal_noise
        self.num_replicas = num_replicas
        self.summary_hidden_norm = summary_hidden_norm(cfg)

    def contrastive(self, projection, step):
        """(contrastive loss, its logs) of `projection`, this replica's [2n, d]
        rows (first views, then second views), against the negatives of every
        replica."""
        cfg = self.cfg
        z = ops.cast(projection, "float32")
        z1, z2 = ops.split(z, 2, axis=0)
        z1_all, replica_id = self.gather(z1)
        z2_all, _ = self.gather(z2)
        params = dict(cfg.loss_params)
        if cfg.loss == "swd":
            dim = int(z.shape[-1])
            rows = 2 * int(z1.shape[0]) * self.num_replicas
            params["projection_noise"] = self.normal_noise((dim, dim), step, 0)
            params["prior_noise"] = self.normal_noise((rows, dim), step, 1)
        loss = objective.compute_loss(cfg.loss, z1, z2, z1_all=z1_all, z2_all=z2_all,
                                      replica_id=replica_id, chunk_size=cfg.loss_chunk_size,
                                      **params)
        accuracy, entropy = objective.contrastive_accuracy_and_entropy(
            z1, z2, z2_all=z2_all, replica_id=replica_id, temperature=cfg.temperature,
            hidden_norm=self.summary_hidden_norm, chunk_size=cfg.loss_chunk_size)
        return loss, dict(contrast_loss=loss, contrast_acc=accuracy, contrast_entropy=entropy)

    def reconstruction(self, features, reconstruction):
        """(balanced reconstruction loss, its logs) of the decoder's output
        [V·n, H, W, c] against the V augmented views of `features`."""
        c = self.model.view_channels
        views = reconstruction.shape[0] // features.shape[0]
        targets = ops.concatenate([features[..., v * c:(v + 1) * c] for v in range(views)], 0)
        loss = autoencoder.reconstruction_loss(targets, reconstruction, model_lib.RGB_CHANNELS)
        return loss, dict(reconstruction_loss=loss)

    def supervised(self, labels, logits):
        """(Σ_j mean CE of label j, logs) of the supervised head's logits
        [V·n, Σ C_j] for `labels` [n] or [n, L], the same labels for each of
        the V views; `supervised_acc` is the first label's top-1."""
        num_views = logits.shape[0] // labels.shape[0]
        columns = metrics.label_columns(labels)
        logs, total = {}, ops.zeros((), "float32")
        for j, (column, label_logits) in enumerate(zip(
                columns, model_lib.label_logits(logits, self.model.label_classes))):
            loss, accuracy = metrics.supervised_loss_and_accuracy(
                ops.tile(column, (num_views,)), label_logits)
            total += loss
            if j == 0:
                logs["supervised_acc"] = accuracy
            if len(columns) > 1:
                logs[f"supervised_acc/{self.label_names[j]}"] = accuracy
        logs["supervised_loss"] = total
        return total, logs

    def __call__(self, features, labels, step):
        """(total loss, logs {name: float32 scalar}) of a training forward
        pass on this replica's `features` [n, H, W, c * views] (or the
        inputs of `in_step_views`, a dict) and `labels` [n] (or [n, L]);
        `step` is the optimizer's iteration count."""
        if isinstance(features, dict):
            features = in_step_views(self.cfg, features)
        output, logits = self.model(features, training=True)
        logs = {}
        total = ops.zeros((), "float32")
        if output is not None:
            if self.model.decoder is not None:
                loss, output_logs = self.reconstruction(features, output)
            else:
                loss, output_logs = self.contrastive(output, step)
            logs.update(output_logs)
            total += loss
        if logits is not None:
            loss, supervised_logs = self.supervised(labels, logits)
            logs.update(supervised_logs)
            total += loss
        decay = weight_decay_loss(self.model, self.cfg)
        logs["weight_decay"] = decay
        total += decay
        logs["total_loss"] = total
        return total, logs


def log_names(cfg, model, label_names=None):
    """Names of the logs `Objective` returns, in a fixed order."""
    names = ["total_loss", "weight_decay"]
    if cfg.train_mode == "pretrain":
        names += ["contrast_loss", "contrast_acc", "contrast_entropy"]
    if cfg.train_mode == "autoencoder":
        names += ["reconstruction_loss"]
    if model.supervised_head is not None:
        names += ["supervised_loss", "supervised_acc"]
        if len(model.label_classes) > 1:
            names += [f"supervised_acc/{name}" for name in label_names]
    return names


def all_finite(tensors):
    """1.0 when every entry of every tensor is finite, else 0.0 (float32)."""
    flags = [ops.all(ops.isfinite(t)) for t in tensors if t is not None]
    if not flags:
        return ops.ones((), "float32")
    return ops.cast(ops.all(ops.stack(flags)), "float32")

