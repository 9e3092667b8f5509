"""The host side of training, the same for every backend.

Steps run in blocks that end at every `--log_every_steps` boundary, every
checkpoint boundary and the last step, all counted in global steps, so a
resumed run logs and saves at the same steps as an uninterrupted one. After
each block the host checks that every logged value and every gradient was
finite, and only then writes the block's summaries and, at a checkpoint
boundary where every variable is finite too, the representation metrics of
a fixed held-out batch (TensorBoard and `metrics.csv`) and the checkpoint: a
non-finite state never becomes the latest checkpoint.

SIGINT (Ctrl-C) and SIGTERM (preemption) during training stop it after the
running block with a checkpoint of the step reached (`Interrupted`); a
second signal stops at once, as Python's default does. In a multi-worker
run, a worker that stops (killed, preempted) aborts the collectives of the
others, which stop with `PeerLost` naming the checkpoint every worker
resumes from when they are all started again.
"""
import math
import signal
import sys
import threading

import keras
import tensorflow as tf

import checkpoint as checkpoint_lib
import data
import evaluation
from errors import error_line


class NonFiniteError(Exception):
    """Training produced a non-finite loss or gradient; the message names the
    steps and the terms."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training; `prefix` is the checkpoint of the
    step reached, or None on a worker that does not write the run's
    checkpoints (not the chief), where `latest` is the run's newest."""

    def __init__(self, signum, step, prefix, latest=None):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.prefix, self.latest = signum, step, prefix, latest


class PeerLost(Exception):
    """Another worker of a multi-worker run stopped during a block of steps;
    `latest` is the run's newest checkpoint (None before the first)."""

    def __init__(self, first, last, latest, error):
        super().__init__(
            f"another worker of this run stopped during steps {first}-{last} "
            f"({type(error).__name__}: {_collective_reason(error)}); the run's newest "
            f"checkpoint is {latest or 'none'}: start every worker again with its same "
            "command to resume from it")
        self.latest = latest


def _collective_reason(error):
    """What an aborted collective says happened: TensorFlow's message opens
    with "Graph execution error:" and the op's stack, and the line that
    says it ("Collective ops is aborted by: ...") may end in ':' before the
    task it names on the next line."""
    lines = [line.strip() for line in (getattr(error, "message", None) or str(error)).splitlines()]
    for i, line in enumerate(lines):
        if "aborted by" in line:
            if line.endswith(":") and i + 1 < len(lines):
                line += " " + lines[i + 1]
            return line
    return error_line(error)


# What a collective raises when a peer process went away.
PEER_ERRORS = (tf.errors.UnavailableError,)


class StopRequests:
    """Within `with`: the first SIGINT or SIGTERM sets `signum` for the loop
    to read; a second raises KeyboardInterrupt. Outside the main thread,
    where Python cannot handle signals, it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def next_boundary(step, every):
    """The smallest multiple of `every` above `step`."""
    return (step // every + 1) * every


class Progress:
    """A progress bar on a terminal; plain lines (no escape codes) when
    output goes to a file or a pipe."""

    def __init__(self, total, start, stream=None):
        self.total = total
        self.stream = stream or sys.stdout
        self.bar = None
        if self.stream.isatty():
            self.bar = keras.utils.Progbar(total)
            self.bar.update(start)

    def update(self, step, logs):
        if self.bar is not None:
            self.bar.update(step, list(logs.items()))
            return
        shown = "  ".join(f"{k}={v:.4g}" for k, v in logs.items())
        print(f"step {step}/{self.total}  {shown}", file=self.stream, flush=True)


def steps_per_epoch(cfg, num_train_examples):
    return max(int(round(num_train_examples / cfg.train_batch_size)), 1)


def checkpoint_interval(cfg, num_train_examples):
    """--checkpoint_steps, else --checkpoint_epochs epochs, in steps."""
    return cfg.checkpoint_steps or cfg.checkpoint_epochs * steps_per_epoch(cfg, num_train_examples)


def log_representation(cfg, trainer, heldout, summary_writer, step):
    """The representation metrics of the current weights on the held-out
    batch (`evaluation.representation_metrics`), as `representation/...`
    summaries and a row of model_dir/metrics.csv; nothing on workers without
    a summary writer (not the chief), which write neither."""
    if summary_writer is None:
        return
    values = evaluation.representation_metrics(cfg, trainer, heldout)
    with summary_writer.as_default():
        for name, value in values.items():
            tf.summary.scalar(f"representation/{name}", value, step=step)
    summary_writer.flush()
    evaluation.write_metrics_row(cfg.model_dir, step, values)


def train(cfg, trainer, source, checkpointer, summary_writer, train_steps):
    """Trains from the trainer's current step to `train_steps`.

    Args:
        cfg: the `config.Config`.
        trainer: a built trainer of `trainer_tf` or `trainer_jax`.
        source: the `datasets.Source` to train on.
        checkpointer: a `checkpoint.Checkpointer` of the trainer's state.
        summary_writer: a `tf.summary` writer, or None (non-chief workers).
        train_steps: the run's length in steps.

    Returns:
        The last step.

    Raises:
        NonFiniteError: a loss or gradient was not finite; nothing of that
            block was written.
        Interrupted: SIGINT or SIGTERM arrived; the step reached was saved.
        PeerLost: another worker of a multi-worker run stopped.
    """
    with StopRequests() as stop:
        return _train(cfg, trainer, source, checkpointer, summary_writer, train_steps, stop)


def _train(cfg, trainer, source, checkpointer, summary_writer, train_steps, stop):
    num_train = source.num_examples(cfg.train_split)
    save_every = checkpoint_interval(cfg, num_train)
    log_every = cfg.log_every_steps or save_every
    step = trainer.step
    heldout = evaluation.heldout_batch(cfg, source)
    iterator = trainer.train_iterator(data.train_input_fn(cfg, source, step))
    progress = Progress(train_steps, step)
    while step < train_steps:
        end = min(next_boundary(step, log_every), next_boundary(step, save_every), train_steps)
        try:
            logs = trainer.run_steps(iterator, end - step)
        except PEER_ERRORS as e:
            raise PeerLost(step + 1, end, checkpoint_lib.latest_checkpoint(cfg.model_dir),
                           e) from None
        bad = [k for k, v in logs.items() if k != "gradients_finite" and not math.isfinite(v)]
        if logs.pop("gradients_finite") != 1.0:
            bad.append("gradients")
        if bad:
            raise NonFiniteError(
                f"non-finite {', '.join(bad)} in steps {step + 1}-{end}; training stopped "
                f"and nothing of those steps was written (latest checkpoint: "
                f"{checkpointer.latest or 'none'})")
        step = end
        logs["learning_rate"] = float(trainer.schedule(step - 1))
        if summary_writer is not None:
            with summary_writer.as_default():
                for name, value in logs.items():
                    tf.summary.scalar(name if name == "learning_rate" else f"train/{name}",
                                      value, step=step)
            summary_writer.flush()
        boundary = step % save_every == 0 or step == train_steps
        if boundary or stop.signum is not None:
            trainer.sync()
            bad = checkpointer.nonfinite()
            if bad:
                raise NonFiniteError(
                    f"non-finite variables after step {step} ({len(bad)}, e.g. {bad[0]}); "
                    f"training stopped before saving (latest checkpoint: "
                    f"{checkpointer.latest or 'none'})")
            if boundary:
                log_representation(cfg, trainer, heldout, summary_writer, step)
            prefix = checkpointer.save(step)
            if stop.signum is not None:
                if trainer.chief:
                    raise Interrupted(stop.signum, step, prefix)
                # This worker's save went to its scratch directory: the run
                # resumes from the chief's newest checkpoint.
                raise Interrupted(stop.signum, step, None,
                                  checkpoint_lib.latest_checkpoint(cfg.model_dir))
        progress.update(step, logs)
    return step
