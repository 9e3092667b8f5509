"""InfoNCE-family losses over blocks of candidates, in O(n * C) memory.

`objective.py` builds, for its n local anchors, the [n, B] similarity
matrices against the B global candidates, so memory grows with n * B.  The
losses of `LOSSES` need those matrices only through one log-sum-exp per
anchor, which `streaming_logsumexp` computes over blocks of C candidate rows
with a running maximum and sum; its backward pass recomputes each block
instead of keeping the matrix, so forward and backward hold a few [n, C]
blocks at a time (`objective.compute_loss(..., chunk_size=C)`).

The losses here have exactly the semantics, parameters and distribution
contract of their namesakes in `objective.py`, and share their helpers
(`loss_views.py`: the views, their normalisation and the anchors' global
indices), so the two
paths differ only in the order of floating-point summation.  NT-Xent and DCL
stream the 2n anchors [z1; z2] against the 2B rows H = [z1_all; z2_all] in
one pass: a z1 anchor's same-view candidates are the first B columns of H
and its other-view ones the last B, and the reverse for a z2 anchor, so the
columns a loss leaves out (the anchor's own row, and for DCL its positive)
are one or two column indices per anchor.

The other losses are not chunked: `hard` needs a top-k over each whole row,
`kcl`, `simple` and `align_uniform` sum kernels rather than exponentials
(they could be chunked likewise, with a gradient of their own), and `swd`
has no n x B matrix.

Only `keras` and `keras.ops` are used, so the module runs on any backend.
"""
import math

import numpy as np
from keras import ops

from loss_views import alignment
from loss_views import check_positive
from loss_views import rowdot

LOSSES = ("ntxent", "decoupled", "dcl", "dhel")


def check_chunk_size(name, chunk_size):
    """ValueError unless `chunk_size` is an int >= 1 and `name` one of `LOSSES`."""
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
            or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}.")
    if name not in LOSSES:
        raise ValueError(
            f"Loss {name!r} has no chunked form; chunk_size applies to "
            f"{', '.join(LOSSES)} (the other losses are computed whole).")


def compute_loss(name, views, chunk_size, **params):
    """The loss `name` of `loss_views.Views` `views` over blocks of
    `chunk_size` candidate rows; `params` complete (the loss's defaults
    filled in).  Called by `objective.compute_loss`."""
    check_chunk_size(name, chunk_size)
    return _LOSS_FUNCTIONS[name](views, chunk_size=int(chunk_size), **params)


def streaming_logsumexp(anchors, candidates, temperature, chunk_size, exclude=None):
    """LSE_i = log sum_{j not in E_i} exp(a_i . c_j / tau), block by block.

    Args:
        anchors: [n, d] rows a_i (float32; normalised by the caller when the
            loss normalises).
        candidates: [m, d] rows c_j, m static.
        temperature: tau, a number or a scalar tensor.
        chunk_size: C, candidate rows per block; the last block holds the
            remaining m mod C rows when C does not divide m.
        exclude: the columns E_i left out of row i's sum: None (none), [n]
            int column indices (one per anchor, e.g. its own global index
            `replica_id * n + i`) or [n, k] (k per anchor).

    Forward, per block K of columns, from M_i = -inf and S_i = 0:
        s = a c_K^T / tau, -inf at the excluded (i, j),
        M'_i = max(M_i, max_{j in K} s_ij),
        S_i <- S_i exp(M_i - M'_i) + sum_{j in K} exp(s_ij - M'_i),
    and LSE_i = M_i + log S_i.  Backward, for the upstream gradient g [n],
    recomputing s block by block:
        p = exp(s - LSE[:, None]), 0 at the excluded (i, j),
        dL/da += (g p) c_K / tau,    dL/dc_K = (g p)^T a / tau.

    Returns:
        [n] float32; -inf for a row whose every column is excluded, with a
        zero gradient.

    Raises:
        ValueError: a candidate count unknown at trace time.
    """
    count = _candidate_count(candidates, "losses")
    anchors = ops.cast(anchors, "float32")
    candidates = ops.cast(candidates, "float32")
    masked = exclude is not None
    if masked:
        exclude = ops.cast(exclude, "int32")
        if len(exclude.shape) == 1:
            exclude = exclude[:, None]
    else:
        exclude = ops.zeros((ops.shape(anchors)[0], 1), "int32")
    # tau is applied to the anchors outside the custom gradient, so autodiff
    # supplies its 1/tau factors and, for a tensor tau, its gradient.
    scaled = anchors / temperature
    return _block_logsumexp(count, min(chunk_size, count), masked)(
        scaled, candidates, exclude)


def _candidate_count(candidates, what):
    """The static row count of `candidates`; ValueError when unknown."""
    count = candidates.shape[0]
    if count is None:
        raise ValueError(
            f"Chunked {what} need a candidate row count known at trace time, got "
            f"candidates of shape {tuple(candidates.shape)}; pass chunk_size=None.")
    return count


def _fold_blocks(accumulate, carry, candidates, chunk_size):
    """`carry` after `accumulate(carry, (block, start))` for the blocks of
    `chunk_size` rows of `candidates` in order (`start` the block's first
    row): the count // C full ones in an `ops.scan`, sequential under both
    backends, then the partial one."""
    count, dim = candidates.shape
    full_blocks = count // chunk_size
    full_rows = full_blocks * chunk_size
    if full_blocks:
        blocks = ops.reshape(candidates[:full_rows], (full_blocks, chunk_size, dim))
        starts = ops.arange(full_blocks, dtype="int32") * chunk_size
        carry, _ = ops.scan(accumulate, carry, (blocks, starts))
    if full_rows < count:
        carry, _ = accumulate(carry, (candidates[full_rows:], full_rows))
    return carry


def _block_logsumexp(count, chunk_size, masked):
    """The custom-gradient LSE of `streaming_logsumexp` with tau = 1 over
    `count` candidate rows: the count // C full blocks in a loop, then the
    partial one.

    Loops, not unrolled blocks: unrolled, every block is ready at once and
    TensorFlow's executor may compute them all before reducing any, and a
    compiler may merge the backward pass's recomputed logits, identical to
    the forward's, with them (common-subexpression elimination): unrolled,
    the chunked NT-Xent at 2N = 8192 still took half to most of the whole
    loss's memory under either backend.  The forward pass is an `ops.scan`
    (sequential under both backends), the backward an `ops.while_loop` that
    writes each block's gradient with `ops.slice_update`.  Every tensor the
    custom gradient reads is an argument: under JAX it must not close over
    traced values."""
    full_blocks = count // chunk_size
    full_rows = full_blocks * chunk_size

    def block_logits(scaled, block, start, exclude):
        """(logits, mask) of the candidate rows `block` from column `start`."""
        logits = ops.matmul(scaled, ops.transpose(block))
        if not masked:
            return logits, None
        columns = start + ops.arange(ops.shape(block)[0], dtype="int32")[None, :]
        mask = ops.equal(exclude[:, :1], columns)
        for k in range(1, exclude.shape[1]):
            mask = ops.logical_or(mask, ops.equal(exclude[:, k:k + 1], columns))
        return ops.where(mask, -np.inf, logits), mask

    @ops.custom_gradient
    def logsumexp(scaled, candidates, exclude):
        dim = candidates.shape[1]

        def accumulate(carry, block_and_start):
            running_max, running_sum = carry
            logits, _ = block_logits(scaled, *block_and_start, exclude)
            new_max = ops.maximum(running_max, ops.max(logits, axis=1))
            # While every column seen is excluded the maximum is -inf; shifting
            # by 0 then keeps exp(-inf - shift) = 0 instead of exp(nan).
            shift = ops.where(ops.isfinite(new_max), new_max, 0.0)
            running_sum = (running_sum * ops.exp(running_max - shift)
                           + ops.sum(ops.exp(logits - shift[:, None]), axis=1))
            return (new_max, running_sum), None

        rows = ops.shape(scaled)[0]
        carry = (ops.full((rows,), -np.inf, "float32"), ops.zeros((rows,), "float32"))
        running_max, running_sum = _fold_blocks(accumulate, carry, candidates, chunk_size)
        value = ops.where(ops.isfinite(running_max), running_max, 0.0) + ops.log(running_sum)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args

            def block_grads(block, start):
                """(dL/dscaled, dL/dblock) of one block."""
                logits, mask = block_logits(scaled, block, start, exclude)
                weights = upstream[:, None] * ops.exp(logits - value[:, None])
                if masked:
                    # Explicitly 0, not exp(-inf - LSE): a fully excluded row
                    # has LSE = -inf and would give exp(nan).
                    weights = ops.where(mask, 0.0, weights)
                return ops.matmul(weights, block), ops.matmul(ops.transpose(weights), scaled)

            def backward(index, grad_scaled, grad_full):
                start = index * chunk_size
                block = ops.slice(candidates, (start, 0), (chunk_size, dim))
                grad_rows, grad_block = block_grads(block, start)
                # 1, computed from this block's gradient so that the next
                # block waits for it: TensorFlow's while loops otherwise run
                # up to 10 iterations ahead, each holding its block.
                step = ops.minimum(ops.cast(ops.isfinite(grad_rows[0, 0]), "int32") + 1, 1)
                return (index + step, grad_scaled + grad_rows,
                        ops.slice_update(grad_full, (start, 0), grad_block))

            grad_scaled = ops.zeros_like(scaled)
            grad_blocks = []
            if full_blocks:
                _, grad_scaled, grad_full = ops.while_loop(
                    lambda index, *_: index < full_blocks, backward,
                    (ops.zeros((), "int32"), grad_scaled,
                     ops.zeros((full_rows, dim), "float32")))
                grad_blocks.append(grad_full)
            if full_rows < count:
                grad_rows, grad_last = block_grads(candidates[full_rows:], full_rows)
                grad_scaled = grad_scaled + grad_rows
                grad_blocks.append(grad_last)
            grad_candidates = (grad_blocks[0] if len(grad_blocks) == 1
                               else ops.concatenate(grad_blocks, axis=0))
            return grad_scaled, grad_candidates, None

        return value, grad

    return logsumexp


def streaming_accuracy_and_entropy(anchors, candidates, targets, temperature, chunk_size):
    """(acc, entropy) of `objective.contrastive_accuracy_and_entropy`, block
    by block: for s_ij = a_i . c_j / tau over blocks K of C candidate rows,
    from M_i = -inf, S_i = 0, T_i = 0 and A_i = 0,
        M'_i = max(M_i, max_{j in K} s_ij),  A_i <- argmax_j s_ij so far
            (first index on ties, as argmax over the whole row),
        S_i <- S_i e^{M_i - M'_i} + sum_{j in K} e^{s_ij - M'_i},
        T_i <- e^{M_i - M'_i} (T_i + (M_i - M'_i) S_i)
               + sum_{j in K} e^{s_ij - M'_i} (s_ij - M'_i),
    where T_i = sum_j e^{s_ij - M_i} (s_ij - M_i) keeps every term near 0
    for accuracy; then, with p_i = softmax(s_i),
        entropy_i = -sum_j p_ij log p_ij = log S_i - T_i / S_i,
        acc = mean_i [A_i == targets_i],  entropy = mean_i entropy_i.

    A summary, not a loss: no gradient flows to `anchors` or `candidates`.

    Args:
        anchors: [n, d] rows a_i (normalised by the caller when asked).
        candidates: [m, d] rows c_j, m static.
        targets: [n] int column index of each anchor's positive.
        temperature: tau.
        chunk_size: C.

    Returns:
        (acc, entropy), two float32 scalars.
    """
    chunk_size = min(int(chunk_size), _candidate_count(candidates, "summaries"))
    scaled = ops.stop_gradient(ops.cast(anchors, "float32")) / temperature
    candidates = ops.stop_gradient(ops.cast(candidates, "float32"))

    def accumulate(carry, block_and_start):
        running_max, best, running_sum, running_t = carry
        block, start = block_and_start
        logits = ops.matmul(scaled, ops.transpose(block))
        block_max = ops.max(logits, axis=1)
        block_best = ops.cast(ops.argmax(logits, axis=1), "int32") + start
        # Strictly greater: on a tie the earlier block keeps its index.
        best = ops.where(block_max > running_max, block_best, best)
        new_max = ops.maximum(running_max, block_max)
        # M = -inf before the first block, where S = T = 0: nothing to carry.
        seen = ops.isfinite(running_max)
        gap = ops.where(seen, running_max - new_max, 0.0)
        decay = ops.where(seen, ops.exp(gap), 0.0)
        shifted = logits - new_max[:, None]
        weights = ops.exp(shifted)
        running_t = (decay * (running_t + gap * running_sum)
                     + ops.sum(weights * shifted, axis=1))
        running_sum = decay * running_sum + ops.sum(weights, axis=1)
        return (new_max, best, running_sum, running_t), None

    rows = ops.shape(scaled)[0]
    carry = (ops.full((rows,), -np.inf, "float32"), ops.zeros((rows,), "int32"),
             ops.zeros((rows,), "float32"), ops.zeros((rows,), "float32"))
    _, best, running_sum, running_t = _fold_blocks(accumulate, carry, candidates, chunk_size)
    hits = ops.equal(best, ops.cast(targets, "int32"))
    accuracy = ops.mean(ops.cast(hits, "float32"))
    entropy = ops.mean(ops.log(running_sum) - running_t / running_sum)
    return accuracy, entropy


# ---------------------------------------------------------------------------
# The losses; formulas in the docstrings of their namesakes in objective.py.
# ---------------------------------------------------------------------------

def _both_views(views):
    """(anchors [z1; z2], candidates H = [z1_all; z2_all], each anchor's own
    column of H, its positive's column of H)."""
    anchors = ops.concatenate([views.z1, views.z2], axis=0)
    candidates = ops.concatenate([views.z1_all, views.z2_all], axis=0)
    index, rows = views.global_index, views.global_rows
    own = ops.concatenate([index, index + rows], axis=0)
    positive = ops.concatenate([index + rows, index], axis=0)
    return anchors, candidates, own, positive


def _ntxent(views, temperature, hidden_norm, chunk_size):
    """NT-Xent: la_i = -ab_ii + LSE_j([ab_ij ; aa_ij (j != i)]), lb_i alike;
    the sum of the two directions' means is twice the mean over the 2n
    anchors of LSE over H without the anchor's own row, minus the positive."""
    check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    anchors, candidates, own, _ = _both_views(views)
    lse = streaming_logsumexp(anchors, candidates, temperature, chunk_size, exclude=own)
    positive = rowdot(views.z1, views.z2) / temperature
    return 2.0 * ops.mean(lse - ops.concatenate([positive, positive], axis=0))


def _dcl(views, temperature, hidden_norm, chunk_size):
    """DCL: la_i = -ab_ii + LSE_j([ab_ij (j != i) ; aa_ij (j != i)]): as
    NT-Xent, without the positive's column of H as well."""
    check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    anchors, candidates, own, positive_column = _both_views(views)
    lse = streaming_logsumexp(anchors, candidates, temperature, chunk_size,
                              exclude=ops.stack([own, positive_column], axis=1))
    positive = rowdot(views.z1, views.z2) / temperature
    return 2.0 * ops.mean(lse - ops.concatenate([positive, positive], axis=0))


def _dhel(views, temperature, include_augs, chunk_size):
    """DHEL: mean_i [-z1_i . z2_i / tau + LSE_{j != i}(z1_i . z1_j / tau)
    + (if include_augs) LSE_{j != i}(z2_i . z2_j / tau)], one stream per
    view (each view's anchors see only their own view)."""
    check_positive("temperature", temperature)
    views = views.normalized()
    loss = -rowdot(views.z1, views.z2) / temperature
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
    check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    anchors, candidates, _, _ = _both_views(views)
    lse = streaming_logsumexp(anchors, candidates, temperature, chunk_size)
    dist = ops.mean(lse - math.log(views.dim))
    return scale * (alignment(views) + lambda_weight * dist)


_LOSS_FUNCTIONS = {
    "ntxent": _ntxent,
    "decoupled": _decoupled,
    "dcl": _dcl,
    "dhel": _dhel,
}
