"""Training and evaluation metrics (backend-neutral: keras.ops only).

The contrastive summaries (accuracy and entropy of the view-1 → view-2
logits) live next to the losses in `objective.py`; this module holds the
supervised ones the trainer logs and evaluates.
"""
import keras
from keras import ops


def supervised_loss_and_accuracy(labels, logits):
    """Mean softmax cross-entropy −log softmax(logits)[label] and top-1
    accuracy over the rows, in float32 whatever the logits' dtype."""
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "int32")
    loss = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels), "float32")
    return loss, ops.mean(correct)


def top_k_correct(labels, logits, ks=(1, 5)):
    """For each k, the number of rows whose label is among the k largest logits."""
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "int32")
    return tuple(ops.sum(ops.cast(ops.in_top_k(labels, logits, k), "float32")) for k in ks)
