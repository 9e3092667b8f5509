"""InfoNCE-family losses over blocks of candidates, in O(n * C) memory.

`objective.py` builds, for its n local anchors, the [n, B] similarity
matrices against the B global candidates, so memory grows with n * B.  The
losses of `LOSSES` need those matrices only through one log-sum-exp per
anchor, which `streaming_logsumexp` computes over blocks of C candidate rows
with a running maximum and sum; its backward pass recomputes each block
instead of keeping the matrix, so forward and backward hold one [n, C] block
at a time (`objective.compute_loss(..., chunk_size=C)`).

The losses here have exactly the semantics, parameters and distribution
contract of their namesakes in `objective.py`, whose helpers they share (the
views, their normalisation and the anchors' global indices), so the two
paths differ only in the order of floating-point summation.  The other
losses are not chunked: `hard` needs a top-k over each whole row, `kcl`,
`simple` and `align_uniform` sum kernels rather than exponentials (they
could be chunked the same way, but without a custom gradient), and `swd`
has no n x B matrix.

Only `keras` and `keras.ops` are used, so the module runs on any backend.
"""
import math

import numpy as np
from keras import ops

import objective

LOSSES = ("ntxent", "decoupled", "dcl", "dhel")
UNCHUNKED = tuple(name for name in objective.LOSSES if name not in LOSSES)


def check_chunk_size(name, chunk_size):
    """ValueError unless `chunk_size` is an int >= 1 and `name` one of `LOSSES`."""
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
            or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}.")
    if name not in LOSSES:
        raise ValueError(
            f"Loss {name!r} has no chunked form; chunk_size applies to "
            f"{', '.join(LOSSES)} ({', '.join(UNCHUNKED)} are computed whole).")


def compute_loss(name, views, chunk_size, **params):
    """The loss `name` of `objective._Views` `views` over blocks of
    `chunk_size` candidate rows; `params` complete (the loss's defaults
    filled in).  Called by `objective.compute_loss`."""
    check_chunk_size(name, chunk_size)
    return _LOSS_FUNCTIONS[name](views, chunk_size=int(chunk_size), **params)


def streaming_logsumexp(anchors, candidates, temperature, chunk_size, exclude=None):
    """LSE_i = log sum_{j != e_i} exp(a_i . c_j / tau), block by block.

    Args:
        anchors: [n, d] rows a_i (float32; normalised by the caller when the
            loss normalises).
        candidates: [m, d] rows c_j, m static.
        temperature: tau, a number or a scalar tensor.
        chunk_size: C, candidate rows per block; the last block holds the
            remaining m mod C rows when C does not divide m.
        exclude: None (every column counts) or [n] int32 column indices e_i
            left out of row i's sum, e.g. each anchor's own global index
            `replica_id * n + i`.

    Forward, per block K of columns, from m_i = -inf and l_i = 0:
        s = a c_K^T / tau, -inf at (i, e_i),
        m'_i = max(m_i, max_{j in K} s_ij),
        l_i <- l_i exp(m_i - m'_i) + sum_{j in K} exp(s_ij - m'_i),
    and LSE_i = m_i + log l_i.  Backward, for the upstream gradient g [n],
    recomputing s block by block:
        p = exp(s - LSE[:, None]), 0 at (i, e_i),
        dL/da += (g p) c_K / tau,    dL/dc_K = (g p)^T a / tau.
    Memory: one [n, C] block at a time, not the [n, m] matrix.

    Returns:
        [n] float32; -inf for a row whose every column is excluded (m = 1),
        with a zero gradient.

    Raises:
        ValueError: a candidate count unknown at trace time.
    """
    count = candidates.shape[0]
    if count is None:
        raise ValueError(
            "Chunked losses need a candidate row count known at trace time, got "
            f"candidates of shape {tuple(candidates.shape)}; pass chunk_size=None.")
    anchors = ops.cast(anchors, "float32")
    candidates = ops.cast(candidates, "float32")
    masked = exclude is not None
    if not masked:
        exclude = ops.zeros((ops.shape(anchors)[0],), "int32")
    # tau is applied to the anchors outside the custom gradient, so autodiff
    # supplies its 1/tau factors and, for a tensor tau, its gradient.
    scaled = anchors / temperature
    blocks = tuple((start, min(chunk_size, count - start))
                   for start in range(0, count, chunk_size))
    return _block_logsumexp(blocks, masked)(scaled, candidates,
                                            ops.cast(exclude, "int32"))


def _block_logsumexp(blocks, masked):
    """The custom-gradient LSE of `streaming_logsumexp` with tau = 1, over
    the static column blocks (start, size).  Every tensor it reads is an
    argument: under JAX a custom gradient must not close over traced values."""

    def block_logits(scaled, candidates, exclude, start, size):
        block = candidates[start:start + size]
        logits = ops.matmul(scaled, ops.transpose(block))
        if not masked:
            return block, logits, None
        columns = start + ops.arange(size, dtype="int32")
        mask = ops.equal(exclude[:, None], columns[None, :])
        return block, ops.where(mask, -np.inf, logits), mask

    @ops.custom_gradient
    def logsumexp(scaled, candidates, exclude):
        running_max = ops.full((ops.shape(scaled)[0],), -np.inf, "float32")
        running_sum = ops.zeros((ops.shape(scaled)[0],), "float32")
        for start, size in blocks:
            _, logits, _ = block_logits(scaled, candidates, exclude, start, size)
            new_max = ops.maximum(running_max, ops.max(logits, axis=1))
            # While every column seen is excluded the maximum is -inf; shifting
            # by 0 then keeps exp(-inf - shift) = 0 instead of exp(nan).
            shift = ops.where(ops.isfinite(new_max), new_max, 0.0)
            running_sum = (running_sum * ops.exp(running_max - shift)
                           + ops.sum(ops.exp(logits - shift[:, None]), axis=1))
            running_max = new_max
        finite_max = ops.where(ops.isfinite(running_max), running_max, 0.0)
        value = finite_max + ops.log(running_sum)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            grad_scaled = ops.zeros_like(scaled)
            grad_blocks = []
            for start, size in blocks:
                block, logits, mask = block_logits(scaled, candidates, exclude, start, size)
                weights = upstream[:, None] * ops.exp(logits - value[:, None])
                if masked:
                    # Explicitly 0, not exp(-inf - LSE): a fully excluded row
                    # has LSE = -inf and would give exp(nan).
                    weights = ops.where(mask, 0.0, weights)
                grad_scaled = grad_scaled + ops.matmul(weights, block)
                grad_blocks.append(ops.matmul(ops.transpose(weights), scaled))
            grad_candidates = (grad_blocks[0] if len(grad_blocks) == 1
                               else ops.concatenate(grad_blocks, axis=0))
            return grad_scaled, grad_candidates, None

        return value, grad

    return logsumexp


# ---------------------------------------------------------------------------
# The losses; formulas in the docstrings of their namesakes in objective.py.
# ---------------------------------------------------------------------------

def _ntxent(views, temperature, hidden_norm, chunk_size):
    """NT-Xent: la_i = -ab_ii + logaddexp(LSE_j ab_ij, LSE_{j != i} aa_ij),
    the [ab ; aa] row's log-sum-exp from the two blocks' streaming ones."""
    objective._check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    total = 0.0
    for anchor, partner, same_all, other_all in views.directions():
        positive = objective._rowdot(anchor, partner) / temperature
        cross = streaming_logsumexp(anchor, other_all, temperature, chunk_size)
        same = streaming_logsumexp(anchor, same_all, temperature, chunk_size,
                                   exclude=views.global_index)
        total += ops.mean(ops.logaddexp(cross, same) - positive)
    return total


def _dcl(views, temperature, hidden_norm, chunk_size):
    """DCL: la_i = -ab_ii + logaddexp(LSE_{j != i} ab_ij, LSE_{j != i} aa_ij)."""
    objective._check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    total = 0.0
    for anchor, partner, same_all, other_all in views.directions():
        positive = objective._rowdot(anchor, partner) / temperature
        cross = streaming_logsumexp(anchor, other_all, temperature, chunk_size,
                                    exclude=views.global_index)
        same = streaming_logsumexp(anchor, same_all, temperature, chunk_size,
                                   exclude=views.global_index)
        total += ops.mean(ops.logaddexp(cross, same) - positive)
    return total


def _dhel(views, temperature, include_augs, chunk_size):
    """DHEL: mean_i [-z1_i . z2_i / tau + LSE_{j != i}(z1_i . z1_j / tau)
    + (if include_augs) LSE_{j != i}(z2_i . z2_j / tau)]."""
    objective._check_positive("temperature", temperature)
    views = views.normalized()
    loss = -objective._rowdot(views.z1, views.z2) / temperature
    energies = [(views.z1, views.z1_all)]
    if include_augs:
        energies.append((views.z2, views.z2_all))
    for anchor, same_all in energies:
        loss += streaming_logsumexp(anchor, same_all, temperature, chunk_size,
                                    exclude=views.global_index)
    return ops.mean(loss)


def _decoupled(views, temperature, lambda_weight, scale, hidden_norm, chunk_size):
    """Decoupled: scale * (align + lambda * dist), with
    dist = mean_a [LSE_b(H_a . H_b / tau) - log d] streamed over the 2B rows
    of H = [z1_all; z2_all] (no column excluded)."""
    objective._check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    anchors = ops.concatenate([views.z1, views.z2], axis=0)
    candidates = ops.concatenate([views.z1_all, views.z2_all], axis=0)
    lse = streaming_logsumexp(anchors, candidates, temperature, chunk_size)
    dist = ops.mean(lse - math.log(views.dim))
    return scale * (objective._alignment(views) + lambda_weight * dist)


_LOSS_FUNCTIONS = {
    "ntxent": _ntxent,
    "decoupled": _decoupled,
    "dcl": _dcl,
    "dhel": _dhel,
}
