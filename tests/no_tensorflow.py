"""A Python where TensorFlow is not installed, for subprocesses.

`environment(directory)` writes a `sitecustomize` module into `directory`
that makes `import tensorflow` and `import tensorflow_datasets` (and their
submodules) raise ImportError, and returns an environment that puts it on
PYTHONPATH, so the subprocess and its own subprocesses run as on a machine
with JAX, Keras and NumPy but no TensorFlow.
"""
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCKED = ("tensorflow", "tensorflow_datasets")

SITECUSTOMIZE = f'''
import sys


class _NoTensorFlow:
    """TensorFlow is not installed here."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"No module named {{name!r}}")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


def environment(directory, **extra):
    """os.environ for a subprocess under the JAX backend without
    TensorFlow (see the module docstring), with `extra` set."""
    (pathlib.Path(directory) / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=f"{directory}{os.pathsep}{ROOT}",
                **extra)
