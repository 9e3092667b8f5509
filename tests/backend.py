"""Backend-neutral helpers for the tests of the core (objective, model,
resnet, LARS, metrics), which run under the TensorFlow and the JAX backend.

`value_and_grad` differentiates a function of arrays, `variable_gradients`
a function of the Keras variables it reads, with the backend's own autodiff
(a gradient tape under TensorFlow, `jax.grad` under a `keras.StatelessScope`
under JAX). Tests that need tf.distribute or tf.function carry
`tensorflow_only`.
"""
import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute / tf.function / tf.train (TensorFlow edge)")


def dtype_name(x):
    return keras.backend.standardize_dtype(x.dtype)


def value_and_grad(fn, *args):
    """(fn(*args) as a float, [∂fn/∂arg as numpy]) for array arguments."""
    if BACKEND == "tensorflow":
        import tensorflow as tf
        tensors = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
    else:
        import jax

        def stateless(*arrays):
            # A training-mode layer assigns its moving statistics; inside
            # the scope those assignments stay in the scope.
            with keras.StatelessScope():
                return fn(*arrays)

        # One compiled program instead of op-by-op autodiff, which is slow.
        value, grads = jax.jit(jax.value_and_grad(stateless, argnums=tuple(range(len(args)))))(
            *[keras.ops.convert_to_tensor(a) for a in args])
    return float(value), [None if g is None else np.asarray(g) for g in grads]


def variable_gradients(fn, variables):
    """(fn() as a float, [∂fn/∂v as numpy, zeros where v is not reached]) for
    the Keras variables `fn` reads."""
    if BACKEND == "tensorflow":
        import tensorflow as tf
        with tf.GradientTape() as tape:
            value = fn()
        grads = tape.gradient(value, variables)
        grads = [np.zeros(v.shape, "float32") if g is None else np.asarray(g)
                 for g, v in zip(grads, variables)]
        return float(value), grads
    import jax

    def of_values(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    value, grads = jax.jit(jax.value_and_grad(of_values))([v.value for v in variables])
    return float(value), [np.asarray(g) for g in grads]

DEEP_REASON = ("ResNet-34 and deeper: architecture bookkeeping, the same Python under both "
               "backends, run under TensorFlow only (under JAX every variable costs a compile)")


def deep(*values):
    """A parameter set building ResNet-34 or deeper (see DEEP_REASON)."""
    return pytest.param(*values, marks=pytest.mark.skipif(BACKEND == "jax", reason=DEEP_REASON))
