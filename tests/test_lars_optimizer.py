"""Tests for lars_optimizer.LARSOptimizer.

The optimizer is checked against `lars_reference`, a float64 numpy loop
written from the LARS update rules, and against invariants that hold whatever
the implementation: the first step of an adapted variable has norm lr·η·‖w‖,
and a zero norm falls back to a trust ratio of 1.
"""
import copy

import numpy as np
import pytest

import keras

from backend import BACKEND
from backend import tensorflow_only
from lars_optimizer import EETA_DEFAULT, LARSOptimizer

SHAPES = {
    "dense/kernel": (3, 4),
    "dense/bias": (4,),
    "batch_normalization/gamma": (4,),
}
NAMES = list(SHAPES)

# (exclude_from_weight_decay, exclude_from_layer_adaptation) and, per
# variable in NAMES order, whether it is decayed and whether it is adapted.
EXCLUSION_CASES = [
    (["batch_normalization", "bias"], None,
     [True, False, False], [True, False, False]),
    (["bias"], ["batch_normalization"],
     [True, False, True], [True, True, False]),
    ([], [],
     [True, True, True], [True, True, True]),
]

MODES = [(True, False), (True, True), (False, False), (False, True)]
MODE_IDS = ["classic", "classic-nesterov", "nonclassic", "nonclassic-nesterov"]


def make_variables(values):
    """Keras variables whose paths are the keys of `values`."""
    variables = []
    for path, value in values.items():
        scope, name = path.split("/")
        with keras.name_scope(scope):
            variables.append(
                keras.Variable(np.asarray(value, np.float32), name=name))
    return variables


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def random_values(rng):
    return {p: rng.standard_normal(s) for p, s in SHAPES.items()}


def random_gradients(rng, steps):
    return [[rng.standard_normal(SHAPES[p]) for p in NAMES]
            for _ in range(steps)]


def lars_reference(weights, gradients, lrs, momentum, use_nesterov,
                   weight_decay, classic, eeta, decayed, adapted):
    """Runs LARS in float64 numpy; returns the final weights and momenta.

    gradients[t][i] is the gradient of variable i at step t; lrs[t] is the
    learning rate used at step t.
    """
    ws = [np.array(w, np.float64) for w in weights]
    vs = [np.zeros_like(w) for w in ws]

    def trust(w, d):
        w_norm = np.sqrt(np.sum(w * w))
        d_norm = np.sqrt(np.sum(d * d))
        if w_norm > 0 and d_norm > 0:
            return eeta * w_norm / d_norm
        return 1.0

    for t, grads in enumerate(gradients):
        for i in range(len(ws)):
            w, v = ws[i], vs[i]
            g = np.array(grads[i], np.float64)
            if decayed[i]:
                g = g + weight_decay * w
            if classic:
                lr = lrs[t] * (trust(w, g) if adapted[i] else 1.0)
                v = momentum * v + lr * g
                step = momentum * v + lr * g if use_nesterov else v
                w = w - step
            else:
                v = momentum * v + g
                step = momentum * v + g if use_nesterov else v
                lr = lrs[t] * (trust(w, step) if adapted[i] else 1.0)
                w = w - lr * step
            ws[i], vs[i] = w, v
    return ws, vs


def run_steps(optimizer, variables, gradients, step_fn=None):
    """Applies each step's gradients; optionally through `step_fn`."""
    optimizer.build(variables)
    for grads in gradients:
        grads = [keras.ops.convert_to_tensor(np.asarray(g, np.float32)) for g in grads]
        if step_fn is None:
            optimizer.apply_gradients(zip(grads, variables))
        else:
            step_fn(grads)


def momenta(optimizer):
    return [to_numpy(v) for v in optimizer.momentums]


def assert_close_to_reference(variables, optimizer, weights0, ref_w, ref_v):
    # Compare the change in weights, not the weights: a wrong step that is
    # small next to ‖w‖ would otherwise pass.
    for var, w0, rw in zip(variables, weights0, ref_w):
        delta = to_numpy(var) - w0
        ref_delta = rw - w0
        np.testing.assert_allclose(
            delta, ref_delta, rtol=1e-4,
            atol=1e-4 * np.max(np.abs(ref_delta)), err_msg=var.path)
    for v, rv in zip(momenta(optimizer), ref_v):
        np.testing.assert_allclose(v, rv, rtol=1e-4,
                                   atol=1e-5 * np.max(np.abs(rv)))


@pytest.mark.parametrize("classic,nesterov", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("exclude_decay,exclude_adapt,decayed,adapted",
                         EXCLUSION_CASES, ids=["default", "split", "none"])
def test_matches_numpy_reference(classic, nesterov, exclude_decay,
                                 exclude_adapt, decayed, adapted):
    rng = np.random.default_rng(0)
    values = random_values(rng)
    grads = random_gradients(rng, steps=4)
    lr, momentum, wd, eeta = 0.3, 0.9, 0.1, 0.5

    variables = make_variables(values)
    assert [v.path for v in variables] == NAMES
    optimizer = LARSOptimizer(
        lr, momentum=momentum, use_nesterov=nesterov, weight_decay=wd,
        exclude_from_weight_decay=exclude_decay,
        exclude_from_layer_adaptation=exclude_adapt,
        classic_momentum=classic, eeta=eeta)
    run_steps(optimizer, variables, grads)

    weights0 = [values[p] for p in NAMES]
    ref_w, ref_v = lars_reference(weights0, grads, [lr] * 4, momentum,
                                  nesterov, wd, classic, eeta, decayed,
                                  adapted)
    assert_close_to_reference(variables, optimizer, weights0, ref_w, ref_v)
    assert int(to_numpy(optimizer.iterations)) == 4


@pytest.mark.parametrize("classic,nesterov", MODES, ids=MODE_IDS)
def test_first_step_norm_is_lr_times_eeta_times_weight_norm(classic,
                                                            nesterov):
    # From v = 0 the trust ratio cancels the gradient's scale:
    # ‖Δw‖ = lr·η·‖w‖, times (1 + m) for classic Nesterov.
    rng = np.random.default_rng(1)
    values = random_values(rng)
    lr, momentum = 2.0, 0.9
    variables = make_variables(values)
    optimizer = LARSOptimizer(lr, momentum=momentum, use_nesterov=nesterov,
                              weight_decay=1e-2, classic_momentum=classic)
    assert optimizer.eeta == EETA_DEFAULT == 0.001
    kernel = variables[0]
    w0 = values["dense/kernel"]
    run_steps(optimizer, variables, random_gradients(rng, steps=1))

    step_norm = np.linalg.norm(to_numpy(kernel).astype(np.float64) - w0)
    factor = (1 + momentum) if (classic and nesterov) else 1.0
    np.testing.assert_allclose(
        step_norm, factor * lr * EETA_DEFAULT * np.linalg.norm(w0),
        rtol=2e-3)


def test_default_exclusions_give_plain_momentum_sgd():
    # The trainer's exclusion list: these variables get neither decay nor
    # adaptation, so the first two steps are v = lr·g and v = m·v + lr·g.
    rng = np.random.default_rng(2)
    values = random_values(rng)
    grads = random_gradients(rng, steps=2)
    lr, momentum = 0.1, 0.9
    variables = make_variables(values)
    optimizer = LARSOptimizer(
        lr, momentum=momentum, weight_decay=0.5,
        exclude_from_weight_decay=["batch_normalization", "bias",
                                   "head_supervised"])
    assert optimizer.layer_adaptation_exclusions == [
        "batch_normalization", "bias", "head_supervised"]
    run_steps(optimizer, variables, grads)
    for i in (1, 2):
        v_expected = momentum * lr * grads[0][i] + lr * grads[1][i]
        w_expected = values[NAMES[i]] - lr * grads[0][i] - v_expected
        np.testing.assert_allclose(to_numpy(optimizer.momentums[i]),
                                   v_expected, rtol=1e-5)
        np.testing.assert_allclose(to_numpy(variables[i]), w_expected,
                                   rtol=1e-5, atol=1e-6)


class InverseTimeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(t) = 0.4 / (1 + t)."""

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        return 0.4 / (1.0 + step)

    def get_config(self):
        return {}


@pytest.mark.parametrize("classic", [True, False])
def test_learning_rate_schedule(classic):
    rng = np.random.default_rng(3)
    values = random_values(rng)
    grads = random_gradients(rng, steps=4)
    variables = make_variables(values)
    optimizer = LARSOptimizer(
        InverseTimeSchedule(), momentum=0.8, weight_decay=0.1,
        exclude_from_weight_decay=["bias"], classic_momentum=classic,
        eeta=0.5)
    run_steps(optimizer, variables, grads)

    # The first step uses lr(0): the counter is read before it increments.
    lrs = [0.4 / (1.0 + t) for t in range(4)]
    weights0 = [values[p] for p in NAMES]
    ref_w, ref_v = lars_reference(weights0, grads, lrs, 0.8, False, 0.1,
                                  classic, 0.5, [True, False, True],
                                  [True, False, True])
    assert_close_to_reference(variables, optimizer, weights0, ref_w, ref_v)


@pytest.fixture
def check_numerics():
    """Makes TensorFlow raise on any NaN or Inf produced by any op."""
    if BACKEND == "tensorflow":
        import tensorflow as tf
        tf.debugging.enable_check_numerics()
        try:
            yield
        finally:
            tf.debugging.disable_check_numerics()
    else:
        import jax
        jax.config.update("jax_debug_nans", True)
        try:
            yield
        finally:
            jax.config.update("jax_debug_nans", False)


@pytest.mark.parametrize("classic", [True, False])
def test_trust_ratio_is_one_when_weight_norm_is_zero(classic,
                                                     check_numerics):
    # With w = 0 the decay adds nothing and η·‖w‖/‖g‖ would be 0; the
    # fallback of 1 makes the step a plain lr·g.
    rng = np.random.default_rng(4)
    g = rng.standard_normal((3, 4))
    with keras.name_scope("dense"):
        w = keras.Variable(np.zeros((3, 4), np.float32), name="kernel")
    optimizer = LARSOptimizer(0.5, momentum=0.9, weight_decay=0.1,
                              classic_momentum=classic)
    run_steps(optimizer, [w], [[g]])
    np.testing.assert_allclose(to_numpy(w), -0.5 * g, rtol=1e-6)


@pytest.mark.parametrize("classic,nesterov", MODES, ids=MODE_IDS)
def test_zero_gradient_gives_no_nan(classic, nesterov, check_numerics):
    # Step 1 has g = 0 (no decay), so ‖g‖ = 0 and, from v = 0, ‖update‖ = 0;
    # step 2 has a gradient; step 3 is zero again on a nonzero momentum; an
    # all-zero variable sees 0/0 candidates in both norms throughout.
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((3, 4))
    g = rng.standard_normal((3, 4))
    zero = np.zeros((3, 4))
    with keras.name_scope("dense"):
        w = keras.Variable(w0.astype(np.float32), name="kernel")
        z = keras.Variable(zero.astype(np.float32), name="other")
    optimizer = LARSOptimizer(0.5, momentum=0.9, use_nesterov=nesterov,
                              classic_momentum=classic, eeta=0.5)
    grads = [[zero, zero], [g, zero], [zero, zero]]
    run_steps(optimizer, [w, z], grads)

    ref_w, ref_v = lars_reference([w0, zero], grads, [0.5] * 3, 0.9,
                                  nesterov, 0.0, classic, 0.5,
                                  [False, False], [True, True])
    assert np.all(np.isfinite(to_numpy(w)))
    np.testing.assert_allclose(to_numpy(w), ref_w[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(optimizer.momentums[0]), ref_v[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(z), zero)


@tensorflow_only
@pytest.mark.parametrize("classic,nesterov", [(True, False), (False, True)])
def test_inside_tf_function(classic, nesterov):
    import tensorflow as tf
    rng = np.random.default_rng(6)
    values = random_values(rng)
    grads = random_gradients(rng, steps=3)
    variables = make_variables(values)
    optimizer = LARSOptimizer(
        0.3, momentum=0.9, use_nesterov=nesterov, weight_decay=0.1,
        exclude_from_weight_decay=["batch_normalization", "bias"],
        classic_momentum=classic, eeta=0.5)
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply_gradients(zip(grads, variables))

    run_steps(optimizer, variables, grads, step_fn=step)
    weights0 = [values[p] for p in NAMES]
    ref_w, ref_v = lars_reference(weights0, grads, [0.3] * 3, 0.9, nesterov,
                                  0.1, classic, 0.5, [True, False, False],
                                  [True, False, False])
    assert_close_to_reference(variables, optimizer, weights0, ref_w, ref_v)
    assert int(to_numpy(optimizer.iterations)) == 3


@tensorflow_only
def test_mirrored_strategy_sums_replica_gradients(mirrored_strategy):
    import tensorflow as tf
    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2, "tests/conftest.py should create 2 CPUs"
    rng = np.random.default_rng(7)
    values = random_values(rng)
    steps = 2
    # per_replica[t][r][i]: gradient of variable i on replica r at step t.
    per_replica = [[[rng.standard_normal(SHAPES[p]).astype(np.float32)
                     for p in NAMES] for _ in range(2)] for _ in range(steps)]
    kwargs = dict(momentum=0.9, weight_decay=0.1,
                  exclude_from_weight_decay=["batch_normalization", "bias"],
                  eeta=0.5)

    with strategy.scope():
        variables = make_variables(values)
        optimizer = LARSOptimizer(0.3, **kwargs)
        optimizer.build(variables)

    @tf.function
    def distributed_step(grads):
        strategy.run(
            lambda gs: optimizer.apply_gradients(zip(gs, variables)),
            args=(grads,))

    for t in range(steps):
        grads = strategy.experimental_distribute_values_from_function(
            lambda ctx: [tf.constant(g) for g in
                         per_replica[t][ctx.replica_id_in_sync_group]])
        distributed_step(grads)

    single_vars = make_variables(values)
    single = LARSOptimizer(0.3, **kwargs)
    summed = [[per_replica[t][0][i] + per_replica[t][1][i]
               for i in range(len(NAMES))] for t in range(steps)]
    run_steps(single, single_vars, summed)

    assert int(to_numpy(optimizer.iterations)) == steps
    for var, ref in zip(variables, single_vars):
        # Every replica's copy must hold the same, summed-gradient update.
        for local in strategy.experimental_local_results(var.value):
            np.testing.assert_allclose(to_numpy(local), to_numpy(ref),
                                       rtol=1e-6, atol=1e-7)
    for v, ref in zip(optimizer.momentums, single.momentums):
        for local in strategy.experimental_local_results(v.value):
            np.testing.assert_allclose(to_numpy(local), to_numpy(ref),
                                       rtol=1e-6, atol=1e-7)
    # And the summed update is not the mean one, which would be half as big
    # in the (unadapted) bias.
    mean_vars = make_variables(values)
    mean_opt = LARSOptimizer(0.3, **kwargs)
    run_steps(mean_opt, mean_vars, [[g / 2 for g in s] for s in summed])
    assert not np.allclose(to_numpy(mean_vars[1]), to_numpy(variables[1]))


def small_model():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="batch_normalization")(x)
    outputs = keras.layers.Dense(2, name="head_supervised")(x)
    return keras.Model(inputs, outputs)


def train(model, optimizer, rng, steps):
    for _ in range(steps):
        grads = [keras.ops.convert_to_tensor(rng.standard_normal(v.shape).astype(np.float32))
                 for v in model.trainable_variables]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))


@tensorflow_only
def test_checkpoint_round_trip(tmp_path):
    import tensorflow as tf
    rng = np.random.default_rng(8)
    model = small_model()
    kwargs = dict(momentum=0.9, weight_decay=1e-4,
                  exclude_from_weight_decay=["batch_normalization", "bias",
                                             "head_supervised"])
    optimizer = LARSOptimizer(0.2, **kwargs)
    optimizer.build(model.trainable_variables)
    assert len(optimizer.momentums) == len(model.trainable_variables)
    train(model, optimizer, rng, steps=3)

    checkpoint = tf.train.Checkpoint(optimizer=optimizer, model=model)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    saved_momenta = momenta(optimizer)
    saved_weights = [to_numpy(v) for v in model.weights]
    assert int(to_numpy(optimizer.iterations)) == 3
    assert all(np.any(m != 0) for m in saved_momenta)

    train(model, optimizer, rng, steps=2)
    assert int(to_numpy(optimizer.iterations)) == 5
    assert not np.array_equal(momenta(optimizer)[0], saved_momenta[0])

    checkpoint.restore(path).assert_consumed()
    assert int(to_numpy(optimizer.iterations)) == 3
    for m, saved in zip(momenta(optimizer), saved_momenta):
        np.testing.assert_array_equal(m, saved)
    for w, saved in zip(model.weights, saved_weights):
        np.testing.assert_array_equal(to_numpy(w), saved)

    # A fresh optimizer, built up front as the trainer does, resumes exactly.
    fresh = LARSOptimizer(0.2, **kwargs)
    fresh.build(model.trainable_variables)
    tf.train.Checkpoint(optimizer=fresh, model=model).restore(
        path).assert_consumed()
    assert int(to_numpy(fresh.iterations)) == 3
    for m, saved in zip(momenta(fresh), saved_momenta):
        np.testing.assert_array_equal(m, saved)


def test_get_config_round_trip():
    optimizer = LARSOptimizer(
        0.25, momentum=0.8, use_nesterov=True, weight_decay=1e-4,
        exclude_from_weight_decay=["batch_normalization", "bias"],
        exclude_from_layer_adaptation=["head_supervised"],
        classic_momentum=False, eeta=0.002, clipnorm=3.0, name="lars")
    config = optimizer.get_config()
    assert config["weight_decay"] == 1e-4
    assert config["exclude_from_layer_adaptation"] == ["head_supervised"]
    # Keras's decoupled decay stays off; ours lives inside update_step.
    assert optimizer.weight_decay is None

    clone = LARSOptimizer.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    assert clone.weight_decay is None and clone.clipnorm == 3.0

    # Through Keras's own serialisation, which needs the registered name.
    clone2 = keras.optimizers.deserialize(keras.optimizers.serialize(
        optimizer))
    assert isinstance(clone2, LARSOptimizer)
    assert clone2.get_config() == config

    # Same hyperparameters, same step.
    rng = np.random.default_rng(9)
    values = random_values(rng)
    grads = random_gradients(rng, steps=2)
    a, b = make_variables(values), make_variables(values)
    run_steps(LARSOptimizer.from_config(copy.deepcopy(config)), a, grads)
    run_steps(optimizer, b, grads)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


def test_get_config_round_trip_with_schedule():
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=100, warmup_target=1.2, warmup_steps=10)
    optimizer = LARSOptimizer(schedule, weight_decay=1e-6)
    config = optimizer.get_config()
    clone = LARSOptimizer.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    assert config["learning_rate"]["class_name"] == "CosineDecay"
    # At step 0 the warm-up starts from the initial rate, 0.
    assert float(clone.learning_rate) == 0.0
    assert clone.layer_adaptation_exclusions == []


def test_rejects_negative_momentum():
    with pytest.raises(ValueError):
        LARSOptimizer(0.1, momentum=-0.5)
