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

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Separate strategy objects in one process can hand out colliding
    collective instance keys, which aborts their all-reduces with a shape
    mismatch; sharing one instance avoids that.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    return tf.distribute.MirroredStrategy(devices)


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect have chosen
def pytest_collection_modifyitems(config, items):
    """tests/test_backends.py waits for a JAX test session in a subprocess:
    start it now and run those tests last, so that the two backends' tests
    run side by side."""
    if os.environ["KERAS_BACKEND"] != "tensorflow":
        return
    waiting = [item for item in items if item.module.__name__ == "test_backends"]
    if waiting:
        items[:] = [item for item in items if item not in waiting] + waiting
        waiting[0].module.start_jax_session()
