r"""SimCLR trainer with the generalized contrastive losses: the driver.

Mirrors `tf2/run.py` of the original release (the same 48 flags with the
same meaning, defined in `run_flags.py` beside this project's own),
with the loss family of "Intriguing Properties of Contrastive Losses" wired in
(`--loss`), one code path for every distribution strategy, the JAX backend
(`KERAS_BACKEND=jax`), and an embedded default dataset so that a bare
`python run.py` trains, evaluates and writes `result.json` on a laptop CPU.

    python run.py                                     # digits, a few minutes on 2 CPU cores
    KERAS_BACKEND=jax python run.py                   # the same run under JAX
    python run.py --loss=swd --prior=uniform_hypercube
    python run.py --dataset=cifar10 --data_dir=DIR    # a prepared TFDS dataset

Where things live: `run_flags.py` (the flags), `config.py` (presets,
checks, what each flag means for a run), `run_record.py` (the runs on disk:
their records, resuming, evaluating), `train_lib.py` (model, optimizers, the
objective), `trainers.py` with `trainer_tf.py` and `trainer_jax.py` (the
backends), `train_loop.py` (the host loop), `checkpoint.py`,
`evaluation.py`, `export.py`.

Every user mistake ends with one line `run.py: error: ...` and exit status 2;
a non-finite loss or gradient stops training with one line and exit status 3;
the loss of another worker of a multi-worker run, with one line and 4.
"""
import os
import shlex
import sys
import time

import native_stderr

# TensorFlow's x86 wheels turn their oneDNN kernels on only for CPUs with
# AVX512-VNNI or newer; on AVX2-only CPUs (AMD EPYC, most laptops) they are
# off, and a training step of the default job took 3.7x longer (bench/README.md).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

with native_stderr.hidden():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import keras
    tf.config.list_physical_devices()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import checkpoint as checkpoint_lib  # noqa: E402
import datasets  # noqa: E402
import evaluation  # noqa: E402
import export  # noqa: E402
import run_flags  # noqa: E402
import run_record  # noqa: E402
import train_lib  # noqa: E402
import train_loop  # noqa: E402
from errors import DatasetError  # noqa: E402
from errors import UsageError  # noqa: E402
from trainers import build_trainer  # noqa: E402

# The flags are run_flags.py's; `python run.py --helpshort` lists them.
flags.adopt_module_key_flags(run_flags)
FLAGS = run_flags.FLAGS
PROJECT_FLAG_NAMES = run_flags.PROJECT_FLAG_NAMES

HELP_FLAGS = ("-h", "-help", "--help", "-?", "--helpshort", "--helpfull")
EXIT_NON_FINITE = 3
EXIT_PEER_LOST = 4


# The argv that parse_flags parsed: the command an interrupted run prints.
COMMAND_LINE = []


def parse_flags(argv):
    """absl parsing whose errors become one line and exit status 2; the help
    flags print the help (with the values a bare run takes from the digits
    preset) and exit 0."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        annotate_preset_help()
        try:
            FLAGS(argv)
        except SystemExit:
            pass
        sys.exit(0)
    COMMAND_LINE[:] = argv
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e))


def annotate_preset_help():
    """Adds "[bare run: V, digits preset]" to the help of every flag the
    default dataset's preset sets."""
    for name, value in datasets.get_dataset("digits").preset().items():
        shown = str(value).lower() if isinstance(value, bool) else value
        FLAGS[name].help += f" [bare run: {shown}, digits preset]"


def fail(message, status=2):
    print(f"run.py: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def resolve_flags():
    """(Config, Source) of the parsed command line (`run_record.resolve`)."""
    return run_record.resolve(*run_flags.parsed())


def restore(cfg, trainer, checkpointer):
    """Resume from model_dir, else initialise from --checkpoint (weights only)."""
    latest = checkpointer.restore_newest_good(cfg.model_dir)
    if latest:
        trainer.load()
        print(f"resumed from {latest}", flush=True)
        return
    if cfg.checkpoint:
        model = trainer.model
        path = checkpoint_lib.resolve_checkpoint_path(cfg.checkpoint)
        for line in checkpoint_lib.restore_weights(model, path, cfg.partial_checkpoint):
            print(line, flush=True)
        if cfg.zero_init_logits_layer and model.supervised_head is not None:
            for variable in model.supervised_head.trainable_variables:
                variable.assign(keras.ops.zeros_like(variable))
        trainer.load()


def export_saved_model(cfg, trainer, prefix=None):
    """The SavedModel of the trainer's current weights (those of checkpoint
    `prefix`, else of the newest one), unless --keep_hub_module_max=0."""
    if cfg.keep_hub_module_max == 0:
        return
    prefix = prefix or checkpoint_lib.latest_checkpoint(trainer.worker_dir)
    path = export.export_run(cfg, trainer, prefix)
    if trainer.chief:
        print(f"saved_model: {path}", flush=True)


def evaluate_checkpoints(cfg, trainer, source, checkpointer, train_steps):
    """--mode=eval: evaluates the newest checkpoint of --model_dir (the
    newest readable one, a damaged one being named, as when training
    resumes) and exports it. With --eval_wait_secs=S, as the original's
    evaluator beside a trainer, then waits for each newer checkpoint and
    evaluates it, until one of the run's last step (whose length
    flags.json recorded), or until S seconds pass without a new one."""
    latest = checkpoint_lib.latest_checkpoint(cfg.model_dir)
    while True:
        prefix = checkpointer.restore_newest_good(cfg.model_dir)
        trainer.load()
        evaluation.evaluate_and_write(cfg, trainer, source)
        export_saved_model(cfg, trainer, prefix)
        if not cfg.eval_wait_secs or checkpoint_lib.checkpoint_step(latest) >= train_steps:
            return
        newer = checkpoint_lib.wait_for_newer(cfg.model_dir, latest, cfg.eval_wait_secs)
        if newer is None:
            print(f"no checkpoint newer than {latest} in {cfg.eval_wait_secs} s "
                  f"(--eval_wait_secs); the run stopped before its step {train_steps}",
                  flush=True)
            return
        latest = newer


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's checkpoint INFO lines would drown the progress
    if keras.backend.backend() != "tensorflow":
        # TensorFlow feeds tf.data from the host; the accelerators are the backend's.
        tf.config.set_visible_devices([], "GPU")
    cfg, source = resolve_flags()
    for line in cfg.notices:
        print(f"note: {line}", flush=True)
    trainer = build_trainer(cfg, source)
    print(f"model_dir: {cfg.model_dir}  ({trainer.backend}: {trainer.device_summary})", flush=True)
    num_train = source.num_examples(cfg.train_split)
    checkpointer = checkpoint_lib.Checkpointer(trainer.model, trainer.optimizers,
                                               trainer.worker_dir, cfg.keep_checkpoint_max)
    if cfg.mode != "eval":  # eval restores each checkpoint it evaluates (below)
        restore(cfg, trainer, checkpointer)
    train_steps = train_lib.train_steps(cfg, num_train)

    if cfg.mode in ("train", "train_then_eval"):
        run_record.make_model_dir(cfg.model_dir)
        if trainer.chief:
            run_record.write_record(cfg)
        writer = tf.summary.create_file_writer(cfg.model_dir) if trainer.chief else None
        start = time.time()
        train_loop.train(cfg, trainer, source, checkpointer, writer, train_steps)
        print(f"training took {time.time() - start:.1f} s", flush=True)
        export_saved_model(cfg, trainer)
    if cfg.mode == "train_then_eval":
        evaluation.evaluate_and_write(cfg, trainer, source)
    elif cfg.mode == "eval":
        evaluate_checkpoints(cfg, trainer, source, checkpointer, train_steps)
    if not trainer.chief:
        tf.io.gfile.rmtree(trainer.worker_dir)


def run_main(argv):
    try:
        main(argv)
    except (UsageError, DatasetError) as e:
        fail(e)
    except train_loop.NonFiniteError as e:
        fail(e, status=EXIT_NON_FINITE)
    except train_loop.PeerLost as e:
        fail(e, status=EXIT_PEER_LOST)
    except train_loop.Interrupted as e:
        if e.prefix:
            print(f"run.py: {e}, saved as {e.prefix}; to resume, run the same command: "
                  f"{resume_command(os.path.dirname(e.prefix))}", file=sys.stderr, flush=True)
        else:
            print(f"run.py: {e} on a worker that does not write the run's checkpoints; the "
                  f"run's newest checkpoint is {e.latest or 'none'}: to resume, start every "
                  "worker again with its same command", file=sys.stderr, flush=True)
        # 128 + the signal's number, as a shell reports a process it stopped.
        sys.exit(128 + e.signum)


def resume_command(model_dir):
    """`python run.py ...` as parsed, with --model_dir=`model_dir` when it
    was not given (the default one holds a time stamp)."""
    args = ["python", "run.py"] + COMMAND_LINE[1:]
    if not FLAGS["model_dir"].present:
        args.append(f"--model_dir={model_dir}")
    return shlex.join(args)


if __name__ == "__main__":
    app.run(run_main, flags_parser=parse_flags)
