r"""Time and peak memory of the project's training step (model, objective and
optimizer) under either backend, on synthetic data.

    python bench/train_step.py                                  # ResNet-18, 32 px, batch 128, TensorFlow
    python bench/train_step.py --backend=tensorflow,jax --batch=64,128
    python bench/train_step.py --workload=resnet50_224 --batch=8 --backend=jax
    python bench/train_step.py --precision=mixed_bfloat16        # any run.py flag is passed on
    python bench/train_step.py --smoke                          # tiny model, seconds

Workloads (`--workload`): `resnet18_32`, CIFAR-size images (32 px, CIFAR
stem, 10 classes, 50,000 training examples), and `resnet50_224`, ImageNet-size
ones (224 px, 1,000 classes, 1,281,167 examples). The run reads
`--dataset=synthetic`, a source of the workload's image shape and split sizes
that holds no images: flags left unset take the preset `run.py` gives images
of that size (`config.image_size_preset`: at 32 px the CIFAR recipe,
ResNet-18 with LARS and the online probe; at 224 px the original's ImageNet
defaults). `--batch` sets `--train_batch_size` (pairs per step); every flag
that is not the bench's own (below) is a `run.py` flag, appended after the
workload's and resolved by `config.resolve`, so it wins.

Each (backend, batch) is measured in a fresh process (KERAS_BACKEND is read
at start-up; ru_maxrss is the process's own). A process resolves the flags
and builds the trainer as `run.main` does (`config.resolve`,
`trainers.build_trainer`), makes one batch of uniform random views and labels of
the shapes and dtypes the input pipeline yields (`train_lib.num_input_views`
views of `train_lib.view_channels` channels each; with `--augment_in_step`
uint8 images and uniform draws, whose views the step makes), and feeds it over and over
to the trainer's own `run_steps`: through a `tf.data` dataset distributed by
the trainer's strategy under TensorFlow, already placed on the devices with
the trainer's sharding under JAX. So the step is timed without the input
pipeline (`bench/input_pipeline.py` times that). It runs `--warmup` steps
(compilation included), then times `--repeats` blocks of `--steps` steps and
prints one JSON line:

    {"workload", "batch", "flags" (the run.py flags, in order), "config" (the
     resolved values of the flags that shape the step), "views", "backend",
     "device", "trainable_params", "ms_per_step": {"median", "min", "max",
     "repeats", "steps", "warmup"} over the blocks, "cpu_ms_per_step" (the
     median of the process's CPU time per step, all threads: other processes
     on the machine lengthen it less than the wall time), "pairs_per_s"
     (batch over the median), "total_loss" (the last block's mean), "peak_rss_mib",
     "start_rss_mib" (resident memory before the first step: the framework,
     the model and the batch), and "peak_device_mib" on a GPU}

A measurement whose process fails or runs past `--timeout` seconds prints
{..., "error": why}. A mistake in the flags (run.py's included) is one line
and exit status 2.

Under JAX no TensorFlow is imported: the bench runs where TensorFlow is not
installed (a GPU machine with JAX, Keras, NumPy and absl-py), with
`KERAS_BACKEND=jax python bench/train_step.py --backend=jax`.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from errors import DatasetError  # noqa: E402
from errors import UsageError  # noqa: E402

BACKENDS = ("tensorflow", "jax")
# side: image height and width; classes and examples: those of CIFAR-10 and
# ImageNet, which set the probe's width and the learning-rate schedule.
WORKLOADS = {
    "resnet18_32": dict(side=32, classes=10, examples=50_000, batch=128,
                        flags=("--resnet_depth=18", "--image_size=32")),
    "resnet50_224": dict(side=224, classes=1000, examples=1_281_167, batch=256,
                         flags=("--resnet_depth=50", "--image_size=224")),
}
SMOKE = dict(workload="resnet18_32", batch=[8], steps=1, repeats=2, warmup=1)
SMOKE_FLAGS = ("--image_size=16", "--width_multiplier=0.25")
# Resolved flags echoed in each record ("precision" where run.py has it).
CONFIG_ECHO = ("dataset", "image_size", "resnet_depth", "width_multiplier", "sk_ratio",
               "train_batch_size", "optimizer", "loss", "temperature", "loss_chunk_size",
               "precision", "lineareval_while_pretraining", "probe_view", "num_rand_bits",
               "augment_in_step")
USAGE_STATUS = 2


def fail(message):
    """One line naming the mistake, exit status 2 (the project's rule)."""
    print(f"bench/train_step.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_STATUS)


class SyntheticSource:
    """The dataset of `--dataset=synthetic`: a workload's image shape,
    classes and split sizes ("train", "validation"), without images. It has
    what `config.resolve` and `trainers.build_trainer` read of a
    `datasets.Source` and no preset of its own, so the run is sized by its
    images (`config.image_size_preset`)."""

    name = "synthetic"
    label_names = ("label",)
    splits = ("train", "validation")

    def __init__(self, workload):
        spec = WORKLOADS[workload]
        self.label_classes = (spec["classes"],)
        self.image_shape = (spec["side"], spec["side"], 3)
        self._examples = {"train": spec["examples"], "validation": spec["examples"] // 5}

    def num_examples(self, split):
        if split not in self.splits:
            raise DatasetError(f"split {split!r} does not exist in dataset 'synthetic'; "
                               f"--train_split/--eval_split must be one of: "
                               f"{', '.join(self.splits)}")
        return self._examples[split]

    def preset(self):
        return None


def synthetic_batch(cfg, source):
    """(views float32 [B, H, W, c·V] uniform in [0, 1), labels int32 [B], or
    [B, L] with L labels), as the training pipeline yields them; with
    --augment_in_step the views are the in-step inputs instead
    (`augment.augment_views`: uint8 images, uniform draws, and the clean
    view and RandBits when the flags add them)."""
    import numpy as np

    import train_lib
    rng = np.random.default_rng(cfg.seed)
    batch, side = cfg.train_batch_size, cfg.image_size
    if cfg.augment_in_step:
        images = in_step_inputs(cfg, rng)
    else:
        channels = train_lib.view_channels(cfg) * train_lib.num_input_views(cfg)
        images = rng.random((batch, side, side, channels), dtype=np.float32)
    columns = [rng.integers(0, n, batch, dtype=np.int32) for n in source.label_classes]
    labels = columns[0] if len(columns) == 1 else np.stack(columns, axis=-1)
    return images, labels


def in_step_inputs(cfg, rng):
    """Random in-step inputs of a batch, as `data.train_input_fn` yields
    them with --augment_in_step: uint8 images of the workload's size."""
    import numpy as np

    import augment
    import model as model_lib
    import train_lib
    batch, side = cfg.train_batch_size, cfg.image_size
    inputs = dict(
        images=rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8),
        draws=rng.random((batch, model_lib.augmented_views(cfg.train_mode), augment.DRAWS),
                         dtype=np.float32))
    if train_lib.clean_probe_view(cfg):
        inputs["clean"] = rng.random((batch, side, side, 3), dtype=np.float32)
    if cfg.num_rand_bits:
        inputs["bits"] = rng.integers(0, 2, (batch, cfg.num_rand_bits)).astype(np.float32)
    return inputs


def synthetic_iterator(trainer, images, labels):
    """An iterator of the trainer's kind that yields (images, labels) forever."""
    import keras
    if keras.backend.backend() == "jax":
        import itertools

        import jax
        # Placed once with the trainer's sharding, so that run_steps'
        # device_put is a no-op and no host-to-device copy is timed.
        return itertools.repeat(jax.device_put((images, labels), trainer.data_sharding))
    import tensorflow as tf

    import data

    def input_fn(input_context):
        rows = input_context.get_per_replica_batch_size(len(labels))
        first = tf.nest.map_structure(lambda x: x[:rows], (images, labels))
        return tf.data.Dataset.from_tensors(first).repeat()
    return iter(data.build_distributed_dataset(input_fn, trainer.strategy))


def resolve(workload, run_flags):
    """(Config, SyntheticSource) of the run.py flags `run_flags`, resolved
    as `python run.py` resolves them (`config.resolve`) for the workload's
    synthetic dataset; a mistake in them is one line and exit status 2."""
    from absl import flags

    import config
    import run_flags as run_flags_lib

    source = SyntheticSource(workload)
    try:
        run_flags_lib.FLAGS(["run.py"] + run_flags)
        if run_flags_lib.FLAGS.dataset != source.name:
            raise UsageError("--dataset is --dataset=synthetic here (the bench makes its data)")
        cfg = config.resolve(*run_flags_lib.parsed(), source)
    except flags.UnrecognizedFlagError as e:
        fail(f"{e}; run.py lists its flags with python run.py --help, the bench's "
             "own by bench/train_step.py --help")
    except (flags.Error, UsageError, DatasetError) as e:
        fail(" ".join(str(e).split()))
    return cfg, source


def measure(spec, run_flags):
    """The JSON record of one measurement, in this process."""
    # As run.py: TensorFlow's oneDNN kernels on every x86 CPU (the default
    # job's step took 3.7x longer without them on AVX2-only CPUs).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import keras
    import numpy as np

    import loss as loss_bench  # bench/loss.py, beside this file
    import train_lib
    import trainers

    cfg, source = resolve(spec["workload"], run_flags)
    try:
        trainer = trainers.build_trainer(cfg, source)
    except UsageError as e:
        fail(" ".join(str(e).split()))
    images, labels = synthetic_batch(cfg, source)
    iterator = synthetic_iterator(trainer, images, labels)
    start_rss = loss_bench.current_rss_mib()
    if spec["warmup"]:
        trainer.run_steps(iterator, spec["warmup"])
    times, cpu_times = [], []
    for _ in range(spec["repeats"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        logs = trainer.run_steps(iterator, spec["steps"])
        times.append((time.perf_counter() - start) / spec["steps"] * 1e3)
        cpu_times.append((time.process_time() - cpu_start) / spec["steps"] * 1e3)
    median = float(np.median(times))
    record = dict(
        workload=spec["workload"], batch=cfg.train_batch_size, flags=run_flags,
        config={name: getattr(cfg, name) for name in CONFIG_ECHO if hasattr(cfg, name)},
        views=train_lib.num_input_views(cfg), backend=keras.backend.backend(),
        device=loss_bench.device_name(),
        trainable_params=int(sum(np.prod(v.shape) for v in trainer.model.trainable_variables)),
        ms_per_step=dict(median=round(median, 3), min=round(min(times), 3),
                         max=round(max(times), 3), repeats=len(times), steps=spec["steps"],
                         warmup=spec["warmup"]),
        cpu_ms_per_step=round(float(np.median(cpu_times)), 3),
        pairs_per_s=round(cfg.train_batch_size / (median / 1e3), 2),
        total_loss=round(logs["total_loss"], 6),
        # ru_maxrss is in KiB on Linux.
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        start_rss_mib=round(start_rss, 1))
    device_peak = loss_bench.peak_device_mib()
    if device_peak is not None:
        record["peak_device_mib"] = round(device_peak, 1)
    return record


def run_child(spec, run_flags, backend, timeout):
    """The record of one measurement in a fresh process; a usage error there
    ends this process with its line and status 2."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    base = dict(workload=spec["workload"], flags=run_flags, backend=backend)
    command = [sys.executable, __file__, f"--child={json.dumps(spec)}"] + run_flags
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(base, error=f"ran past --timeout={timeout} s")
    lines = done.stdout.strip().splitlines()
    why = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode == USAGE_STATUS:
        print(why, file=sys.stderr, flush=True)
        sys.exit(USAGE_STATUS)
    if done.returncode != 0 or not lines:
        return dict(base, error=f"exit status {done.returncode}: {why}")
    return json.loads(lines[-1])


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit status 2."""

    def error(self, message):
        fail(message)


def comma_list(value, allowed=None, kind=str):
    """The items of a comma-separated option, each checked."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("is empty")
    for item in items:
        if allowed and item not in allowed:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not one of {', '.join(allowed)}")
        if kind is int and not (item.isdigit() and int(item) > 0):
            raise argparse.ArgumentTypeError(f"{item!r} is not a positive integer")
    return [kind(item) for item in items]


def parse_args(argv):
    """(bench options, run.py flags) of the command line."""
    parser = Parser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--backend", type=lambda v: comma_list(v, BACKENDS),
                        default=[os.environ.get("KERAS_BACKEND", "tensorflow")],
                        help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--workload", default="resnet18_32", choices=tuple(WORKLOADS))
    parser.add_argument("--batch", type=lambda v: comma_list(v, kind=int),
                        help="pairs per step, comma-separated (default: the workload's, "
                             + ", ".join(f"{k} {w['batch']}" for k, w in WORKLOADS.items()) + ")")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks")
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a tiny ResNet-18 in seconds: {SMOKE} and "
                             f"{' '.join(SMOKE_FLAGS)} unless given")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, run_flags = parser.parse_known_args(argv)
    if args.child:
        return args, run_flags
    for flag in run_flags:
        if not flag.startswith("--"):
            fail(f"unexpected argument {flag!r}; run.py flags look like --name=value")
        if flag.split("=")[0] == "--train_batch_size":
            fail("--train_batch_size is --batch here (pairs per step, comma-separated)")
    smoke_flags = ()
    if args.smoke:
        given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
        for name, value in SMOKE.items():
            if name not in given:
                setattr(args, name, value)
        smoke_flags = SMOKE_FLAGS
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            fail(f"--{name}={getattr(args, name)}; it must be 1 or more")
    if args.warmup < 0:
        fail(f"--warmup={args.warmup}; it must be 0 or more")
    args.batch = args.batch or [WORKLOADS[args.workload]["batch"]]
    workload_flags = ["--dataset=synthetic", *WORKLOADS[args.workload]["flags"], *smoke_flags]
    return args, workload_flags + run_flags


def main(argv):
    args, run_flags = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child), run_flags)), flush=True)
        return
    spec = dict(workload=args.workload, steps=args.steps, repeats=args.repeats,
                warmup=args.warmup)
    for backend in args.backend:
        for batch in args.batch:
            flags = run_flags + [f"--train_batch_size={batch}"]
            print(json.dumps(run_child(spec, flags, backend, args.timeout)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
