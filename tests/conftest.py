"""Test-session set-up shared by every test module.

TensorFlow fixes its device list the first time it touches the runtime, so the
two logical CPU devices that `tests/test_distribute.py` mirrors over must be
declared here, before any test module runs an op.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as run.py sets it, for the same kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402

# Grappler rewrites every traced graph before it runs; the suite's graphs
# are tiny and run a few times each, so the rewrite costs more than it saves
# (about 8% of the suite's CPU time). What the tests check is the project's
# code, not Grappler's; run.py keeps it on.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import pytest  # noqa: E402

import jax_session  # noqa: E402  (names the session's directory before workers start)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Separate strategy objects in one process can hand out colliding
    collective instance keys, which aborts their all-reduces with a shape
    mismatch; sharing one instance avoids that.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    return tf.distribute.MirroredStrategy(devices)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "processes: runs several Python processes side by side, which keep both "
        "cores busy; run after the other tests, when the JAX session (about one core) is "
        "usually done")


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect have chosen
def pytest_collection_modifyitems(config, items):
    """Tests marked `processes` run after the others. tests/test_backends.py
    waits for a JAX test session in a subprocess (tests/jax_session.py):
    its tests run last and the session starts now, so that the two
    backends' tests run side by side. Under pytest-xdist the controller
    starts it instead (below)."""
    items.sort(key=lambda item: item.get_closest_marker("processes") is not None)  # stable
    if os.environ["KERAS_BACKEND"] != "tensorflow":
        return
    waiting = [item for item in items if item.module.__name__ == "test_backends"]
    if waiting:
        items[:] = [item for item in items if item not in waiting] + waiting
        if not hasattr(config, "workerinput"):
            jax_session.start()


def pytest_xdist_node_collection_finished(node, ids):
    """The controller starts the JAX session when a worker collected
    tests/test_backends.py."""
    if os.environ["KERAS_BACKEND"] == "tensorflow" and any(
            i.startswith("tests/test_backends.py") for i in ids):
        jax_session.start()
