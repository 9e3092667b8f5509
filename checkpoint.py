"""Checkpoints, one format for every backend, and the JSON files of a run.

Format: a TensorFlow object-based checkpoint (`ckpt-<step>.index`,
`ckpt-<step>.data-*`, and the `checkpoint` state file that
`tf.train.CheckpointManager` keeps) whose objects are plain dictionaries keyed
by Keras variable paths:

    model/<variable.path>               every model variable
    optimizer/<path without the optimizer's name>
    probe_optimizer/<...>               with --probe_learning_rate
    global_step                         the optimizer's iteration count

Keras gives a variable the same path under every backend, so a run trained
under JAX resumes, evaluates and exports under TensorFlow and the other way
round. Under TensorFlow the Keras variables are saved directly (distributed
variables included); under JAX their values are copied through host-side
`tf.Variable`s. Keying by path also holds the layers Keras 3 keeps in Python
lists, which TensorFlow's own object graph of a Keras model leaves out
(keras-team/keras#18398).
"""
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from errors import UsageError
from errors import error_line

_VALUE = "VARIABLE_VALUE"


def latest_checkpoint(directory):
    """The newest checkpoint prefix in `directory`, or None."""
    if not directory or not tf.io.gfile.isdir(directory):
        return None
    return tf.train.latest_checkpoint(directory)


# What reading a truncated, corrupted or deleted checkpoint raises (every
# tensor of a checkpoint carries a CRC32C that the reader verifies; a data
# file cut short in its object graph is an IndexError of the reader).
DAMAGE_ERRORS = (tf.errors.DataLossError, tf.errors.OutOfRangeError,
                 tf.errors.NotFoundError, tf.errors.InvalidArgumentError, IndexError)


def checkpoint_step(prefix):
    """The global step of a checkpoint prefix `.../ckpt-<step>`."""
    return int(prefix.rsplit("-", 1)[1])


def wait_for_newer(directory, prefix, timeout, poll_secs=5.0):
    """The newest checkpoint prefix of `directory` of a later step than
    `prefix`, once one appears; None when none does within `timeout`
    seconds (checked every `poll_secs`)."""
    deadline = time.monotonic() + timeout
    while True:
        latest = latest_checkpoint(directory)
        if latest and checkpoint_step(latest) > checkpoint_step(prefix):
            return latest
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(poll_secs, left))


def checkpoints_newest_first(directory):
    """The checkpoint prefixes that `directory`'s state file lists, newest
    first ([] without one)."""
    if not directory or not tf.io.gfile.isdir(directory):
        return []
    state = tf.train.get_checkpoint_state(directory)
    return list(reversed(state.all_model_checkpoint_paths)) if state else []


def resolve_checkpoint_path(path, flag="--checkpoint"):
    """A checkpoint prefix, or the newest one in a directory."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise UsageError(f"{flag}={path} is a directory without a checkpoint; "
                             "pass a checkpoint prefix such as DIR/ckpt-100 or a run's directory")
        return latest
    if not tf.io.gfile.glob(path + ".index"):
        raise UsageError(f"{flag}={path} is not a checkpoint prefix (no {path}.index); "
                         "pass a prefix such as DIR/ckpt-100 or its directory")
    return path


def optimizer_key(variable):
    """A slot's key inside its optimizer's group: its path without the
    optimizer's own name, which Keras numbers per process (adam, adam_1)."""
    return variable.path.split("/", 1)[-1]


def variable_groups(model, optimizers):
    """{group: {key: Keras variable}}: `model` by path, each optimizer of
    `optimizers` ({group name: optimizer or None}) by `optimizer_key`."""
    groups = {"model": {v.path: v for v in model.variables}}
    for name, optimizer in optimizers.items():
        if optimizer is not None:
            groups[name] = {optimizer_key(v): v for v in optimizer.variables}
    return groups


class Checkpointer:
    """Saves and restores a run's state in `directory` (see the module
    docstring), keeping the newest `max_to_keep` checkpoints.

    Args:
        model: the Keras model.
        optimizers: {"optimizer": main optimizer, "probe_optimizer": the
            probe's or None}.
        directory: where checkpoints go.
        max_to_keep: checkpoints kept.
    """

    def __init__(self, model, optimizers, directory, max_to_keep=5):
        self.groups = variable_groups(model, optimizers)
        self._copies = keras.backend.backend() != "tensorflow"
        if self._copies:
            with tf.device("/cpu:0"):
                self._saved = {g: {k: tf.Variable(_canonical(v), trainable=False)
                                   for k, v in group.items()}
                               for g, group in self.groups.items()}
        else:
            self._saved = self.groups
        step = self._saved["optimizer"][optimizer_key(optimizers["optimizer"].iterations)]
        self.checkpoint = tf.train.Checkpoint(global_step=step, **self._saved)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                                  max_to_keep=max_to_keep)

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    def nonfinite(self):
        """Keys of the saved variables holding a NaN or an infinity."""
        return [f"{g}/{k}" for g, group in self.groups.items() for k, v in group.items()
                if not np.all(np.isfinite(_canonical(v)))]

    def save(self, step):
        """Writes ckpt-<step> and returns its prefix."""
        if self._copies:
            for g, group in self.groups.items():
                for k, v in group.items():
                    self._saved[g][k].assign(_canonical(v))
        return self.manager.save(checkpoint_number=step)

    def restore_newest_good(self, directory, log=None):
        """Restores the newest checkpoint of `directory` that reads back
        whole and returns its prefix (None when there is none). A damaged
        newer one (`DAMAGE_ERRORS`) is skipped with one line naming it and
        the cause (on stderr, or to `log`), and left as it is.

        Raises:
            UsageError: every checkpoint of `directory` is damaged, or the
                newest readable one holds another model
                (`check_variables`).
        """
        log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        damaged, warnings = [], []
        for prefix in checkpoints_newest_first(directory):
            try:
                self.check_variables(prefix)
                self.restore(prefix)
            except DAMAGE_ERRORS as e:
                damaged.append(f"{os.path.basename(prefix)} ({type(e).__name__})")
                warnings.append(f"warning: checkpoint {prefix} cannot be read "
                                f"({type(e).__name__}: {error_line(e)}); using the one "
                                "before it")
                continue
            for line in warnings:  # only when one is used: else the error says it all
                log(line)
            return prefix
        if damaged:
            raise UsageError(
                f"no checkpoint in {directory} can be read: {', '.join(damaged)}; move them "
                "away to train from scratch, or restore the directory from a copy")
        return None

    def check_variables(self, prefix):
        """Checks that the checkpoint at `prefix` holds every variable of
        this run, each of its shape.

        Raises:
            UsageError: one is missing or has another shape (the checkpoint
                of another model: another depth, width or head), naming it.
            DAMAGE_ERRORS: the checkpoint's index cannot be read.
        """
        reader = tf.train.load_checkpoint(prefix)
        keys = object_keys(reader, prefix)
        shapes = reader.get_variable_to_shape_map()
        missing = []
        for group, variables in self.groups.items():
            for key, variable in variables.items():
                found = keys.get(group, {}).get(key)
                # Model keys are variable paths; an optimizer's are its own.
                name = key if group == "model" else f"{group}/{key}"
                if found is None:
                    missing.append(name)
                elif tuple(shapes[found]) != tuple(variable.shape):
                    raise UsageError(
                        f"checkpoint {prefix} holds another model than this command builds: "
                        f"{name} is {list(shapes[found])} there and "
                        f"{list(variable.shape)} here; resume it with the flags of the run "
                        "that wrote it, or train in a new --model_dir")
        if missing:
            raise UsageError(
                f"checkpoint {prefix} holds another model than this command builds: "
                f"{len(missing)} variables of this model are not in it, e.g. {missing[0]}; "
                "resume it with the flags of the run that wrote it, or train in a new --model_dir")

    def restore(self, path):
        """Restores every variable from `path`; a variable the checkpoint
        lacks is an error."""
        status = self.checkpoint.restore(path)
        status.assert_existing_objects_matched()
        if self._copies:
            for g, group in self.groups.items():
                for k, v in group.items():
                    v.assign(self._saved[g][k].numpy().astype(v.dtype))


def _canonical(variable):
    """A variable's value as saved: integers (step counters) as int64, which
    TensorFlow uses and JAX without x64 does not."""
    value = np.asarray(variable)
    return value.astype(np.int64) if np.issubdtype(value.dtype, np.integer) else value


def object_keys(reader, prefix):
    """{group: {key: checkpoint key of its value}} of a checkpoint in this
    format (see the module docstring), read from its object graph.

    Raises:
        UsageError: a name-based (TF1) checkpoint, which has no object graph.
    """
    if not reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
        raise UsageError(f"--checkpoint={prefix} is a name-based (TF1) checkpoint; "
                         "expected one written by this project's run.py")
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    groups = {}
    for group in graph.nodes[0].children:
        keys = groups[group.local_name] = {}
        for child in graph.nodes[group.node_id].children:
            for attribute in graph.nodes[child.node_id].attributes:
                if attribute.name == _VALUE:
                    keys[child.local_name] = attribute.checkpoint_key
    return groups


def saved_model_variables(prefix):
    """(reader, {variable path: checkpoint key}) of the model group of a
    checkpoint in this format; UsageError naming what was found otherwise."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise UsageError(f"--checkpoint={prefix} cannot be read "
                         f"({type(e).__name__})") from e
    groups = object_keys(reader, prefix)
    if "model" not in groups:
        raise UsageError(f"--checkpoint={prefix} holds {', '.join(sorted(groups)) or 'nothing'}, "
                         "not a model group; expected a checkpoint written by this "
                         "project's run.py")
    return reader, groups["model"]


def restore_weights(model, prefix, partial=False):
    """Initialises `model` from the checkpoint at `prefix` (weights only, as
    `--checkpoint` does), variable by variable where path and shape match.

    Args:
        model: the Keras model to initialise.
        prefix: a checkpoint prefix of this project's format.
        partial: skip encoder variables that do not match too, instead of
            refusing the checkpoint (`--partial_checkpoint`).

    Returns:
        Lines to show: one saying what was restored and what was skipped,
        then with `partial` one line per variable skipped.

    Raises:
        UsageError: without `partial`, an encoder variable is missing or has
            another shape (another depth, width or stem), named with its
            shapes.
    """
    reader, keys = saved_model_variables(prefix)
    shapes = reader.get_variable_to_shape_map()
    encoder = {id(v) for v in model.resnet_model.variables}
    counts, skipped, mismatched = {}, [], []
    for variable in model.variables:
        part = ("encoder" if id(variable) in encoder
                else "supervised head" if "head_supervised" in variable.path
                else "projection head")
        done, total = counts.get(part, (0, 0))
        key = keys.get(variable.path)
        found = None if key is None else tuple(shapes[key])
        if found != tuple(variable.shape):
            what = (f"{variable.path} (absent)" if found is None else
                    f"{variable.path} ({list(found)} in the checkpoint, "
                    f"{list(variable.shape)} here)")
            (mismatched if part == "encoder" and not partial else skipped).append(what)
            counts[part] = (done, total + 1)
            continue
        variable.assign(reader.get_tensor(key))
        counts[part] = (done + 1, total + 1)
    if mismatched:
        done, total = counts["encoder"]
        raise UsageError(
            f"--checkpoint={prefix} does not hold this encoder: {total - done} of its "
            f"{total} variables do not match, e.g. {mismatched[0]}; pass the "
            "architecture flags it was trained with (its run's flags.json), or "
            "--partial_checkpoint to restore only the variables that match")
    summary = ", ".join(f"{part} {done}/{total}" for part, (done, total) in counts.items())
    line = f"initialised from {prefix}: {summary} variables restored"
    if skipped and partial:
        return [f"{line}; skipped {len(skipped)}:"] + [f"  skipped {what}" for what in skipped]
    if skipped:
        line += f"; skipped {len(skipped)}, e.g. {skipped[0]}"
    return [line]


def write_text(path, text):
    """Writes `text` to `path` atomically: a reader sees the old file or the
    new one, never a part."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def write_json(path, obj):
    """Writes `obj` as JSON to `path` atomically (`write_text`)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))
