r"""Time per training step of the default job, with and without oneDNN.

    python bench/step_time.py                      # digits preset, both settings
    python bench/step_time.py --image_size=8       # any run.py flag is passed on

Each setting runs in its own process (TF_ENABLE_ONEDNN_OPTS is read when
TensorFlow loads). A process builds the model, optimizer and input pipeline
exactly as `run.py` does, runs 5 warm-up steps, then times `--repeats` blocks
of `--steps` steps of the same `tf.function` loop `run.train` uses (data
pipeline included) and prints the mean and standard deviation of ms/step.
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(argv, steps, repeats):
    sys.path.insert(0, ROOT)
    import numpy as np
    import tensorflow as tf
    import run
    import data as data_lib
    import datasets

    run.FLAGS(["run.py", "--model_dir=unused"] + argv)
    run.apply_preset()
    cfg = run.FLAGS
    loss_params = run.check_flags(cfg, {n for n in run.FLAGS if run.FLAGS[n].present})
    source = datasets.get_dataset(cfg.dataset, cfg.data_dir)
    strategy = run.get_strategy(cfg)
    model, optimizer, _, _, probe_optimizer = run.build_all(
        cfg, strategy, source.num_classes, source.num_examples(cfg.train_split))
    iterator = iter(data_lib.build_distributed_dataset(run.train_input_fn(cfg, source), strategy))
    step = run.TrainStep(model, optimizer, cfg, loss_params, strategy.num_replicas_in_sync,
                         probe_optimizer=probe_optimizer)

    @tf.function
    def loop(iterator, n):
        for _ in tf.range(n):
            strategy.run(step, next(iterator))

    loop(iterator, tf.constant(5))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loop(iterator, tf.constant(steps))
        times.append((time.perf_counter() - start) / steps * 1e3)
    return float(np.mean(times)), float(np.std(times))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith(("--steps=", "--repeats="))]
    opts = dict(a[2:].split("=") for a in sys.argv[1:] if a.startswith(("--steps=", "--repeats=")))
    steps, repeats = int(opts.get("steps", 20)), int(opts.get("repeats", 5))
    if os.environ.get("BENCH_CHILD"):
        print(json.dumps(measure(args, steps, repeats)))
        return
    print(f"flags: {' '.join(args) or '(digits preset)'}; {repeats} blocks of {steps} steps")
    for onednn in ("0", "1"):
        env = dict(os.environ, BENCH_CHILD="1", TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, __file__] + sys.argv[1:], env=env, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        mean, std = json.loads(out)
        print(f"TF_ENABLE_ONEDNN_OPTS={onednn}: {mean:.0f} ± {std:.0f} ms/step")


if __name__ == "__main__":
    main()
