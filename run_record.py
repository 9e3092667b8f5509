"""The runs on disk: the record each keeps, and what a command owes them.

A training run writes `flags.json` into its --model_dir: the value of every
flag, null for those it does not use (`config.unused_flags`). `resolve`
turns a command line into the `Config` a run trains with by reading the
records the command refers to, opening the dataset, and applying
`config.resolve`, under these rules:

- `--mode=eval` evaluates a run's checkpoints: every flag the command leaves
  unset takes the value the run recorded, except the flags that say where a
  training run's weights start (`config.INITIALISATION_FLAGS`), and a flag
  set to another value than the record's is refused, outside
  `config.SESSION_FLAGS`;
- `--train_mode=finetune --checkpoint=RUN` builds that run's encoder: its
  architecture flags and an image size with the same stem (with
  --partial_checkpoint the command's flags win);
- a command that trains in a --model_dir holding a run's checkpoints
  resumes it and must have that run's configuration;
- without --model_dir a run lives in runs/<dataset>_<mode>_<time>; a
  multi-worker run must name it, as its workers' clocks differ.

Files go through `tf.io.gfile`, so a directory may be remote (gs://).
"""
import json
import os
import time

import tensorflow as tf

import checkpoint as checkpoint_lib
import config
import model as model_lib
import datasets
from errors import UsageError
from errors import error_line

RECORD_FILE = "flags.json"


def read_record(directory):
    """The flags.json of the run in `directory`, or None."""
    path = os.path.join(directory, RECORD_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise UsageError(f"{path} is not a JSON record of a run ({e})") from e


def check_model_dir(model_dir):
    """UsageError unless --model_dir is a directory, or can be created: its
    nearest existing ancestor is a directory (and, on a local file system,
    one this process may write in). Nothing is created."""
    path = model_dir.rstrip("/") or "/"
    while not tf.io.gfile.exists(path):
        parent = os.path.dirname(path)
        if parent in (path, ""):
            return  # a relative path under the working directory
        path = parent
    if not tf.io.gfile.isdir(path):
        where = "is" if path == model_dir.rstrip("/") else f"is under {path}, which is"
        raise UsageError(f"--model_dir={model_dir} {where} a file, not a directory; pass "
                         "a directory that exists or can be created")
    if "://" not in path and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--model_dir={model_dir} cannot be written: {path} is not writable "
                         "by this user; pass a directory that is")


def make_model_dir(model_dir):
    """Creates --model_dir (and its parents) if it does not exist.

    Raises:
        UsageError: it cannot be created, naming the cause.
    """
    try:
        tf.io.gfile.makedirs(model_dir)
    except (tf.errors.OpError, OSError) as e:
        raise UsageError(f"--model_dir={model_dir} cannot be created ({type(e).__name__}: "
                         f"{error_line(e)}); pass a directory that can be") from None


def write_record(cfg):
    """Writes the run's flags.json (`Config.record`) into --model_dir."""
    path = os.path.join(cfg.model_dir, RECORD_FILE)
    try:
        checkpoint_lib.write_json(path, cfg.record())
    except (tf.errors.OpError, OSError) as e:
        raise UsageError(f"--model_dir={cfg.model_dir} cannot be written ({type(e).__name__}: "
                         f"{error_line(e)}); pass a directory that can be") from None


def open_dataset(values):
    """The `datasets.Source` of flag values {flag: value}: --dataset,
    --data_dir and the dataset flags its source takes (`datasets.OPTIONS`).

    Raises:
        errors.DatasetError: as `datasets.get_dataset`, and for a dataset
            flag set to a value (not None) that the dataset does not take.
    """
    name = values["dataset"]
    accepted = datasets.OPTIONS.get(name, ())
    options = {flag: values[flag] for flag in config.DATASET_FLAGS
               if flag in accepted or values.get(flag) is not None}
    return datasets.get_dataset(name, values["data_dir"], **options)


def resolve(values, present, defaults, environ=None):
    """The `Config` of a command line and the dataset `Source` it reads
    (see the module docstring).

    Args:
        values: {flag: value} of every project flag as parsed (defaults
            where unset).
        present: names of the flags set on the command line.
        defaults: {flag: default value}.
        environ: the environment (`os.environ` when None), for TF_CONFIG.

    Returns:
        (config.Config, datasets.Source).

    Raises:
        UsageError, errors.DatasetError: one line naming what is wrong.
    """
    values = dict(values)
    present = set(present)
    explicit = set(present)  # flags whose value did not come from a default
    values["digit_sizes"] = config.parse_sizes(values.get("digit_sizes"))

    record = None
    if values["mode"] == "eval":
        record = _eval_record(values)
        if record is not None:
            _check_against_record(values, present, record, values["model_dir"],
                                  "--mode=eval takes the model and data flags "
                                  "from the trained run's flags.json")
            for name, value in record.items():
                if (name in values and name not in present and name != "mode"
                        and name not in config.INITIALISATION_FLAGS):
                    values[name] = value
                    explicit.add(name)

    if values["mode"] != "eval":
        if values["checkpoint"]:
            checkpoint_lib.resolve_checkpoint_path(values["checkpoint"], "--checkpoint")
        elif values.get("partial_checkpoint"):
            raise UsageError("--partial_checkpoint applies to --checkpoint (what to restore "
                             "from it); pass --checkpoint=PREFIX_OR_RUN_DIR or drop it")
        if values["train_mode"] == "finetune" and values["checkpoint"]:
            _take_architecture(values, present, explicit, values["checkpoint"])

    source = open_dataset(values)
    cfg = config.resolve(values, present, defaults, source, explicit=explicit,
                         from_record=record is not None)
    if cfg.model_dir is None:
        cfg = cfg.replace(model_dir=default_model_dir(cfg, environ))
    elif cfg.mode != "eval":
        check_model_dir(cfg.model_dir)
        _check_resume(cfg)
    return cfg, source


def default_model_dir(cfg, environ=None):
    """runs/<dataset>_<train mode>[_<loss>]_<local time>.

    Raises:
        UsageError: TF_CONFIG names several workers, which would each stamp
            their own time.
    """
    workers = config.num_workers(os.environ if environ is None else environ)
    if workers > 1:
        raise UsageError(f"a multi-worker run (TF_CONFIG names {workers} workers) needs "
                         "--model_dir: pass every worker the same --model_dir=DIR")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    what = cfg.train_mode + (f"_{cfg.loss}" if cfg.train_mode == "pretrain" else "")
    return os.path.join("runs", f"{cfg.dataset}_{what}_{stamp}")


def _eval_record(values):
    model_dir = values["model_dir"]
    if not model_dir or not checkpoint_lib.latest_checkpoint(model_dir):
        raise UsageError(f"--mode=eval needs a checkpoint in --model_dir={model_dir}; "
                         "there is none")
    return read_record(model_dir)


def _check_against_record(values, present, record, where, why, names=None):
    """UsageError for the first flag set on the command line (of `names`,
    when given) that differs from the record."""
    name = _first_difference(values, record, present if names is None else present & set(names))
    if name is not None:
        raise UsageError(
            f"--{name}={config.show(values[name])} contradicts the run in {where}, "
            f"trained with --{name}={config.show(record[name])}; {why}: drop the flag "
            f"or pass --{name}={config.show(record[name])}")


def _first_difference(values, record, names):
    """The first of `names` (sorted) whose value differs from the record's;
    session flags, flags the record lacks and flags this command does not
    use (None) excepted."""
    for name in sorted(names):
        if (name not in config.SESSION_FLAGS and name in record
                and values[name] is not None and values[name] != record[name]):
            return name
    return None


def _take_architecture(values, present, explicit, checkpoint):
    """Fine-tuning from a run's checkpoint builds that run's encoder and
    projection head: its architecture flags, and an image size with the
    same stem. With --partial_checkpoint the flags given on the command
    line win and the record fills in the others."""
    directory = checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)
    record = read_record(directory)
    if record is None:
        return
    partial = values.get("partial_checkpoint")
    why = ("--train_mode=finetune builds the encoder of the --checkpoint run (or pass "
           "--partial_checkpoint to restore only what matches)")
    if not partial:
        _check_against_record(values, present, record, directory, why,
                              names=config.ARCHITECTURE_FLAGS)
    for name in config.ARCHITECTURE_FLAGS:
        if name not in present and name in record:
            values[name] = record[name]
            explicit.add(name)
    if "image_size" in record:
        small = model_lib.SMALL_IMAGE_SIDE
        if "image_size" not in present:
            values["image_size"] = record["image_size"]
            explicit.add("image_size")
        elif not partial and ((values["image_size"] <= small)
                              != (record["image_size"] <= small)):
            raise UsageError(
                f"--image_size={values['image_size']} needs another ResNet stem than the "
                f"run in {directory}, trained with --image_size={record['image_size']} "
                f"(the CIFAR stem is used up to {small} px); {why}")


def _check_resume(cfg):
    """Training on in a model_dir that holds a run: the same configuration."""
    if not checkpoint_lib.latest_checkpoint(cfg.model_dir):
        return
    record = read_record(cfg.model_dir)
    if record is None:
        return
    values = cfg.record()
    name = _first_difference(values, record, values)
    if name is not None:
        raise UsageError(
            f"--model_dir={cfg.model_dir} holds a run trained with "
            f"--{name}={config.show(record[name])}; this command has "
            f"--{name}={config.show(values[name])}: rerun with that run's flags "
            f"(its {RECORD_FILE}) to resume it, or use a new --model_dir")
