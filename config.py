"""The configuration of a run: presets, checks, and what each flag means for it.

`resolve(values, present, defaults, source)` turns the flag values of one
command line into the `Config` a run trains with, in this order:

1. the dataset's preset for the flags still unset (`Source.preset()`, or
   `image_size_preset` of its images), one coupled group at a time
   (`PRESET_OWNERS`): a preset's learning rate belongs to its optimizer and
   its temperature to its loss, so choosing another optimizer or loss drops
   them, with a notice;
2. cross-flag checks, each a one-line `UsageError`;
3. the loss's parameters: the loss flags that apply, or the loss's own
   defaults (`objective.LOSS_PARAMS`), written back into the flags so that
   the record says what the loss used;
4. null (None) for every flag the run does not use (`unused_flags`): a
   fine-tuning run has no loss, no temperature and no online probe.

Nothing here touches files, TensorFlow or a dataset's images: the rules that
relate a command to the runs on disk (`--mode=eval` of a run, resuming in a
`--model_dir`, fine-tuning from a run's checkpoint) are `run_record.py`'s,
which reads the records and opens the dataset, then calls `resolve`. So the
configuration of the training step is built the same way where TensorFlow is
not installed (`bench/train_step.py --backend=jax`).
"""
import json

import chunked_loss
import model as model_lib
import objective
from errors import UsageError

# 2^K hash buckets; more bits than ~log2(examples) only add constant planes.
MAX_RAND_BITS = 32
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)

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

# A preset value of the key flag applies only while the value flag keeps the
# preset's choice: a learning rate tuned for Adam is wrong for LARS, a
# temperature tuned for NT-Xent is not the decoupled loss's.
PRESET_OWNERS = {
    "learning_rate": "optimizer",
    "learning_rate_scaling": "optimizer",
    "weight_decay": "optimizer",
    "probe_learning_rate": "optimizer",
    "temperature": "loss",
}

# Flags that may change between the commands of one run: where data and
# outputs live, evaluation, run length, checkpoint and log cadence, devices,
# the loss's blocks (the same loss in other memory), the arithmetic (the
# variables are float32 under every --precision; XLA or not) and where the
# views are made (the same augmentation on the host or in the step).
SESSION_FLAGS = frozenset({
    "mode", "model_dir", "data_dir", "eval_split", "eval_batch_size", "loss_chunk_size",
    "eval_steps", "eval_name", "eval_wait_secs", "compute_baselines", "keep_checkpoint_max",
    "keep_hub_module_max", "checkpoint_epochs", "checkpoint_steps", "plot",
    "log_every_steps", "train_steps", "train_epochs", "checkpoint",
    "partial_checkpoint", "zero_init_logits_layer", "master", "use_tpu", "tpu_name",
    "tpu_zone", "gcp_project", "cache_dataset", "deterministic", "precision", "jit_compile",
    "augment_in_step"})

# Flags that say where a training run's weights start; `--mode=eval`
# evaluates --model_dir's own checkpoints and takes none of them.
INITIALISATION_FLAGS = ("checkpoint", "partial_checkpoint", "zero_init_logits_layer")

# Flags that fix the encoder and projection head a checkpoint holds.
# (--num_rand_bits fixes the input channels of its first convolution.)
ARCHITECTURE_FLAGS = ("resnet_depth", "width_multiplier", "sk_ratio", "se_ratio",
                      "proj_head_mode", "proj_out_dim", "num_proj_layers", "num_rand_bits")

# Flags that configure a dataset source (`datasets.OPTIONS`).
DATASET_FLAGS = ("digit_sizes",)

# Largest image side (pixels) that gets the medium preset (the ImageNet
# stem at the images' own size); the small one is `model.SMALL_IMAGE_SIDE`.
MEDIUM_IMAGE_SIDE = 160


class Config:
    """The effective flag values of a run, as attributes, and what follows
    from them: `loss_params` (the keyword arguments of
    `objective.compute_loss`) and `notices` (lines to show the user)."""

    def __init__(self, values, loss_params=None, notices=()):
        self.__dict__.update(values)
        self._names = tuple(values)
        self.loss_params = dict(loss_params or {})
        self.notices = list(notices)

    def record(self):
        """{flag: value} of every flag, what `flags.json` holds."""
        return {name: getattr(self, name) for name in self._names}

    def replace(self, **values):
        """A copy with `values` changed."""
        return Config(dict(self.record(), **values), self.loss_params, self.notices)

    def __repr__(self):
        return f"Config({self.record()!r})"


def image_size_preset(image_shape, splits, train_split="train"):
    """Flag values that size a run for images of `image_shape` (H, W, C).

    - side <= 32 (`model.SMALL_IMAGE_SIDE`: CIFAR, MNIST, 32 px folders):
      the native size with the CIFAR stem, ResNet-18 at batch 128, trained
      and then evaluated, with the original's CIFAR-10 recipe otherwise
      (LARS 1.0 linear, weight decay 1e-4, tau 0.5, colour strength 0.5, no
      blur);
    - 32 < side <= 160 (STL-10): the native size with the ImageNet stem,
      ResNet-18 at batch 128, trained and then evaluated;
    - larger, or varying sizes: nothing, so the original's ImageNet
      defaults apply (ResNet-50, 224 px, batch 512).

    When `train_then_eval` is preset, the evaluation split is `test`, else
    `validation`, else the first other split, when the source has one.
    """
    height, width = image_shape[:2]
    if height is None or width is None or max(height, width) > MEDIUM_IMAGE_SIDE:
        return {}
    side = max(height, width)
    preset = dict(mode="train_then_eval", image_size=side, resnet_depth=18,
                  train_batch_size=128, eval_batch_size=256)
    if side <= model_lib.SMALL_IMAGE_SIDE:
        preset.update(optimizer="lars", learning_rate=1.0,
                      learning_rate_scaling="linear", weight_decay=1e-4,
                      temperature=0.5, color_jitter_strength=0.5,
                      use_blur=False)
    others = [split for split in splits if split != train_split]
    for name in ("test", "validation"):
        if name in others:
            preset["eval_split"] = name
            break
    else:
        if others:
            preset["eval_split"] = others[0]
    return preset


def resolve(values, present, defaults, source, explicit=None, from_record=False):
    """The `Config` of a command line for the dataset `source`.

    Args:
        values: {flag: value} of every project flag (defaults where unset).
        present: names of the flags set on the command line.
        defaults: {flag: default value}.
        source: the `datasets.Source` (or any object with its `name`,
            `label_names`, `label_classes`, `image_shape`, `splits`,
            `num_examples(split)` and `preset()`).
        explicit: names of the flags whose value did not come from a
            default (`present`, and those taken from a run's record); by
            default `present`.
        from_record: the values are a trained run's (`--mode=eval`): no
            preset applies.

    Returns:
        A `Config`.

    Raises:
        UsageError, errors.DatasetError: one line naming what is wrong.
    """
    values = dict(values)
    present = set(present)
    explicit = set(present if explicit is None else explicit)
    values["digit_sizes"] = parse_sizes(values.get("digit_sizes"))
    notices = []
    if not from_record:
        notices += _apply_preset(values, present, explicit, defaults, source)
    _check_flags(values, present, defaults)
    if not source.label_names:
        notices += _unlabelled(values, present, source)
    loss_params = {}
    if values["train_mode"] == "pretrain":
        loss_params = _resolve_loss(values, present, explicit)
    if values["train_mode"] == "finetune" and not values["checkpoint"] and values["mode"] != "eval":
        notices.append("--train_mode=finetune without --checkpoint trains from "
                       "random weights")
    for flag in ("train_split", "eval_split"):
        if values["mode"] != "eval" or flag == "eval_split":
            source.num_examples(values[flag])  # DatasetError for an unknown split
    if values["mode"] != "eval":
        _check_batch_fits(values, source)
    for name in unused_flags(values):
        values[name] = None
    return Config(values, loss_params, notices)


def unused_flags(values):
    """The flags a run of `values` does not use, which it records as null:
    the loss and its summaries' flags outside pretraining; the online
    probe's without one (fine-tuning, no labels, or
    --lineareval_while_pretraining=false); colour distortion in fine-tuning
    (crop and flip only); freezing outside fine-tuning; momentum with Adam;
    how long to wait for checkpoints outside --mode=eval."""
    train_mode = values["train_mode"]
    representation = train_mode in model_lib.REPRESENTATION_MODES
    probe = representation and bool(values["lineareval_while_pretraining"])
    used = dict.fromkeys(("loss", "loss_chunk_size", *LOSS_FLAGS), train_mode == "pretrain")
    used.update(
        lineareval_while_pretraining=representation,
        probe_learning_rate=probe, probe_weight_decay=probe, probe_view=probe,
        probe_batch_norm=probe or train_mode == "finetune",
        color_jitter_strength=representation, use_blur=representation,
        fine_tune_after_block=train_mode == "finetune",
        momentum=values["optimizer"] != "adam",
        eval_wait_secs=values["mode"] == "eval")
    return [name for name, is_used in used.items() if not is_used and name in values]


def _check_batch_fits(values, source):
    """A training split of fewer examples than one global batch is refused:
    the repeated split would put copies of one image in a batch, each the
    other's negative."""
    count = source.num_examples(values["train_split"])
    if count < values["train_batch_size"]:
        raise UsageError(
            f"--train_batch_size={values['train_batch_size']} is larger than the {count} "
            f"examples of --dataset={values['dataset']} split {values['train_split']!r}; "
            f"pass --train_batch_size={count} or less, or more data")


def parse_sizes(value):
    """--digit_sizes as a list of ints (None when unset)."""
    if value is None or isinstance(value, list) and all(isinstance(v, int) for v in value):
        return value
    if isinstance(value, str):  # as on a command line
        value = value.split(",")
    try:
        sizes = [int(v) for v in value]
    except ValueError:
        raise UsageError(f"--digit_sizes must be comma-separated pixel sizes such as 20,8; "
                         f"got {','.join(value)}") from None
    if any(v < 0 for v in sizes):
        raise UsageError(f"--digit_sizes must be >= 0; got {','.join(map(str, sizes))}")
    return sizes


def _unlabelled(values, present, source):
    """Unlabelled images train a representation only: no probe, no
    baselines; returns the notice."""
    if values["train_mode"] == "finetune":
        raise UsageError(f"--train_mode=finetune needs labels; --dataset={source.name} "
                         f"--data_dir={values['data_dir']} holds unlabelled images (a flat "
                         f"folder: class sub-directories give labels)")
    for flag in ("lineareval_while_pretraining", "compute_baselines"):
        values[flag] = False
    measured = ""
    if values["eval_split"] not in source.splits and "eval_split" not in present:
        # The representation metrics need held-out images; there are none.
        values["eval_split"] = values["train_split"]
        measured = (" and the representation metrics are measured on "
                    f"--eval_split={values['train_split']}")
    return [f"--data_dir={values['data_dir']} holds unlabelled images: training learns a "
            f"representation only; the online probe, kNN and the baselines are off{measured}"]


def show(value):
    """A flag value as a command line spells it (null for an unused flag)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------
# Presets.
# ---------------------------------------------------------------------------
def source_preset(source):
    """The flag values a run of `source` takes for the flags left unset: its
    own (`Source.preset()`), else those of its images' size
    (`image_size_preset`)."""
    preset = source.preset()
    return image_size_preset(source.image_shape, source.splits) if preset is None else preset


def _apply_preset(values, present, explicit, defaults, source):
    """Gives the flags left unset the source's preset; returns notices for
    preset values that a choice of the user made inapplicable."""
    preset = source_preset(source)
    dropped = {}
    for name, value in preset.items():
        if name in explicit:
            continue
        owner = PRESET_OWNERS.get(name)
        if owner is not None and owner in present:
            preset_choice = preset.get(owner, defaults[owner])
            if values[owner] != preset_choice:
                dropped.setdefault(owner, []).append((name, value))
                continue
        values[name] = value
        explicit.add(name)
    notices = []
    for owner, items in dropped.items():
        listed = ", ".join(f"--{n}={show(v)}" for n, v in items)
        kept = ", ".join(f"--{n}={show(values[n])}" for n, _ in items)
        choice = show(preset.get(owner, defaults[owner]))
        notices.append(
            f"--{owner}={show(values[owner])} replaces the {source.name} preset's "
            f"--{owner}={choice}, so the preset's values for {choice} ({listed}) do not "
            f"apply: {kept} instead (pass them to choose)")
    return notices


# ---------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------
def _check_flags(cfg, present, defaults):
    """Cross-flag checks that absl validators cannot express."""
    if cfg["mode"] == "eval":
        for flag in INITIALISATION_FLAGS:
            if flag in present and cfg[flag]:
                raise UsageError(f"--{flag} does not apply to --mode=eval, which evaluates the "
                                 "checkpoints of --model_dir: drop it")
    elif "eval_wait_secs" in present and cfg["eval_wait_secs"]:
        raise UsageError(f"--eval_wait_secs applies to --mode=eval (not --mode={cfg['mode']})")
    if cfg["train_mode"] != "finetune" and cfg["fine_tune_after_block"] not in (None, -1):
        raise UsageError(f"--fine_tune_after_block must be -1 with --train_mode="
                         f"{cfg['train_mode']} (freezing applies to --train_mode=finetune)")
    if cfg["proj_head_mode"] == "nonlinear" and cfg["num_proj_layers"] < 1:
        raise UsageError("--num_proj_layers must be >= 1 with --proj_head_mode=nonlinear")
    num_hiddens = {"none": 1, "linear": 2,
                   "nonlinear": cfg["num_proj_layers"] + 1}[cfg["proj_head_mode"]]
    if not -num_hiddens <= cfg["ft_proj_selector"] < num_hiddens:
        raise UsageError(f"--ft_proj_selector must be in [{-num_hiddens}, {num_hiddens - 1}] "
                         f"with --proj_head_mode={cfg['proj_head_mode']} and "
                         f"--num_proj_layers={cfg['num_proj_layers']}")
    if cfg["train_steps"] == 0 and cfg["train_epochs"] == 0 and cfg["mode"] != "eval":
        raise UsageError("--train_epochs or --train_steps must be > 0 to train")
    if cfg["checkpoint_steps"] == 0 and cfg["checkpoint_epochs"] == 0:
        raise UsageError("--checkpoint_epochs or --checkpoint_steps must be > 0")
    probe = (cfg["train_mode"] in model_lib.REPRESENTATION_MODES
             and cfg["lineareval_while_pretraining"])
    # Passing a probe flag's own default (the original's behaviour) is fine anywhere.
    for flag in ("probe_learning_rate", "probe_view", "probe_weight_decay"):
        if flag in present and cfg[flag] != defaults[flag] and not probe:
            raise UsageError(f"--{flag} applies to the online probe: --train_mode=pretrain "
                             "or autoencoder with --lineareval_while_pretraining")
    if cfg["train_mode"] != "pretrain":
        for flag in ("loss", "loss_chunk_size", *LOSS_FLAGS):
            if flag in present and cfg[flag] != defaults[flag]:
                raise UsageError(f"--{flag} applies to --train_mode=pretrain only (not "
                                 f"--train_mode={cfg['train_mode']})")
    if cfg["precision"] == "mixed_float16" and (cfg["use_tpu"] or cfg["tpu_name"]
                                                  or cfg["master"]):
        raise UsageError("--precision=mixed_float16 is for GPUs; TPUs compute in bfloat16: "
                         "use --precision=mixed_bfloat16 or float32")
    if cfg["kcl_t"] is not None:
        if cfg["kcl_kernel"] == "riesz" and cfg["kcl_t"] == 0:
            raise UsageError("--kcl_t must be != 0 with --kcl_kernel=riesz (it is the "
                             "exponent s of D^-s)")
        if cfg["kcl_kernel"] != "riesz" and cfg["kcl_t"] <= 0:
            raise UsageError(f"--kcl_t must be > 0 with --kcl_kernel="
                             f"{cfg['kcl_kernel'] or 'gaussian'} (negative values "
                             "are allowed for riesz only)")


def _resolve_loss(values, present, explicit):
    """compute_loss keyword arguments of `values["loss"]`, every parameter
    given; the loss flags are rewritten to what the loss uses (None for a
    flag it does not use; --temperature is kept as the summaries' own).

    A loss flag set by the user that the loss does not use is an error.
    """
    loss = values["loss"]
    accepted = objective.LOSS_PARAMS[loss]
    params = {k: v for k, v in accepted.items() if not k.endswith("_noise")}
    for flag, (param, only) in LOSS_FLAGS.items():
        applies = param in accepted and (only is None or loss in only)
        if applies:
            if flag in explicit and values[flag] is not None:
                params[param] = values[flag]
        elif flag in present and flag not in SHARED_LOSS_FLAGS:
            users = [name for name in objective.LOSSES
                     if param in objective.LOSS_PARAMS[name] and (only is None or name in only)]
            raise UsageError(f"--{flag} does not apply to --loss={loss}; it applies to "
                             f"--loss={'|'.join(users)}")
    if values["loss_chunk_size"] is not None and loss not in chunked_loss.LOSSES:
        raise UsageError(f"--loss_chunk_size does not apply to --loss={loss}, which has no "
                         f"chunked form; it applies to --loss={'|'.join(chunked_loss.LOSSES)}")
    if loss == "swd" and params["hidden_norm"] is None:
        params["hidden_norm"] = params["prior"] == "uniform_hypersphere"
    if loss == "simple" and params["lambda_weight"] is None:
        params["lambda_weight"] = 1.0 / (2.0 * values["train_batch_size"] - 2.0)
    for flag, (param, only) in LOSS_FLAGS.items():
        applies = param in accepted and (only is None or loss in only)
        if applies:
            values[flag] = params[param]
        elif flag not in SHARED_LOSS_FLAGS:
            values[flag] = None
    return params


# ---------------------------------------------------------------------------
# The cluster of a multi-worker run.
# ---------------------------------------------------------------------------
TF_CONFIG_FORM = ('{"cluster": {"worker": ["host:port", ...]}, '
                  '"task": {"type": "worker", "index": i}}')


def num_workers(environ):
    """The workers (chief and worker tasks) that TF_CONFIG of `environ` (a
    mapping such as os.environ) names: 0 without a cluster.

    Raises:
        UsageError: a malformed TF_CONFIG (`tf_config_cluster`).
    """
    cluster = tf_config_cluster(environ.get("TF_CONFIG"))
    return sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker"))


def tf_config_cluster(text):
    """The cluster {task type: ["host:port", ...]} of a TF_CONFIG value ({}
    when unset or without a cluster), checked as MultiWorkerMirroredStrategy
    reads it: JSON, each task type a list of host:port addresses, and a task
    whose type is in the cluster and whose index is inside its list.

    Raises:
        UsageError: one line naming what is wrong and the expected form.
    """
    if not text:
        return {}

    def bad(what):
        return UsageError(f"TF_CONFIG {what}; expected {TF_CONFIG_FORM}")

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise bad(f"is a JSON {type(value).__name__}, not an object")
    cluster = value.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise bad('has a "cluster" that is not an object')
    for name, tasks in cluster.items():
        if not (isinstance(tasks, list) and tasks and all(
                isinstance(t, str) and t.rpartition(":")[2].isdigit() for t in tasks)):
            raise bad(f'has cluster "{name}": {json.dumps(tasks)}, not a list of host:port')
    if not cluster:
        return {}
    task = value.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise bad('has a cluster but no "task" with a "type" and an "index"')
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        raise bad(f'task type "{kind}" is not in its cluster ({", ".join(sorted(cluster))})')
    if not isinstance(index, int) or isinstance(index, bool) or not \
            0 <= index < len(cluster[kind]):
        raise bad(f'task index {json.dumps(index)} is outside its cluster\'s '
                  f'{len(cluster[kind])} "{kind}" task(s)')
    return cluster


def validators():
    """(flag, predicate, message) checks of single flag values, registered
    with absl by run.py."""
    checks = []
    for name in ("train_batch_size", "eval_batch_size", "image_size", "proj_out_dim",
                 "num_proj_layers", "width_multiplier", "keep_checkpoint_max",
                 "temperature", "align_alpha", "unif_t",
                 "hard_num_negatives"):
        checks.append((name, lambda v: v is None or v > 0, f"--{name} must be > 0"))
    checks.append(("loss_chunk_size", lambda v: v is None or v >= 1,
                   "--loss_chunk_size must be >= 1 (candidate rows per block)"))
    for name in ("learning_rate", "warmup_epochs", "weight_decay", "train_epochs",
                 "train_steps", "eval_steps", "checkpoint_epochs", "checkpoint_steps",
                 "sk_ratio", "se_ratio", "color_jitter_strength", "lambda_weight",
                 "gen_loss_scale", "kcl_gamma", "probe_learning_rate", "probe_weight_decay",
                 "keep_hub_module_max", "log_every_steps", "eval_wait_secs"):
        checks.append((name, lambda v: v is None or v >= 0, f"--{name} must be >= 0"))
    checks.append(("num_rand_bits", lambda v: 0 <= v <= MAX_RAND_BITS,
                   f"--num_rand_bits must be in [0, {MAX_RAND_BITS}]"))
    checks += [
        ("resnet_depth", lambda v: v in RESNET_DEPTHS,
         f"--resnet_depth must be one of {', '.join(map(str, RESNET_DEPTHS))}"),
        ("fine_tune_after_block", lambda v: -1 <= v <= 4,
         "--fine_tune_after_block must be one of -1, 0, 1, 2, 3, 4"),
        ("momentum", lambda v: 0 <= v < 1, "--momentum must be in [0, 1)"),
        ("batch_norm_decay", lambda v: 0 <= v < 1, "--batch_norm_decay must be in [0, 1)"),
        ("crop_min_area", lambda v: 0 < v <= 1, "--crop_min_area must be in (0, 1]"),
    ]
    return checks


# The choices of enum flags, for run.py's definitions.
CHOICES = dict(
    proj_head_mode=model_lib.PROJ_HEAD_MODES, train_mode=model_lib.TRAIN_MODES,
    probe_view=model_lib.PROBE_VIEWS, optimizer=model_lib.OPTIMIZERS,
    learning_rate_scaling=model_lib.LEARNING_RATE_SCALINGS,
    loss=objective.LOSSES, prior=objective.PRIORS, kcl_kernel=objective.KCL_KERNELS,
    precision=model_lib.PRECISIONS)
