"""The JAX test session that tests/test_backends.py reads.

One `pytest` subprocess runs the backend-neutral core's tests and the JAX
edge's under KERAS_BACKEND=jax with two host devices, alongside the
TensorFlow tests. tests/conftest.py starts it once the tests are collected:
in a plain run the one pytest process does, under pytest-xdist the
controller does (it outlives the workers), and the worker that runs
tests/test_backends.py waits for it here. They meet in one directory,
named before any worker starts so that every worker inherits its name:

    DIRECTORY/output.txt   the session's stdout and stderr
    DIRECTORY/report.xml   its junit report
    DIRECTORY/run/         the run its tests/test_trainer_jax.py trained
    DIRECTORY/returncode   its exit status, written once it has exited
"""
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_TESTS = ["tests/test_objective.py", "tests/test_chunked_loss.py", "tests/test_model.py",
              "tests/test_resnet.py", "tests/test_autoencoder.py",
              "tests/test_lars_optimizer.py", "tests/test_metrics.py",
              "tests/test_trainer_jax.py", "tests/test_precision.py", "tests/test_augment.py"]
# XLA's backend optimisations are off in the JAX session: these tests are
# dominated by compiling many small programs (2.3x faster at level 0), and
# what they check is the project's code, not XLA's optimiser. Its
# deterministic kernels are on from the start, as `--deterministic` needs
# them before JAX starts (`trainer_jax.deterministic_kernels`) and the
# session trains --deterministic runs in its own process.
XLA_FLAGS = ("--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
             "--xla_gpu_deterministic_ops=true")
DIRECTORY = pathlib.Path(os.environ.setdefault(
    "SIMCLR_JAX_SESSION_DIR",
    os.path.join(tempfile.gettempdir(), f"jax_session_{os.getpid()}_{time.time_ns()}")))


def start():
    """Starts the session in the background, once per test run."""
    try:
        DIRECTORY.mkdir(parents=True)
    except FileExistsError:
        return
    env = dict(os.environ, KERAS_BACKEND="jax", SIMCLR_JAX_RUN_DIR=str(DIRECTORY / "run"),
               XLA_FLAGS=XLA_FLAGS, PYTHONPATH=ROOT)
    with open(DIRECTORY / "output.txt", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *CORE_TESTS, "-q", "-p", "no:cacheprovider",
             f"--junitxml={DIRECTORY / 'report.xml'}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def record_exit():
        returncode = process.wait()
        partial = DIRECTORY / "returncode.partial"
        partial.write_text(str(returncode))
        partial.rename(DIRECTORY / "returncode")  # whole or absent for the reader

    threading.Thread(target=record_exit, daemon=True).start()


def wait(timeout=1800):
    """(exit status, its output) of the session, starting it if this test
    run has not; fails after `timeout` seconds."""
    start()
    deadline = time.time() + timeout
    while not (DIRECTORY / "returncode").exists():
        if time.time() > deadline:
            raise TimeoutError(f"the JAX session in {DIRECTORY} ran over {timeout} s")
        time.sleep(1)
    return (int((DIRECTORY / "returncode").read_text()),
            (DIRECTORY / "output.txt").read_text())
