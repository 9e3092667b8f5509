"""The configuration of a run: presets, checks, and the record it keeps.

`resolve(values, present, defaults)` turns the flag values of one command
line into the `Config` a run trains with, in this order:

1. the record of an earlier run, where the command continues one: with
   `--mode=eval` every flag the command leaves unset takes the value the
   trained run recorded in its `flags.json`; with `--train_mode=finetune
   --checkpoint=RUN` the architecture flags do;
2. the dataset's preset (`Source.preset()`) for the flags still unset, one
   coupled group at a time (`PRESET_OWNERS`): a preset's learning rate
   belongs to its optimizer and its temperature to its loss, so choosing
   another optimizer or loss drops them, with a notice;
3. cross-flag checks, each a one-line `UsageError`;
4. the loss's parameters: the loss flags that apply, or the loss's own
   defaults (`objective.LOSS_PARAMS`), written back into the flags so that
   the record says what the loss used.

A command that contradicts the record it continues is refused in one line:
eval and fine-tuning of a run with other model or data flags, and training
on in a `model_dir` whose checkpoints belong to another configuration.
Flags in `SESSION_FLAGS` (where to read and write, how long and how often)
may differ between the commands of one run.
"""
import json
import os
import re
import time

import chunked_loss
import datasets
import model as model_lib
import objective

RECORD_FILE = "flags.json"
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
    "hidden_norm": "loss",
}

# Flags that may change between the commands of one run: where data and
# outputs live, evaluation, run length, checkpoint and log cadence, devices,
# the loss's blocks (the same loss in other memory) and the arithmetic (the
# variables are float32 under every --precision; XLA or not).
SESSION_FLAGS = frozenset({
    "mode", "model_dir", "data_dir", "eval_split", "eval_batch_size", "loss_chunk_size",
    "eval_steps", "eval_name", "compute_baselines", "keep_checkpoint_max",
    "keep_hub_module_max", "checkpoint_epochs", "checkpoint_steps", "plot",
    "log_every_steps", "train_steps", "train_epochs", "checkpoint",
    "partial_checkpoint", "zero_init_logits_layer", "master", "use_tpu", "tpu_name",
    "tpu_zone", "gcp_project", "cache_dataset", "deterministic", "precision", "jit_compile"})

# Flags that fix the encoder and projection head a checkpoint holds.
# (--num_rand_bits fixes the input channels of its first convolution.)
ARCHITECTURE_FLAGS = ("resnet_depth", "width_multiplier", "sk_ratio", "se_ratio",
                      "proj_head_mode", "proj_out_dim", "num_proj_layers", "num_rand_bits")

# Flags that configure a dataset source (`datasets.OPTIONS`).
DATASET_FLAGS = ("digit_sizes",)

# The ResNet's stem is the CIFAR one up to this image size.
CIFAR_STEM_MAX_SIZE = 32


class UsageError(Exception):
    """A mistake in the command line or the environment it names."""


def error_line(error):
    """The first line of an error's message, for a one-line report: without
    TensorFlow's `{{function_node ...}}` prefix and `[Op:...]` suffix."""
    message = getattr(error, "message", None) or str(error)
    line = (message.strip().splitlines() or [""])[0]
    line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line)
    return re.sub(r"\s*\[Op:\w+\]$", "", line)


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

    def __repr__(self):
        return f"Config({self.record()!r})"


def read_record(directory):
    """The flags.json of the run in `directory`, or None."""
    import tensorflow as tf  # gfile reads local and remote paths alike
    path = os.path.join(directory, RECORD_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise UsageError(f"{path} is not a JSON record of a run ({e})") from e


def resolve(values, present, defaults):
    """The `Config` of a command line and the dataset `Source` it reads.

    Args:
        values: {flag: value} of every project flag as parsed (defaults
            where unset).
        present: names of the flags set on the command line.
        defaults: {flag: default value}.

    Returns:
        (Config, datasets.Source).

    Raises:
        UsageError, datasets.DatasetError: one line naming what is wrong.
    """
    import checkpoint as checkpoint_lib  # TensorFlow edge: file system
    values = dict(values)
    present = set(present)
    explicit = set(present)  # flags whose value did not come from a default
    notices = []
    values["digit_sizes"] = _sizes(values.get("digit_sizes"))

    record = None
    if values["mode"] == "eval":
        record = _eval_record(values)
        if record is not None:
            _check_against_record(values, present, record, values["model_dir"],
                                  "--mode=eval takes the model and data flags "
                                  "from the trained run's flags.json")
            for name, value in record.items():
                if name in values and name not in present and name != "mode":
                    values[name] = value
                    explicit.add(name)

    if values["checkpoint"]:
        checkpoint_lib.resolve_checkpoint_path(values["checkpoint"], "--checkpoint")
    elif values.get("partial_checkpoint"):
        raise UsageError("--partial_checkpoint applies to --checkpoint (what to restore "
                         "from it); pass --checkpoint=PREFIX_OR_RUN_DIR or drop it")
    if (values["train_mode"] == "finetune" and values["checkpoint"]
            and values["mode"] != "eval"):
        _take_architecture(values, present, explicit, values["checkpoint"])

    source = open_dataset(values)
    if record is None:
        notices += _apply_preset(values, present, explicit, defaults, source)

    _check_flags(values, present, defaults)
    if not source.label_names:
        notices += _unlabelled(values, present, source)
    loss_params = _resolve_loss(values, present, explicit)
    if values["train_mode"] == "finetune" and not values["checkpoint"] and values["mode"] != "eval":
        notices.append("--train_mode=finetune without --checkpoint trains from "
                       "random weights")
    for flag in ("train_split", "eval_split"):
        if values["mode"] != "eval" or flag == "eval_split":
            source.num_examples(values[flag])  # DatasetError for an unknown split
    if values["mode"] != "eval":
        _check_batch_fits(values, source)

    if values["model_dir"] is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        what = values["train_mode"] + (f"_{values['loss']}" if values["train_mode"] == "pretrain"
                                       else "")
        values["model_dir"] = os.path.join("runs", f"{values['dataset']}_{what}_{stamp}")
    elif values["mode"] != "eval":
        _check_resume(values)
    return Config(values, loss_params, notices), source


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


def open_dataset(values):
    """The `datasets.Source` of flag values {flag: value}: --dataset,
    --data_dir and the dataset flags its source takes (`datasets.OPTIONS`).

    Raises:
        datasets.DatasetError: as `datasets.get_dataset`, and for a dataset
            flag set to a value (not None) that the dataset does not take.
    """
    name = values["dataset"]
    accepted = datasets.OPTIONS.get(name, ())
    options = {flag: values[flag] for flag in DATASET_FLAGS
               if flag in accepted or values.get(flag) is not None}
    return datasets.get_dataset(name, values["data_dir"], **options)


def _sizes(value):
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


# ---------------------------------------------------------------------------
# Records of earlier runs.
# ---------------------------------------------------------------------------
def _eval_record(values):
    import checkpoint as checkpoint_lib
    model_dir = values["model_dir"]
    if not model_dir or not checkpoint_lib.latest_checkpoint(model_dir):
        raise UsageError(f"--mode=eval needs a checkpoint in --model_dir={model_dir}; "
                         "there is none")
    return read_record(model_dir)


def _show(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_against_record(values, present, record, where, why, names=None):
    """UsageError for the first flag set on the command line (of `names`,
    when given) that differs from the record."""
    name = _first_difference(values, record, present if names is None else present & set(names))
    if name is not None:
        raise UsageError(
            f"--{name}={_show(values[name])} contradicts the run in {where}, "
            f"trained with --{name}={_show(record[name])}; {why}: drop the flag "
            f"or pass --{name}={_show(record[name])}")


def _first_difference(values, record, names):
    """The first of `names` (sorted) whose value differs from the record's,
    session flags and flags the record lacks excepted; None if none does."""
    for name in sorted(names):
        if name not in SESSION_FLAGS and name in record and values[name] != record[name]:
            return name
    return None


def _take_architecture(values, present, explicit, checkpoint):
    """Fine-tuning from a run's checkpoint builds that run's encoder and
    projection head: its architecture flags, and an image size with the
    same stem. With --partial_checkpoint the flags given on the command
    line win and the record fills in the others."""
    import tensorflow as tf
    directory = checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)
    record = read_record(directory)
    if record is None:
        return
    partial = values.get("partial_checkpoint")
    why = ("--train_mode=finetune builds the encoder of the --checkpoint run (or pass "
           "--partial_checkpoint to restore only what matches)")
    if not partial:
        _check_against_record(values, present, record, directory, why,
                              names=ARCHITECTURE_FLAGS)
    for name in ARCHITECTURE_FLAGS:
        if name not in present and name in record:
            values[name] = record[name]
            explicit.add(name)
    if "image_size" in record:
        if "image_size" not in present:
            values["image_size"] = record["image_size"]
            explicit.add("image_size")
        elif not partial and ((values["image_size"] <= CIFAR_STEM_MAX_SIZE)
                              != (record["image_size"] <= CIFAR_STEM_MAX_SIZE)):
            raise UsageError(
                f"--image_size={values['image_size']} needs another ResNet stem than the "
                f"run in {directory}, trained with --image_size={record['image_size']} "
                f"(the CIFAR stem is used up to {CIFAR_STEM_MAX_SIZE} px); {why}")


def _check_resume(values):
    """Training on in a model_dir that holds a run: the same configuration."""
    import checkpoint as checkpoint_lib
    model_dir = values["model_dir"]
    if not checkpoint_lib.latest_checkpoint(model_dir):
        return
    record = read_record(model_dir)
    if record is None:
        return
    name = _first_difference(values, record, values)
    if name is not None:
        raise UsageError(
            f"--model_dir={model_dir} holds a run trained with "
            f"--{name}={_show(record[name])}; this command has "
            f"--{name}={_show(values[name])}: rerun with that run's flags "
            f"(its {RECORD_FILE}) to resume it, or use a new --model_dir")


# ---------------------------------------------------------------------------
# Presets.
# ---------------------------------------------------------------------------
def _apply_preset(values, present, explicit, defaults, source):
    """Gives the flags left unset the source's preset; returns notices for
    preset values that a choice of the user made inapplicable."""
    preset = source.preset()
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
        listed = ", ".join(f"--{n}={_show(v)}" for n, v in items)
        kept = ", ".join(f"--{n}={_show(values[n])}" for n, _ in items)
        choice = _show(preset.get(owner, defaults[owner]))
        notices.append(
            f"--{owner}={_show(values[owner])} replaces the {source.name} preset's "
            f"--{owner}={choice}, so the preset's values for {choice} ({listed}) do not "
            f"apply: {kept} instead (pass them to choose)")
    return notices


# ---------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------
def _check_flags(cfg, present, defaults):
    """Cross-flag checks that absl validators cannot express."""
    if cfg["train_mode"] != "finetune" and cfg["fine_tune_after_block"] > -1:
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
    probe = (cfg["train_mode"] in ("pretrain", "autoencoder")
             and cfg["lineareval_while_pretraining"])
    # Passing a probe flag's own default (the original's behaviour) is fine anywhere.
    for flag in ("probe_learning_rate", "probe_view", "probe_weight_decay"):
        if flag in present and cfg[flag] != defaults[flag] and not probe:
            raise UsageError(f"--{flag} applies to the online probe: --train_mode=pretrain "
                             "or autoencoder with --lineareval_while_pretraining")
    if cfg["train_mode"] != "pretrain":
        for flag in ("loss", "loss_chunk_size") + tuple(f for f in LOSS_FLAGS
                                                         if f not in SHARED_LOSS_FLAGS):
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


def summary_hidden_norm(cfg):
    """Whether the contrast summaries normalise: as the loss does, and yes
    for losses that always work on unit vectors."""
    return cfg.loss_params.get("hidden_norm", True) is not False


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
                 "keep_hub_module_max", "log_every_steps"):
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
