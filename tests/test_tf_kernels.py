"""tf_kernels.py, the TensorFlow kernels of the core's layers (run under
TensorFlow only; the JAX session runs the core's own tests): the fused
batch norm against keras.layers.BatchNormalization, and that a training
step's batch norm takes it."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
import tf_kernels  # noqa: F401  (registers the fused batch norm tested here)


@pytest.mark.parametrize("center,scale", [(True, True), (False, False)])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras_batch_norm(center, scale, policy):
    """resnet.BatchNormalization (TensorFlow's fused kernel in training mode)
    against keras.layers.BatchNormalization with the same variables:
    outputs, gradients of the input, gamma and beta, and the moving averages
    (Keras's biased batch variance, where the kernel reports the unbiased
    one), at the original's epsilon of 1e-5 (below cuDNN's 1.001e-5)."""
    rng = np.random.default_rng(5)
    # A variance near epsilon (1e-5): epsilon itself, and the variance's bias
    # (n = 2 * 3 * 3 = 18 values per channel) change the result visibly.
    x = tf.constant(0.003 * rng.normal(size=(2, 3, 3, 4)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, 3, 3, 4)), tf.float32)
    outputs, start = {}, None
    for name, cls in (("keras", keras.layers.BatchNormalization),
                      ("fused", resnet.BatchNormalization)):
        layer = cls(momentum=0.9, epsilon=1e-5, center=center, scale=scale,
                    dtype=policy)
        layer.build(x.shape)
        if start is None:  # gamma, beta and the moving averages, the same for both;
            # the moving ones of the batch's scale, so that its statistics show
            start = [rng.uniform(0.5, 1.5, v.shape) * (1e-5 if "moving" in v.path else 1)
                     for v in layer.weights]
        for variable, value in zip(layer.weights, start):
            variable.assign(value)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        outputs[name] = dict(y=tf.cast(y, tf.float32).numpy(),
                             dtype=y.dtype, grads=[g.numpy() for g in grads],
                             moving=[layer.moving_mean.numpy(), layer.moving_variance.numpy()])
    keras_out, fused_out = outputs["keras"], outputs["fused"]
    assert fused_out["dtype"] == keras_out["dtype"]
    tolerance = 1e-5 if policy == "float32" else 1e-2  # bfloat16 inputs and outputs
    np.testing.assert_allclose(fused_out["y"], keras_out["y"], rtol=tolerance,
                               atol=tolerance * np.abs(keras_out["y"]).max())
    for got, want in zip(fused_out["grads"] + fused_out["moving"],
                         keras_out["grads"] + keras_out["moving"]):
        np.testing.assert_allclose(got, want, rtol=tolerance * 10,
                                   atol=tolerance * np.abs(want).max())


def test_fused_batch_norm_is_the_path_training_takes():
    """Under TensorFlow a training-mode call on one replica runs the fused
    kernel (FusedBatchNormV3 in the traced graph); inference does not."""
    layer = resnet.batch_norm("bn", 0.9, synchronized=True)
    layer.build((2, 3, 3, 4))
    ops_of = {}
    for training in (True, False):
        graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(
            tf.TensorSpec((2, 3, 3, 4), tf.float32)).graph
        ops_of[training] = {op.type for op in graph.get_operations()}
    assert "FusedBatchNormV3" in ops_of[True]
    assert "FusedBatchNormV3" not in ops_of[False]
