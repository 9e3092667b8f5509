"""Tests of model.py: the learning-rate schedule, weight decay, the projection
head, the two-view training model and the optimizer factory.

References are written here: the schedule and weight decay in float64 numpy
from their formulas, the projection head as a numpy forward pass in inference
mode; the model is checked through invariants (per-view rows, where gradients
reach).
"""
import math

import keras
import numpy as np
import pytest
from keras import ops

import lars_optimizer
import model as model_lib
from backend import variable_gradients

BN_EPSILON = 1e-5
NUM_CLASSES = 10
IMAGE_SIZE = 8


def tiny_model(seed=0, **kwargs):
    """A built ResNet-18 (1/8 width) model on 8×8 images."""
    keras.utils.set_random_seed(seed)
    config = dict(image_size=IMAGE_SIZE, resnet_depth=18, width_multiplier=0.125,
                  proj_out_dim=8, num_proj_layers=2, global_bn=False)
    config.update(kwargs)
    model = model_lib.Model(NUM_CLASSES, **config)
    views = 2 if config.get("train_mode", "pretrain") == "pretrain" else 1
    channels = config.get("view_channels", 3) * views
    model(np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, channels), np.float32), training=False)
    return model


def randomize(variables, seed):
    """Gives every variable random values (variances positive), so that no
    term of a sum is zero by its initialiser."""
    rng = np.random.RandomState(seed)
    for v in variables:
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, size=shape).astype(np.float32))
        else:
            v.assign((0.5 * rng.normal(size=shape)).astype(np.float32))


def value(variable):
    """A variable's value as a float64 numpy array."""
    return np.asarray(variable.numpy(), np.float64)


def sublayers(layer, kind):
    return [l for l in layer._flatten_layers(include_self=False) if isinstance(l, kind)]


# ---------------------------------------------------------------------------
# WarmUpAndCosineDecay, get_train_steps.
# ---------------------------------------------------------------------------
def reference_lr(step, base, num_examples, batch, warmup_epochs, total, scaling):
    peak = base * batch / 256.0 if scaling == "linear" else base * math.sqrt(batch)
    warmup = int(round(math.floor(warmup_epochs * num_examples / batch)))
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("scaling,warmup_epochs", [
    ("linear", 2.5), ("sqrt", 2.5), ("linear", 0.0), ("sqrt", 0.0)])
def test_warmup_and_cosine_decay_matches_formula(scaling, warmup_epochs):
    base, num_examples, batch, total = 0.3, 1000, 64, 200
    schedule = model_lib.WarmUpAndCosineDecay(base, num_examples, batch, warmup_epochs, total,
                                              learning_rate_scaling=scaling)
    warmup = int(warmup_epochs * num_examples // batch)
    steps = sorted({0, 1, max(warmup - 1, 0), warmup, warmup + 1, (warmup + total) // 2,
                    total - 1, total})
    for step in steps:
        expected = reference_lr(step, base, num_examples, batch, warmup_epochs, total, scaling)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-7), step
    peak = base * batch / 256 if scaling == "linear" else base * math.sqrt(batch)
    assert float(schedule(warmup)) == pytest.approx(peak, rel=1e-6)
    assert float(schedule(total)) == pytest.approx(0.0, abs=1e-6)


def test_schedule_rejects_unknown_scaling():
    with pytest.raises(ValueError):
        model_lib.WarmUpAndCosineDecay(0.3, 1000, 64, 1, 100, learning_rate_scaling="log")


def test_get_train_steps():
    assert model_lib.get_train_steps(1297, 0, 100, 256) == 1297 * 100 // 256 + 1 == 507
    assert model_lib.get_train_steps(1297, 10, 100, 256) == 10
    assert model_lib.get_train_steps(100, 0, 1, 256) == 1


# ---------------------------------------------------------------------------
# weight_decay_loss.
# ---------------------------------------------------------------------------
def reference_decay(variables, weight_decay):
    return weight_decay * 0.5 * sum(np.sum(np.square(value(v))) for v in variables)


@pytest.fixture(scope="module")
def random_model():
    model = tiny_model()
    randomize(model.variables, seed=1)
    return model


def head_kernel(model):
    [dense] = sublayers(model.supervised_head, keras.layers.Dense)
    return dense.kernel


def test_weight_decay_lars_is_supervised_head_kernel_only(random_model):
    """As the original: LARS decays the rest itself, and its explicit term
    covers the supervised head's kernel, not its bias."""
    head = random_model.supervised_head.trainable_variables
    assert len(head) == 2  # kernel and bias, the bias non-zero after randomize
    actual = float(model_lib.weight_decay_loss(random_model, "lars", 1e-3))
    assert actual == pytest.approx(reference_decay([head_kernel(random_model)], 1e-3), rel=1e-5)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_weight_decay_other_optimizers_skip_batch_norm_only(random_model, optimizer):
    bn_weights = {id(w) for layer in sublayers(random_model, keras.layers.BatchNormalization)
                  for w in layer.weights}
    decayed = [v for v in random_model.trainable_variables if id(v) not in bn_weights]
    [head_dense] = sublayers(random_model.supervised_head, keras.layers.Dense)
    assert any(v is head_dense.bias for v in decayed)
    assert len(decayed) < len(random_model.trainable_variables)
    actual = float(model_lib.weight_decay_loss(random_model, optimizer, 1e-3))
    assert actual == pytest.approx(reference_decay(decayed, 1e-3), rel=1e-5)


def test_weight_decay_skips_frozen_encoder():
    model = tiny_model(train_mode="finetune", fine_tune_after_block=4)
    randomize(model.variables, seed=2)
    encoder = {id(v) for v in model.resnet_model.variables}
    bn_weights = {id(w) for layer in sublayers(model, keras.layers.BatchNormalization)
                  for w in layer.weights}
    decayed = [v for v in model.trainable_variables if id(v) not in bn_weights]
    assert decayed and not any(id(v) in encoder for v in decayed)
    actual = float(model_lib.weight_decay_loss(model, "momentum", 1e-2))
    assert actual == pytest.approx(reference_decay(decayed, 1e-2), rel=1e-5)


@pytest.mark.parametrize("optimizer", ["lars", "momentum", "adam"])
def test_head_weight_decay_replaces_the_rate_of_the_supervised_head(random_model, optimizer):
    head = random_model.supervised_head.trainable_variables
    bn_weights = {id(w) for layer in sublayers(random_model, keras.layers.BatchNormalization)
                  for w in layer.weights}
    others = [v for v in random_model.trainable_variables
              if id(v) not in bn_weights and all(v is not h for h in head)]
    if optimizer == "lars":  # LARS decays everything but the head inside its update
        head = [head_kernel(random_model)]  # and leaves biases alone
    expected = reference_decay(head, 5e-2)
    if optimizer != "lars":
        expected += reference_decay(others, 1e-3)
    actual = float(model_lib.weight_decay_loss(random_model, optimizer, 1e-3, head_weight_decay=5e-2))
    assert actual == pytest.approx(expected, rel=1e-5)
    # A zero main rate still decays the head at its own rate, and vice versa.
    assert float(model_lib.weight_decay_loss(random_model, optimizer, 0.0, head_weight_decay=5e-2)) == \
        pytest.approx(reference_decay(head, 5e-2), rel=1e-5)
    assert float(model_lib.weight_decay_loss(random_model, optimizer, 1e-3, head_weight_decay=0.0)) == \
        pytest.approx(0.0 if optimizer == "lars" else reference_decay(others, 1e-3), rel=1e-5)


@pytest.mark.parametrize("optimizer", ["lars", "momentum", "adam"])
def test_weight_decay_zero(random_model, optimizer):
    assert float(model_lib.weight_decay_loss(random_model, optimizer, 0.0)) == 0.0


# ---------------------------------------------------------------------------
# ProjectionHead.
# ---------------------------------------------------------------------------
def numpy_batch_norm(x, bn):
    gamma = value(bn.gamma) if bn.gamma is not None else 1.0
    beta = value(bn.beta) if bn.beta is not None else 0.0
    mean, var = value(bn.moving_mean), value(bn.moving_variance)
    return gamma * (x - mean) / np.sqrt(var + BN_EPSILON) + beta


def head_input(rows=5, width=12, seed=0):
    return np.random.RandomState(seed).normal(size=(rows, width)).astype(np.float32)


def test_projection_head_none_is_identity():
    h = head_input()
    z, selected = model_lib.ProjectionHead("none", proj_out_dim=4)(h, training=False)
    np.testing.assert_array_equal(np.asarray(z), h)
    np.testing.assert_array_equal(np.asarray(selected), h)


def test_projection_head_linear_is_batch_norm_of_the_dense_map():
    """z = BN(h W): no dense bias, batch norm with scale and no offset; in
    inference with the moving statistics, in training with the batch's
    (biased variance), which moves the moving ones by 1 - decay."""
    h = head_input(rows=16)
    head = model_lib.ProjectionHead("linear", proj_out_dim=4, ft_proj_selector=1,
                                    batch_norm_decay=0.75)
    head(h, training=False)
    randomize(head.variables, seed=4)
    [dense] = sublayers(head, keras.layers.Dense)
    [bn] = sublayers(head, keras.layers.BatchNormalization)
    assert dense.bias is None and bn.beta is None and bn.gamma is not None
    x = h.astype(np.float64) @ value(dense.kernel)
    assert x.shape == (16, 4)

    z, selected = head(h, training=False)
    np.testing.assert_allclose(np.asarray(z), numpy_batch_norm(x, bn), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(selected), np.asarray(z))

    gamma, mean, var = value(bn.gamma), value(bn.moving_mean), value(bn.moving_variance)
    z, _ = head(h, training=True)
    batch_mean, batch_var = x.mean(axis=0), x.var(axis=0)
    standard = (x - batch_mean) / np.sqrt(batch_var + BN_EPSILON)
    np.testing.assert_allclose(np.asarray(z), gamma * standard, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(value(bn.moving_mean), 0.75 * mean + 0.25 * batch_mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value(bn.moving_variance), 0.75 * var + 0.25 * batch_var,
                               rtol=1e-5, atol=1e-6)


def test_supervised_head_without_input_bn_is_affine():
    """logits = x W + b in training and inference alike."""
    x = head_input(rows=6, width=7, seed=2)
    head = model_lib.SupervisedHead(3)
    head(x, training=False)
    randomize(head.variables, seed=5)
    kernel, bias = value(head.linear.dense.kernel), value(head.linear.dense.bias)
    assert kernel.shape == (7, 3) and bias.shape == (3,)
    expected = x.astype(np.float64) @ kernel + bias
    for training in (False, True):
        np.testing.assert_allclose(np.asarray(head(x, training=training)), expected,
                                   rtol=1e-5, atol=1e-5)


def test_projection_head_rejects_unknown_mode():
    with pytest.raises(ValueError):
        model_lib.ProjectionHead("mlp")


@pytest.mark.parametrize("num_layers", [1, 3])
def test_projection_head_nonlinear_structure_and_forward(num_layers):
    h = head_input()
    heads = {selector: model_lib.ProjectionHead("nonlinear", proj_out_dim=4,
                                                num_proj_layers=num_layers,
                                                ft_proj_selector=selector)
             for selector in range(-1, num_layers + 1)}
    reference = heads[0]
    reference(h, training=False)
    randomize(reference.variables, seed=3)
    for head in heads.values():
        head(h, training=False)
        head.set_weights(reference.get_weights())

    denses = sublayers(reference, keras.layers.Dense)
    norms = sublayers(reference, keras.layers.BatchNormalization)
    assert len(denses) == len(norms) == num_layers
    assert all(d.bias is None for d in denses)
    assert norms[-1].beta is None and not norms[-1].center
    assert all(bn.beta is not None for bn in norms[:-1])
    assert [tuple(d.kernel.shape) for d in denses] == [(12, 12)] * (num_layers - 1) + [(12, 4)]

    # Inference-mode forward pass in numpy: hiddens [h, a_1, ..., a_L].
    hiddens = [h.astype(np.float64)]
    for j, (dense, bn) in enumerate(zip(denses, norms)):
        x = numpy_batch_norm(hiddens[-1] @ value(dense.kernel), bn)
        hiddens.append(np.maximum(x, 0.0) if j < num_layers - 1 else x)

    for selector, head in heads.items():
        z, selected = head(h, training=False)
        np.testing.assert_allclose(np.asarray(z), hiddens[-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(selected), hiddens[selector], rtol=1e-4, atol=1e-5)
    if num_layers > 1:
        _, first_hidden = heads[1](h, training=False)
        assert np.all(np.asarray(first_hidden) >= 0.0)
        assert np.any(np.asarray(first_hidden) > 0.0)


# ---------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------
def images(views, batch=3, seed=0):
    rng = np.random.RandomState(seed)
    return rng.uniform(size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3 * views)).astype(np.float32)


def sup_loss(logits, labels):
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def test_two_views_are_stacked_along_the_batch(random_model):
    x = images(views=2)
    z, logits = random_model(x, training=False)
    assert tuple(z.shape) == (6, 8) and tuple(logits.shape) == (6, NUM_CLASSES)
    z1, logits1 = random_model(x[..., :3], training=False)
    z2, logits2 = random_model(x[..., 3:], training=False)
    # The random weights give entries up to ~1e4; float32 rounding is
    # relative to that scale (XLA and TensorFlow sum in different orders).
    scale = 1e-6 * np.abs(np.asarray(z)).max()
    np.testing.assert_allclose(np.asarray(z[:3]), np.asarray(z1), rtol=1e-4, atol=max(scale, 1e-5))
    np.testing.assert_allclose(np.asarray(z[3:]), np.asarray(z2), rtol=1e-4, atol=max(scale, 1e-5))
    np.testing.assert_allclose(np.asarray(logits[:3]), np.asarray(logits1), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(z1), np.asarray(z2), atol=1e-3)


def test_views_are_split_by_view_channels():
    """With 4 channels a view, [b, H, W, 8] holds two views of 4 channels
    (not two and two thirds RGB views): each half through the model alone
    gives the rows of its view."""
    model = tiny_model(view_channels=4)
    x = np.random.default_rng(5).uniform(size=(3, IMAGE_SIZE, IMAGE_SIZE, 8)).astype(np.float32)
    z, _ = model(x, training=False)
    assert tuple(z.shape) == (6, 8)
    for view in range(2):
        alone, _ = model(x[..., 4 * view:4 * (view + 1)], training=False)
        np.testing.assert_allclose(np.asarray(z[3 * view:3 * (view + 1)]), np.asarray(alone),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="view_channels=4"):
        model(x[..., :6], training=False)


def test_pretrain_probe_does_not_backpropagate_into_encoder():
    model = tiny_model()
    x, labels = images(views=2), np.array([0, 1, 2, 0, 1, 2])
    encoder = model.resnet_model.trainable_variables
    head = model.supervised_head.trainable_variables
    _, probe_grads = variable_gradients(
        lambda: sup_loss(model(x, training=True)[1], labels), encoder + head)
    assert not any(np.any(g) for g in probe_grads[:len(encoder)])
    assert all(np.any(g) for g in probe_grads[len(encoder):])
    # The same encoder does receive the projection's gradient.
    _, proj_grads = variable_gradients(
        lambda: ops.sum(ops.square(model(x, training=True)[0])), encoder)
    assert any(np.any(g) for g in proj_grads)


def test_clean_probe_view_reads_the_last_view_in_inference_mode():
    """probe_view="clean", training: the projection comes from the first two
    views in training mode, the probe's logits from the third through the
    encoder in inference mode (the moving statistics as the training pass
    left them; the clean pass does not update them), and no probe gradient
    reaches the encoder."""
    model = tiny_model(probe_view="clean", probe_batch_norm=True)
    randomize(model.variables, seed=3)
    x, labels = images(views=3), np.array([0, 1, 2])
    start = [np.array(v) for v in model.variables]
    encoder = model.resnet_model.trainable_variables
    _, probe_grads = variable_gradients(
        lambda: sup_loss(model(x, training=True)[1], labels), encoder)
    assert not any(np.any(g) for g in probe_grads)
    for v, a in zip(model.variables, start):
        v.assign(a)
    z, logits = model(x, training=True)
    after_call = [np.array(v) for v in model.variables]

    for v, a in zip(model.variables, start):
        v.assign(a)
    z_ref, _ = model._projection_head(
        model.resnet_model(np.concatenate([x[..., :3], x[..., 3:6]]), training=True), training=True)
    # After the training pass, as in the model: its moving statistics are
    # the ones the clean view is encoded with.
    clean_h = model.encode(x[..., 6:], training=False)
    logits_ref = model.supervised_head(clean_h, training=True)
    assert tuple(z.shape) == (6, 8) and tuple(logits.shape) == (3, NUM_CLASSES)
    np.testing.assert_allclose(np.asarray(z), np.asarray(z_ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits_ref), rtol=1e-4, atol=1e-5)
    # The same moving statistics as a training pass over the two views alone.
    for v, a in zip(model.variables, after_call):
        np.testing.assert_allclose(np.asarray(v), a, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_model_rejects_unknown_probe_view():
    with pytest.raises(ValueError, match="probe_view"):
        model_lib.Model(NUM_CLASSES, probe_view="blurry")


def test_supervised_head_input_bn_standardises_then_is_linear():
    """Training: logits = W·(x − μ)/√(σ² + ε) + b with the batch's μ, σ²;
    inference: the same with the moving averages, whose mean after one call
    with momentum m is (1 − m)·μ (it starts at 0)."""
    rng = np.random.RandomState(0)
    x = (rng.randn(16, 5) * [1, 10, 0.1, 3, 100] + [0, 5, -2, 1, 50]).astype(np.float32)
    head = model_lib.SupervisedHead(3, input_bn=True, batch_norm_decay=0.5)
    logits = np.asarray(head(x, training=True), np.float64)
    kernel, bias = [np.asarray(v, np.float64) for v in head.linear.dense.weights]
    x64 = x.astype(np.float64)
    standard = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + BN_EPSILON)
    np.testing.assert_allclose(logits, standard @ kernel + bias, rtol=1e-4, atol=1e-4)
    assert not head.trainable_variables[2:]  # only W and b train: no scale, no offset
    mean, var = [np.asarray(v, np.float64) for v in head.input_bn.non_trainable_weights]
    inference = np.asarray(head(x, training=False), np.float64)
    np.testing.assert_allclose(inference, (x64 - mean) / np.sqrt(var + BN_EPSILON) @ kernel + bias,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mean, 0.5 * x64.mean(0), rtol=1e-5)


def test_model_passes_probe_batch_norm_to_its_supervised_head():
    model = tiny_model(probe_batch_norm=True)
    assert model.supervised_head.input_bn is not None
    assert tiny_model().supervised_head.input_bn is None


def test_finetune_has_no_projection_output_and_trains_encoder():
    model = tiny_model(train_mode="finetune")
    x, labels = images(views=1), np.array([0, 1, 2])
    encoder = model.resnet_model.trainable_variables
    z, logits = model(x, training=True)
    assert z is None
    assert tuple(logits.shape) == (3, NUM_CLASSES)
    _, grads = variable_gradients(lambda: sup_loss(model(x, training=True)[1], labels), encoder)
    assert any(np.any(g) for g in grads)


@pytest.mark.parametrize("block", [0, 1, 2, 3, 4])
def test_pretrain_requires_fine_tune_after_block_minus_one(block):
    with pytest.raises(ValueError):
        model_lib.Model(NUM_CLASSES, image_size=IMAGE_SIZE, resnet_depth=18,
                        width_multiplier=0.125, train_mode="pretrain", fine_tune_after_block=block)


def test_model_rejects_unknown_train_mode():
    with pytest.raises(ValueError):
        model_lib.Model(NUM_CLASSES, image_size=IMAGE_SIZE, resnet_depth=18,
                        width_multiplier=0.125, train_mode="distill")


# ---------------------------------------------------------------------------
# build_optimizer.
# ---------------------------------------------------------------------------
def test_build_optimizer():
    lars = model_lib.build_optimizer("lars", 0.1, momentum=0.8, weight_decay=1e-4)
    assert isinstance(lars, lars_optimizer.LARSOptimizer)
    assert lars.momentum == pytest.approx(0.8) and lars.weight_decay_rate == pytest.approx(1e-4)
    sgd = model_lib.build_optimizer("momentum", 0.1, momentum=0.8)
    assert isinstance(sgd, keras.optimizers.SGD)
    assert sgd.nesterov and sgd.momentum == pytest.approx(0.8)
    assert isinstance(model_lib.build_optimizer("adam", 0.1), keras.optimizers.Adam)
    with pytest.raises(ValueError):
        model_lib.build_optimizer("sgd", 0.1)
