"""The backend-neutral core under JAX, and runs that cross backends.

One subprocess runs the core's tests (objective, model, resnet, LARS,
metrics) and the JAX edge's (tests/test_trainer_jax.py) under
KERAS_BACKEND=jax with two host devices, started at collection and running
alongside the TensorFlow tests (tests/conftest.py), whose own tests here run
last; it leaves a JAX-trained run, whose
checkpoint this process (TensorFlow) then restores and evaluates: the logits
of its weights must be those JAX computed, and `--mode=eval` must report
JAX's accuracy.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

import keras
import numpy as np
import pytest

import checkpoint as checkpoint_lib
import configs
import datasets
import run
import train_lib
import trainer_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_TESTS = ["tests/test_objective.py", "tests/test_model.py", "tests/test_resnet.py",
              "tests/test_lars_optimizer.py", "tests/test_metrics.py",
              "tests/test_trainer_jax.py"]


# XLA's backend optimisations are off in the JAX session: these tests are
# dominated by compiling many small programs (2.3x faster at level 0), and
# what they check is the project's code, not XLA's optimiser.
JAX_XLA_FLAGS = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
_session = {}


def start_jax_session():
    """Starts the JAX session in the background (tests/conftest.py does it at
    collection, so that it runs while the TensorFlow tests do)."""
    if "process" in _session:
        return
    base = tempfile.mkdtemp(prefix="jax_session_")
    report, run_dir = os.path.join(base, "report.xml"), os.path.join(base, "run")
    env = dict(os.environ, KERAS_BACKEND="jax", SIMCLR_JAX_RUN_DIR=run_dir,
               XLA_FLAGS=JAX_XLA_FLAGS, PYTHONPATH=ROOT)
    log = open(os.path.join(base, "output.txt"), "w+")
    _session.update(report=report, run_dir=run_dir, log=log, process=subprocess.Popen(
        [sys.executable, "-m", "pytest", *CORE_TESTS, "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))


@pytest.fixture(scope="module")
def jax_session():
    """(junit report root, the run directory the JAX tests trained)."""
    start_jax_session()
    process, log = _session["process"], _session["log"]
    try:
        returncode = process.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    log.seek(0)
    assert returncode == 0, log.read()[-8000:]
    return ElementTree.parse(_session["report"]).getroot(), pathlib.Path(_session["run_dir"])


def test_core_passes_under_jax(jax_session):
    """Every core test ran under JAX but the TensorFlow-edge ones (tf.distribute,
    tf.function, tf.train) and the deep-ResNet bookkeeping (tests/backend.py)."""
    report, _ = jax_session
    cases = report.iter("testcase")
    skipped = {}
    ran = 0
    for case in cases:
        skip = case.find("skipped")
        if skip is None:
            ran += 1
        else:
            skipped[f"{case.get('classname')}.{case.get('name')}"] = skip.get("message", "")
    assert ran > 300, ran
    edge = [name for name, why in skipped.items() if "TensorFlow edge" in why]
    deep = [name for name, why in skipped.items() if why.startswith("ResNet-34 and deeper")]
    assert len(edge) + len(deep) == len(skipped), skipped
    assert len(edge) <= 6 and len(deep) <= 16, sorted(skipped)


def test_same_seed_gives_the_same_initial_weights_under_both_backends(jax_session):
    _, run_dir = jax_session
    cfg, source = configs.resolve(mode="eval", model_dir=str(run_dir))
    keras.utils.set_random_seed(11)
    model = train_lib.build_model(cfg, source.num_classes, 3)
    expected = np.load(run_dir / "jax_initial_weights.npz")
    assert sorted(expected.files) == sorted(v.path for v in model.variables)
    for variable in model.variables:
        assert np.asarray(variable).tobytes() == expected[variable.path].tobytes(), variable.path


def test_jax_checkpoint_evaluates_under_tensorflow(jax_session, capfd):
    """The JAX run's checkpoint restored by TensorFlow gives the logits JAX
    computed, and --mode=eval under TensorFlow reports JAX's top-1."""
    _, run_dir = jax_session
    cfg, source = configs.resolve(mode="eval", model_dir=str(run_dir))
    keras.utils.set_random_seed(cfg.seed)
    trainer = trainer_tf.Trainer(cfg).build(source.num_classes, source.num_examples("train"))
    checkpointer = checkpoint_lib.Checkpointer(trainer.model, trainer.optimizers, str(run_dir))
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(run_dir)))
    images, _ = datasets.get_dataset("digits").as_numpy("test")
    rgb = np.repeat(images.astype(np.float32) / 255.0, 3, axis=-1)
    _, logits = trainer.model(rgb, training=False)
    expected = np.load(run_dir / "jax_logits.npy")
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())

    run.FLAGS.unparse_flags()
    run.parse_flags(["run.py", "--mode=eval", f"--model_dir={run_dir}"])
    run.run_main(["run.py"])
    run.FLAGS.unparse_flags()
    with open(run_dir / "result.json") as f:
        result = json.load(f)
    with open(run_dir / "jax_result.json") as f:
        jax_result = json.load(f)
    assert result["backend"] == "tensorflow" and result["global_step"] == jax_result["global_step"]
    assert result["probe_top1"] == pytest.approx(jax_result["probe_top1"], abs=1.5 / 500)
