"""Tests of metrics.py against numpy written here (both backends)."""
import numpy as np
import pytest
import scipy.special
import scipy.stats

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


# ---------------------------------------------------------------------------
# Representation metrics, against numpy written here.
# ---------------------------------------------------------------------------
def embeddings(rows=23, dim=6, seed=2):
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def unit(z):
    z = np.asarray(z, np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def pairs(n):
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


@pytest.mark.parametrize("alpha", [2, 1, 0.5])
def test_alignment_matches_numpy(alpha):
    z1, z2 = embeddings(seed=3), embeddings(seed=4)
    expected = np.mean(np.linalg.norm(unit(z1) - unit(z2), axis=1) ** alpha)
    np.testing.assert_allclose(float(metrics.alignment(z1, z2, alpha=alpha)), expected, rtol=1e-5)
    assert float(metrics.alignment(z1, 5.0 * z1)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("t", [2, 0.5])
@pytest.mark.parametrize("chunk_size", [1024, 5, 1])
def test_uniformity_matches_numpy(t, chunk_size):
    z = embeddings()
    u = unit(z)
    expected = np.log(np.mean([np.exp(-t * np.sum((u[i] - u[j]) ** 2)) for i, j in pairs(len(z))]))
    got = metrics.uniformity(z, t=t, chunk_size=chunk_size)
    assert dtype_name(got) == "float32"
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # Rows are normalised inside: the scale of a row does not matter.
    scaled = z * np.random.default_rng(5).uniform(0.1, 10.0, size=(len(z), 1)).astype(np.float32)
    np.testing.assert_allclose(float(metrics.uniformity(scaled, t=t)), expected, rtol=1e-5)


def test_uniformity_known_values():
    # A constant encoder: every pair at distance 0.
    constant = np.tile(embeddings(rows=1), (9, 1))
    assert float(metrics.uniformity(constant)) == pytest.approx(0.0, abs=1e-6)
    # Four rows at +1 and four at −1 in one dimension: 12 of the 28 pairs at
    # distance 0, 16 at squared distance 4, so log((12 + 16 e^{−4t}) / 28).
    line = np.array([[1.0], [-1.0]] * 4, np.float32)
    expected = np.log((12 + 16 * np.exp(-8.0)) / 28)
    np.testing.assert_allclose(float(metrics.uniformity(line)), expected, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1024, 4])
def test_tolerance_matches_numpy(chunk_size):
    z = embeddings(rows=30)
    labels = np.random.default_rng(6).integers(0, 4, len(z))
    u = unit(z)
    same = [u[i] @ u[j] for i, j in pairs(len(z)) if labels[i] == labels[j]]
    got = metrics.tolerance(z, labels, chunk_size=chunk_size)
    np.testing.assert_allclose(float(got), np.mean(same), rtol=1e-5)


def test_tolerance_of_identical_rows_per_class_is_one():
    centres = embeddings(rows=3, seed=7)
    labels = np.array([0, 1, 2] * 5)
    np.testing.assert_allclose(float(metrics.tolerance(centres[labels] * 2.0, labels)), 1.0,
                               rtol=1e-6)


def test_effective_rank_matches_numpy():
    z = embeddings(rows=40, dim=8) * np.linspace(0.1, 3.0, 8).astype(np.float32)
    sigma = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    p /= p.sum()
    np.testing.assert_allclose(float(metrics.effective_rank(z)), np.exp(-np.sum(p * np.log(p))),
                               rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_effective_rank_of_k_equal_singular_values_is_k(k):
    rng = np.random.default_rng(8)
    u, _ = np.linalg.qr(rng.normal(size=(50, 6)))
    v, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    z = (u[:, :k] * 2.5) @ v[:k]  # singular values 2.5 (k times) and 0
    np.testing.assert_allclose(float(metrics.effective_rank(z.astype(np.float32))), k, rtol=1e-4)


def test_sphere_cosine_sample_has_the_law_of_the_sphere():
    # Against pairs of normalised Gaussian points, the law it stands for.
    dim = 7
    rng = np.random.default_rng(9)
    u, v = unit(rng.normal(size=(40000, dim))), unit(rng.normal(size=(40000, dim)))
    sample = metrics.sphere_cosine_sample(dim, 40000, seed=1)
    assert scipy.stats.wasserstein_distance(sample, np.sum(u * v, 1)) < 0.01
    assert np.mean(sample) == pytest.approx(0.0, abs=0.01)
    assert np.var(sample) == pytest.approx(1.0 / dim, rel=0.03)


def expected_abs_cosine(m):
    """E|uᵀv| on S^{m−1}: Γ(m/2) / (√π Γ((m+1)/2))."""
    return float(np.exp(scipy.special.gammaln(m / 2) - scipy.special.gammaln((m + 1) / 2))
                 / np.sqrt(np.pi))


@pytest.mark.parametrize("dim", [16, 128])
def test_wasserstein_uniformity_known_values(dim):
    # Orthogonal rows: every cosine is 0, so W1 = E|C| of the sphere's law.
    orthogonal = 3.0 * np.eye(dim, dtype=np.float32)
    got = float(metrics.wasserstein_uniformity(orthogonal, num_samples=20000, seed=3))
    np.testing.assert_allclose(got, expected_abs_cosine(dim), rtol=0.02)
    # Identical rows: every cosine is 1, so W1 = E[1 − C] = 1.
    same = np.tile(embeddings(rows=1, dim=dim), (5, 1))
    got = float(metrics.wasserstein_uniformity(same, num_samples=20000, seed=3))
    assert got == pytest.approx(1.0, abs=0.01)
    # Points drawn uniformly on the sphere: near 0.
    uniform = embeddings(rows=2000, dim=dim, seed=10)
    assert float(metrics.wasserstein_uniformity(uniform, num_samples=20000)) < 0.01


def test_wasserstein_uniformity_is_the_w1_of_its_two_samples():
    z = embeddings(rows=50, dim=5) + 0.7  # far from uniform
    cosines = np.asarray(metrics.pairwise_cosine_sample(z, 3000, seed=4))
    reference = metrics.sphere_cosine_sample(5, 3000, seed=5)  # the metric's seed + 1
    np.testing.assert_allclose(float(metrics.wasserstein_uniformity(z, num_samples=3000, seed=4)),
                               scipy.stats.wasserstein_distance(cosines, reference), rtol=1e-4)
    # Each sampled cosine is that of a pair of distinct rows (a row with
    # itself would give 1, which no distinct pair of these rows comes near).
    u = unit(z)
    distinct = (u @ u.T)[~np.eye(50, dtype=bool)]
    assert distinct.max() < 0.999
    assert np.abs(cosines[:, None] - distinct[None, :]).min(axis=1).max() < 1e-5


def hardness_numpy(z1, z2, temperature, k):
    u = unit(np.concatenate([z1, z2]))
    rows, n = len(u), len(z1)
    entropies, shares = [], []
    for a in range(rows):
        negatives = [b for b in range(rows) if b != a and b != (a + n) % rows]
        logits = u[negatives] @ u[a] / temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        entropies.append(-np.sum(p * np.log(p)))
        shares.append(np.sort(p)[::-1][:k].sum())
    return np.mean(entropies), np.mean(shares)


@pytest.mark.parametrize("temperature,k,chunk_size", [(0.1, 1, 1024), (0.5, 3, 5)])
def test_negative_hardness_matches_numpy(temperature, k, chunk_size):
    z1, z2 = embeddings(rows=9, seed=11), embeddings(rows=9, seed=12)
    entropy, share = metrics.negative_hardness(z1, z2, temperature, k, chunk_size=chunk_size)
    expected = hardness_numpy(z1, z2, temperature, k)
    np.testing.assert_allclose([float(entropy), float(share)], expected, rtol=1e-5)


def test_negative_hardness_of_equally_similar_negatives():
    # Rows 0..3 of view 1 and their own positives: every negative is orthogonal.
    z1 = np.eye(4, dtype=np.float32)
    entropy, share = metrics.negative_hardness(z1, 2.0 * z1, temperature=0.2, k=2)
    np.testing.assert_allclose(float(entropy), np.log(6), rtol=1e-6)
    np.testing.assert_allclose(float(share), 2 / 6, rtol=1e-6)


def knn_numpy(train, train_labels, queries, classes, k, temperature):
    similarity = unit(queries) @ unit(train).T
    predictions = []
    for row in similarity:
        nearest = np.argsort(-row, kind="stable")[:k]
        scores = np.zeros(classes)
        for j in nearest:
            scores[train_labels[j]] += np.exp(row[j] / temperature)
        predictions.append(np.argmax(scores))
    return np.array(predictions)


@pytest.mark.parametrize("k,temperature,chunk_size", [(200, 0.1, 1024), (5, 0.5, 7), (3, 0.02, 4)])
def test_knn_predict_matches_numpy(k, temperature, chunk_size):
    """k = 200 exceeds the 60 training rows: every row votes."""
    rng = np.random.default_rng(21)
    train = rng.normal(size=(60, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 60).astype(np.int32)
    queries = rng.normal(size=(23, 6)).astype(np.float32)
    predicted = metrics.knn_predict(train, labels, queries, 4, k, temperature,
                                    chunk_size=chunk_size)
    np.testing.assert_array_equal(np.asarray(predicted),
                                  knn_numpy(train, labels, queries, 4, k, temperature))


def test_knn_with_one_neighbour_is_the_label_of_the_nearest_row():
    train = np.eye(3, dtype=np.float32)
    queries = np.array([[0.2, 0.9, 0.1], [5.0, 0.0, 1.0]], np.float32)
    assert np.asarray(metrics.knn_predict(train, [2, 0, 1], queries, 3, k=1)).tolist() == [0, 2]
