r"""Throughput of the training input pipeline against what the training step
consumes.

    python bench/input_pipeline.py                       # digits preset, the pipeline alone
    python bench/input_pipeline.py --step                # and the step's consumption
    python bench/input_pipeline.py --smoke               # a few batches, seconds
    python bench/input_pipeline.py --step --dataset=image_folder --data_dir=DIR \
        --image_size=32 --resnet_depth=18 --train_batch_size=128 --optimizer=lars --nouse_blur

Every flag other than the bench's own (below) is a `run.py` flag, resolved as
`run.main` resolves them (`run.resolve_flags`, presets included), and the
pipeline is the one training reads: `data.train_input_fn(cfg, source)`, each
training example with its augmented views and, when the flags add it, the
online probe's clean view, in batches of `--train_batch_size`.

The pipeline is read `--warmup` batches (tracing and the first fill of the
shuffle buffer), then `--repeats` blocks of `--batches` batches are timed.
One JSON line:

    {"measure": "pipeline", "flags": the run.py flags given, "backend",
     "device", "cpu", "tensorflow", "onednn", "batch_size", "views",
     "view_shape": [H, W, C] of one view (with --augment_in_step
     "image_shape", of the uint8 image the step augments), "batches" (per
     block), "repeats",
     "warmup", "images": examples timed (batches x batch_size x repeats),
     "images_per_s": {"median", "min", "max"} over the blocks (an image is
     one training example with all its views), "ms_per_batch": the same,
     "cpu_ms_per_batch": the process's CPU time per batch, all threads: what
     the pipeline takes from a training step that shares the CPU with it}

With `--step` the trainer is built as `run.main` builds it and two more
lines time `--repeats` blocks of `--steps` training steps after 5 warm-up
steps, through the trainer's own `run_steps`:

    {"measure": "step_fed", ...}      fed by the pipeline, as in training:
                                      the step and the augmentation share
                                      the CPU
    {"measure": "step_cached", ...}   fed one batch of the pipeline over and
                                      over: the step alone

each with "ms_per_step" and "images_per_s" ({"median", "min", "max"}) in
place of "ms_per_batch", and "pipeline_over_step": the pipeline's median
images/s over the step's. Above 1 the pipeline delivers more than the step
consumes; step_fed close to step_cached says that it does so while the two
share the machine.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SMOKE = dict(batches=3, repeats=2, warmup=1, steps=2)
STEP_WARMUP = 5


def parse_args(argv):
    """(bench options, run.py flags) of the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks")
    parser.add_argument("--warmup", type=int, default=5, help="batches read before timing")
    parser.add_argument("--step", action="store_true",
                        help="also time the training step, fed and cached")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a few batches in seconds: {SMOKE} unless given")
    args, run_flags = parser.parse_known_args(argv)
    if args.smoke:
        given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
        for name, value in SMOKE.items():
            if name not in given:
                setattr(args, name, value)
    return args, run_flags


def cpu_model():
    """The CPU's model name as /proc/cpuinfo gives it ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def spread(values, digits=1):
    """{"median", "min", "max"} of `values`, rounded to `digits` decimals."""
    import numpy as np
    return dict(median=round(float(np.median(values)), digits),
                min=round(float(min(values)), digits), max=round(float(max(values)), digits))


def timed_blocks(advance, count, repeats):
    """(wall seconds, CPU seconds of this process, all its threads) of each
    of `repeats` calls `advance(count)`."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        advance(count)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def time_pipeline(iterator, args):
    """(wall seconds per block, CPU seconds per block, one batch) of reading
    `iterator` as the bench's options say."""
    def read(count):
        for _ in range(count):
            batch = next(iterator)
        return batch

    batch = read(args.warmup) if args.warmup else None
    seconds, cpu_seconds = timed_blocks(read, args.batches, args.repeats)
    if batch is None:
        batch = next(iterator)
    return seconds, cpu_seconds, batch


def time_steps(trainer, iterator, args):
    """Wall seconds of each block of `--steps` training steps read from
    `iterator`, after `STEP_WARMUP` steps."""
    trainer.run_steps(iterator, STEP_WARMUP)
    return timed_blocks(lambda count: trainer.run_steps(iterator, count),
                        args.steps, args.repeats)[0]


def cached_iterator(trainer, batch):
    """An iterator of the trainer's own kind that yields `batch` forever."""
    import keras
    if keras.backend.backend() == "jax":
        import itertools
        return itertools.repeat(batch)
    import tensorflow as tf

    import data
    return iter(data.build_distributed_dataset(
        lambda _=None: tf.data.Dataset.from_tensors(batch).repeat(), trainer.strategy))


def main(argv):
    args, run_flags = parse_args(argv)
    # run first: it sets TF_ENABLE_ONEDNN_OPTS and hides TensorFlow's start-up
    # lines before TensorFlow loads.
    import run
    import keras
    import tensorflow as tf

    import data
    import loss as loss_bench  # bench/loss.py, beside this file
    import train_lib

    run.FLAGS(["run.py", "--model_dir=unused"] + run_flags)
    cfg, source = run.resolve_flags()
    views = train_lib.num_input_views(cfg)
    base = dict(
        flags=run_flags, backend=keras.backend.backend(), device=loss_bench.device_name(),
        cpu=cpu_model(), tensorflow=tf.__version__,
        onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS"), batch_size=cfg.train_batch_size,
        views=views, repeats=args.repeats)

    # Read as the backend's trainer reads it: tensors, or numpy under JAX.
    dataset = data.train_input_fn(cfg, source)()
    iterator = (dataset.as_numpy_iterator() if keras.backend.backend() == "jax"
                else iter(dataset))
    seconds, cpu_seconds, batch = time_pipeline(iterator, args)
    del iterator, dataset
    batch_size = cfg.train_batch_size
    if isinstance(batch[0], dict):  # --augment_in_step: the images, not views
        shape = batch[0]["images"].shape
        delivered = dict(image_shape=[int(d) for d in shape[1:]])
    else:
        shape = batch[0].shape
        delivered = dict(view_shape=[int(shape[1]), int(shape[2]), int(shape[3]) // views])
    pipeline = dict(
        {"measure": "pipeline"}, **base, **delivered,
        batches=args.batches, warmup=args.warmup,
        images=args.batches * batch_size * args.repeats,
        images_per_s=spread([args.batches * batch_size / s for s in seconds]),
        ms_per_batch=spread([s / args.batches * 1e3 for s in seconds], 2),
        cpu_ms_per_batch=spread([s / args.batches * 1e3 for s in cpu_seconds], 2))
    print(json.dumps(pipeline), flush=True)
    if not args.step:
        return

    trainer = run.build_trainer(cfg, source)
    fed = trainer.train_iterator(data.train_input_fn(cfg, source))
    for measure, iterator in (("step_fed", fed),
                              ("step_cached", cached_iterator(trainer, batch))):
        seconds = time_steps(trainer, iterator, args)
        per_s = spread([args.steps * batch_size / s for s in seconds])
        record = dict(
            {"measure": measure}, **base, steps=args.steps, warmup=STEP_WARMUP,
            images=args.steps * batch_size * args.repeats, images_per_s=per_s,
            ms_per_step=spread([s / args.steps * 1e3 for s in seconds], 2),
            pipeline_over_step=round(pipeline["images_per_s"]["median"] / per_s["median"], 2))
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
