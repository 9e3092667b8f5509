"""Contrastive losses: NT-Xent and the generalized family of the paper.

`compute_loss(name, z1, z2, ...)` evaluates one of `LOSSES` on the projections
`z1`, `z2` ([n, d], row i of each is a view of the same example).  Every loss
is computed in float32, whatever the input dtype, and is written with
log-sum-exp and boolean masks so that it stays finite at small temperatures,
for identical embeddings, and in its gradients.

Distribution contract.  Under a strategy with R replicas, each replica passes
its own rows `z1, z2` ([n, d]) together with the rows gathered from every
replica, `z1_all, z2_all` ([B = R * n, d], this replica's rows at
`replica_id * n : (replica_id + 1) * n`).  Terms that are means over anchors
are computed for the local anchors against the global candidates; terms that
do not decompose over anchors (the sliced Wasserstein distance, the
uniformity of `align_uniform`) are computed from the global rows and are the
same on every replica.  Hence the mean over replicas of the returned values
equals the loss of the global batch on a single device, and so do the
gradients.  Formulas in the docstrings are written for the global batch.

Only `keras` and `keras.ops` are used, so the module runs on any backend.
"""

import math

import keras
import numpy as np
from keras import ops

import chunked_loss
from loss_views import Views
from loss_views import alignment
from loss_views import as_float32
from loss_views import check_positive
from loss_views import check_rows
from loss_views import check_single_device
from loss_views import global_index
from loss_views import l2_normalize
from loss_views import logits as _logits
from loss_views import mask as _mask
from loss_views import rowdot
from loss_views import rows

LOSSES = ("ntxent", "decoupled", "swd", "dcl", "dhel", "kcl", "hard", "simple",
          "align_uniform")
PRIORS = ("uniform_hypersphere", "normal", "uniform_hypercube")
KCL_KERNELS = ("gaussian", "log", "imq", "riesz")
# Losses computed whole, without a chunked form (`chunked_loss.LOSSES`).
UNCHUNKED = tuple(name for name in LOSSES if name not in chunked_loss.LOSSES)

LOSS_PARAMS = {
    "ntxent": {"temperature": 0.1, "hidden_norm": True},
    "decoupled": {"temperature": 1.0, "lambda_weight": 1.0, "scale": 1.0,
                  "hidden_norm": True},
    "swd": {"prior": "uniform_hypersphere", "lambda_weight": 1.0, "scale": 1.0,
            "hidden_norm": None, "projection_noise": None, "prior_noise": None},
    "dcl": {"temperature": 0.1, "hidden_norm": True},
    "dhel": {"temperature": 0.3, "include_augs": True},
    "kcl": {"kernel": "gaussian", "t": 2.0, "gamma": 16.0},
    "hard": {"temperature": 0.5, "num_negatives": None, "hidden_norm": True},
    "simple": {"lambda_weight": None},
    "align_uniform": {"alpha": 2.0, "t": 2.0, "lambda_weight": 1.0},
}

# Riesz kernel guard: D = sqrt(D^2 + RIESZ_EPSILON).  At D = 0 this bounds
# D^-s by 1e3^s and its derivative in D^2 by (s/2) * 1e6^(s/2 + 1), which stays
# inside float32 for the exponents in use (|s| <= 4).
RIESZ_EPSILON = 1e-6
# Floor of D^2 before the power D^alpha of `align_uniform` with alpha != 2:
# below it (distances under 1e-6, under float32 resolution of 2 - 2 cos) the
# value is taken as constant, so the derivative never meets 0^(alpha/2 - 1).
ALIGN_EPSILON = 1e-12


# ---------------------------------------------------------------------------
# Public entry points.
# ---------------------------------------------------------------------------

def compute_loss(name, z1, z2, *, z1_all=None, z2_all=None, replica_id=0,
                 seed=None, chunk_size=None, **params):
    """Returns the contrastive loss `name` of the pairs (z1_i, z2_i).

    Args:
        name: one of `LOSSES`.
        z1, z2: [n, d] projections of the first and the second view.
        z1_all, z2_all: [B, d] rows gathered from all replicas (gradients
            flowing through the gather), or None on a single device, where
            they equal `z1`, `z2`.
        replica_id: index of this replica; its rows are
            `z*_all[replica_id * n : (replica_id + 1) * n]`.  Must be 0 when
            `z1_all` is None.  May be a scalar integer tensor.
        seed: randomness of `swd` when its noise is not supplied: None (a
            fresh draw on every call), an int (repeatable) or a
            `keras.random.SeedGenerator`.
        chunk_size: None, or an int C >= 1 for ntxent, dcl, dhel and
            decoupled: the same loss, computed over blocks of C candidate
            rows in O(n C) memory instead of O(n B) (`chunked_loss`).
        **params: the loss's parameters, see `LOSS_PARAMS[name]` for the
            accepted names and their defaults.

    Returns:
        A float32 scalar.  The mean over replicas of the values returned on
        each replica equals the value for the global batch on one device.

    Raises:
        ValueError: unknown loss, prior or kernel, a parameter the loss does
            not accept, inconsistent shapes, or a chunk_size the loss has no
            chunked form for.
    """
    if name not in LOSS_PARAMS:
        raise ValueError(
            f"Unknown loss {name!r}; expected one of: {', '.join(LOSSES)}.")
    unknown = sorted(set(params) - set(LOSS_PARAMS[name]))
    if unknown:
        raise ValueError(
            f"Loss {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(LOSS_PARAMS[name])}.")
    kwargs = dict(LOSS_PARAMS[name], **params)
    views = Views(z1, z2, z1_all, z2_all, replica_id)
    if chunk_size is not None:
        if name in UNCHUNKED:
            raise ValueError(
                f"Loss {name!r} has no chunked form; chunk_size applies to "
                f"{', '.join(chunked_loss.LOSSES)} ({', '.join(UNCHUNKED)} are "
                "computed whole).")
        return chunked_loss.compute_loss(name, views, chunk_size, **kwargs)
    if name == "swd":
        kwargs["seed"] = seed
    return _LOSS_FUNCTIONS[name](views, **kwargs)


def sliced_wasserstein(x, y, projection):
    """Squared sliced 2-Wasserstein distance between two equal-size samples.

    With P = `projection` ([d, p], one slicing direction per column),
        SW(x, y) = 1/(m p) * sum_k sum_r (sort(x P)_{r k} - sort(y P)_{r k})^2,
    the sorts running over the m rows of each column: for every direction the
    squared W2 distance between the two 1-D empirical laws, averaged.

    Args:
        x, y: [m, d] samples.
        projection: [d, p] slicing directions.

    Returns:
        A float32 scalar.
    """
    x, y, projection = (as_float32(v) for v in (x, y, projection))
    x_sorted = ops.sort(ops.matmul(x, projection), axis=0)
    y_sorted = ops.sort(ops.matmul(y, projection), axis=0)
    return ops.mean(ops.square(x_sorted - y_sorted))


def contrastive_accuracy_and_entropy(z1, z2, *, z2_all=None, replica_id=0,
                                     temperature=0.1, hidden_norm=True, chunk_size=None):
    """Summaries of the original trainer: contrastive accuracy and entropy.

    Uses only the B cross-view candidates of each local anchor:
        logits_ij = z1_i . z2_all_j / tau   (rows L2-normalised if hidden_norm),
        acc       = mean_i [argmax_j logits_ij == g_i],  g_i = replica_id*n + i,
        entropy   = mean_i -sum_j p_ij log p_ij,  p_i = softmax(logits_i).

    With `chunk_size` C, the same summaries over blocks of C candidates in
    O(n C) memory (`chunked_loss.streaming_accuracy_and_entropy`).

    Returns:
        (acc, entropy), two float32 scalars.
    """
    z1, z2 = as_float32(z1), as_float32(z2)
    check_rows("z1", z1, None)
    check_rows("z2", z2, z1)
    if z2_all is None:
        check_single_device(replica_id)
        z2_all = z2
    z2_all = as_float32(z2_all)
    check_rows("z2_all", z2_all, z1, same_rows=False)
    if hidden_norm:
        z1, z2_all = l2_normalize(z1), l2_normalize(z2_all)
    targets = global_index(replica_id, rows(z1)[1])
    if chunk_size is not None:
        return chunked_loss.streaming_accuracy_and_entropy(
            z1, z2_all, targets, temperature, chunk_size)
    logits = _logits(z1, z2_all, temperature)
    # argmax returns int32 on some backends and int64 on others.
    predicted = ops.cast(ops.argmax(logits, axis=1), "int32")
    hits = ops.equal(predicted, targets)
    accuracy = ops.mean(ops.cast(hits, "float32"))
    log_p = ops.log_softmax(logits, axis=1)
    entropy = ops.mean(-ops.sum(ops.exp(log_p) * log_p, axis=1))
    return accuracy, entropy


def orthogonal_from_noise(noise):
    """Haar-distributed orthogonal matrix from a [d, d] standard-normal matrix.

    With noise = Q R (QR decomposition), returns Q diag(sign(diag(R))); the sign
    correction makes the factorisation unique, which is what makes the law of
    the result uniform on O(d).  Carries no gradient.
    """
    noise = ops.stop_gradient(as_float32(noise))
    q, r = ops.qr(noise)
    signs = ops.where(ops.diagonal(r) < 0, -1.0, 1.0)
    return q * signs[None, :]


def prior_from_noise(prior, noise):
    """Samples of a prior of `PRIORS` from standard-normal noise G ([m, d]).

    `normal`: G.  `uniform_hypersphere`: the rows of G normalised, uniform on
    S^{d-1}.  `uniform_hypercube`: erf(G / sqrt(2)) = 2 Phi(G) - 1, exactly
    U(-1, 1) per entry.  Carries no gradient.
    """
    _check_choice("prior", prior, PRIORS)
    noise = ops.stop_gradient(as_float32(noise))
    if prior == "normal":
        return noise
    if prior == "uniform_hypersphere":
        return l2_normalize(noise)
    return ops.erf(noise / math.sqrt(2.0))


# ---------------------------------------------------------------------------
# The losses.  Each takes a `loss_views.Views` and the loss's parameters.
# ---------------------------------------------------------------------------

def _ntxent(views, temperature, hidden_norm):
    """NT-Xent of the original release, both directions summed:
        L = 1/B sum_i (la_i + lb_i),
        la_i = -ab_ii + LSE_j([ab_ij ; aa_ij (j != i)]),
    ab = z1 z2^T / tau, aa = z1 z1^T / tau; lb_i alike with the views swapped.
    Each anchor has 1 positive and 2B - 2 negatives.
    """
    return _infonce(views, temperature, hidden_norm, keep_positive=True)


def _dcl(views, temperature, hidden_norm):
    """Decoupled contrastive loss: NT-Xent with the positive removed from
    both denominators:
        la_i = -ab_ii + LSE_j([ab_ij (j != i) ; aa_ij (j != i)]).
    """
    return _infonce(views, temperature, hidden_norm, keep_positive=False)


def _infonce(views, temperature, hidden_norm, keep_positive):
    """sum over both directions of mean_i [LSE(candidates_i) - positive_i]
    (`_candidate_logits`)."""
    check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    total = 0.0
    for direction in views.directions():
        positive, candidates = _candidate_logits(views, direction, temperature,
                                                 keep_positive)
        total += ops.mean(ops.logsumexp(candidates, axis=1) - positive)
    return total


def _candidate_logits(views, direction, temperature, keep_positive):
    """(positive logits [n], candidate logits [n, 2B]) of the anchors of one
    direction (`Views.directions`): a_i . p_i / tau, then the anchor's logits
    against the other view's B rows (with its positive at column g_i only
    when `keep_positive`) and against its own view's B rows, itself at
    column g_i masked with -inf."""
    anchor, partner, same_all, other_all = direction
    positive = rowdot(anchor, partner) / temperature
    cross = _logits(anchor, other_all, temperature)
    if not keep_positive:
        cross = _mask(cross, views.self_mask)
    same = _mask(_logits(anchor, same_all, temperature), views.self_mask)
    return positive, ops.concatenate([cross, same], axis=1)


def _hard(views, temperature, num_negatives, hidden_norm):
    """Hard contrastive loss: NT-Xent whose denominator keeps, per anchor, the
    positive and only its K most similar negatives out of the 2B - 2
    (cross-view j != i and same-view j != i):
        la_i = -ab_ii + LSE([ab_ii ; top_K of the negatives of i]).
    K = `num_negatives` is clamped to 2B - 2, where the loss equals NT-Xent;
    None keeps all negatives and computes NT-Xent directly, without the
    top-k.  With a batch size unknown at trace time K cannot be clamped and
    must not exceed 2B - 2.
    """
    check_positive("temperature", temperature)
    if num_negatives is None:
        return _ntxent(views, temperature, hidden_norm)
    if (isinstance(num_negatives, bool)
            or not isinstance(num_negatives, (int, np.integer))
            or num_negatives < 1):
        raise ValueError("num_negatives must be a positive int or None, "
                         f"got {num_negatives!r}.")
    if views.global_size is not None:
        num_negatives = min(num_negatives, 2 * views.global_size - 2)

    if hidden_norm:
        views = views.normalized()
    total = 0.0
    for direction in views.directions():
        # Positive and self are masked before the top-k, so neither can be
        # picked as a negative.
        positive, negatives = _candidate_logits(views, direction, temperature,
                                                keep_positive=False)
        hardest, _ = ops.top_k(negatives, int(num_negatives))
        candidates = ops.concatenate([positive[:, None], hardest], axis=1)
        total += ops.mean(ops.logsumexp(candidates, axis=1) - positive)
    return total


def _simple(views, lambda_weight):
    """The "simple" loss (the large-temperature limit of NT-Xent), with
    cosine similarities s:
        L = 1/B sum_i (la_i + lb_i),
        la_i = -s(z1_i, z2_i)
               + lambda * sum_{j != i} (s(z1_i, z2_j) + s(z1_i, z1_j)),
    lb_i alike with the views swapped; lambda defaults to 1 / (2B - 2), which
    weighs the positive against the mean negative.
    """
    views = views.normalized()
    if lambda_weight is None:
        global_rows = ops.cast(views.global_rows, "float32")
        lambda_weight = 1.0 / (2.0 * global_rows - 2.0)
    total = 0.0
    for anchor, partner, same_all, other_all in views.directions():
        positive = rowdot(anchor, partner)
        cross = _logits(anchor, other_all, 1.0)
        same = _logits(anchor, same_all, 1.0)
        negatives = (ops.sum(ops.where(views.self_mask, 0.0, cross), axis=1)
                     + ops.sum(ops.where(views.self_mask, 0.0, same), axis=1))
        total += ops.mean(lambda_weight * negatives - positive)
    return total


def _dhel(views, temperature, include_augs):
    """Decoupled hyperspherical energy loss (unit vectors):
        L = 1/B sum_i [-z1_i . z2_i / tau + LSE_{j != i}(z1_i . z1_j / tau)
                       + (if include_augs) LSE_{j != i}(z2_i . z2_j / tau)].
    """
    check_positive("temperature", temperature)
    views = views.normalized()
    positive = rowdot(views.z1, views.z2) / temperature
    loss = -positive
    energies = [(views.z1, views.z1_all)]
    if include_augs:
        energies.append((views.z2, views.z2_all))
    for anchor, same_all in energies:
        same = _mask(_logits(anchor, same_all, temperature), views.self_mask)
        loss += ops.logsumexp(same, axis=1)
    return ops.mean(loss)


def _kcl(views, kernel, t, gamma):
    """Kernel contrastive loss (unit vectors, D^2 = max(0, 2 - 2 cos)):
        L = -2 mean_i K_A(z1_i, z2_i)
            + gamma * (mean_{i != j} K_U(z1_i, z1_j)
                       + mean_{i != j} K_U(z2_i, z2_j)).
    Kernels: gaussian K_U = K_A = exp(-t D^2); log K_U = -1/2 log(1 + t D^2),
    K_A = -log(1 + t D^2); imq (c = t) K_U = K_A = c / sqrt(c^2 + D^2);
    riesz (s = t) K_U = K_A = D^-s for s > 0 and -D^|s| for s < 0, with the
    guarded D = sqrt(D^2 + RIESZ_EPSILON) (1e-6), which keeps identical
    vectors finite in value and gradient.
    """
    _check_choice("kernel", kernel, KCL_KERNELS)
    if kernel == "riesz" and t == 0:
        raise ValueError(
            "The riesz kernel needs t != 0 (t is its exponent s).")
    uniform_kernel, align_kernel = _KCL_KERNEL_PAIRS[kernel]
    views = views.normalized()
    d2_positive = _squared_distance_from_cos(rowdot(views.z1, views.z2))
    loss = -2.0 * ops.mean(align_kernel(d2_positive, t))
    pairs = ops.cast(views.global_rows, "float32") - 1.0
    for anchor, same_all in ((views.z1, views.z1_all),
                             (views.z2, views.z2_all)):
        d2 = _squared_distance_from_cos(_logits(anchor, same_all, 1.0))
        energy = ops.where(views.self_mask, 0.0, uniform_kernel(d2, t))
        loss += gamma * ops.mean(ops.sum(energy, axis=1) / pairs)
    return loss


def _align_uniform(views, alpha, t, lambda_weight):
    """Alignment plus uniformity (unit vectors, D^2 = max(0, 2 - 2 cos)):
        L = mean_i ||z1_i - z2_i||^alpha + lambda * (U(z1) + U(z2)) / 2,
        U(x) = log mean_{i<j} exp(-t ||x_i - x_j||^2)
             = LSE_{i<j}(-t D^2_ij) - log(B (B - 1) / 2).
    For alpha != 2, ||.||^alpha = max(D^2, ALIGN_EPSILON)^(alpha / 2).  U is
    computed from the global rows, identically on every replica.
    """
    views = views.normalized()
    d2_positive = _squared_distance_from_cos(rowdot(views.z1, views.z2))
    if alpha == 2:
        alignment = ops.mean(d2_positive)
    else:
        alignment = ops.mean(
            ops.power(ops.maximum(d2_positive, ALIGN_EPSILON), alpha / 2.0))
    index = ops.arange(views.global_rows)
    upper = ops.less(index[:, None], index[None, :])
    global_rows = ops.cast(views.global_rows, "float32")
    log_num_pairs = ops.log(global_rows * (global_rows - 1.0) / 2.0)
    uniformity = 0.0
    for x in (views.z1_all, views.z2_all):
        d2 = _squared_distance_from_cos(_logits(x, x, 1.0))
        log_potential = ops.where(upper, -t * d2, -np.inf)
        uniformity += (ops.logsumexp(ops.reshape(log_potential, (-1,)))
                       - log_num_pairs)
    return alignment + lambda_weight * uniformity / 2.0


def _decoupled(views, temperature, lambda_weight, scale, hidden_norm):
    """Decoupled NT-Xent of the notebook: scale * (align + lambda * dist),
        align = 1/(2 B d) sum_i ||z1_i - z2_i||^2,
        dist  = 1/(2B) sum_a [LSE_b(H_a . H_b / tau) - log d],
    H = [z1; z2] (2B rows), b running over all rows, a itself included.
    """
    check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    anchors = ops.concatenate([views.z1, views.z2], axis=0)
    candidates = ops.concatenate([views.z1_all, views.z2_all], axis=0)
    logits = _logits(anchors, candidates, temperature)
    log_dim = math.log(views.dim)
    dist = ops.mean(ops.logsumexp(logits, axis=1) - log_dim)
    return scale * (alignment(views) + lambda_weight * dist)


def _swd(views, prior, lambda_weight, scale, hidden_norm, projection_noise,
         prior_noise, seed):
    """Sliced-Wasserstein loss of the notebook: scale * (align + lambda * dist),
        align = 1/(2 B d) sum_i ||z1_i - z2_i||^2,
        dist  = sliced_wasserstein(H, Q, W),
    H = [z1; z2] (2B global rows, normalised iff hidden_norm, which by default
    is True for the hypersphere prior only), W = orthogonal_from_noise(
    projection_noise) ([d, d]) and Q = prior_from_noise(prior, prior_noise)
    ([2B, d]).  Noise not supplied is drawn as standard normal with `seed`;
    every replica must use the same noise (supply it, or use an int seed).
    """
    _check_choice("prior", prior, PRIORS)
    if hidden_norm is None:
        hidden_norm = prior == "uniform_hypersphere"
    if hidden_norm:
        views = views.normalized()
    dim = views.dim
    stacked = ops.concatenate([views.z1_all, views.z2_all], axis=0)
    num_samples = 2 * views.global_rows
    if projection_noise is None or prior_noise is None:
        # One draw, split in two, so that an int seed gives independent
        # projection and prior noise.
        noise = keras.random.normal((dim + num_samples, dim), seed=seed)
        if projection_noise is None:
            projection_noise = noise[:dim]
        if prior_noise is None:
            prior_noise = noise[dim:]
    _check_shape("projection_noise", projection_noise, (dim, dim))
    expected_samples = (None if views.global_size is None
                        else 2 * views.global_size)
    _check_shape("prior_noise", prior_noise, (expected_samples, dim))
    projection = orthogonal_from_noise(projection_noise)
    samples = prior_from_noise(prior, prior_noise)
    dist = sliced_wasserstein(stacked, samples, projection)
    return scale * (alignment(views) + lambda_weight * dist)


_LOSS_FUNCTIONS = {
    "ntxent": _ntxent,
    "decoupled": _decoupled,
    "swd": _swd,
    "dcl": _dcl,
    "dhel": _dhel,
    "kcl": _kcl,
    "hard": _hard,
    "simple": _simple,
    "align_uniform": _align_uniform,
}


# ---------------------------------------------------------------------------
# KCL kernels, as functions of the squared distance D^2 and the parameter t.
# ---------------------------------------------------------------------------

def _gaussian_kernel(d2, t):
    return ops.exp(-t * d2)


def _log_energy_kernel(d2, t):
    return -0.5 * ops.log1p(t * d2)


def _log_align_kernel(d2, t):
    return -ops.log1p(t * d2)


def _imq_kernel(d2, t):
    return t * ops.rsqrt(t * t + d2)


def _riesz_kernel(d2, t):
    # D^-s = (D^2 + eps)^(-s/2) for s > 0 and -D^|s| = -(D^2 + eps)^(|s|/2)
    # for s < 0: the same power, with a sign.
    guarded = d2 + RIESZ_EPSILON
    if t > 0:
        return ops.power(guarded, -t / 2.0)
    return -ops.power(guarded, -t / 2.0)


_KCL_KERNEL_PAIRS = {
    "gaussian": (_gaussian_kernel, _gaussian_kernel),
    "log": (_log_energy_kernel, _log_align_kernel),
    "imq": (_imq_kernel, _imq_kernel),
    "riesz": (_riesz_kernel, _riesz_kernel),
}


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------

def _squared_distance_from_cos(cos):
    """||u - v||^2 = 2 - 2 u.v for unit vectors, clamped at 0 against
    rounding, so no sqrt of a negative number is ever taken downstream."""
    return ops.maximum(2.0 - 2.0 * cos, 0.0)


def _check_choice(what, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"Unknown {what} {value!r}; expected one of: {', '.join(allowed)}.")


def _check_shape(what, value, expected):
    shape = tuple(ops.shape(value))
    if len(shape) != len(expected) or any(
            e is not None and isinstance(s, int) and s != e
            for s, e in zip(shape, expected)):
        raise ValueError(f"{what} must have shape {expected}, got {shape}.")
