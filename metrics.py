"""Training and evaluation metrics (backend-neutral: keras.ops only).

The contrastive summaries (accuracy and entropy of the view-1 → view-2
logits) live next to the losses in `objective.py`; this module holds the
supervised ones the trainer logs and evaluates, and the representation
metrics: alignment and uniformity (Wang & Isola, ICML 2020), tolerance and
the hardness of negatives (Wang & Liu, CVPR 2021), Wasserstein uniformity
and effective rank (Koromilas et al., ICML 2024, and their released
metrics).

The representation metrics take numpy arrays or backend tensors, compute in
float32 and return a float32 scalar. Pairwise ones work through blocks of
`chunk_size` rows against all rows, so memory grows as chunk_size · N, not
N².
"""
import math

import keras
import numpy as np
from keras import ops

from loss_views import l2_normalize

CHUNK_SIZE = 1024


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


def label_columns(labels):
    """The L label columns [n] of `labels` [n] (L = 1) or [n, L]."""
    return [labels] if len(labels.shape) == 1 else ops.unstack(labels, axis=1)


def label_top_k(labels, logits, k=5):
    """(top-1 hits [L], top-k' hits [L]) of L labels: `labels` [n] (L = 1)
    or [n, L], `logits` a list of L arrays [n, C_j] (`model.label_logits`);
    for each label j, the rows whose label is the arg-max of its logits,
    and the rows whose label is among their k' = min(k, C_j) largest."""
    top1, topk = [], []
    for column, part in zip(label_columns(labels), logits):
        hits = top_k_correct(column, part, (1, min(k, int(part.shape[-1]))))
        top1.append(hits[0])
        topk.append(hits[1])
    return ops.stack(top1), ops.stack(topk)


def _rows(z):
    return ops.cast(ops.convert_to_tensor(z), "float32")


def _similarity_blocks(z, rows, chunk_size, keys=None):
    """(start, stop, z[start:stop] keysᵀ) for the blocks of `chunk_size`
    rows that cover rows 0..rows − 1 of `z`: [stop − start, K] each, keys
    being z itself unless given."""
    transposed = ops.transpose(z if keys is None else keys)
    for start in range(0, rows, chunk_size):
        stop = min(start + chunk_size, rows)
        yield start, stop, ops.matmul(z[start:stop], transposed)


def _upper_pairs(start, stop, n):
    """[stop − start, n] mask of the pairs (i, j) with i in start..stop − 1
    and j > i."""
    i = ops.expand_dims(ops.arange(start, stop), 1)
    j = ops.expand_dims(ops.arange(n), 0)
    return ops.greater(j, i)


def alignment(z1, z2, alpha=2):
    """Alignment of Wang & Isola (2020): mean_i ‖ẑ1_i − ẑ2_i‖^α over the
    positive pairs (row i of each view), rows L2-normalised inside."""
    diff = l2_normalize(_rows(z1)) - l2_normalize(_rows(z2))
    squared = ops.sum(ops.square(diff), axis=-1)
    distance = squared if alpha == 2 else ops.power(squared, alpha / 2.0)
    return ops.mean(distance)


def uniformity(z, t=2, chunk_size=CHUNK_SIZE):
    """Uniformity of Wang & Isola (2020): log mean_{i<j} exp(−t‖ẑ_i − ẑ_j‖²)
    over the distinct pairs of one view, rows L2-normalised inside, as a
    log-sum-exp (‖ẑ_i − ẑ_j‖² = 2 − 2 ẑ_iᵀẑ_j). 0 for a constant encoder;
    −2t + log ₀F₁(; m/2; t²) at best in m dimensions."""
    z = l2_normalize(_rows(z))
    n = int(z.shape[0])
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 rows, got {n}")
    blocks = []
    for start, stop, similarity in _similarity_blocks(z, n - 1, chunk_size):
        exponent = ops.where(_upper_pairs(start, stop, n), 2.0 * t * similarity - 2.0 * t,
                             -math.inf)
        blocks.append(ops.logsumexp(exponent))
    return ops.logsumexp(ops.stack(blocks)) - math.log(n * (n - 1) / 2)


def tolerance(z, labels, chunk_size=CHUNK_SIZE):
    """Tolerance of Wang & Liu (2021): the mean cosine ẑ_iᵀẑ_j over the
    pairs i < j of the same label, pooled over labels, rows L2-normalised
    inside (Koromilas et al.'s conditional mean). NaN when no two rows share
    a label."""
    z = l2_normalize(_rows(z))
    labels = ops.convert_to_tensor(labels)
    n = int(z.shape[0])
    total = ops.zeros((), "float32")
    count = ops.zeros((), "float32")
    for start, stop, similarity in _similarity_blocks(z, n, chunk_size):
        same = ops.equal(ops.expand_dims(labels[start:stop], 1), ops.expand_dims(labels, 0))
        mask = ops.cast(ops.logical_and(same, _upper_pairs(start, stop, n)), "float32")
        total += ops.sum(similarity * mask)
        count += ops.sum(mask)
    return total / count


def effective_rank(z, epsilon=1e-7):
    """Effective rank (RankMe, Garrido et al. 2023) of the raw [N, m] matrix,
    not normalised, not centred: with σ its singular values and
    p_k = (σ_k/‖σ‖₁ + ε) renormalised to sum to 1, exp(−Σ_k p_k log p_k),
    in [1, min(N, m)]; k equal non-zero singular values give k."""
    sigma = ops.svd(_rows(z), full_matrices=False, compute_uv=False)
    p = sigma / ops.maximum(ops.sum(sigma), 1e-30) + epsilon
    p = p / ops.sum(p)
    return ops.exp(-ops.sum(p * ops.log(p)))


def pairwise_cosine_sample(z, num_samples, seed=0):
    """Cosines ẑ_iᵀẑ_j of `num_samples` pairs i ≠ j drawn uniformly with
    replacement (i uniform, j = i + U{1..N−1} mod N), rows L2-normalised
    inside; the pairs come from numpy's generator seeded by `seed`, so both
    backends draw the same ones."""
    z = l2_normalize(_rows(z))
    n = int(z.shape[0])
    if n < 2:
        raise ValueError(f"pairwise cosines need at least 2 rows, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, num_samples)
    j = (i + rng.integers(1, n, num_samples)) % n
    return ops.sum(ops.take(z, i, axis=0) * ops.take(z, j, axis=0), axis=-1)


def sphere_cosine_sample(dim, num_samples, seed=0):
    """Samples of the cosine uᵀv of two independent uniform points on
    S^{dim−1}: c = 2B − 1 with B ~ Beta((dim−1)/2, (dim−1)/2), whose density
    is Γ(m/2) / (√π Γ((m−1)/2)) (1 − c²)^{(m−3)/2} for m = dim ≥ 2."""
    if dim < 2:
        raise ValueError(f"the cosine law needs a dimension >= 2, got {dim}")
    a = (dim - 1) / 2.0
    return 2.0 * np.random.default_rng(seed).beta(a, a, num_samples) - 1.0


def wasserstein_uniformity(z, num_samples=10000, seed=0):
    """Wasserstein uniformity of Koromilas et al. (2024): the 1-D
    1-Wasserstein distance between the cosines of `num_samples` random pairs
    of distinct rows (`pairwise_cosine_sample`, rows L2-normalised inside)
    and as many samples of the cosine law of the sphere of the rows' own
    dimension m (`sphere_cosine_sample`). For two samples of equal size it is
    mean_k |a_(k) − b_(k)| over the sorted values; 0 for uniform rows."""
    cosines = ops.sort(pairwise_cosine_sample(z, num_samples, seed))
    dim = int(ops.shape(z)[-1])
    reference = np.sort(sphere_cosine_sample(dim, num_samples, seed + 1)).astype(np.float32)
    return ops.mean(ops.abs(cosines - reference))


def negative_hardness(z1, z2, temperature=0.1, k=1, chunk_size=CHUNK_SIZE):
    """Negative-hardness diagnostics of Wang & Liu (2021) for a batch of
    positive pairs (row i of each view), rows L2-normalised inside: every
    one of the 2n rows is an anchor, its 2n − 2 negatives are the rows other
    than itself and its positive, and p = softmax over those negatives of
    ẑ_aᵀẑ_neg / τ. Returns (mean over anchors of the entropy −Σ p log p,
    mean share of probability on the anchor's k most similar negatives):
    log(2n − 2) and k / (2n − 2) when all negatives are equally similar."""
    z = l2_normalize(ops.concatenate([_rows(z1), _rows(z2)], axis=0))
    rows = int(z.shape[0])
    n = rows // 2
    if n < 2:
        raise ValueError(f"negative hardness needs at least 2 pairs, got {n}")
    if not 1 <= k <= rows - 2:
        raise ValueError(f"k must be in 1..{rows - 2} (the negatives of an anchor), got {k}")
    entropy = ops.zeros((), "float32")
    top_share = ops.zeros((), "float32")
    other = ops.expand_dims(ops.arange(rows), 0)
    for start, stop, similarity in _similarity_blocks(z, rows, chunk_size):
        anchor = ops.expand_dims(ops.arange(start, stop), 1)
        negative = ops.logical_and(ops.not_equal(other, anchor),
                                   ops.not_equal(other, (anchor + n) % rows))
        log_p = ops.log_softmax(ops.where(negative, similarity / temperature, -math.inf),
                                axis=-1)
        p = ops.exp(log_p)
        entropy += ops.sum(ops.where(negative, -p * log_p, 0.0))
        top_share += ops.sum(ops.top_k(p, k)[0])
    return entropy / rows, top_share / rows


def knn_predict(train_features, train_labels, features, num_classes, k=200,
                temperature=0.1, chunk_size=CHUNK_SIZE):
    """Weighted k-nearest-neighbour classifier (Wu et al. 2018), as commonly
    reported for contrastive encoders: rows L2-normalised inside, s the
    cosine between a query and a training row, N_k the k training rows most
    similar to the query (k capped at their number), and the prediction
    argmax_c Σ_{j ∈ N_k, y_j = c} exp(s_j / τ). Each query's weights are
    computed as exp((s_j − max s) / τ), the same argmax without overflow.

    Returns:
        [N] int32 predicted labels of `features`.
    """
    train = l2_normalize(_rows(train_features))
    queries = l2_normalize(_rows(features))
    labels = ops.cast(ops.convert_to_tensor(train_labels), "int32")
    k = min(int(k), int(train.shape[0]))
    predictions = []
    for _, _, similarity in _similarity_blocks(queries, int(queries.shape[0]), chunk_size,
                                               keys=train):
        values, indices = ops.top_k(similarity, k)
        weights = ops.exp((values - values[:, :1]) / temperature)
        votes = ops.one_hot(ops.take(labels, indices), num_classes)
        scores = ops.sum(votes * ops.expand_dims(weights, -1), axis=1)
        predictions.append(ops.cast(ops.argmax(scores, axis=-1), "int32"))
    return ops.concatenate(predictions, axis=0)
