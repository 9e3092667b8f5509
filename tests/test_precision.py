"""--precision under either backend (run by both, like the core's tests):

- mixed_bfloat16 computes the layers in bfloat16 and the loss in float32,
  and its loss and gradients on one batch agree with float32's from the same
  weights within the tolerance below;
- the dynamic loss scale of mixed_float16 follows its rule
  (`train_lib.next_loss_scale`, against a plain re-implementation), and the
  trainer of the backend skips a step whose scaled gradients overflow,
  halving the scale, and applies the next one.
"""
import itertools

import keras
import numpy as np
import pytest

import configs
import train_lib
from backend import BACKEND
from backend import dtype_name
from backend import variable_gradients

# bfloat16 keeps 8 bits of mantissa (a relative rounding error up to 2^-9
# per value): through a ResNet-18 at width 0.25 and its head the projections
# of this batch move by 2%, and NT-Xent at tau = 0.2 magnifies that in the
# gradient. Measured on this batch (TensorFlow's CPU kernels / JAX's): the
# total loss moves by 0.4% / 0.03%; the whole gradient has cosine 0.986 /
# 0.997 with float32's (its L2 distance 17% / 8% of its norm) and a norm
# 0.9997 / 1.007 times float32's. The gradient of another batch of the same
# kind has cosine 0.03 with it.
LOSS_RTOL = 0.01
GRADIENT_MIN_COSINE = 0.97
GRADIENT_NORM_RTOL = 0.05


def tiny_config(**overrides):
    flags = dict(image_size=8, resnet_depth=18, width_multiplier=0.25, proj_out_dim=16,
                 num_proj_layers=2, optimizer="lars", train_batch_size=8, eval_batch_size=8,
                 warmup_epochs=0, model_dir="unused")
    flags.update(overrides)
    return configs.resolve(**flags)


def batch(cfg, seed=0):
    rng = np.random.RandomState(seed)
    channels = train_lib.view_channels(cfg) * train_lib.num_input_views(cfg)
    features = rng.uniform(size=(8, 8, 8, channels)).astype(np.float32)
    return features, rng.randint(0, 10, size=8).astype(np.int32)


def test_bfloat16_loss_and_gradients_agree_with_float32():
    cfg32, _ = tiny_config()
    cfg16, _ = tiny_config(precision="mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model32 = train_lib.build_model(cfg32, 10)
    model16 = train_lib.build_model(cfg16, 10)
    model16.set_weights(model32.get_weights())
    assert all(dtype_name(v) == "float32" for v in model16.variables)
    features, labels = batch(cfg32)
    # The layers really compute in bfloat16: the projections come out so.
    projection, logits = model16(features, training=False)
    assert dtype_name(projection) == dtype_name(logits) == "bfloat16"

    results = {}
    for name, cfg, model in (("float32", cfg32, model32), ("bfloat16", cfg16, model16)):
        objective = train_lib.Objective(model, cfg)
        results[name] = variable_gradients(
            lambda: objective(features, labels, 0)[0], model.trainable_variables)
    (loss32, grads32), (loss16, grads16) = results["float32"], results["bfloat16"]
    assert np.isfinite(loss16) and loss16 != loss32  # bfloat16 rounding shows
    np.testing.assert_allclose(loss16, loss32, rtol=LOSS_RTOL)
    g32, g16 = (np.concatenate([g.ravel() for g in grads]) for grads in (grads32, grads16))
    norm32, norm16 = np.linalg.norm(g32), np.linalg.norm(g16)
    assert g16 @ g32 >= GRADIENT_MIN_COSINE * norm16 * norm32
    np.testing.assert_allclose(norm16, norm32, rtol=GRADIENT_NORM_RTOL)


def test_loss_scale_halves_on_overflow_and_doubles_after_a_run_of_finite_steps(monkeypatch):
    monkeypatch.setattr(train_lib, "LOSS_SCALE_GROWTH_STEPS", 3)
    finite_steps = [True, False, True, True, True, True, False, False, True, True, True]
    scale, good = 1024.0, 0
    expected_scale, expected_good = 1024.0, 0
    for finite in finite_steps:
        scale, good = train_lib.next_loss_scale(np.float32(scale), np.int32(good), finite)
        scale, good = float(scale), int(good)
        if not finite:
            expected_scale, expected_good = expected_scale / 2, 0
        elif expected_good + 1 == 3:
            expected_scale, expected_good = expected_scale * 2, 0
        else:
            expected_good += 1
        assert (scale, good) == (expected_scale, expected_good)
    # /2 (step 2), x2 (step 5), /2 /2 (steps 7, 8), x2 (step 11).
    assert (scale, good) == (512.0, 0)


def test_a_skipped_step_is_reported_finite_only_while_the_scale_is_above_one():
    reports = [float(train_lib.scaled_step_finite(finite, np.float32(scale)))
               for finite, scale in ((True, 0.5), (False, 2.0), (False, 1.0), (False, 0.5))]
    assert reports == [1.0, 1.0, 0.0, 0.0]


def make_trainer(cfg, source):
    if BACKEND == "tensorflow":
        import trainer_tf
        trainer = trainer_tf.Trainer(cfg)
    else:
        import jax
        import trainer_jax
        trainer = trainer_jax.Trainer(cfg, devices=jax.devices()[:1])
    return trainer.build(source.label_classes, source.num_examples(cfg.train_split))


def loss_scale(trainer):
    """(scale, finite steps in a row) of the trainer of either backend."""
    if BACKEND == "tensorflow":
        return float(trainer.loss_scale.numpy()), int(trainer.good_steps.numpy())
    return float(trainer.scaling[0]), int(trainer.scaling[1])


def set_loss_scale(trainer, scale):
    if BACKEND == "tensorflow":
        trainer.loss_scale.assign(scale)
    else:
        import jax
        trainer.scaling = jax.device_put((np.float32(scale), np.int32(0)))


def same_batch(trainer, features, labels):
    """An iterator of the trainer's kind over one batch, again and again."""
    if BACKEND == "tensorflow":
        import tensorflow as tf
        dataset = tf.data.Dataset.from_tensors((features, labels)).repeat()
        return iter(trainer.strategy.experimental_distribute_dataset(dataset))
    return itertools.repeat((features, labels))


def weights(trainer):
    trainer.sync()
    return [keras.ops.convert_to_numpy(v) for v in trainer.model.trainable_variables]


def test_float16_step_overflowing_its_scale_is_skipped_and_scales_cancel_out():
    """One step from the same weights on the same batch at three scales:
    at 3e38 total * scale overflows float32 (every gradient inf or nan) and
    the step is skipped; at 2^10 and 2^12 it is applied, and as scaling by a
    power of two is exact in float16 (short of underflow and overflow) the
    two updates agree, unscaled."""
    cfg, source = tiny_config(precision="mixed_float16")
    features, labels = batch(cfg)
    start, after = None, {}
    for scale in (3e38, 2.0 ** 10, 2.0 ** 12):
        keras.utils.set_random_seed(0)
        trainer = make_trainer(cfg, source)
        if start is None:
            assert loss_scale(trainer) == (train_lib.INITIAL_LOSS_SCALE, 0)
            start = weights(trainer)
        set_loss_scale(trainer, scale)
        logs = trainer.run_steps(same_batch(trainer, features, labels), 1)
        assert logs["gradients_finite"] == 1.0 and np.isfinite(logs["total_loss"])
        assert trainer.step == 1  # a skipped step uses its batch too
        after[scale] = weights(trainer), loss_scale(trainer)

    skipped, skipped_scale = after[3e38]
    assert skipped_scale == (np.float32(1.5e38), 0)
    for a, b in zip(skipped, start):
        np.testing.assert_array_equal(a, b)
    (small, small_scale), (large, large_scale) = after[2.0 ** 10], after[2.0 ** 12]
    assert small_scale == (2.0 ** 10, 1) and large_scale == (2.0 ** 12, 1)
    assert any(not np.array_equal(a, b) for a, b in zip(small, start))
    for a, b, s in zip(small, large, start):
        np.testing.assert_allclose(a - s, b - s, rtol=1e-3, atol=1e-7)
