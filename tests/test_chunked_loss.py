"""Tests of chunked_loss.py: the blockwise losses against objective.py's
whole-matrix ones (values and gradients, on one device and in a replica
layout), and the streaming log-sum-exp against float64 numpy.

Chunk sizes are chosen per candidate count m (the 2B rows [z1_all; z2_all]
for ntxent, dcl and decoupled, B for dhel): 1 (every block one column, so
an anchor's own column fills a block alone), one that divides m, one that
does not (a partial last block), and one larger than m (a single block).
"""
import keras
import numpy as np
import pytest
import scipy.special
from keras import ops

import chunked_loss
import objective
from backend import dtype_name
from backend import value_and_grad
from test_objective import EXACT_ROWS
from test_objective import all_rows_equal_loss
from test_objective import numeric_grads
from test_objective import random_views
from test_objective import reference

# Each at a small temperature: logits up to 1/0.05 = 20 for unit rows, up to
# ~200 for the raw rows, where exp overflows float32 without the running max.
CONFIGS = [
    ("ntxent", {"temperature": 0.05}),
    ("ntxent", {"temperature": 0.05, "hidden_norm": False}),
    ("dcl", {"temperature": 0.05}),
    ("dcl", {"temperature": 0.05, "hidden_norm": False}),
    ("dhel", {"temperature": 0.05}),
    ("dhel", {"temperature": 0.05, "include_augs": False}),
    ("decoupled", {"temperature": 0.05}),
    ("decoupled", {"temperature": 0.05, "lambda_weight": 0.5, "scale": 2.0,
                   "hidden_norm": False}),
]
CONFIG_IDS = [name + "".join(f"-{k}={v}" for k, v in params.items() if k != "temperature")
              for name, params in CONFIGS]
# One configuration per loss, for the checks that do not depend on the parameters.
PER_LOSS = [(name, params) for name, params in CONFIGS if len(params) == 1]
PER_LOSS_IDS = [name for name, _ in PER_LOSS]

# (rows per replica, replicas): 6 rows on one device; 3 rows of replica 1
# of 2, whose gradients reach z1_all and z2_all.
LAYOUTS = {"single": (6, 1), "replica1of2": (3, 2)}


def candidate_count(name, layout):
    rows, replicas = LAYOUTS[layout]
    return (1 if name == "dhel" else 2) * rows * replicas


def chunk_sizes(count):
    """1, a divisor of `count`, a non-divisor below it, and one above it."""
    divisor = next(c for c in range(count // 2, 1, -1) if count % c == 0)
    partial = next(c for c in range(count - 1, 1, -1) if count % c)
    return [1, divisor, partial, count + 3]


def loss_fn(name, params, layout, chunk_size):
    """A function of (z1_all, z2_all): the loss of one device's rows, or of
    replica 1's rows against the gathered ones."""
    rows, replicas = LAYOUTS[layout]
    if replicas == 1:
        return lambda a, b: objective.compute_loss(name, a, b, chunk_size=chunk_size, **params)
    return lambda a, b: objective.compute_loss(
        name, a[rows:2 * rows], b[rows:2 * rows], z1_all=a, z2_all=b, replica_id=1,
        chunk_size=chunk_size, **params)


def assert_grads_close(got, expected, what):
    # Raw rows at tau = 0.05 give logits ~200, whose float32 rounding moves
    # either path's gradient by ~1e-6 of its largest entry.
    for g, e in zip(got, expected):
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=2e-6 * scale, err_msg=what)


# ---------------------------------------------------------------------------
# Chunked against whole-matrix.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_chunked_value_and_gradients_equal_the_whole_matrix_ones(name, params, layout):
    rows, replicas = LAYOUTS[layout]
    z1, z2 = random_views(rows * replicas, 5, seed=31)
    expected_value, expected_grads = value_and_grad(loss_fn(name, params, layout, None),
                                                    z1, z2)
    for chunk_size in chunk_sizes(candidate_count(name, layout)):
        value, grads = value_and_grad(loss_fn(name, params, layout, chunk_size), z1, z2)
        np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6,
                                   err_msg=f"chunk_size={chunk_size}")
        assert_grads_close(grads, expected_grads, f"chunk_size={chunk_size}")


@pytest.mark.parametrize("name,params", PER_LOSS, ids=PER_LOSS_IDS)
def test_replica_id_tensor_and_float16_inputs(name, params):
    """A scalar-tensor replica_id places the excluded columns as an int does;
    half-precision rows are computed in float32."""
    z1, z2 = random_views(8, 5, seed=32)
    by_int = objective.compute_loss(name, z1[4:], z2[4:], z1_all=z1, z2_all=z2,
                                    replica_id=1, chunk_size=3, **params)
    by_tensor = objective.compute_loss(name, z1[4:], z2[4:], z1_all=z1, z2_all=z2,
                                       replica_id=ops.convert_to_tensor(1), chunk_size=3,
                                       **params)
    assert float(by_int) == float(by_tensor)
    low1, low2 = ops.cast(z1, "float16"), ops.cast(z2, "float16")
    chunked = objective.compute_loss(name, low1, low2, chunk_size=3, **params)
    whole = objective.compute_loss(name, low1, low2, **params)
    assert dtype_name(chunked) == "float32"
    np.testing.assert_allclose(float(chunked), float(whole), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,params", PER_LOSS, ids=PER_LOSS_IDS)
def test_all_rows_equal_give_the_closed_form_loss_and_zero_gradients(name, params):
    """Every logit 1 / tau (`test_objective.all_rows_equal_loss`); the
    gradient along the common unit row is projected out by the
    normalisation, so each row's is 0."""
    z = np.repeat(EXACT_ROWS[:1], 6, axis=0)
    expected = all_rows_equal_loss(name, params, EXACT_ROWS[0].astype(np.float64), 6)
    for chunk_size in (1, 4):
        value, grads = value_and_grad(
            lambda a, b: objective.compute_loss(name, a, b, chunk_size=chunk_size, **params),
            z, z.copy())
        np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=f"chunk_size={chunk_size}")
        for g in grads:
            np.testing.assert_allclose(g, 0.0, atol=1e-5, err_msg=f"chunk_size={chunk_size}")


@pytest.mark.parametrize("name,params", PER_LOSS, ids=PER_LOSS_IDS)
def test_pairs_equal_give_the_reference_loss_and_gradients(name, params):
    """z1 = z2: the float64 reference's value and finite differences."""
    z = EXACT_ROWS.copy()
    n1, n2 = numeric_grads(lambda a, b: reference(name, a, b, **params), z, z)
    scale = max(1.0, np.abs(n1).max(), np.abs(n2).max())
    for chunk_size in (1, 4):
        value, (g1, g2) = value_and_grad(
            lambda a, b: objective.compute_loss(name, a, b, chunk_size=chunk_size, **params),
            z, z.copy())
        what = f"chunk_size={chunk_size}"
        np.testing.assert_allclose(value, reference(name, z, z, **params), rtol=1e-5,
                                   err_msg=what)
        np.testing.assert_allclose(g1, n1, rtol=1e-3, atol=1e-4 * scale, err_msg=what)
        np.testing.assert_allclose(g2, n2, rtol=1e-3, atol=1e-4 * scale, err_msg=what)


def test_large_batch_at_small_temperature_matches_the_whole_matrix():
    """512 raw rows of norm ~4 at tau = 0.05 (logits up to ~320, e^320
    overflows float32): blocks of 100, the last one partial."""
    rng = np.random.RandomState(34)
    z1 = (2 * rng.randn(512, 4)).astype(np.float32)
    z2 = (z1 + 0.1 * rng.randn(512, 4)).astype(np.float32)
    for name in chunked_loss.LOSSES:
        params = {"temperature": 0.05}
        if name != "dhel":
            params["hidden_norm"] = False
        chunked = float(objective.compute_loss(name, z1, z2, chunk_size=100, **params))
        whole = float(objective.compute_loss(name, z1, z2, **params))
        assert np.isfinite(chunked), name
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------
# The streaming summaries (contrastive accuracy and entropy).
# ---------------------------------------------------------------------------

def np_accuracy_and_entropy(z1, z2_all, replica_id, temperature, hidden_norm):
    """(acc, entropy) in float64 from the whole [n, B] matrix."""
    a, c = z1.astype(np.float64), z2_all.astype(np.float64)
    if hidden_norm:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
    logits = a @ c.T / temperature
    targets = replica_id * len(a) + np.arange(len(a))
    log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    entropy = -np.sum(np.exp(log_p) * log_p, axis=1)
    return np.mean(np.argmax(logits, axis=1) == targets), np.mean(entropy)


# Raw rows: a shared offset of norm 6 and spread 0.05 at tau = 0.05, logits
# ~720 (past float32's exp without the running max) that differ by a few
# units (an entropy far from 0).
@pytest.mark.parametrize("hidden_norm,temperature,offset,scale",
                         [(True, 0.5, 0.0, 1.0), (False, 0.05, 2.0, 0.05)])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_chunked_accuracy_and_entropy_match_numpy(layout, hidden_norm, temperature, offset,
                                                  scale):
    rows, replicas = LAYOUTS[layout]
    rng = np.random.RandomState(41)
    z2_all = 2 * rng.randn(rows * replicas, 9)
    # Half the anchors near their positive, half far: accuracy strictly
    # between 0 and 1, so a wrong target or argmax shows.
    noise = np.where(np.arange(rows * replicas)[:, None] % 2, 3.0, 0.2)
    z1_all = z2_all + noise * rng.randn(rows * replicas, 9)
    z1_all, z2_all = [(offset + scale * z).astype(np.float32) for z in (z1_all, z2_all)]
    replica_id = replicas - 1
    z1 = z1_all[replica_id * rows:(replica_id + 1) * rows]
    z2 = z2_all[replica_id * rows:(replica_id + 1) * rows]
    acc_np, ent_np = np_accuracy_and_entropy(z1, z2_all, replica_id, temperature, hidden_norm)
    assert 0 < acc_np < 1 and ent_np > 0.1
    # A float32 logit s is rounded to within |s| 2^-24 (and its dot product a
    # few times that): ~2e-4 at |s| ~720, which moves the entropy as much.
    largest = np.abs(z1.astype(np.float64) @ z2_all.T.astype(np.float64)).max() / temperature
    logit_rounding = 1e-6 if hidden_norm else 4 * largest * 2.0 ** -24
    for chunk_size in chunk_sizes(rows * replicas):
        acc, ent = objective.contrastive_accuracy_and_entropy(
            z1, z2, z2_all=z2_all, replica_id=replica_id, temperature=temperature,
            hidden_norm=hidden_norm, chunk_size=chunk_size)
        assert dtype_name(acc) == dtype_name(ent) == "float32"
        assert float(acc) == pytest.approx(acc_np), chunk_size
        np.testing.assert_allclose(float(ent), ent_np, rtol=1e-5, atol=logit_rounding,
                                   err_msg=f"chunk_size={chunk_size}")


def test_chunked_accuracy_keeps_the_first_of_tied_candidates():
    """Replica 0's 2 anchors against 7 equal candidates: argmax over the
    whole row is column 0, so anchor 0 scores and anchor 1 does not; a
    block that starts later must not take over on the tie. The softmax is
    uniform: entropy log 7."""
    local, everyone = np.ones((2, 3), np.float32), np.ones((7, 3), np.float32)
    for chunk_size in (None, 1, 2, 3, 7):
        acc, ent = objective.contrastive_accuracy_and_entropy(
            local, local, z2_all=everyone, replica_id=0, chunk_size=chunk_size)
        assert float(acc) == 0.5, chunk_size
        assert float(ent) == pytest.approx(np.log(7), rel=1e-6), chunk_size


def test_chunked_summaries_carry_no_gradient():
    z1, z2 = random_views(6, 4, seed=8)

    def summaries(a, b):
        acc, ent = objective.contrastive_accuracy_and_entropy(a, b, chunk_size=4)
        return acc + ent

    value, grads = value_and_grad(summaries, z1, z2)
    assert np.isfinite(float(value))
    for g in grads:
        assert g is None or not np.any(np.asarray(g)), g


# ---------------------------------------------------------------------------
# The streaming log-sum-exp against float64 numpy.
# ---------------------------------------------------------------------------

def np_streaming_reference(anchors, candidates, temperature, exclude):
    """(LSE [n], dLSE·g/da, dLSE·g/dc for g = 1..n) in float64, from the
    whole matrix: LSE_i over j != e_i, and its softmax gradients."""
    a, c = anchors.astype(np.float64), candidates.astype(np.float64)
    logits = a @ c.T / temperature
    if exclude is not None:
        logits[np.arange(len(a)), exclude] = -np.inf
    lse = scipy.special.logsumexp(logits, axis=1)
    p = np.exp(logits - lse[:, None])
    upstream = np.arange(1, len(a) + 1, dtype=np.float64)
    weights = upstream[:, None] * p
    return lse, weights @ c / temperature, weights.T @ a / temperature


# tau = 1: every column has weight in the softmax, so a column wrongly kept
# or dropped shows; tau = 0.05: logits up to ~600, e^600 overflows float32.
@pytest.mark.parametrize("temperature", [1.0, 0.05])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50])
@pytest.mark.parametrize("excluded", [False, True], ids=["all_columns", "one_excluded"])
def test_streaming_logsumexp_matches_numpy(chunk_size, excluded, temperature):
    rng = np.random.RandomState(35)
    anchors = (2 * rng.randn(5, 4)).astype(np.float32)
    candidates = (2 * rng.randn(14, 4)).astype(np.float32)
    # Columns 6..10: the anchors' "own" rows of a replica at offset 6.
    exclude = np.arange(6, 11, dtype=np.int32) if excluded else None
    upstream = np.arange(1, 6, dtype=np.float32)

    def weighted(a, c):
        lse = chunked_loss.streaming_logsumexp(
            a, c, temperature, chunk_size, exclude=None if exclude is None else ops.array(exclude))
        return ops.sum(lse * upstream)

    lse = np.asarray(chunked_loss.streaming_logsumexp(
        anchors, candidates, temperature, chunk_size,
        exclude=None if exclude is None else ops.array(exclude)))
    _, (grad_a, grad_c) = value_and_grad(weighted, anchors, candidates)
    expected_lse, expected_a, expected_c = np_streaming_reference(
        anchors, candidates, temperature, exclude)
    assert dtype_name(lse) == "float32" and lse.shape == (5,)
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-6, atol=1e-5)
    scale = np.abs(expected_a).max()
    np.testing.assert_allclose(grad_a, expected_a, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(grad_c, expected_c, rtol=1e-5, atol=1e-5 * scale)


def test_streaming_logsumexp_of_a_fully_excluded_row_is_minus_inf_without_nan():
    """One candidate, excluded for anchor 0 only: LSE_0 = -inf with a zero
    gradient, the other rows as usual."""
    anchors = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    candidates = np.array([[2.0, 3.0]], np.float32)
    exclude = ops.array(np.array([0, 5], np.int32))
    lse = np.asarray(chunked_loss.streaming_logsumexp(anchors, candidates, 0.5, 1,
                                                      exclude=exclude))
    assert lse[0] == -np.inf and lse[1] == pytest.approx(6.0)
    _, (grad_a, grad_c) = value_and_grad(
        lambda a, c: chunked_loss.streaming_logsumexp(a, c, 0.5, 1, exclude=exclude)[1],
        anchors, candidates)
    np.testing.assert_allclose(grad_a, [[0.0, 0.0], [4.0, 6.0]], rtol=1e-6)
    np.testing.assert_allclose(grad_c, [[0.0, 2.0]], rtol=1e-6)


def test_temperature_tensor_gets_its_gradient():
    """tau is applied outside the custom gradient: a tensor tau is
    differentiated like the whole-matrix loss's."""
    z1, z2 = random_views(6, 4, seed=36)
    for name in chunked_loss.LOSSES:
        args = (z1, z2, np.float32(0.2))
        _, (*_, chunked) = value_and_grad(
            lambda a, b, t: objective.compute_loss(name, a, b, temperature=t, chunk_size=4),
            *args)
        _, (*_, whole) = value_and_grad(
            lambda a, b, t: objective.compute_loss(name, a, b, temperature=t), *args)
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------

def test_losses_without_a_chunked_form_refuse_chunk_size_in_one_line():
    z1, z2 = random_views(4, 3, seed=37)
    assert set(chunked_loss.LOSSES) | set(objective.UNCHUNKED) == set(objective.LOSSES)
    for name in objective.UNCHUNKED:
        with pytest.raises(ValueError) as excinfo:
            objective.compute_loss(name, z1, z2, chunk_size=2)
        message = str(excinfo.value)
        assert "\n" not in message and repr(name) in message
        assert all(loss in message for loss in objective.LOSSES), message


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "8"])
def test_chunk_size_must_be_a_positive_int(bad):
    z1, z2 = random_views(4, 3, seed=38)
    with pytest.raises(ValueError, match=r"chunk_size must be None or an int >= 1"):
        objective.compute_loss("ntxent", z1, z2, chunk_size=bad)


def test_candidate_count_unknown_at_trace_time_is_refused():
    candidates = keras.Input((4,), batch_size=None)
    with pytest.raises(ValueError, match=r"known at trace time.*chunk_size=None"):
        chunked_loss.streaming_logsumexp(np.ones((3, 4), np.float32), candidates, 1.0, 2)

