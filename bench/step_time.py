r"""Time per training step of the default job, with and without oneDNN, or
under the JAX backend.

    python bench/step_time.py                      # digits preset, oneDNN off and on
    python bench/step_time.py --backends=jax       # the same steps under JAX
    python bench/step_time.py --image_size=16      # any run.py flag is passed on

Each setting runs in its own process (TF_ENABLE_ONEDNN_OPTS and KERAS_BACKEND
are read at start-up). A process resolves the flags and builds the trainer
exactly as `run.main` does (`run.resolve_flags`, `run.build_trainer`), runs 5
warm-up steps, then times `--repeats` blocks of `--steps` steps through the
trainer's own `run_steps` (data pipeline included) and prints the mean and
standard deviation of ms/step.
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = ("--steps=", "--repeats=", "--backends=")


def measure(argv, steps, repeats):
    sys.path.insert(0, ROOT)
    import numpy as np
    import run

    run.FLAGS(["run.py", "--model_dir=unused"] + argv)
    cfg, source = run.resolve_flags()
    trainer = run.build_trainer(cfg, source)
    iterator = trainer.train_iterator(source)
    trainer.run_steps(iterator, 5)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.run_steps(iterator, steps)
        times.append((time.perf_counter() - start) / steps * 1e3)
    return float(np.mean(times)), float(np.std(times))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith(OPTIONS)]
    opts = dict(a[2:].split("=") for a in sys.argv[1:] if a.startswith(OPTIONS))
    steps, repeats = int(opts.get("steps", 20)), int(opts.get("repeats", 5))
    if os.environ.get("BENCH_CHILD"):
        print(json.dumps(measure(args, steps, repeats)))
        return
    settings = {"tensorflow": [("tensorflow", "0"), ("tensorflow", "1")], "jax": [("jax", "1")]}
    chosen = [s for name in opts.get("backends", "tensorflow").split(",") for s in settings[name]]
    print(f"flags: {' '.join(args) or '(digits preset)'}; {repeats} blocks of {steps} steps")
    for backend, onednn in chosen:
        env = dict(os.environ, BENCH_CHILD="1", KERAS_BACKEND=backend,
                   TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, __file__] + sys.argv[1:], env=env, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        mean, std = json.loads(out)
        label = f"KERAS_BACKEND={backend}" + (f", TF_ENABLE_ONEDNN_OPTS={onednn}"
                                              if backend == "tensorflow" else "")
        print(f"{label}: {mean:.0f} ± {std:.0f} ms/step")


if __name__ == "__main__":
    main()
