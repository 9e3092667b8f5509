"""The JAX edge, `trainer_jax.py`: run under KERAS_BACKEND=jax with two host
devices by tests/test_backends.py (skipped under TensorFlow).

- the loss, gradients and batch-norm statistics of one global batch sharded
  over two devices equal those of one device;
- `run.py` under JAX trains, writes its outputs, resumes bit for bit, and
  with --deterministic a real process of it killed with SIGKILL and
  started again ends where the uninterrupted run did;
- the run it leaves in $SIMCLR_JAX_RUN_DIR (with the logits of its final
  weights on the digits test split) is what tests/test_backends.py evaluates
  under TensorFlow, with the initial weights of a model built after
  seeding, which must be those TensorFlow builds.
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("the JAX edge runs under KERAS_BACKEND=jax (tests/test_backends.py)",
                allow_module_level=True)

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

import augment  # noqa: E402
import checkpoint as checkpoint_lib  # noqa: E402
import configs  # noqa: E402
import data  # noqa: E402
import run  # noqa: E402
import train_lib  # noqa: E402
import trainer_jax  # noqa: E402
from errors import UsageError  # noqa: E402
from test_run import (ROOT, TINY, command_line, digits_rgb, read_json, saved_groups,  # noqa: E402
                      scalars, train)

GLOBAL_BATCH = 8


@pytest.fixture(autouse=True)
def reset_flags():
    yield
    run.FLAGS.unparse_flags()


def tiny_config(loss="ntxent", **overrides):
    flags = dict(loss=loss, image_size=8, resnet_depth=18, width_multiplier=0.125,
                 proj_out_dim=16, num_proj_layers=2, optimizer="lars", weight_decay=1e-4,
                 warmup_epochs=0, train_batch_size=GLOBAL_BATCH, eval_batch_size=GLOBAL_BATCH,
                 probe_batch_norm=True, probe_weight_decay=1e-3, probe_view="clean",
                 model_dir="unused")
    flags.update(overrides)
    return configs.resolve(**flags)[0]


def global_batch(seed=0):
    rng = np.random.RandomState(seed)
    features = rng.uniform(size=(GLOBAL_BATCH, 8, 8, 9)).astype(np.float32)
    return features, rng.randint(0, 10, size=GLOBAL_BATCH).astype(np.int32)


def in_step_batch(seed=0):
    """A global batch of --augment_in_step: uint8 images, the draws of two
    views, the clean view."""
    rng = np.random.RandomState(seed)
    inputs = dict(images=rng.randint(0, 256, size=(GLOBAL_BATCH, 8, 8, 3)).astype(np.uint8),
                  draws=rng.uniform(size=(GLOBAL_BATCH, 2, augment.DRAWS)).astype(np.float32),
                  clean=rng.uniform(size=(GLOBAL_BATCH, 8, 8, 3)).astype(np.float32))
    return inputs, rng.randint(0, 10, size=GLOBAL_BATCH).astype(np.int32)


@pytest.mark.parametrize("loss,prior,in_step", [("ntxent", None, False),
                                                ("swd", "uniform_hypercube", False),
                                                ("ntxent", None, True)])
def test_two_devices_give_the_loss_gradients_and_statistics_of_one(loss, prior, in_step):
    """One global batch sharded over two devices gives the loss, gradients
    and batch-norm statistics of one device, also when the step makes the
    views (--augment_in_step) from the images and draws each device holds."""
    devices = jax.devices()
    assert len(devices) >= 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
    cfg = tiny_config(loss, **({"prior": prior} if prior else {}), **(
        {"temperature": 0.2} if loss == "ntxent" else {}), augment_in_step=in_step)
    keras.utils.set_random_seed(0)
    one = trainer_jax.Trainer(cfg, devices=devices[:1]).build(10, 64)
    two = trainer_jax.Trainer(cfg, devices=devices[:2]).build(10, 64)
    two.model.set_weights(one.model.get_weights())
    two.load()
    features, labels = in_step_batch() if in_step else global_batch()
    results = []
    for trainer in (one, two):
        x = jax.device_put(features, trainer.data_sharding)
        y = jax.device_put(labels, trainer.data_sharding)
        for leaf in jax.tree.leaves(x):
            assert len(leaf.sharding.device_set) == trainer.num_replicas
        (total, (logs, statistics)), grads = jax.jit(trainer.loss_and_gradients)(
            trainer.state, x, y)
        results.append((float(total), [np.asarray(g) for g in grads],
                        [np.asarray(s) for s in statistics]))
    (loss_1, grads_1, stats_1), (loss_2, grads_2, stats_2) = results
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads_1))
    error = np.sqrt(sum(np.sum((a - b).astype(np.float64) ** 2) for a, b in zip(grads_2, grads_1)))
    assert total > 0 and error <= 1e-5 * total, error / total
    for a, b in zip(stats_2, stats_1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluation_takes_an_eval_batch_the_devices_do_not_divide():
    """Only the training batch is sharded: an --eval_batch_size of 7 on two
    devices is accepted, and the supervised head's top-1 counts over
    batches of 7 and of 3 rows are those of the logits computed here."""
    devices = jax.devices()[:2]
    cfg = tiny_config(eval_batch_size=7)
    keras.utils.set_random_seed(0)
    trainer = trainer_jax.Trainer(cfg, devices=devices).build(10, 64)
    assert trainer.num_replicas == 2
    rng = np.random.RandomState(1)
    batches = [(rng.uniform(size=(rows, 8, 8, 3)).astype(np.float32),
                rng.randint(0, 10, size=rows).astype(np.int32)) for rows in (7, 3)]

    class Pipeline:
        def as_numpy_iterator(self):
            return iter(batches)

    top1, top5, count = trainer.top_k_counts(lambda: Pipeline(), 5)
    assert count == 10
    trainable, non_trainable, _ = trainer.state
    logits = np.concatenate([np.asarray(trainer._logits(trainable, non_trainable, x))
                             for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    ranks = (logits > logits[np.arange(10), labels][:, None]).sum(axis=1)
    assert top1[0] == np.sum(ranks == 0) and top5[0] == np.sum(ranks < 5)
    with pytest.raises(UsageError, match=r"--train_batch_size=9 is not divisible"):
        trainer_jax.Trainer(tiny_config(train_batch_size=9), devices=devices)


def test_deterministic_kernels_must_come_before_jax_starts(monkeypatch):
    """This session's JAX started with XLA's deterministic kernels (its
    XLA_FLAGS); without them, a --deterministic trainer cannot turn them
    on any more and says so in one line."""
    assert trainer_jax.DETERMINISTIC_XLA_FLAG in os.environ["XLA_FLAGS"].split()
    trainer_jax.Trainer(tiny_config(deterministic=True), devices=jax.devices()[:1])
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    with pytest.raises(UsageError) as raised:
        trainer_jax.Trainer(tiny_config(deterministic=True), devices=jax.devices()[:1])
    assert "XLA_FLAGS=--xla_gpu_deterministic_ops=true" in str(raised.value)
    assert "\n" not in str(raised.value)
    trainer_jax.Trainer(tiny_config(), devices=jax.devices()[:1])  # not asked: fine


def final_weights(model_dir):
    prefix = tf.train.latest_checkpoint(str(model_dir))
    return prefix, saved_groups(prefix)


JAX_STEPS = 12


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_the_step_is_traced_once_per_run(precision, monkeypatch):
    """Blocks of steps of any length reuse one compiled step: the state,
    the float16 loss scale and the batches keep their types and shapes
    from step to step, so the step's Python runs once, when jax.jit traces
    it."""
    traces = []
    step = trainer_jax.Trainer._step

    def counted_step(self, *args):
        traces.append(1)
        return step(self, *args)

    monkeypatch.setattr(trainer_jax.Trainer, "_step", counted_step)
    cfg = tiny_config(precision=precision)
    keras.utils.set_random_seed(0)
    trainer = trainer_jax.Trainer(cfg, devices=jax.devices()[:1]).build(10, 64)
    batches = iter([global_batch(seed) for seed in range(5)])
    for num_steps in (1, 3, 1):
        trainer.run_steps(batches, num_steps)
    assert trainer.step == 5
    assert len(traces) == 1


def test_run_under_jax_writes_resumes_and_survives_sigkill(tmp_path):
    """An in-process --deterministic run under JAX writes its outputs and
    its checkpoint restores every variable bit for bit. The same command in
    a real `python run.py` process under JAX, killed with SIGKILL after its
    first checkpoint and started again, resumes there and ends with the
    first run's scalars at every step and its weights, bit for bit."""
    run_dir = os.environ.get("SIMCLR_JAX_RUN_DIR") or str(tmp_path / "run")
    flags = dict(mode="train_then_eval", train_steps=JAX_STEPS, checkpoint_steps=4,
                 warmup_epochs=0, deterministic=True, log_every_steps=1)
    result = train(run_dir, keep_hub_module_max=1, **flags)  # exported through TensorFlow
    assert os.listdir(os.path.join(run_dir, "saved_model")) == [str(JAX_STEPS)]
    assert result["backend"] == "jax" and result["global_step"] == JAX_STEPS
    assert sorted(glob.glob(os.path.join(run_dir, "ckpt-*.index"))) == sorted(
        os.path.join(run_dir, f"ckpt-{i}.index") for i in (4, 8, 12))
    assert set(read_json(os.path.join(run_dir, "flags.json"))) == set(run.PROJECT_FLAG_NAMES)
    logged = scalars(run_dir)
    assert [s for s, _ in logged["train/total_loss"]] == list(range(1, JAX_STEPS + 1))

    # Resume restores every variable bit for bit.
    cfg, source = configs.resolve(**dict(TINY, model_dir=run_dir, **flags))
    trainer = trainer_jax.Trainer(cfg).build(source.num_classes, source.num_examples("train"))
    checkpointer = checkpoint_lib.Checkpointer(trainer.model, trainer.optimizers, run_dir)
    prefix, saved = final_weights(run_dir)
    checkpointer.restore(prefix)
    for group, variables in checkpoint_lib.variable_groups(trainer.model, trainer.optimizers).items():
        for key, variable in variables.items():
            value = np.asarray(variable)
            expected = saved[group][key].astype(value.dtype)
            assert value.tobytes() == expected.tobytes(), f"{group}/{key}"

    # The same command as a process (this session's KERAS_BACKEND=jax and
    # XLA_FLAGS), killed after a checkpoint and started again; the second
    # process takes the programs XLA compiled for the first from JAX's
    # persistent cache (the same executables, a third of its CPU time less).
    killed = tmp_path / "killed"
    argv = [sys.executable] + command_line(killed, **dict(flags, mode="train"))
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while tf.train.latest_checkpoint(str(killed)) is None:
        assert process.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    interrupted_at = checkpoint_lib.checkpoint_step(tf.train.latest_checkpoint(str(killed)))
    assert interrupted_at < JAX_STEPS, "the run finished before it was killed"
    resumed = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed}/ckpt-{interrupted_at}" in resumed.stdout
    expected = dict(logged["train/total_loss"])
    again = scalars(killed)["train/total_loss"]
    assert {s for s, _ in again} == set(expected)
    for step, value in again:
        assert value == expected[step], step
    _, saved_again = final_weights(killed)
    for group in saved:
        for key, value in saved[group].items():
            assert value.tobytes() == saved_again[group][key].tobytes(), f"{group}/{key}"

    # For the TensorFlow side: the final weights' logits on the test split.
    rgb, _ = digits_rgb("test")
    trainer.load()
    np.save(os.path.join(run_dir, "jax_logits.npy"),
            np.asarray(trainer._logits(trainer.state[0], trainer.state[1], rgb)))
    with open(os.path.join(run_dir, "jax_result.json"), "w") as f:
        json.dump(result, f)
    # And the initial weights of a model built after seeding.
    keras.utils.set_random_seed(11)
    fresh = train_lib.build_model(cfg, source.num_classes)
    np.savez(os.path.join(run_dir, "jax_initial_weights.npz"),
             **{v.path: np.asarray(v) for v in fresh.variables})
