"""Tests of objective.py against straightforward float64 numpy re-implementations.

The references below are written from the formulas (loops over anchors and
pairs, plain sums of exponentials through a max-shifted log-sum-exp), not from
the module's vectorised code, and they carry their own defaults.
"""
import inspect
import math
import os
import re

import keras
import numpy as np
import pytest
import scipy.special
from keras import ops

import objective
from backend import BACKEND
from backend import dtype_name
from backend import value_and_grad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# float64 numpy references.
# ---------------------------------------------------------------------------

def np_normalize(x):
    """Rows scaled to unit norm, x / sqrt(max(||x||^2, 1e-12)) as the module
    documents it: a zero row stays zero."""
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True), 1e-12))


def np_squared_distance(u, v):
    """The documented D^2 = max(0, 2 - 2 cos) of two normalised rows, taken
    as ||u - v||^2 where both are unit rows (the same number without the
    rounding of 2 - 2 cos near 0, which finite differences would magnify)."""
    if abs(u @ u - 1) < 1e-9 and abs(v @ v - 1) < 1e-9:
        return float(np.sum((u - v) ** 2))
    return max(0.0, 2.0 - 2.0 * (u @ v))


def np_lse(values):
    values = np.asarray(values, np.float64)
    top = values.max()
    return top + math.log(np.exp(values - top).sum())


def _ref_softmax_family(z1, z2, temperature, hidden_norm, keep_positive,
                        num_negatives):
    """NT-Xent / DCL / hard loss, one anchor at a time."""
    if hidden_norm:
        z1, z2 = np_normalize(z1), np_normalize(z2)
    size = len(z1)
    total = 0.0
    for anchors, partners in ((z1, z2), (z2, z1)):
        for i in range(size):
            positive = anchors[i] @ partners[i] / temperature
            negatives = [anchors[i] @ partners[j] / temperature
                         for j in range(size) if j != i]
            negatives += [anchors[i] @ anchors[j] / temperature
                          for j in range(size) if j != i]
            if num_negatives is not None:
                negatives = sorted(negatives, reverse=True)[:num_negatives]
            candidates = ([positive] if keep_positive else []) + negatives
            total += np_lse(candidates) - positive
    return total / size


def ref_ntxent(z1, z2, temperature=0.1, hidden_norm=True):
    return _ref_softmax_family(z1, z2, temperature, hidden_norm, True, None)


def ref_dcl(z1, z2, temperature=0.1, hidden_norm=True):
    return _ref_softmax_family(z1, z2, temperature, hidden_norm, False, None)


def ref_hard(z1, z2, temperature=0.5, num_negatives=None, hidden_norm=True):
    return _ref_softmax_family(z1, z2, temperature, hidden_norm, True,
                               num_negatives)


def ref_simple(z1, z2, lambda_weight=None):
    z1, z2 = np_normalize(z1), np_normalize(z2)
    size = len(z1)
    if lambda_weight is None:
        lambda_weight = 1.0 / (2 * size - 2)
    total = 0.0
    for anchors, partners in ((z1, z2), (z2, z1)):
        for i in range(size):
            negatives = sum(anchors[i] @ partners[j] + anchors[i] @ anchors[j]
                            for j in range(size) if j != i)
            total += -anchors[i] @ partners[i] + lambda_weight * negatives
    return total / size


def ref_dhel(z1, z2, temperature=0.3, include_augs=True):
    z1, z2 = np_normalize(z1), np_normalize(z2)
    size = len(z1)
    total = 0.0
    for i in range(size):
        total -= z1[i] @ z2[i] / temperature
        total += np_lse([z1[i] @ z1[j] / temperature for j in range(size) if j != i])
        if include_augs:
            total += np_lse([z2[i] @ z2[j] / temperature
                             for j in range(size) if j != i])
    return total / size


def _ref_kernels(kernel, t):
    """(K_U, K_A) as functions of the distance D."""
    if kernel == "gaussian":
        k = lambda dist: math.exp(-t * dist ** 2)
        return k, k
    if kernel == "log":
        return (lambda dist: -0.5 * math.log(1 + t * dist ** 2),
                lambda dist: -math.log(1 + t * dist ** 2))
    if kernel == "imq":
        k = lambda dist: t / math.sqrt(t ** 2 + dist ** 2)
        return k, k
    assert kernel == "riesz"

    def riesz(dist):
        guarded = math.sqrt(dist ** 2 + 1e-6)  # the documented guard
        return guarded ** -t if t > 0 else -guarded ** abs(t)
    return riesz, riesz


def ref_kcl(z1, z2, kernel="gaussian", t=2.0, gamma=16.0):
    z1, z2 = np_normalize(z1), np_normalize(z2)
    k_uniform, k_align = _ref_kernels(kernel, t)
    size = len(z1)
    alignment = np.mean([k_align(math.sqrt(np_squared_distance(z1[i], z2[i])))
                         for i in range(size)])
    energy = 0.0
    for x in (z1, z2):
        energy += np.mean([k_uniform(math.sqrt(np_squared_distance(x[i], x[j])))
                           for i in range(size) for j in range(size) if i != j])
    return -2 * alignment + gamma * energy


def ref_align_uniform(z1, z2, alpha=2.0, t=2.0, lambda_weight=1.0):
    z1, z2 = np_normalize(z1), np_normalize(z2)
    size = len(z1)
    squared = [np_squared_distance(z1[i], z2[i]) for i in range(size)]
    # For alpha != 2, D^alpha = max(D^2, 1e-12)^(alpha / 2), the documented floor.
    alignment = np.mean(squared if alpha == 2 else
                        [max(d2, 1e-12) ** (alpha / 2) for d2 in squared])

    def uniformity(x):
        potentials = [math.exp(-t * np_squared_distance(x[i], x[j]))
                      for i in range(size) for j in range(i + 1, size)]
        return math.log(np.mean(potentials))
    return alignment + lambda_weight * (uniformity(z1) + uniformity(z2)) / 2


def ref_decoupled(z1, z2, temperature=1.0, lambda_weight=1.0, scale=1.0,
                  hidden_norm=True):
    if hidden_norm:
        z1, z2 = np_normalize(z1), np_normalize(z2)
    size, dim = z1.shape
    alignment = np.sum((z1 - z2) ** 2) / (2 * size * dim)
    stacked = np.concatenate([z1, z2])
    dist = np.mean([np_lse([h_a @ h_b / temperature for h_b in stacked]) - math.log(dim)
                    for h_a in stacked])
    return scale * (alignment + lambda_weight * dist)


def ref_orthogonal(noise):
    q, r = np.linalg.qr(np.asarray(noise, np.float64))
    return q * np.sign(np.diag(r))


def ref_prior(prior, noise):
    noise = np.asarray(noise, np.float64)
    if prior == "normal":
        return noise
    if prior == "uniform_hypersphere":
        return np_normalize(noise)
    return scipy.special.erf(noise / math.sqrt(2))


def ref_sliced_wasserstein(x, y, projection):
    px, py = x @ projection, y @ projection
    total = 0.0
    for k in range(projection.shape[1]):
        total += np.sum((np.sort(px[:, k]) - np.sort(py[:, k])) ** 2)
    return total / (len(x) * projection.shape[1])


def ref_swd(z1, z2, prior="uniform_hypersphere", lambda_weight=1.0, scale=1.0,
            hidden_norm=None, projection_noise=None, prior_noise=None):
    if hidden_norm is None:
        hidden_norm = prior == "uniform_hypersphere"
    if hidden_norm:
        z1, z2 = np_normalize(z1), np_normalize(z2)
    size, dim = z1.shape
    alignment = np.sum((z1 - z2) ** 2) / (2 * size * dim)
    dist = ref_sliced_wasserstein(np.concatenate([z1, z2]),
                                  ref_prior(prior, prior_noise),
                                  ref_orthogonal(projection_noise))
    return scale * (alignment + lambda_weight * dist)


REFERENCES = {
    "ntxent": ref_ntxent, "dcl": ref_dcl, "hard": ref_hard, "simple": ref_simple,
    "dhel": ref_dhel, "kcl": ref_kcl, "align_uniform": ref_align_uniform,
    "decoupled": ref_decoupled, "swd": ref_swd,
}


def reference(name, z1, z2, **params):
    params = {k: (np.asarray(v, np.float64) if k.endswith("_noise") else v)
              for k, v in params.items()}
    return REFERENCES[name](np.asarray(z1, np.float64), np.asarray(z2, np.float64),
                            **params)


# ---------------------------------------------------------------------------
# Configurations and helpers.
# ---------------------------------------------------------------------------

CONFIGS = [
    ("ntxent", {}),
    ("ntxent", {"temperature": 0.5}),
    ("ntxent", {"temperature": 0.2, "hidden_norm": False}),
    ("dcl", {}),
    ("dcl", {"temperature": 0.3, "hidden_norm": False}),
    ("hard", {}),
    ("hard", {"num_negatives": 1}),
    ("hard", {"num_negatives": 5, "temperature": 0.2}),
    ("hard", {"num_negatives": 3, "hidden_norm": False}),
    ("simple", {}),
    ("simple", {"lambda_weight": 0.3}),
    ("dhel", {}),
    ("dhel", {"include_augs": False}),
    ("dhel", {"temperature": 0.1}),
    ("kcl", {}),
    ("kcl", {"kernel": "gaussian", "t": 1.0, "gamma": 4.0}),
    ("kcl", {"kernel": "log"}),
    ("kcl", {"kernel": "log", "t": 0.5, "gamma": 1.0}),
    ("kcl", {"kernel": "imq"}),
    ("kcl", {"kernel": "imq", "t": 0.5}),
    ("kcl", {"kernel": "riesz"}),
    ("kcl", {"kernel": "riesz", "t": -1.0}),
    ("align_uniform", {}),
    ("align_uniform", {"alpha": 1.0, "t": 3.0, "lambda_weight": 0.5}),
    ("decoupled", {}),
    ("decoupled", {"temperature": 0.2, "lambda_weight": 0.1, "scale": 2.0}),
    ("decoupled", {"hidden_norm": False}),
    ("swd", {}),
    ("swd", {"prior": "normal"}),
    ("swd", {"prior": "uniform_hypercube"}),
    ("swd", {"prior": "normal", "hidden_norm": True}),
    ("swd", {"prior": "uniform_hypersphere", "lambda_weight": 5.0, "scale": 0.5}),
]
CONFIG_IDS = [name + "-" + "-".join(f"{k}={v}" for k, v in params.items())
              for name, params in CONFIGS]


def random_views(size, dim, seed, scale=1.0):
    rng = np.random.RandomState(seed)
    z1 = (scale * rng.randn(size, dim)).astype(np.float32)
    z2 = (z1 + 0.5 * scale * rng.randn(size, dim)).astype(np.float32)
    return z1, z2


def with_noise(name, params, size, dim, seed=0):
    """swd parameters completed with explicit standard-normal noise."""
    if name != "swd":
        return dict(params)
    rng = np.random.RandomState(1000 + seed)
    return dict(params,
                projection_noise=rng.randn(dim, dim).astype(np.float32),
                prior_noise=rng.randn(2 * size, dim).astype(np.float32))


def loss_and_grads(name, z1, z2, **params):
    """(loss, ∂loss/∂z1, ∂loss/∂z2), the gradients as numpy."""
    loss, (g1, g2) = value_and_grad(
        lambda a, b: objective.compute_loss(name, a, b, **params), z1, z2)
    return loss, g1, g2


def numeric_grads(fn, z1, z2, step=1e-6):
    """Central finite differences of a float64 function of (z1, z2)."""
    grads = []
    for which in range(2):
        args = [np.array(z1, np.float64), np.array(z2, np.float64)]
        grad = np.zeros_like(args[which])
        for index in np.ndindex(grad.shape):
            original = args[which][index]
            args[which][index] = original + step
            plus = fn(*args)
            args[which][index] = original - step
            minus = fn(*args)
            args[which][index] = original
            grad[index] = (plus - minus) / (2 * step)
        grads.append(grad)
    return grads


# ---------------------------------------------------------------------------
# Values and gradients against the references.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_loss_matches_numpy_reference(name, params):
    z1, z2 = random_views(8, 5, seed=1)
    params = with_noise(name, params, 8, 5)
    loss = objective.compute_loss(name, z1, z2, **params)
    assert dtype_name(loss) == "float32" and tuple(loss.shape) == ()
    np.testing.assert_allclose(float(loss), reference(name, z1, z2, **params),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_gradient_matches_finite_differences(name, params):
    z1, z2 = random_views(4, 3, seed=2)
    params = with_noise(name, params, 4, 3)
    if name == "hard" and "num_negatives" in params:
        params["num_negatives"] = min(params["num_negatives"], 3)
    _, g1, g2 = loss_and_grads(name, z1, z2, **params)
    n1, n2 = numeric_grads(lambda a, b: reference(name, a, b, **params), z1, z2)
    scale = max(1.0, np.abs(n1).max(), np.abs(n2).max())
    np.testing.assert_allclose(g1, n1, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(g2, n2, rtol=1e-3, atol=1e-4 * scale)


def test_each_loss_is_covered():
    assert {name for name, _ in CONFIGS} == set(objective.LOSSES)
    assert {p["kernel"] for n, p in CONFIGS if n == "kcl" and "kernel" in p} == set(
        objective.KCL_KERNELS)
    assert {p.get("prior", "uniform_hypersphere") for n, p in CONFIGS
            if n == "swd"} == set(objective.PRIORS)


def documented_loss_defaults():
    """{loss: {param: default}} parsed from the README's "Losses" table,
    the defaults users are told: `--flag` (value) per flag, mapped to the
    loss parameter through config.LOSS_FLAGS. A value that depends on the
    run ("1/(2B-2)", "true only for the hypersphere") is None, "all" is
    None, and for a list of choices "a | b" the first is the default."""
    import config
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = readme[readme.index("## Losses"):]
    documented = {}
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        name = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) == 3 else None
        if not name or name.group(1) not in objective.LOSSES:
            continue
        params = {}
        for flag, text in re.findall(r"`--(\w+)` \((.*?)\)(?=, `|$)", cells[2]):
            param = config.LOSS_FLAGS[flag][0]
            text = text.split(" \\| ")[0].strip()
            if text in ("true", "false"):
                value = text == "true"
            elif re.fullmatch(r"[0-9.]+", text):
                value = float(text)
            elif re.fullmatch(r"[a-z_]+", text) and text != "all":
                value = text
            else:  # "all", "1/(2B−2)", "true only for the hypersphere"
                value = None
            params[param] = value
        documented[name.group(1)] = params
    return documented


def test_loss_defaults_are_the_documented_ones():
    """LOSS_PARAMS holds the defaults the README documents, parameter for
    parameter (the SWD noise is not a user parameter)."""
    documented = documented_loss_defaults()
    assert set(documented) == set(objective.LOSSES)
    for name in objective.LOSSES:
        code = {k: v for k, v in objective.LOSS_PARAMS[name].items()
                if not k.endswith("_noise")}
        assert code == documented[name], name
    assert tuple(objective.LOSS_PARAMS) == objective.LOSSES


def test_contrastive_accuracy_and_entropy_matches_numpy():
    z1, z2 = random_views(8, 5, seed=3)
    for hidden_norm, temperature in ((True, 0.1), (False, 0.7)):
        a, b = (np_normalize(z1), np_normalize(z2)) if hidden_norm else (z1, z2)
        hits, entropies = [], []
        for i in range(8):
            logits = np.array([a[i] @ b[j] for j in range(8)], np.float64) / temperature
            p = np.exp(logits - np_lse(logits))
            hits.append(np.argmax(logits) == i)
            entropies.append(-np.sum(p * np.log(p)))
        acc, ent = objective.contrastive_accuracy_and_entropy(
            z1, z2, temperature=temperature, hidden_norm=hidden_norm)
        assert dtype_name(acc) == dtype_name(ent) == "float32"
        assert float(acc) == pytest.approx(np.mean(hits))
        np.testing.assert_allclose(float(ent), np.mean(entropies), rtol=1e-5)


def test_contrastive_accuracy_known_values_and_replicas():
    # Orthonormal rows with z1 == z2: every anchor finds its partner, and at a
    # tiny temperature the softmax is one-hot (entropy 0).
    eye = np.eye(6, dtype=np.float32)
    acc, ent = objective.contrastive_accuracy_and_entropy(eye, eye, temperature=0.01)
    assert float(acc) == 1.0 and float(ent) == pytest.approx(0.0, abs=1e-6)
    # Identical rows everywhere: uniform softmax over B candidates.
    ones = np.ones((6, 3), np.float32)
    _, ent = objective.contrastive_accuracy_and_entropy(ones, ones)
    assert float(ent) == pytest.approx(math.log(6), rel=1e-6)
    # Per-replica summaries average to the global ones.
    z1, z2 = random_views(8, 5, seed=4)
    z1[:4] = z2[:4] * 3  # make some anchors certainly correct
    global_acc, global_ent = objective.contrastive_accuracy_and_entropy(z1, z2)
    accs, ents = [], []
    for r in range(2):
        acc, ent = objective.contrastive_accuracy_and_entropy(
            z1[4 * r:4 * r + 4], z2[4 * r:4 * r + 4], z2_all=z2, replica_id=r)
        accs.append(float(acc))
        ents.append(float(ent))
    assert np.mean(accs) == pytest.approx(float(global_acc))
    assert np.mean(ents) == pytest.approx(float(global_ent), rel=1e-6)
    assert accs[0] == 1.0


# ---------------------------------------------------------------------------
# Distribution contract.
# ---------------------------------------------------------------------------

# Under JAX, where each case costs two compiles, 4 replicas only: the
# slicing and the replica offsets are the same code for 2.
@pytest.mark.parametrize("replicas", [2, 4] if BACKEND == "tensorflow" else [4])
@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_mean_over_replicas_equals_global_loss_and_gradient(name, params, replicas):
    size, dim = 8, 5
    z1_np, z2_np = random_views(size, dim, seed=5)
    params = with_noise(name, params, size, dim)
    local = size // replicas

    def mean_over_replicas(z1_all, z2_all):
        per_replica = [
            objective.compute_loss(
                name, z1_all[r * local:(r + 1) * local],
                z2_all[r * local:(r + 1) * local],
                z1_all=z1_all, z2_all=z2_all, replica_id=r, **params)
            for r in range(replicas)]
        return sum(per_replica) / replicas

    global_loss, expected = value_and_grad(
        lambda a, b: objective.compute_loss(name, a, b, **params), z1_np, z2_np)
    mean_loss, got = value_and_grad(mean_over_replicas, z1_np, z2_np)
    np.testing.assert_allclose(mean_loss, global_loss, rtol=1e-5, atol=1e-6)
    for g, e in zip(got, expected):
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * scale)


def test_replica_id_tensor_is_accepted():
    z1, z2 = random_views(8, 5, seed=6)
    as_int = objective.compute_loss("ntxent", z1[4:], z2[4:], z1_all=z1, z2_all=z2,
                                    replica_id=1)
    as_tensor = objective.compute_loss("ntxent", z1[4:], z2[4:], z1_all=z1,
                                       z2_all=z2, replica_id=ops.convert_to_tensor(1))
    assert float(as_int) == float(as_tensor)


# ---------------------------------------------------------------------------
# Numerics.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "bfloat16"], ids=["f16", "bf16"])
@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_half_precision_inputs_give_float32_result(name, params, dtype):
    z1, z2 = random_views(8, 5, seed=7)
    params = with_noise(name, params, 8, 5)
    low1, low2 = ops.cast(z1, dtype), ops.cast(z2, dtype)
    loss = objective.compute_loss(name, low1, low2, **params)
    assert dtype_name(loss) == "float32"
    # Exactly the float32 computation on the (rounded) input values ...
    upcast = objective.compute_loss(name, ops.cast(low1, "float32"),
                                    ops.cast(low2, "float32"), **params)
    np.testing.assert_allclose(float(loss), float(upcast), rtol=1e-6, atol=1e-6)
    # ... and close to the float32 loss; the gap is only the input rounding.
    exact = float(objective.compute_loss(name, z1, z2, **params))
    tolerance = 5e-3 if dtype == "float16" else 5e-2
    np.testing.assert_allclose(float(loss), exact, rtol=tolerance,
                               atol=tolerance * max(1.0, abs(exact)))


# Six rows of 5 entries whose norms are powers of two (integer rows of norm 8,
# scaled by 2^k), so that the unit rows (entries k / 8) and their cosines
# (multiples of 1/64, the five of each row with the others all different)
# are exact in float32. With rows whose cos = 1 is off by one rounding,
# D^2 ~ 1e-7 is of the order of the Riesz guard (1e-6) and moves that
# kernel's value by a few percent and its gradient by ~1e5.
EXACT_ROWS = np.array([[7, 3, 2, 1, 1], [6, -4, 2, 2, -2], [-5, 5, 3, 2, 1],
                       [3, -1, 6, -3, 3], [1, -1, 1, 6, 5], [-6, 2, 4, 2, 2]], np.float32) \
    * np.array([[2.0], [0.5], [1.0], [4.0], [1.0], [2.0]], np.float32) / 8


def reference_defaults(name, params):
    """`params` completed with the defaults of the loss's numpy reference."""
    signature = inspect.signature(REFERENCES[name])
    return dict({k: p.default for k, p in signature.parameters.items()
                 if p.default is not inspect.Parameter.empty}, **params)


def all_rows_equal_loss(name, params, row, size):
    """The loss of `size` pairs whose 2 * size rows all equal `row`, in closed
    form. With unit rows u (or raw rows r, where the loss does not
    normalise) every logit is u.u / tau = 1 / tau and every D^2 is 0, so:
    NT-Xent's LSE runs over 2B - 1 equal logits, la_i = log(2B - 1); DCL's
    over 2B - 2; hard's over the positive and K negatives; dhel's over B - 1;
    decoupled's over all 2B rows; and sliced Wasserstein (one point against
    the prior sample q, W orthogonal) is mean_r ||h - q_r||^2 / d."""
    p = reference_defaults(name, params)
    b, d = size, len(row)
    unit = row / np.linalg.norm(row)
    if name == "ntxent" or (name == "hard" and p["num_negatives"] is None):
        return 2 * math.log(2 * b - 1)
    if name == "hard":
        return 2 * math.log(1 + min(p["num_negatives"], 2 * b - 2))
    if name == "dcl":
        return 2 * math.log(2 * b - 2)
    if name == "simple":
        weight = 1 / (2 * b - 2) if p["lambda_weight"] is None else p["lambda_weight"]
        return 2 * (-1 + weight * (2 * b - 2))
    if name == "dhel":
        return math.log(b - 1) + (math.log(b - 1) + 1 / p["temperature"]
                                  if p["include_augs"] else 0.0)
    if name == "kcl":
        # -2 K_A(0) + gamma (K_U(0) + K_U(0)), K_A(0) = K_U(0) for every
        # kernel (Riesz at the guarded distance sqrt(1e-6)).
        t = p["t"]
        at_zero = {"gaussian": 1.0, "log": 0.0, "imq": 1.0,
                   "riesz": (1.0 if t > 0 else -1.0) * 1e-6 ** (-t / 2)}[p["kernel"]]
        return (2 * p["gamma"] - 2) * at_zero
    if name == "align_uniform":
        return 0.0 if p["alpha"] == 2 else 1e-12 ** (p["alpha"] / 2)
    if name == "decoupled":
        h = unit if p["hidden_norm"] else row
        return p["scale"] * p["lambda_weight"] * (h @ h / p["temperature"]
                                                  + math.log(2 * b / d))
    assert name == "swd"
    hidden_norm = p["hidden_norm"]
    if hidden_norm is None:
        hidden_norm = p["prior"] == "uniform_hypersphere"
    h = unit if hidden_norm else row
    prior = ref_prior(p["prior"], p["prior_noise"])
    return p["scale"] * p["lambda_weight"] * np.mean(np.sum((h - prior) ** 2, axis=1)) / d


def picks_among_ties(name, params):
    """The loss picks among equal candidates (the top-k of hard with K
    negatives, the sorts of swd), so that with ties its gradient reaches
    the one picked, not each alike."""
    return name == "swd" or (name == "hard" and params.get("num_negatives") is not None)


def float32_gradient_noise(name, params):
    """The gradient's rounding at identical rows: float32 resolution (1e-7)
    times the largest derivative of the loss in one cosine, which only the
    Riesz kernel makes large: 2 gamma |dK/dD^2| at D = 0, |s|/2 1e-6^(-s/2-1)."""
    p = reference_defaults(name, params)
    if name != "kcl" or p["kernel"] != "riesz":
        return 0.0
    s = p["t"]
    return 1e-7 * 2 * p["gamma"] * abs(s) / 2 * 1e-6 ** (-s / 2 - 1)


@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_all_rows_equal_give_the_closed_form_loss_and_gradients(name, params):
    row = EXACT_ROWS[0].astype(np.float64)
    z = np.repeat(EXACT_ROWS[:1], 6, axis=0)
    params = with_noise(name, params, 6, 5)
    loss, g1, g2 = loss_and_grads(name, z, z.copy(), **params)
    expected = all_rows_equal_loss(name, params, row, 6)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    # The sum of the row gradients is the derivative of the closed form in
    # the common row: 0 where it does not depend on the row.
    [total] = numeric_grads(lambda r, _: all_rows_equal_loss(name, params, r[0], 6),
                            row[None], row[None])[:1]
    atol = 1e-5 * max(1.0, np.abs(total).max()) + 10 * float32_gradient_noise(name, params)
    np.testing.assert_allclose((g1 + g2).sum(axis=0), total[0], atol=atol)
    # Every row alike, each gets 1 / (2B) of it (so 0 for the unit-row
    # losses, whose gradient along u the normalisation projects out), unless
    # a pick among the tied rows gives it to some: the sorts of swd, and
    # the top-k of hard, where raw rows (no projection) keep it.
    if not (picks_among_ties(name, params)
            and (name == "swd" or params.get("hidden_norm") is False)):
        for g in (g1, g2):
            np.testing.assert_allclose(g, np.broadcast_to(total / 12, g.shape), atol=atol)


@pytest.mark.parametrize("name,params", CONFIGS, ids=CONFIG_IDS)
def test_pairs_equal_give_the_reference_loss_and_gradients(name, params):
    z = EXACT_ROWS.copy()
    params = with_noise(name, params, 6, 5)
    loss, g1, g2 = loss_and_grads(name, z, z.copy(), **params)
    np.testing.assert_allclose(loss, reference(name, z, z, **params), rtol=1e-5, atol=1e-5)
    # Moving both views of a pair together keeps every tie: the sum of the
    # two views' gradients is the gradient of z -> L(z, z).
    [shared] = numeric_grads(lambda a, _: reference(name, a, a, **params), z, z)[:1]
    scale = max(1.0, np.abs(shared).max())
    noise = 10 * float32_gradient_noise(name, params)
    np.testing.assert_allclose(g1 + g2, shared, rtol=1e-3, atol=1e-4 * scale + noise)
    if not picks_among_ties(name, params):
        n1, n2 = numeric_grads(lambda a, b: reference(name, a, b, **params), z, z)
        np.testing.assert_allclose(g1, n1, rtol=1e-3, atol=1e-4 * scale + noise)
        np.testing.assert_allclose(g2, n2, rtol=1e-3, atol=1e-4 * scale + noise)


def test_zero_rows_normalise_to_zero_with_finite_gradients():
    x = np.zeros((3, 4), np.float32)
    assert np.all(np.asarray(objective.l2_normalize(x)) == 0)
    _, (grad,) = value_and_grad(lambda v: ops.sum(objective.l2_normalize(v)), x)
    # Below the 1e-12 floor of ||x||^2 the rows are scaled by 1e6.
    np.testing.assert_allclose(grad, 1e6, rtol=1e-6)


@pytest.mark.parametrize("name", objective.LOSSES)
def test_a_zero_row_gives_the_reference_loss_and_gradients(name):
    """A zero row normalises to zero (x / sqrt(max(||x||^2, 1e-12))): the
    loss is the reference's with that row at the origin, and its gradient
    the reference's finite differences, taken for the zero row with a step
    of 1e-12 (a unit-row step of 1e-6, inside the floor)."""
    z1, z2 = random_views(6, 4, seed=9)
    z1[2] = 0.0
    params = with_noise(name, {}, 6, 4)
    loss, g1, g2 = loss_and_grads(name, z1, z2, **params)
    np.testing.assert_allclose(loss, reference(name, z1, z2, **params), rtol=1e-5, atol=1e-5)
    steps = np.full(z1.shape, 1e-6)
    steps[2] = 1e-12
    args = [z1.astype(np.float64), z2.astype(np.float64)]
    for which, got in enumerate((g1, g2)):
        expected = np.zeros(z1.shape)
        for index in np.ndindex(z1.shape):
            step = steps[index] if which == 0 else 1e-6
            values = []
            for sign in (1, -1):
                moved = [a.copy() for a in args]
                moved[which][index] += sign * step
                values.append(reference(name, *moved, **params))
            expected[index] = (values[0] - values[1]) / (2 * step)
        scale = max(1.0, np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=f"z{which + 1}")


def test_normalisation_happens_in_float32():
    # Entries of 1e-4 have squares (1e-8) below float16's smallest subnormal,
    # so a float16 normalisation would see a zero norm.
    x = np.full((2, 4), 1e-4, np.float16)
    y = objective.l2_normalize(x)
    assert dtype_name(y) == "float32"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=1), 1.0, rtol=1e-3)


def rowwise_lse(anchors, candidates, *excluded, block=512):
    """float64 LSE of each anchor's logits a . c over the candidate rows,
    leaving out column e[i] of row i for each array e of `excluded`, a block
    of anchors at a time."""
    out = np.empty(len(anchors))
    for start in range(0, len(anchors), block):
        logits = anchors[start:start + block] @ candidates.T
        rows = np.arange(len(logits))
        for columns in excluded:
            logits[rows, columns[start:start + block]] = -np.inf
        top = logits.max(axis=1, keepdims=True)
        out[start:start + block] = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return out


def large_batch_reference(name, z1, z2, temperature, hidden_norm=True):
    """ntxent, dcl, dhel and decoupled of the docstrings' formulas, in
    float64 over blocks of anchors (a [2B, 2B] float64 matrix would take
    512 MiB at B = 4096)."""
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    if hidden_norm or name == "dhel":
        z1, z2 = np_normalize(z1), np_normalize(z2)
    size, dim = z1.shape
    a, b = z1 / temperature, z2 / temperature
    index = np.arange(size)
    positive = np.sum(a * z2, axis=1)
    if name == "dhel":
        return np.mean(-positive + rowwise_lse(a, z1, index) + rowwise_lse(b, z2, index))
    if name == "decoupled":
        stacked = np.concatenate([z1, z2])
        dist = np.mean(rowwise_lse(stacked / temperature, stacked) - math.log(dim))
        return np.sum((z1 - z2) ** 2) / (2 * size * dim) + dist
    total = 0.0
    for anchors, partners, scaled in ((z1, z2, a), (z2, z1, b)):
        # The anchor itself left out; for dcl its positive too.
        left_out = [index + size] + ([index] if name == "dcl" else [])
        lse = rowwise_lse(scaled, np.concatenate([partners, anchors]), *left_out)
        total += np.mean(lse - np.sum(scaled * partners, axis=1))
    return total


@pytest.mark.parametrize("name,params", [
    ("ntxent", {}), ("dcl", {}), ("dhel", {}), ("decoupled", {}),
    ("ntxent", {"hidden_norm": False}), ("dcl", {"hidden_norm": False}),
    ("decoupled", {"hidden_norm": False}),
], ids=["ntxent", "dcl", "dhel", "decoupled", "ntxent-raw", "dcl-raw",
        "decoupled-raw"])
def test_small_temperature_large_batch_matches_float64(name, params):
    # Raw rows of norm ~4 give logits up to ~16 / 0.05 = 320: exp overflows
    # float32 (max ~e^88) unless log-sum-exp is used throughout.
    size, dim = 4096, 4
    rng = np.random.RandomState(10)
    z1 = (2 * rng.randn(size, dim)).astype(np.float32)
    z2 = (z1 + 0.1 * rng.randn(size, dim)).astype(np.float32)
    loss = float(objective.compute_loss(name, z1, z2, temperature=0.05, **params))
    expected = large_batch_reference(name, z1, z2, 0.05, params.get("hidden_norm", True))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


# ---------------------------------------------------------------------------
# Identities.
# ---------------------------------------------------------------------------

def test_hard_with_all_negatives_is_ntxent():
    z1, z2 = random_views(6, 4, seed=11)
    for hidden_norm in (True, False):
        ntxent = float(objective.compute_loss("ntxent", z1, z2, temperature=0.5,
                                              hidden_norm=hidden_norm))
        hard_all = float(objective.compute_loss("hard", z1, z2, num_negatives=None,
                                                hidden_norm=hidden_norm))
        assert hard_all == ntxent
        # K >= 2n - 2 = 10 goes through the top-k path with every negative
        # kept (K is clamped to 10), which must agree with NT-Xent.
        for k in (10, 11, 1000):
            hard = float(objective.compute_loss("hard", z1, z2, num_negatives=k,
                                                hidden_norm=hidden_norm))
            assert hard == pytest.approx(ntxent, rel=1e-6), k
        # Fewer kept negatives can only lower each log-sum-exp.
        values = [float(objective.compute_loss("hard", z1, z2, num_negatives=k,
                                               hidden_norm=hidden_norm))
                  for k in range(1, 11)]
        assert all(x < y for x, y in zip(values, values[1:]))
        assert values[-1] == pytest.approx(ntxent, rel=1e-6)


def test_decoupled_alignment_term_is_mean_one_minus_cos_over_d():
    z1, z2 = random_views(8, 5, seed=12)
    a, b = np_normalize(z1.astype(np.float64)), np_normalize(z2.astype(np.float64))
    expected = np.mean(1.0 - np.sum(a * b, axis=1)) / 5
    for scale in (1.0, 3.0):
        loss = objective.compute_loss("decoupled", z1, z2, lambda_weight=0.0,
                                      scale=scale)
        np.testing.assert_allclose(float(loss), scale * expected, rtol=1e-5)


def test_sliced_wasserstein_of_a_sample_with_itself_is_zero():
    rng = np.random.RandomState(13)
    x = rng.randn(16, 4).astype(np.float32)
    w = objective.orthogonal_from_noise(rng.randn(4, 4).astype(np.float32))
    assert float(objective.sliced_wasserstein(x, x, w)) == 0.0
    # Row order does not matter, since each slice is sorted.
    assert float(objective.sliced_wasserstein(x, x[::-1], w)) == 0.0


def test_sliced_wasserstein_matches_numpy():
    rng = np.random.RandomState(14)
    x, y = rng.randn(16, 4), rng.randn(16, 4) + 1
    projection = rng.randn(4, 3)
    got = objective.sliced_wasserstein(x.astype(np.float32), y.astype(np.float32),
                                       projection.astype(np.float32))
    expected = ref_sliced_wasserstein(x.astype(np.float32).astype(np.float64),
                                      y.astype(np.float32).astype(np.float64),
                                      projection.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_orthogonal_from_noise_is_orthogonal_and_sign_corrected():
    noise = np.random.RandomState(15).randn(6, 6).astype(np.float32)
    w = np.asarray(objective.orthogonal_from_noise(noise))
    np.testing.assert_allclose(w.T @ w, np.eye(6), atol=1e-5)
    np.testing.assert_allclose(w, ref_orthogonal(noise), atol=1e-5)


@pytest.mark.parametrize("prior", objective.PRIORS)
def test_swd_distance_to_an_independent_prior_draw_is_small(prior):
    size, dim = 256, 4
    rng = np.random.RandomState(16)
    # Independent numpy samplers of each prior.
    if prior == "normal":
        draw = rng.randn(2 * size, dim)
    elif prior == "uniform_hypersphere":
        draw = np_normalize(rng.randn(2 * size, dim))
    else:
        draw = rng.uniform(-1.0, 1.0, size=(2 * size, dim))
    draw = draw.astype(np.float32)
    collapsed = np.repeat(draw[:1], 2 * size, axis=0)

    def distance(h):
        # dist = L(lambda=1) - L(lambda=0) for the same noise.
        kwargs = dict(prior=prior, seed=17)
        full = objective.compute_loss("swd", h[:size], h[size:], **kwargs)
        align = objective.compute_loss("swd", h[:size], h[size:], lambda_weight=0.0,
                                       **kwargs)
        return float(full) - float(align)

    matched, collapsed_distance = distance(draw), distance(collapsed)
    assert 0 <= matched < 0.1 * collapsed_distance


def test_swd_seed_is_repeatable_and_none_is_fresh():
    z1, z2 = random_views(8, 5, seed=18)
    first = float(objective.compute_loss("swd", z1, z2, seed=3))
    again = float(objective.compute_loss("swd", z1, z2, seed=3))
    other = float(objective.compute_loss("swd", z1, z2, seed=4))
    assert first == again and first != other
    fresh = [float(objective.compute_loss("swd", z1, z2)) for _ in range(2)]
    assert fresh[0] != fresh[1]
    generator = __import__("keras").random.SeedGenerator(5)
    from_generator = [float(objective.compute_loss("swd", z1, z2, seed=generator))
                      for _ in range(2)]
    assert from_generator[0] != from_generator[1]


def test_swd_supplied_noise_overrides_seed():
    z1, z2 = random_views(8, 5, seed=19)
    params = with_noise("swd", {}, 8, 5)
    a = float(objective.compute_loss("swd", z1, z2, seed=1, **params))
    b = float(objective.compute_loss("swd", z1, z2, seed=2, **params))
    assert a == b


def test_prior_from_noise_hypercube_is_uniform():
    noise = np.random.RandomState(20).randn(20000, 2).astype(np.float32)
    u = np.asarray(objective.prior_from_noise("uniform_hypercube", noise))
    assert u.min() >= -1 and u.max() <= 1
    # Kolmogorov distance to U(-1, 1) of each column.
    grid = np.sort(u, axis=0)
    ecdf = np.arange(1, len(u) + 1)[:, None] / len(u)
    assert np.max(np.abs(ecdf - (grid + 1) / 2)) < 0.015


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------

def _assert_one_line_listing(excinfo, bad, allowed):
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(bad) in message
    for value in allowed:
        assert value in message


def test_unknown_loss_name():
    z1, z2 = random_views(4, 3, seed=21)
    with pytest.raises(ValueError) as excinfo:
        objective.compute_loss("infonce", z1, z2)
    _assert_one_line_listing(excinfo, "infonce", objective.LOSSES)


def test_unknown_parameter():
    z1, z2 = random_views(4, 3, seed=22)
    with pytest.raises(ValueError) as excinfo:
        objective.compute_loss("ntxent", z1, z2, lambda_weight=1.0)
    _assert_one_line_listing(excinfo, "lambda_weight", ["temperature", "hidden_norm"])
    with pytest.raises(ValueError) as excinfo:
        objective.compute_loss("dhel", z1, z2, hidden_norm=False)
    _assert_one_line_listing(excinfo, "hidden_norm", ["temperature", "include_augs"])


def test_unknown_prior_and_kernel():
    z1, z2 = random_views(4, 3, seed=23)
    with pytest.raises(ValueError) as excinfo:
        objective.compute_loss("swd", z1, z2, prior="laplace")
    _assert_one_line_listing(excinfo, "laplace", objective.PRIORS)
    with pytest.raises(ValueError) as excinfo:
        objective.compute_loss("kcl", z1, z2, kernel="cosine")
    _assert_one_line_listing(excinfo, "cosine", objective.KCL_KERNELS)


def test_inconsistent_inputs_are_rejected():
    z1, z2 = random_views(4, 3, seed=24)
    with pytest.raises(ValueError):
        objective.compute_loss("ntxent", z1, z2, replica_id=1)
    with pytest.raises(ValueError):
        objective.compute_loss("ntxent", z1, z2, z1_all=z1)
    with pytest.raises(ValueError):
        objective.compute_loss("ntxent", z1, z2[:, :2])
    with pytest.raises(ValueError):
        objective.compute_loss("hard", z1, z2, num_negatives=0)
