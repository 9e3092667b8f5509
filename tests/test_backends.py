"""The backend-neutral core under JAX, and runs that cross backends.

One subprocess (tests/jax_session.py) runs the core's tests (objective,
model, resnet, LARS, metrics) and the JAX edge's (tests/test_trainer_jax.py)
under KERAS_BACKEND=jax with two host devices, started at collection and
running alongside the TensorFlow tests, whose own tests here run last; it
leaves a JAX-trained run, whose checkpoint this process (TensorFlow) then
restores and evaluates: the logits of its weights must be those JAX
computed, and `--mode=eval` must report JAX's accuracy.
"""
import json
import os
import xml.etree.ElementTree as ElementTree

import keras
import numpy as np
import pytest

import checkpoint as checkpoint_lib
import configs
import jax_session as jax_session_lib
import run
import train_lib
import trainer_tf
from test_run import digits_rgb


@pytest.fixture(scope="module")
def jax_session():
    """(junit report root, the run directory the JAX tests trained)."""
    returncode, output = jax_session_lib.wait()
    assert returncode == 0, output[-8000:]
    return (ElementTree.parse(jax_session_lib.DIRECTORY / "report.xml").getroot(),
            jax_session_lib.DIRECTORY / "run")


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
    assert len(edge) <= 6 and len(deep) <= 21, sorted(skipped)


def test_same_seed_gives_the_same_initial_weights_under_both_backends(jax_session):
    _, run_dir = jax_session
    cfg, source = configs.resolve(mode="eval", model_dir=str(run_dir))
    keras.utils.set_random_seed(11)
    model = train_lib.build_model(cfg, source.num_classes)
    expected = np.load(run_dir / "jax_initial_weights.npz")
    assert sorted(expected.files) == sorted(v.path for v in model.variables)
    for variable in model.variables:
        assert np.asarray(variable).tobytes() == expected[variable.path].tobytes(), variable.path


def test_jax_trained_encoder_exports_a_saved_model(jax_session):
    """The SavedModel the JAX run exported (through a TensorFlow process)
    gives the logits JAX computed."""
    import tensorflow as tf
    _, run_dir = jax_session
    [step] = os.listdir(run_dir / "saved_model")  # the run's last
    loaded = tf.saved_model.load(str(run_dir / "saved_model" / step))
    rgb, _ = digits_rgb("test")
    expected = np.load(run_dir / "jax_logits.npy")
    np.testing.assert_allclose(loaded(rgb, trainable=False)["logits_sup"].numpy(), expected,
                               rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_jax_checkpoint_evaluates_under_tensorflow(jax_session, capfd):
    """The JAX run's checkpoint restored by TensorFlow gives the logits JAX
    computed, and --mode=eval under TensorFlow reports JAX's top-1."""
    _, run_dir = jax_session
    cfg, source = configs.resolve(mode="eval", model_dir=str(run_dir))
    keras.utils.set_random_seed(cfg.seed)
    trainer = trainer_tf.Trainer(cfg).build(source.num_classes, source.num_examples("train"))
    checkpointer = checkpoint_lib.Checkpointer(trainer.model, trainer.optimizers, str(run_dir))
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(run_dir)))
    rgb, _ = digits_rgb("test")
    _, logits = trainer.model(rgb, training=False)
    expected = np.load(run_dir / "jax_logits.npy")
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())

    run.FLAGS.unparse_flags()
    run.parse_flags(["run.py", "--mode=eval", f"--model_dir={run_dir}",
                     "--keep_hub_module_max=0"])
    run.run_main(["run.py"])
    run.FLAGS.unparse_flags()
    with open(run_dir / "result.json") as f:
        result = json.load(f)
    with open(run_dir / "jax_result.json") as f:
        jax_result = json.load(f)
    assert result["backend"] == "tensorflow" and result["global_step"] == jax_result["global_step"]
    assert result["probe_top1"] == pytest.approx(jax_result["probe_top1"], abs=1.5 / 500)
