"""TensorFlow kernels for layers of the core, used when Keras runs on
TensorFlow.

The core (`resnet.py`, `model.py`, ...) is written in `keras.ops` and runs on
any backend; where Keras composes an op from many small ones that
TensorFlow has a single kernel for, and that op dominates the step, a
function here takes the layer's TensorFlow call. Importing this module
registers them with their layers (`resnet.BatchNormalization.fused_training`);
the TensorFlow edges that build models (`trainer_tf.py`, `export.py`) do.

- `batch_norm_training`: Keras 3 computes training-mode batch norm from
  `ops.moments` and element-wise ops (in float32, whatever the input type),
  about a dozen passes over the activations forward and backward;
  TensorFlow's fused kernel (`FusedBatchNormV3`, oneDNN's on CPU) makes two
  or three. On a [256, 32, 32, 64] batch on a 2-core CPU the forward and
  backward pass took 86 ms with Keras's ops and 22 ms fused (20 ms with
  bfloat16 inputs), and a ResNet-18 at 32 px has 20 such layers.
"""
import tensorflow as tf

import resnet


def batch_norm_training(layer, inputs):
    """Training-mode batch norm of `layer` (a
    `keras.layers.BatchNormalization` over the last axis) on NHWC `inputs`
    with the fused kernel, exactly as Keras defines it:

        y = gamma (x - mean) / sqrt(var + eps) + beta,
        moving <- momentum * moving + (1 - momentum) * batch statistic,

    mean and the biased variance var over N, H and W (the kernel reports the
    unbiased one, n / (n - 1) var, which is converted). The moving averages
    are assigned; y is in the layer's compute dtype.

    Returns:
        y, or None when `layer` is synchronised over several replicas (its
        statistics are those of the global batch: Keras's all-reduce path).
    """
    if layer.synchronized:
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return None
    channels = inputs.shape[-1]
    gamma = layer.gamma if layer.scale else tf.ones([channels])
    beta = layer.beta if layer.center else tf.zeros([channels])
    empty = tf.constant([], tf.float32)
    # The raw op, not tf.compat.v1.nn.fused_batch_norm: that wrapper raises
    # epsilon to cuDNN's minimum of 1.001e-5, and the original's is 1e-5.
    y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=tf.cast(gamma, tf.float32), offset=tf.cast(beta, tf.float32),
        mean=empty, variance=empty, epsilon=layer.epsilon, data_format="NHWC",
        is_training=True)
    count = tf.cast(tf.size(inputs) // channels, tf.float32)
    variance = tf.where(count > 1, unbiased * (count - 1) / tf.maximum(count, 1), 0.0)
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    return tf.cast(y, layer.compute_dtype)


resnet.BatchNormalization.fused_training["tensorflow"] = batch_norm_training
