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

LOSSES = ("ntxent", "decoupled", "swd", "dcl", "dhel", "kcl", "hard", "simple",
          "align_uniform")
PRIORS = ("uniform_hypersphere", "normal", "uniform_hypercube")
KCL_KERNELS = ("gaussian", "log", "imq", "riesz")

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

# Floor of the squared norm in `l2_normalize`: 1e-12 is a normal float32, so
# a zero row maps to zero instead of 0/0.
NORM_EPSILON = 1e-12
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
    views = _Views(z1, z2, z1_all, z2_all, replica_id)
    if chunk_size is not None:
        import chunked_loss  # here, not at the top: it builds on this module
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
    x, y, projection = (_as_float32(v) for v in (x, y, projection))
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
    z1, z2 = _as_float32(z1), _as_float32(z2)
    _check_rows("z1", z1, None)
    _check_rows("z2", z2, z1)
    if z2_all is None:
        _check_single_device(replica_id)
        z2_all = z2
    z2_all = _as_float32(z2_all)
    _check_rows("z2_all", z2_all, z1, same_rows=False)
    if hidden_norm:
        z1, z2_all = l2_normalize(z1), l2_normalize(z2_all)
    targets = _global_index(replica_id, _rows(z1)[1])
    if chunk_size is not None:
        import chunked_loss  # here, not at the top: it builds on this module
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


def l2_normalize(x):
    """Rows of `x` (cast to float32) scaled to unit norm:
    x / sqrt(max(||x||^2, 1e-12)); a zero row stays zero."""
    x = _as_float32(x)
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, NORM_EPSILON))


def orthogonal_from_noise(noise):
    """Haar-distributed orthogonal matrix from a [d, d] standard-normal matrix.

    With noise = Q R (QR decomposition), returns Q diag(sign(diag(R))); the sign
    correction makes the factorisation unique, which is what makes the law of
    the result uniform on O(d).  Carries no gradient.
    """
    noise = ops.stop_gradient(_as_float32(noise))
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
    noise = ops.stop_gradient(_as_float32(noise))
    if prior == "normal":
        return noise
    if prior == "uniform_hypersphere":
        return l2_normalize(noise)
    return ops.erf(noise / math.sqrt(2.0))


# ---------------------------------------------------------------------------
# The losses.  Each takes a `_Views` and the loss's parameters.
# ---------------------------------------------------------------------------

def _ntxent(views, temperature, hidden_norm):
    """NT-Xent of the original release, both directions summed:
        L = 1/B sum_i (la_i + lb_i),
        la_i = -ab_ii + LSE_j([ab_ij ; aa_ij (j != i)]),
    ab = z1 z2^T / tau, aa = z1 z1^T / tau; lb_i alike with the views swapped.
    Each anchor has 1 positive and 2B - 2 negatives.
    """
    _check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    total = 0.0
    for anchor, partner, same_all, other_all in views.directions():
        positive = _rowdot(anchor, partner) / temperature
        cross = _logits(anchor, other_all, temperature)
        same = _mask(_logits(anchor, same_all, temperature), views.self_mask)
        candidates = ops.concatenate([cross, same], axis=1)
        total += ops.mean(ops.logsumexp(candidates, axis=1) - positive)
    return total


def _dcl(views, temperature, hidden_norm):
    """Decoupled contrastive loss: NT-Xent with the positive removed from
    both denominators:
        la_i = -ab_ii + LSE_j([ab_ij (j != i) ; aa_ij (j != i)]).
    """
    _check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    total = 0.0
    for anchor, partner, same_all, other_all in views.directions():
        positive = _rowdot(anchor, partner) / temperature
        cross = _mask(_logits(anchor, other_all, temperature), views.self_mask)
        same = _mask(_logits(anchor, same_all, temperature), views.self_mask)
        candidates = ops.concatenate([cross, same], axis=1)
        total += ops.mean(ops.logsumexp(candidates, axis=1) - positive)
    return total


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
    _check_positive("temperature", temperature)
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
    for anchor, partner, same_all, other_all in views.directions():
        positive = _rowdot(anchor, partner) / temperature
        # Positive and self sit at the same (i, g_i) slots of the two blocks;
        # both are masked before the top-k so neither can be picked.
        cross = _mask(_logits(anchor, other_all, temperature), views.self_mask)
        same = _mask(_logits(anchor, same_all, temperature), views.self_mask)
        negatives = ops.concatenate([cross, same], axis=1)
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
        positive = _rowdot(anchor, partner)
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
    _check_positive("temperature", temperature)
    views = views.normalized()
    positive = _rowdot(views.z1, views.z2) / temperature
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
    d2_positive = _squared_distance_from_cos(_rowdot(views.z1, views.z2))
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
    d2_positive = _squared_distance_from_cos(_rowdot(views.z1, views.z2))
    if alpha == 2:
        alignment = ops.mean(d2_positive)
    else:
        alignment = ops.mean(
            ops.power(ops.maximum(d2_positive, ALIGN_EPSILON), alpha / 2.0))
    rows = ops.arange(views.global_rows)
    upper = ops.less(rows[:, None], rows[None, :])
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
    _check_positive("temperature", temperature)
    if hidden_norm:
        views = views.normalized()
    anchors = ops.concatenate([views.z1, views.z2], axis=0)
    candidates = ops.concatenate([views.z1_all, views.z2_all], axis=0)
    logits = _logits(anchors, candidates, temperature)
    log_dim = math.log(views.dim)
    dist = ops.mean(ops.logsumexp(logits, axis=1) - log_dim)
    return scale * (_alignment(views) + lambda_weight * dist)


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
    return scale * (_alignment(views) + lambda_weight * dist)


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

class _Views:
    """The local rows, the global rows and where the local rows sit in them.

    Attributes:
        z1, z2: [n, d] float32 local rows.
        z1_all, z2_all: [B, d] float32 global rows.
        global_index: [n] int32, replica_id * n + i.
        self_mask: [n, B] bool, True at (i, global_index[i]): the anchor's own
            row in its view, and its positive in the other view.
        global_size: B when static, else None.  global_rows: B, an int or a
            scalar tensor.  dim: d.
    """

    def __init__(self, z1, z2, z1_all, z2_all, replica_id):
        if (z1_all is None) != (z2_all is None):
            raise ValueError("Pass both z1_all and z2_all, or neither.")
        self.z1, self.z2 = _as_float32(z1), _as_float32(z2)
        _check_rows("z1", self.z1, None)
        _check_rows("z2", self.z2, self.z1)
        if z1_all is None:
            _check_single_device(replica_id)
            self.z1_all, self.z2_all = self.z1, self.z2
        else:
            self.z1_all, self.z2_all = _as_float32(z1_all), _as_float32(z2_all)
            _check_rows("z1_all", self.z1_all, self.z1, same_rows=False)
            _check_rows("z2_all", self.z2_all, self.z1_all)
        self.dim = self.z1.shape[1]
        self.global_size, self.global_rows = _rows(self.z1_all)
        if self.global_size is not None and self.global_size < 2:
            raise ValueError("The global batch needs at least 2 rows, got "
                             f"{self.global_size}.")
        self.global_index = _global_index(replica_id, _rows(self.z1)[1])
        columns = ops.arange(self.global_rows, dtype="int32")
        self.self_mask = ops.equal(self.global_index[:, None], columns[None, :])

    def normalized(self):
        """A copy whose four matrices have L2-normalised rows."""
        copy = object.__new__(_Views)
        copy.__dict__.update(self.__dict__)
        for name in ("z1", "z2", "z1_all", "z2_all"):
            setattr(copy, name, l2_normalize(getattr(self, name)))
        return copy

    def directions(self):
        """(anchor, partner, same-view global rows, other-view global rows)
        for view 1 then view 2 as the anchor."""
        return ((self.z1, self.z2, self.z1_all, self.z2_all),
                (self.z2, self.z1, self.z2_all, self.z1_all))


def _rows(x):
    """(static row count or None, row count as an int or a scalar tensor)."""
    static = x.shape[0]
    return static, (static if static is not None else ops.shape(x)[0])


def _global_index(replica_id, local_rows):
    """[n] int32 global positions replica_id * n + i of the local rows."""
    offset = ops.cast(replica_id, "int32") * local_rows
    return offset + ops.arange(local_rows, dtype="int32")


def _check_single_device(replica_id):
    if isinstance(replica_id, (int, np.integer)) and replica_id != 0:
        raise ValueError(
            f"replica_id={replica_id} needs the gathered rows (z1_all, "
            "z2_all); without them the local rows are the whole batch and "
            "replica_id must be 0.")


def _check_rows(what, x, like, same_rows=True):
    """x must be a matrix; with `like`, of its width (and row count)."""
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ValueError(
            f"{what} must be an [rows, d] matrix, got shape {shape}.")
    if like is not None:
        expected = tuple(like.shape) if same_rows else (shape[0], like.shape[1])
        if shape != expected:
            raise ValueError(f"{what} must have shape {expected}, got {shape}.")


def _as_float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def _logits(anchors, candidates, temperature):
    """[n, m] matrix anchors_i . candidates_j / temperature."""
    return ops.matmul(anchors, ops.transpose(candidates)) / temperature


def _rowdot(x, y):
    return ops.sum(x * y, axis=1)


def _mask(logits, mask):
    # -inf rather than a large finite offset: exact, and safe in any dtype.
    # No row is ever fully masked because the global batch has >= 2 rows.
    return ops.where(mask, -np.inf, logits)


def _squared_distance_from_cos(cos):
    """||u - v||^2 = 2 - 2 u.v for unit vectors, clamped at 0 against
    rounding, so no sqrt of a negative number is ever taken downstream."""
    return ops.maximum(2.0 - 2.0 * cos, 0.0)


def _alignment(views):
    """1/(2 B d) sum_i ||z1_i - z2_i||^2 (local anchors), the mean over all
    entries, halved.  Works for unnormalised rows too."""
    return 0.5 * ops.mean(ops.square(views.z1 - views.z2))


def _check_choice(what, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"Unknown {what} {value!r}; expected one of: {', '.join(allowed)}.")


def _check_positive(what, value):
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"{what} must be > 0, got {value!r}.")


def _check_shape(what, value, expected):
    shape = tuple(ops.shape(value))
    if len(shape) != len(expected) or any(
            e is not None and isinstance(s, int) and s != e
            for s, e in zip(shape, expected)):
        raise ValueError(f"{what} must have shape {expected}, got {shape}.")
