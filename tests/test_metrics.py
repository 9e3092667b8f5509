"""Tests of metrics.py against numpy written here (both backends)."""
import numpy as np
import pytest

import metrics
from backend import dtype_name


def logits_and_labels(rows=12, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=3.0, size=(rows, classes)).astype(np.float32), \
        rng.integers(0, classes, rows).astype(np.int32)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_supervised_loss_and_accuracy_match_numpy(dtype):
    logits, labels = logits_and_labels()
    loss, accuracy = metrics.supervised_loss_and_accuracy(labels, logits.astype(dtype))
    assert dtype_name(loss) == dtype_name(accuracy) == "float32"
    x = logits.astype(dtype).astype(np.float64)
    log_softmax = x - x.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    expected = -np.mean(log_softmax[np.arange(len(labels)), labels])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(accuracy) == pytest.approx(np.mean(np.argmax(x, 1) == labels))


def test_top_k_correct_counts_rows_with_the_label_among_the_k_largest():
    logits, labels = logits_and_labels(rows=40, classes=9, seed=1)
    ranks = (logits > logits[np.arange(40), labels][:, None]).sum(1)  # 0 = top
    counts = metrics.top_k_correct(labels, logits, (1, 3, 9))
    assert [float(c) for c in counts] == [np.sum(ranks < k) for k in (1, 3, 9)]
    assert float(counts[-1]) == 40
