r"""SimCLR trainer with the generalized contrastive losses: flags and driver.

Mirrors `tf2/run.py` of the original release (same 48 flags, same meaning),
with the loss family of "Intriguing Properties of Contrastive Losses" wired in
(`--loss`), one code path for every distribution strategy, and an embedded
default dataset so that a bare `python run.py` trains, evaluates and writes
`result.json` on a laptop CPU.

    python run.py                                     # digits, ~4 min on 2 CPU cores
    python run.py --loss=swd --prior=uniform_hypercube
    python run.py --dataset=cifar10 --data_dir=DIR --eval_split=test --image_size=32 ...

Every user mistake ends with one line `run.py: error: ...` and exit status 2.
"""
import contextlib
import json
import math
import os
import shutil
import sys
import time


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hides what TensorFlow's C++ runtime writes to file descriptor 2 while
    it loads (oneDNN and missing-CUDA notices): those lines bypass every log
    level, and a user's error message should be the only line they see. Left
    alone when the user sets TF_CPP_MIN_LOG_LEVEL to ask for TF's logs."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# TensorFlow's x86 wheels turn their oneDNN kernels on only for CPUs with
# AVX512-VNNI or newer; on AVX2-only CPUs (AMD EPYC, most laptops) they are
# off, and a training step of the default job took 3.7x longer (bench/README.md).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

with _quiet_native_stderr():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import keras
    tf.config.list_physical_devices()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

import data as data_lib  # noqa: E402
import data_util  # noqa: E402
import datasets  # noqa: E402
import metrics  # noqa: E402
import model as model_lib  # noqa: E402
import objective  # noqa: E402

FLAGS = flags.FLAGS

# ---------------------------------------------------------------------------
# The original's 48 flags. Defaults are the original's; the documented
# deviations are `dataset` (embedded digits), `use_tpu` (False: the strategy is
# detected, see `get_strategy`) and `width_multiplier` (a float). Flags left
# unset take the dataset's preset where one exists (`PRESETS`).
# ---------------------------------------------------------------------------
flags.DEFINE_float("learning_rate", 0.3, "Initial learning rate per batch size of 256.")
flags.DEFINE_enum("learning_rate_scaling", "linear", ["linear", "sqrt"],
                  "How to scale the learning rate as a function of batch size.")
flags.DEFINE_float("warmup_epochs", 10, "Number of epochs of warmup.")
flags.DEFINE_float("weight_decay", 1e-6, "Amount of weight decay to use.")
flags.DEFINE_float("batch_norm_decay", 0.9, "Batch norm decay parameter.")
flags.DEFINE_integer("train_batch_size", 512, "Global batch size for training.")
flags.DEFINE_string("train_split", "train", "Split for training.")
flags.DEFINE_integer("train_epochs", 100, "Number of epochs to train for.")
flags.DEFINE_integer("train_steps", 0, "Number of steps to train for. If provided, overrides train_epochs.")
flags.DEFINE_integer("eval_steps", 0, "Number of steps to eval for. If not provided, evals over entire dataset.")
flags.DEFINE_integer("eval_batch_size", 256, "Global batch size for eval.")
flags.DEFINE_integer("checkpoint_epochs", 1, "Number of epochs between checkpoints/summaries.")
flags.DEFINE_integer("checkpoint_steps", 0,
                     "Number of steps between checkpoints/summaries. If provided, overrides checkpoint_epochs.")
flags.DEFINE_string("eval_split", "validation", "Split for evaluation.")
flags.DEFINE_string("dataset", "digits",
                    "Dataset: 'digits' (embedded), 'image_folder' (needs --data_dir) or a TFDS name.")
flags.DEFINE_bool("cache_dataset", False, "Whether to cache the entire dataset in memory.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_then_eval"], "Whether to perform training or evaluation.")
flags.DEFINE_enum("train_mode", "pretrain", ["pretrain", "finetune"],
                  "The train mode controls different objectives and trainable components.")
flags.DEFINE_bool("lineareval_while_pretraining", True,
                  "Whether to finetune supervised head while pretraining.")
flags.DEFINE_string("checkpoint", None, "Loading from the given checkpoint for fine-tuning if a finetuning "
                    "checkpoint does not already exist in model_dir.")
flags.DEFINE_bool("zero_init_logits_layer", False, "If True, zero initialize layers after avg_pool for supervised learning.")
flags.DEFINE_integer("fine_tune_after_block", -1,
                     "The layers after which block that we will fine-tune. -1 means fine-tuning everything. "
                     "0 means fine-tuning after stem block. 4 means fine-tuning just the linear head.")
flags.DEFINE_string("master", None, "Address/name of the TensorFlow master to use. By default, use an in-process master.")
flags.DEFINE_string("model_dir", None, "Model directory for training (default: runs/<dataset>_<mode>_<loss>_<time>).")
flags.DEFINE_string("data_dir", None, "Directory where dataset is stored.")
flags.DEFINE_bool("use_tpu", False, "Whether to run on TPU (also implied by --tpu_name or --master).")
flags.DEFINE_string("tpu_name", None, "The Cloud TPU to use for training.")
flags.DEFINE_string("tpu_zone", None, "GCE zone where the Cloud TPU is located in.")
flags.DEFINE_string("gcp_project", None, "Project name for the Cloud TPU-enabled project.")
flags.DEFINE_enum("optimizer", "lars", ["momentum", "adam", "lars"], "Optimizer to use.")
flags.DEFINE_float("momentum", 0.9, "Momentum parameter.")
flags.DEFINE_string("eval_name", None, "Name for eval (names the eval summary folder).")
flags.DEFINE_integer("keep_checkpoint_max", 5, "Maximum number of checkpoints to keep.")
flags.DEFINE_integer("keep_hub_module_max", 1, "Maximum number of Hub modules to keep.")
flags.DEFINE_float("temperature", 0.1, "Temperature parameter for contrastive loss.")
flags.DEFINE_boolean("hidden_norm", True, "L2-normalise the projections before the contrastive loss.")
flags.DEFINE_enum("proj_head_mode", "nonlinear", ["none", "linear", "nonlinear"], "How the head projection is done.")
flags.DEFINE_integer("proj_out_dim", 128, "Number of head projection dimension.")
flags.DEFINE_integer("num_proj_layers", 3, "Number of non-linear head layers.")
flags.DEFINE_integer("ft_proj_selector", 0, "Which layer of the projection head to use during fine-tuning. "
                     "0 means no projection head, and -1 means the final layer.")
flags.DEFINE_boolean("global_bn", True, "Whether to aggregate BN statistics across distributed cores.")
flags.DEFINE_float("width_multiplier", 1, "Multiplier to change width of network (fractions allowed).")
flags.DEFINE_integer("resnet_depth", 50, "Depth of ResNet: 18, 34, 50, 101, 152 or 200.")
flags.DEFINE_float("sk_ratio", 0.0,
                   "If it is bigger than 0, it enables selective kernels in bottleneck blocks "
                   "(ResNet-50 and deeper), ResNet-D projection shortcuts and, unless the "
                   "CIFAR stem is used, the ResNet-D deep stem. Recommendation: 0.0625.")
flags.DEFINE_float("se_ratio", 0.0, "If it is bigger than 0, it will enable SE.")
flags.DEFINE_integer("image_size", 224, "Input image size.")
flags.DEFINE_float("color_jitter_strength", 1.0, "The strength of color jittering.")
flags.DEFINE_boolean("use_blur", True, "Whether or not to use Gaussian blur for augmentation during pretraining.")

# ---------------------------------------------------------------------------
# Flags this project adds.
# ---------------------------------------------------------------------------
flags.DEFINE_enum("loss", "ntxent", list(objective.LOSSES), "Contrastive objective (see README, 'Losses').")
flags.DEFINE_enum("prior", None, list(objective.PRIORS),
                  "swd: prior the representations are matched to (default uniform_hypersphere).")
flags.DEFINE_float("lambda_weight", None, "decoupled/swd/simple/align_uniform: weight λ of the distribution term.")
flags.DEFINE_float("gen_loss_scale", None, "decoupled/swd: overall scale s of the generalized loss (default 1).")
flags.DEFINE_bool("dhel_include_augs", None, "dhel: add the second view's energy term (default True).")
flags.DEFINE_enum("kcl_kernel", None, list(objective.KCL_KERNELS), "kcl: kernel (default gaussian).")
flags.DEFINE_float("kcl_t", None, "kcl: kernel parameter t (default 2).")
flags.DEFINE_float("kcl_gamma", None, "kcl: weight γ of the uniformity term (default 16).")
flags.DEFINE_integer("hard_num_negatives", None, "hard: negatives kept per anchor (default all).")
flags.DEFINE_float("align_alpha", None, "align_uniform: exponent α of the alignment term (default 2).")
flags.DEFINE_float("unif_t", None, "align_uniform: t of the uniformity term (default 2).")
flags.DEFINE_float("crop_min_area", 0.08, "Smallest area fraction of the random resized crop.")
flags.DEFINE_float("probe_learning_rate", 0.0,
                   "Learning rate per batch size of 256 of the online linear probe (pretrain with "
                   "--lineareval_while_pretraining), on the same warm-up and cosine schedule as --learning_rate; "
                   "0 trains the probe with the main optimizer, as the original does.")
flags.DEFINE_float("probe_weight_decay", None,
                   "Weight decay of the online probe (pretrain with --lineareval_while_pretraining), an "
                   "explicit wd·½Σw² term on its kernel and bias; unset: --weight_decay, as the original.")
flags.DEFINE_bool("probe_batch_norm", False,
                  "Standardise the supervised head's input with batch norm without scale or offset "
                  "(the MAE linear probe); the original feeds the features as they are.")
flags.DEFINE_enum("probe_view", "augmented", list(model_lib.PROBE_VIEWS),
                  "What the online probe trains on while pretraining: the augmented views, as the original "
                  "does, or clean, the evaluation view of each training image, encoded in inference mode "
                  "as at evaluation (one extra forward pass per step).")
flags.DEFINE_bool("use_flip", True, "Random horizontal flips in training (the original always flips).")
flags.DEFINE_bool("compute_baselines", False,
                  "After eval, also fit logistic regression on raw pixels and on an untrained encoder's features "
                  "(small datasets only).")
flags.DEFINE_integer("seed", 0, "Seed for weight initialisation and the SWD projections.")

# Flags that map onto compute_loss parameters: flag -> (param, losses it is
# restricted to, or None for every loss that accepts the param).
LOSS_FLAGS = {
    "temperature": ("temperature", None),
    "hidden_norm": ("hidden_norm", None),
    "prior": ("prior", None),
    "lambda_weight": ("lambda_weight", None),
    "gen_loss_scale": ("scale", None),
    "dhel_include_augs": ("include_augs", None),
    "kcl_kernel": ("kernel", ("kcl",)),
    "kcl_t": ("t", ("kcl",)),
    "kcl_gamma": ("gamma", ("kcl",)),
    "hard_num_negatives": ("num_negatives", ("hard",)),
    "align_alpha": ("alpha", ("align_uniform",)),
    "unif_t": ("t", ("align_uniform",)),
}
# --temperature also sets the temperature of the contrast-accuracy and
# entropy summaries, so it never contradicts a loss that has no temperature.
SHARED_LOSS_FLAGS = ("temperature",)

# Values that flags left unset take for a dataset. The digits preset sizes
# the default job for a laptop: 16×16 views, a quarter-width ResNet-18 and
# enough steps to finish in a few minutes on 2 CPU cores. sk_ratio > 0 gives
# a ResNet-18 ResNet-D shortcuts and nothing else (selective kernels live in
# bottleneck blocks only): the plain stride-2 1×1 shortcuts subsample, so
# while the residual branches are small a 16×16 view reaches the 2×2 output
# through 4 of its 256 positions; the average-pooled ones read them all
# (untrained encoder 0.738 → 0.944, trained 0.97 → 0.99 on the test split).
# The online probe trains on the clean view with its own weight decay: on
# augmented views it scored 1–3 points under a logistic regression on the
# same encoder, on clean views without decay it memorised the 1,297 images.
PRESETS = {
    "digits": dict(
        mode="train_then_eval", image_size=16, resnet_depth=18, width_multiplier=0.25,
        sk_ratio=0.0625, train_batch_size=256, train_epochs=60, warmup_epochs=5,
        optimizer="adam", learning_rate=3e-3, weight_decay=1e-6, temperature=0.2,
        proj_out_dim=64, num_proj_layers=2, eval_split="test", eval_batch_size=500,
        checkpoint_epochs=10, use_blur=False, use_flip=False, color_jitter_strength=0.3,
        crop_min_area=0.7, probe_batch_norm=True, probe_learning_rate=0.3, probe_view="clean",
        probe_weight_decay=1e-3,
        compute_baselines=True),
}
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)


class UsageError(Exception):
    """A mistake in the command line or the environment it names."""


# ---------------------------------------------------------------------------
# Flag checks: each raises with one line naming the flag and what is allowed.
# ---------------------------------------------------------------------------
def _register_validators():
    def positive(name):
        flags.register_validator(name, lambda v: v is None or v > 0, f"--{name} must be > 0")

    def non_negative(name):
        flags.register_validator(name, lambda v: v is None or v >= 0, f"--{name} must be >= 0")

    for name in ("train_batch_size", "eval_batch_size", "image_size", "proj_out_dim", "num_proj_layers",
                 "width_multiplier", "keep_checkpoint_max", "keep_hub_module_max", "temperature",
                 "kcl_t", "align_alpha", "unif_t", "hard_num_negatives"):
        positive(name)
    for name in ("learning_rate", "warmup_epochs", "weight_decay", "train_epochs", "train_steps",
                 "eval_steps", "checkpoint_epochs", "checkpoint_steps", "sk_ratio", "se_ratio",
                 "color_jitter_strength", "lambda_weight", "gen_loss_scale", "kcl_gamma", "probe_learning_rate",
                 "probe_weight_decay"):
        non_negative(name)
    flags.register_validator("resnet_depth", lambda v: v in RESNET_DEPTHS,
                             f"--resnet_depth must be one of {', '.join(map(str, RESNET_DEPTHS))}")
    flags.register_validator("fine_tune_after_block", lambda v: -1 <= v <= 4,
                             "--fine_tune_after_block must be one of -1, 0, 1, 2, 3, 4")
    flags.register_validator("momentum", lambda v: 0 <= v < 1, "--momentum must be in [0, 1)")
    flags.register_validator("batch_norm_decay", lambda v: 0 <= v < 1, "--batch_norm_decay must be in [0, 1)")
    flags.register_validator("crop_min_area", lambda v: 0 < v <= 1, "--crop_min_area must be in (0, 1]")


_register_validators()


def parse_flags(argv):
    """absl parsing whose errors become one line and exit status 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def fail(message):
    print(f"run.py: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def apply_preset():
    """Gives flags the user left unset the dataset's preset value."""
    for name, value in PRESETS.get(FLAGS.dataset, {}).items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def resolve_loss_params(cfg, present):
    """compute_loss keyword arguments for `cfg.loss` from the loss flags.

    Unset flags leave the loss's own default (e.g. τ = 1 for `decoupled`); an
    explicitly set flag that the chosen loss does not use is an error.
    """
    accepted = objective.LOSS_PARAMS[cfg.loss]
    params = {}
    for flag, (param, only) in LOSS_FLAGS.items():
        value = getattr(cfg, flag, None)
        applies = param in accepted and (only is None or cfg.loss in only)
        if applies and (flag in present or (value is not None and flag not in ("temperature", "hidden_norm"))):
            params[param] = value
        elif flag in present and not applies and flag not in SHARED_LOSS_FLAGS:
            users = [name for name in objective.LOSSES
                     if param in objective.LOSS_PARAMS[name] and (only is None or name in only)]
            raise UsageError(f"--{flag} does not apply to --loss={cfg.loss}; it applies to "
                             f"--loss={'|'.join(users)}")
    return params


def check_flags(cfg, present):
    """Cross-flag checks that absl validators cannot express."""
    if cfg.train_mode == "pretrain" and cfg.fine_tune_after_block > -1:
        raise UsageError("--fine_tune_after_block must be -1 with --train_mode=pretrain "
                         "(freezing applies to --train_mode=finetune)")
    if cfg.proj_head_mode == "nonlinear" and cfg.num_proj_layers < 1:
        raise UsageError("--num_proj_layers must be >= 1 with --proj_head_mode=nonlinear")
    num_hiddens = {"none": 1, "linear": 2, "nonlinear": cfg.num_proj_layers + 1}[cfg.proj_head_mode]
    if not -num_hiddens <= cfg.ft_proj_selector < num_hiddens:
        raise UsageError(f"--ft_proj_selector must be in [{-num_hiddens}, {num_hiddens - 1}] with "
                         f"--proj_head_mode={cfg.proj_head_mode} and --num_proj_layers={cfg.num_proj_layers}")
    if cfg.train_steps == 0 and cfg.train_epochs == 0 and cfg.mode != "eval":
        raise UsageError("--train_epochs or --train_steps must be > 0 to train")
    if cfg.checkpoint_steps == 0 and cfg.checkpoint_epochs == 0:
        raise UsageError("--checkpoint_epochs or --checkpoint_steps must be > 0")
    # Passing a probe flag's own default (the original's behaviour) is fine anywhere.
    for flag in ("probe_learning_rate", "probe_view", "probe_weight_decay"):
        if flag in present and getattr(cfg, flag) != FLAGS[flag].default and (
                cfg.train_mode != "pretrain" or not cfg.lineareval_while_pretraining):
            raise UsageError(f"--{flag} applies to the online probe: --train_mode=pretrain "
                             "with --lineareval_while_pretraining")
    if cfg.train_mode == "finetune" and cfg.loss != "ntxent" and "loss" in present:
        raise UsageError("--loss applies to --train_mode=pretrain only")
    return resolve_loss_params(cfg, present)


# ---------------------------------------------------------------------------
# Distribution.
# ---------------------------------------------------------------------------
def get_strategy(cfg):
    """One strategy for every set-up.

    TPUStrategy when --use_tpu, --tpu_name or --master is given;
    MultiWorkerMirroredStrategy when TF_CONFIG names several tasks;
    MirroredStrategy over the visible GPUs when there are several;
    OneDeviceStrategy on the single GPU or the CPU otherwise.
    """
    if cfg.use_tpu or cfg.tpu_name or cfg.master:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=cfg.tpu_name or cfg.master, zone=cfg.tpu_zone, project=cfg.gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker")) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict() or \
            isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def cross_replica_gather(x):
    """(rows of x from every replica in replica order, this replica's index).

    All-gather is differentiable: the gradient reaching a gathered row is
    summed over replicas and routed back to the replica that owns the row, so
    each replica's loss sees every replica's embeddings with gradients.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x, 0
    gathered = context.all_gather(x, axis=0)
    rows = None if x.shape[0] is None else x.shape[0] * context.num_replicas_in_sync
    gathered.set_shape([rows] + x.shape[1:])  # all_gather drops the static shape
    return gathered, context.replica_id_in_sync_group


def split_probe(model, items, variable=lambda item: item):
    """(items whose variable is one of the online probe's, the other items),
    order kept; `variable(item)` is the variable an item stands for."""
    probe = {id(v) for v in model.supervised_head.trainable_variables}
    return ([item for item in items if id(variable(item)) in probe],
            [item for item in items if id(variable(item)) not in probe])


def weight_decay_loss(model, cfg):
    """The explicit weight-decay term of the flags: --weight_decay, and
    --probe_weight_decay for the online probe when set."""
    probe_rate = cfg.probe_weight_decay if cfg.train_mode == "pretrain" else None
    return model_lib.weight_decay_loss(model, cfg.optimizer, cfg.weight_decay,
                                       head_weight_decay=probe_rate)


class TrainStep:
    """The per-replica training step: losses, gradients, update.

    total = contrastive + probe cross-entropy + explicit weight decay, each a
    mean over this replica's rows; the gradient of total / R is summed over the
    R replicas by the optimizer, which gives the gradient of the global-batch
    loss (the contrastive loss reaches other replicas' rows through the gather).
    """

    def __init__(self, model, optimizer, cfg, loss_params, num_replicas, probe_optimizer=None):
        self.model = model
        self.optimizer = optimizer
        self.probe_optimizer = probe_optimizer
        self.cfg = cfg
        self.loss_params = loss_params
        self.num_replicas = num_replicas
        self.summary_temperature = loss_params.get("temperature", cfg.temperature)
        self.summary_hidden_norm = loss_params.get("hidden_norm", True) is not False

    def _swd_noise(self, dim, global_rows):
        # Identical on every replica: seeded by (seed, step), not by replica.
        step = tf.cast(self.optimizer.iterations, tf.int32)
        seed = tf.stack([tf.constant(self.cfg.seed, tf.int32), step])
        projection = tf.random.stateless_normal([dim, dim], seed=seed)
        prior = tf.random.stateless_normal([global_rows, dim], seed=seed + [1, 0])
        return dict(projection_noise=projection, prior_noise=prior)

    def contrastive(self, projection):
        """Per-replica (contrastive loss, its logs) of `projection`, this
        replica's [2n, d] rows (first views, then second views), against the
        negatives of every replica."""
        cfg = self.cfg
        z = tf.cast(projection, tf.float32)
        z1, z2 = tf.split(z, 2, axis=0)
        z1_all, replica_id = cross_replica_gather(z1)
        z2_all, _ = cross_replica_gather(z2)
        params = dict(self.loss_params)
        if cfg.loss == "swd":
            params.update(self._swd_noise(int(z.shape[-1]), 2 * int(z1.shape[0]) * self.num_replicas))
        con_loss = objective.compute_loss(cfg.loss, z1, z2, z1_all=z1_all, z2_all=z2_all,
                                          replica_id=replica_id, **params)
        acc, entropy = objective.contrastive_accuracy_and_entropy(
            z1, z2, z2_all=z2_all, replica_id=replica_id,
            temperature=self.summary_temperature, hidden_norm=self.summary_hidden_norm)
        return con_loss, dict(contrast_loss=con_loss, contrast_acc=acc, contrast_entropy=entropy)

    def losses(self, features, labels):
        """Per-replica (total loss, logs dict of float32 scalars)."""
        projection, logits = self.model(features, training=True)
        logs = {}
        total = tf.zeros((), tf.float32)
        if projection is not None:
            con_loss, con_logs = self.contrastive(projection)
            logs.update(con_logs)
            total += con_loss
        if logits is not None:
            num_views = logits.shape[0] // labels.shape[0]
            sup_labels = tf.tile(labels, [num_views])
            sup_loss, sup_acc = metrics.supervised_loss_and_accuracy(sup_labels, logits)
            logs.update(supervised_loss=sup_loss, supervised_acc=sup_acc)
            total += sup_loss
        wd = weight_decay_loss(self.model, self.cfg)
        logs.update(weight_decay=wd)
        total += wd
        logs["total_loss"] = total
        return total, logs

    def gradients(self, features, labels):
        """(per-replica gradients of total / R, logs)."""
        with tf.GradientTape() as tape:
            total, logs = self.losses(features, labels)
            scaled = total / self.num_replicas
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled, variables)
        return grads, logs

    def __call__(self, features, labels):
        grads, logs = self.gradients(features, labels)
        pairs = [(g, v) for g, v in zip(grads, self.model.trainable_variables) if g is not None]
        if self.probe_optimizer is not None:
            probe_pairs, pairs = split_probe(self.model, pairs, variable=lambda pair: pair[1])
            self.probe_optimizer.apply_gradients(probe_pairs)
        self.optimizer.apply_gradients(pairs)
        return logs


# ---------------------------------------------------------------------------
# Building, checkpoints, evaluation.
# ---------------------------------------------------------------------------
def build_model(cfg, num_classes):
    return model_lib.Model(
        num_classes, image_size=cfg.image_size, train_mode=cfg.train_mode,
        resnet_depth=cfg.resnet_depth, width_multiplier=cfg.width_multiplier,
        sk_ratio=cfg.sk_ratio, se_ratio=cfg.se_ratio, batch_norm_decay=cfg.batch_norm_decay,
        global_bn=cfg.global_bn, fine_tune_after_block=cfg.fine_tune_after_block,
        proj_head_mode=cfg.proj_head_mode, proj_out_dim=cfg.proj_out_dim,
        num_proj_layers=cfg.num_proj_layers, ft_proj_selector=cfg.ft_proj_selector,
        lineareval_while_pretraining=cfg.lineareval_while_pretraining,
        probe_batch_norm=cfg.probe_batch_norm, probe_view=cfg.probe_view)


def clean_probe_view(cfg):
    """Whether training examples carry the clean view for the online probe."""
    return (cfg.probe_view == "clean" and cfg.train_mode == "pretrain"
            and cfg.lineareval_while_pretraining)


def num_input_views(cfg):
    """Views per training example: two augmented ones in pretraining (and the
    probe's clean view with --probe_view=clean), one in fine-tuning."""
    return 2 + int(clean_probe_view(cfg)) if cfg.train_mode == "pretrain" else 1


def train_input_fn(cfg, source):
    """The training `input_fn` for `build_distributed_dataset`."""
    return data_lib.build_input_fn(
        source, cfg.train_batch_size, is_training=True, split=cfg.train_split,
        image_size=cfg.image_size, train_mode=cfg.train_mode,
        color_jitter_strength=cfg.color_jitter_strength, use_blur=cfg.use_blur,
        cache_dataset=cfg.cache_dataset, area_range=(cfg.crop_min_area, 1.0),
        num_views=2, flip=cfg.use_flip, clean_view=clean_probe_view(cfg))


def build_all(cfg, strategy, num_classes, num_train_examples):
    """Model, optimizer, schedule, train steps and the online probe's own
    optimizer (None unless --probe_learning_rate), created (variables
    included) under the strategy."""
    train_steps = model_lib.get_train_steps(num_train_examples, cfg.train_steps,
                                            cfg.train_epochs, cfg.train_batch_size)

    def optimizer_at(base_learning_rate):
        schedule = model_lib.WarmUpAndCosineDecay(
            base_learning_rate, num_train_examples, cfg.train_batch_size, cfg.warmup_epochs,
            train_steps, cfg.learning_rate_scaling)
        return model_lib.build_optimizer(cfg.optimizer, schedule, cfg.momentum, cfg.weight_decay), schedule

    with strategy.scope():
        model = build_model(cfg, num_classes)
        optimizer, schedule = optimizer_at(cfg.learning_rate)
        # Build every variable now so that a checkpoint restores at once and
        # exactly, optimizer slots included.
        model(tf.zeros([2, cfg.image_size, cfg.image_size, 3 * num_input_views(cfg)]), training=False)
        probe_optimizer = None
        if cfg.probe_learning_rate and model.supervised_head is not None and cfg.train_mode == "pretrain":
            # The probe reads stop-gradient features whose scale drifts while
            # the encoder trains; at the encoder's learning rate it lags far
            # behind a converged linear classifier on small runs.
            probe_optimizer, _ = optimizer_at(cfg.probe_learning_rate)
            probe_variables, other_variables = split_probe(model, model.trainable_variables)
            probe_optimizer.build(probe_variables)
            optimizer.build(other_variables)
        else:
            optimizer.build(model.trainable_variables)
    return model, optimizer, schedule, train_steps, probe_optimizer


def resolve_checkpoint_path(path):
    """A checkpoint prefix, or the newest one in a directory."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise UsageError(f"--checkpoint={path} is a directory without a checkpoint; "
                             "pass a checkpoint prefix such as DIR/ckpt-100")
        return latest
    if not tf.io.gfile.glob(path + ".index"):
        raise UsageError(f"--checkpoint={path} is not a checkpoint prefix (no {path}.index); "
                         "pass a prefix such as DIR/ckpt-100 or its directory")
    return path


def make_checkpoint(model, **objects):
    """tf.train.Checkpoint of the model (and `objects`) that holds every model
    variable. Keras 3 leaves layers kept in Python lists out of TensorFlow's
    object graph (keras-team/keras#18398), so the ResNet's block groups and
    the projection head's layers are also saved by their variable paths."""
    return tf.train.Checkpoint(model=model, model_variables={v.path: v for v in model.variables},
                               **objects)


def training_checkpoint(model, optimizer, probe_optimizer=None):
    """What a run saves and resumes from: the model, the step, the
    optimizer's state and, with --probe_learning_rate, the probe's."""
    objects = dict(global_step=optimizer.iterations, optimizer=optimizer)
    if probe_optimizer is not None:
        objects["probe_optimizer"] = probe_optimizer
    return make_checkpoint(model, **objects)


def restore(cfg, model, optimizer, manager):
    """Resume from model_dir, else initialise from --checkpoint (weights only)."""
    checkpoint = manager.checkpoint
    if manager.latest_checkpoint:
        try:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise UsageError(f"--model_dir={cfg.model_dir} holds a checkpoint of a different model "
                             f"({type(e).__name__}); use a new --model_dir") from e
        print(f"resumed from {manager.latest_checkpoint}", flush=True)
        return
    if cfg.checkpoint:
        path = resolve_checkpoint_path(cfg.checkpoint)
        make_checkpoint(model).restore(path).expect_partial()
        print(f"initialised weights from {path}", flush=True)
        if cfg.zero_init_logits_layer and model.supervised_head is not None:
            for variable in model.supervised_head.trainable_variables:
                variable.assign(tf.zeros_like(variable))


def evaluate(cfg, strategy, model, source, optimizer):
    """Top-1/top-5 of the supervised head (the online probe while
    pretraining) on --eval_split, and the regularisation loss."""
    result = {"global_step": int(optimizer.iterations.numpy())}
    result["eval/regularization_loss"] = float(weight_decay_loss(model, cfg))
    if model.supervised_head is None:
        logging.info("No supervised head (pretrain without --lineareval_while_pretraining): "
                     "top-1 is not measured.")
        return result
    input_fn = data_lib.build_input_fn(
        source, cfg.eval_batch_size, is_training=False, split=cfg.eval_split,
        image_size=cfg.image_size, train_mode=cfg.train_mode)
    dataset = data_lib.build_distributed_dataset(input_fn, strategy)
    k = min(5, source.num_classes)

    @tf.function(autograph=False)
    def eval_step(features, labels):
        def step(features, labels):
            _, logits = model(features, training=False)
            return metrics.top_k_correct(labels, logits, (1, k)) + (tf.shape(labels)[0],)
        per_replica = strategy.run(step, (features, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica]

    totals = np.zeros(3)
    for i, (features, labels) in enumerate(dataset):
        if cfg.eval_steps and i >= cfg.eval_steps:
            break
        totals += [float(v) for v in eval_step(features, labels)]
    result["eval/label_top_1_accuracy"] = totals[0] / max(totals[2], 1)
    result["eval/label_top_5_accuracy"] = totals[1] / max(totals[2], 1)
    result["probe_top1"] = result["eval/label_top_1_accuracy"]
    return result


def compute_baselines(cfg, model, source, num_classes):
    """Logistic regression on raw pixels, on the trained encoder's h and on
    an untrained encoder's h (eval-mode batch norm, no augmentation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = source.as_numpy(cfg.train_split)
    x_test, y_test = source.as_numpy(cfg.eval_split)

    def fit_score(f_train, f_test):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(f_train, y_train)
        return float(clf.score(f_test, y_test))

    def encode(encoder_model, images):
        dataset = tf.data.Dataset.from_tensor_slices(images).map(
            lambda image: data_util.preprocess_image(
                image, cfg.image_size, cfg.image_size, is_training=False,
                test_crop=cfg.image_size > 32)).batch(512)
        return np.concatenate([np.asarray(encoder_model.encode(batch, training=False))
                               for batch in dataset])

    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    keras.utils.set_random_seed(cfg.seed + 1)
    untrained = build_model(cfg, num_classes)
    return {
        "raw_pixel_top1": fit_score(flat(x_train), flat(x_test)),
        "random_encoder_top1": fit_score(encode(untrained, x_train), encode(untrained, x_test)),
        "encoder_logreg_top1": fit_score(encode(model, x_train), encode(model, x_test)),
    }


def write_json(path, obj):
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


# ---------------------------------------------------------------------------
# Training loop.
# ---------------------------------------------------------------------------
def train(cfg, strategy, model, optimizer, schedule, train_steps, source, loss_params,
          manager, summary_writer, chief, probe_optimizer=None):
    num_examples = source.num_examples(cfg.train_split)
    steps_per_epoch = max(int(round(num_examples / cfg.train_batch_size)), 1)
    steps_per_loop = cfg.checkpoint_steps or cfg.checkpoint_epochs * steps_per_epoch
    iterator = iter(data_lib.build_distributed_dataset(train_input_fn(cfg, source), strategy))
    step_fn = TrainStep(model, optimizer, cfg, loss_params, strategy.num_replicas_in_sync,
                        probe_optimizer=probe_optimizer)
    # The step has no data-dependent Python control flow (the core also runs
    # under JAX), so AutoGraph would only re-parse the model, loss and
    # optimizer code: skipping it saves seconds of tracing per run.
    step_fn = tf.autograph.experimental.do_not_convert(step_fn)

    metric_names = ["total_loss", "weight_decay"]
    if cfg.train_mode == "pretrain":
        metric_names += ["contrast_loss", "contrast_acc", "contrast_entropy"]
    if model.supervised_head is not None:
        metric_names += ["supervised_loss", "supervised_acc"]

    @tf.function
    def train_multiple_steps(iterator, num_steps):
        # Several steps per host call, like the original; the metrics are
        # averaged over the steps in cross-replica context.
        totals = tf.zeros([len(metric_names)], tf.float32)
        for _ in tf.range(num_steps):
            features, labels = next(iterator)
            logs = strategy.run(step_fn, (features, labels))
            totals += tf.stack([strategy.reduce(tf.distribute.ReduceOp.MEAN, logs[k], axis=None)
                                for k in metric_names])
        return totals / tf.cast(num_steps, tf.float32)

    cur_step = int(optimizer.iterations.numpy())
    progbar = keras.utils.Progbar(train_steps, stateful_metrics=metric_names + ["learning_rate"])
    progbar.update(cur_step)
    while cur_step < train_steps:
        num_steps = min(steps_per_loop, train_steps - cur_step)
        means = train_multiple_steps(iterator, tf.constant(num_steps))
        cur_step = int(optimizer.iterations.numpy())
        manager.save(checkpoint_number=cur_step)
        values = dict(zip(metric_names, means.numpy().tolist()))
        values["learning_rate"] = float(schedule(cur_step - 1))
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"non-finite training metrics at step {cur_step}: {values}")
        if chief:
            with summary_writer.as_default():
                for k, v in values.items():
                    name = k if k == "learning_rate" else f"train/{k}"
                    tf.summary.scalar(name, v, step=cur_step)
            summary_writer.flush()
        progbar.update(cur_step, list(values.items()))
    return cur_step


def evaluate_and_write(cfg, strategy, model, source, optimizer, chief):
    """Evaluates, then writes result.json, result_<step>.json and eval summaries."""
    result = evaluate(cfg, strategy, model, source, optimizer)
    if cfg.compute_baselines:
        result.update(compute_baselines(cfg, model, source, source.num_classes))
    if chief:
        eval_dir = os.path.join(cfg.model_dir, f"eval_{cfg.eval_name}" if cfg.eval_name else "eval")
        with tf.summary.create_file_writer(eval_dir).as_default():
            for k, v in result.items():
                if k != "global_step":
                    tf.summary.scalar(k if "/" in k else f"eval/{k}", v, step=result["global_step"])
        write_json(os.path.join(cfg.model_dir, f"result_{result['global_step']}.json"), result)
        write_json(os.path.join(cfg.model_dir, "result.json"), result)
    print(json.dumps(result, indent=2, sort_keys=True), flush=True)
    return result


def recorded_train_steps(cfg, num_train, default):
    """Training length of the run in model_dir according to its flags.json."""
    path = os.path.join(cfg.model_dir, "flags.json")
    if not tf.io.gfile.exists(path):
        return default
    with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f)
    return model_lib.get_train_steps(num_train, recorded.get("train_steps", 0),
                                     recorded.get("train_epochs", cfg.train_epochs),
                                     recorded.get("train_batch_size", cfg.train_batch_size))


def default_model_dir(cfg):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{cfg.dataset}_{cfg.train_mode}_{cfg.loss}_{stamp}")


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's checkpoint INFO lines would drown the progress bar
    apply_preset()
    present = {name for name in FLAGS if FLAGS[name].present}
    cfg = FLAGS
    loss_params = check_flags(cfg, present)

    source = datasets.get_dataset(cfg.dataset, cfg.data_dir)
    for flag in ("train_split", "eval_split"):
        if cfg.mode != "eval" or flag == "eval_split":
            source.num_examples(getattr(cfg, flag))  # raises DatasetError for an unknown split
    strategy = get_strategy(cfg)
    replicas = strategy.num_replicas_in_sync
    for flag in ("train_batch_size", "eval_batch_size"):
        if getattr(cfg, flag) % replicas:
            raise UsageError(f"--{flag}={getattr(cfg, flag)} is not divisible by the "
                             f"{replicas} replicas of {type(strategy).__name__}")
    if cfg.model_dir is None:
        cfg.model_dir = default_model_dir(cfg)
    if cfg.mode == "eval" and not tf.train.latest_checkpoint(cfg.model_dir):
        raise UsageError(f"--mode=eval needs a checkpoint in --model_dir={cfg.model_dir}; there is none")
    if cfg.checkpoint:
        resolve_checkpoint_path(cfg.checkpoint)

    chief = is_chief(strategy)
    print(f"model_dir: {cfg.model_dir}  ({type(strategy).__name__}, {replicas} replica(s))", flush=True)
    keras.utils.set_random_seed(cfg.seed)
    num_classes = source.num_classes
    num_train = source.num_examples(cfg.train_split)
    model, optimizer, schedule, train_steps, probe_optimizer = build_all(cfg, strategy, num_classes, num_train)

    checkpoint = training_checkpoint(model, optimizer, probe_optimizer)
    ckpt_dir = cfg.model_dir if chief else os.path.join(cfg.model_dir, f"worker_tmp_{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=cfg.keep_checkpoint_max)
    restore(cfg, model, optimizer, manager)

    if cfg.mode == "eval":
        train_steps = recorded_train_steps(cfg, num_train, train_steps)
    tf.io.gfile.makedirs(cfg.model_dir)
    flag_values = {k: v for k, v in FLAGS.flag_values_dict().items() if _json_ok(v)}
    if chief:
        write_json(os.path.join(cfg.model_dir, "flags.json"), flag_values)
    summary_writer = tf.summary.create_file_writer(cfg.model_dir) if chief else None

    if cfg.mode in ("train", "train_then_eval"):
        start = time.time()
        train(cfg, strategy, model, optimizer, schedule, train_steps, source, loss_params,
              manager, summary_writer, chief, probe_optimizer)
        print(f"training took {time.time() - start:.1f} s", flush=True)
    if cfg.mode == "train_then_eval":
        evaluate_and_write(cfg, strategy, model, source, optimizer, chief)
    elif cfg.mode == "eval":
        # Like the original: evaluate each new checkpoint until the last step
        # of the training run, whose length flags.json recorded.
        for path in tf.train.checkpoints_iterator(cfg.model_dir, min_interval_secs=15):
            checkpoint.restore(path).expect_partial()
            result = evaluate_and_write(cfg, strategy, model, source, optimizer, chief)
            if result["global_step"] >= train_steps:
                break
    if not chief:
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def _json_ok(value):
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def run_main(argv):
    try:
        main(argv)
    except (UsageError, datasets.DatasetError) as e:
        fail(e)


if __name__ == "__main__":
    app.run(run_main, flags_parser=parse_flags)
