"""The training step gives the same loss and gradients on R replicas as on one
device with the same global batch.

(a) MirroredStrategy over the two logical CPU devices of tests/conftest.py
    against OneDeviceStrategy: the whole model with NT-Xent and global batch
    norm, and the trainer's contrastive step for every loss;
(b) MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1 against
    one process, for a few optimizer steps; and two `run.py` workers, one of
    them killed mid-run, restarted from their last checkpoint.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import types
import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

import augment
import checkpoint
import chunked_loss
import config
import configs
import objective
import train_lib
import trainer_tf
import run
from test_determinism import wait_for_line
from test_run import assert_one_line_error
from test_run import command_line
from test_run import scalars
from test_run import reset_flags  # noqa: F401  (autouse fixture)
from test_run import run_expecting_exit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GLOBAL_BATCH = 8
IMAGE_SIZE = 8


def tiny_config(loss="ntxent", **overrides):
    """A small but complete configuration, resolved as run.py resolves it:
    ResNet-18 at 1/8 width, LARS with weight decay, the online probe on
    batch-normalised features of the clean view with its own weight decay,
    synchronized batch norm, and the loss at a temperature other than its
    default."""
    flags = dict(
        loss=loss, image_size=IMAGE_SIZE, resnet_depth=18, width_multiplier=0.125,
        sk_ratio=0.0, global_bn=True, proj_out_dim=16, num_proj_layers=2, optimizer="lars",
        weight_decay=1e-4, learning_rate=0.3, warmup_epochs=0, train_batch_size=GLOBAL_BATCH,
        eval_batch_size=GLOBAL_BATCH, train_steps=3, seed=0, probe_batch_norm=True,
        probe_learning_rate=0.0, probe_weight_decay=1e-3, probe_view="clean",
        model_dir="unused")
    if "temperature" in objective.LOSS_PARAMS[loss]:
        flags["temperature"] = 0.2
    flags.update(overrides)
    cfg, _ = configs.resolve(**flags)
    return cfg


def global_batch(seed=0):
    rng = np.random.RandomState(seed)
    # Two augmented views and the probe's clean view (probe_view="clean").
    features = rng.uniform(size=(GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 9)).astype(np.float32)
    labels = rng.randint(0, 10, size=GLOBAL_BATCH).astype(np.int32)
    return features, labels


def in_step_batch(seed=0):
    """A global batch as --augment_in_step delivers it: uint8 images, the
    draws of two views, the probe's clean view."""
    rng = np.random.RandomState(seed)
    inputs = dict(
        images=rng.randint(0, 256, size=(GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8),
        draws=rng.uniform(size=(GLOBAL_BATCH, 2, augment.DRAWS)).astype(np.float32),
        clean=rng.uniform(size=(GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32))
    return inputs, rng.randint(0, 10, size=GLOBAL_BATCH).astype(np.int32)


def build(cfg, strategy, weights=None):
    """A built trainer_tf.Trainer of `cfg` under `strategy`."""
    keras.utils.set_random_seed(cfg.seed)
    trainer = trainer_tf.Trainer(cfg, strategy).build(num_classes=10, num_train_examples=64)
    if weights is not None:
        trainer.model.set_weights(weights)
    return trainer


def shard(strategy, array):
    """Replica r of `strategy` gets rows r·n .. (r+1)·n − 1 of `array`."""
    local = GLOBAL_BATCH // strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: array[ctx.replica_id_in_sync_group * local:(ctx.replica_id_in_sync_group + 1) * local])


def steps_on(trainer, batches, apply=True):
    """One optimizer step of `trainer` per global batch of `batches`, each
    replica on its rows (the gradients only, without `apply`); returns
    [(global loss logs, gradients summed over replicas, moving batch-norm
    statistics after the step)] per step."""
    strategy = trainer.strategy

    def replica_step(features, labels):
        grads, logs = trainer.gradients(features, labels)
        if apply:
            trainer.apply_gradients(grads)
        return grads, logs

    @tf.function
    def step(features, labels):
        grads, logs = strategy.run(replica_step, (features, labels))
        grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
        logs = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}
        return grads, logs

    names = [v.path for v in trainer.model.trainable_variables]
    results = []
    for features, labels in batches:
        features = tf.nest.map_structure(lambda a: shard(strategy, a), features)
        grads, logs = step(features, shard(strategy, labels))
        results.append(({k: float(v) for k, v in logs.items()},
                        dict(zip(names, [np.asarray(g) for g in grads])),
                        moving_statistics(trainer.model)))
    return results


@pytest.fixture(scope="module")
def strategies(mirrored_strategy):
    assert mirrored_strategy.num_replicas_in_sync == 2
    cpu0 = tf.config.list_logical_devices("CPU")[0].name
    return tf.distribute.OneDeviceStrategy(cpu0), mirrored_strategy


def moving_statistics(model):
    return {v.path: np.asarray(v) for v in model.non_trainable_variables
            if "moving_mean" in v.path or "moving_variance" in v.path}


# Under `--dist loadgroup` the tests of this fixture run in one worker, which
# trains both strategies once.
SHARES_TRAINED_ON_BOTH = pytest.mark.xdist_group("test_distribute_trained_on_both")


@pytest.fixture(scope="module")
def trained_on_both(strategies):
    """Two optimizer steps of the whole model (ResNet, projection head,
    online probe with its own optimizer, weight decay) under NT-Xent with
    global batch norm, from the same weights on the same global batches
    (the second one's views made in the step, --augment_in_step), on
    one device and on two replicas: per strategy, the gradients of a batch
    whose views the step makes (not applied), then the two steps of
    `steps_on`, and every variable and optimizer slot at the end. Nesterov momentum, not
    LARS: LARS's trust ratio would rescale away a step taken with a wrong
    1/R; its weight decay is then an explicit loss term, whose gradient is
    compared too."""
    cfg = tiny_config("ntxent", probe_learning_rate=1.0, optimizer="momentum")
    first = build(cfg, strategies[0])
    initial = first.model.get_weights()
    start = {v.path: np.asarray(v) for v in first.model.variables}
    results = []
    for strategy in strategies:
        trainer = first if strategy is strategies[0] else build(cfg, strategy, initial)
        assert trainer.probe_optimizer is not None
        # The first gradients of views made in the step, before any update.
        in_step = steps_on(trainer, [in_step_batch(2)], apply=False)
        steps = in_step + steps_on(trainer, [global_batch(0), in_step_batch(1)])
        groups = checkpoint.variable_groups(trainer.model, trainer.optimizers)
        final = {f"{g}/{k}": np.asarray(v) for g, group in groups.items() for k, v in group.items()}
        results.append(dict(steps=steps, final=final))
    return results, start


@SHARES_TRAINED_ON_BOTH
@pytest.mark.parametrize("step", [1, 0], ids=["views", "augment_in_step"])
def test_mirrored_matches_single_device(trained_on_both, step):
    """Each step's losses and gradients agree: on host-made views, and on
    views each replica makes from its rows of the images and draws."""
    (single, mirrored), _ = trained_on_both
    (logs_1, grads_1, _), (logs_2, grads_2, _) = single["steps"][step], mirrored["steps"][step]
    for key in ("contrast_loss", "supervised_loss", "weight_decay", "total_loss"):
        np.testing.assert_allclose(logs_2[key], logs_1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert grads_1.keys() == grads_2.keys()
    # The whole gradient agrees to 1e-5 relative. Single variables whose
    # gradient is a sum with heavy cancellation (stem batch-norm γ) lose a
    # few more float32 digits to the different summation order, so each one
    # is held to 1e-4: a wiring error (a missing 1/R, a local-only negative
    # set) moves them by O(1).
    total = np.sqrt(sum(np.sum(g ** 2) for g in grads_1.values()))
    error = np.sqrt(sum(np.sum((grads_2[k] - g) ** 2) for k, g in grads_1.items()))
    assert error <= 1e-5 * total, f"relative gradient error {error / total:.2e}"
    nonzero = 0
    for name, g1 in grads_1.items():
        g2 = grads_2[name]
        scale = np.linalg.norm(g1)
        nonzero += scale > 0
        assert np.linalg.norm(g2 - g1) <= 1e-4 * scale + 1e-9, (
            f"{name}: relative gradient error {np.linalg.norm(g2 - g1) / max(scale, 1e-30):.2e}")
    assert nonzero > len(grads_1) // 2


@SHARES_TRAINED_ON_BOTH
def test_batch_norm_statistics_are_global(trained_on_both):
    """With global_bn the moving statistics after one training-mode pass
    equal the single-device ones, although each replica sees only half of
    the batch (local variances would differ, and so would every later
    layer's input)."""
    (single, mirrored), _ = trained_on_both
    stats_1, stats_2 = single["steps"][0][2], mirrored["steps"][0][2]
    assert stats_1.keys() == stats_2.keys() and stats_1
    for name in stats_1:
        np.testing.assert_allclose(stats_2[name], stats_1[name], rtol=1e-5, atol=1e-6, err_msg=name)


@SHARES_TRAINED_ON_BOTH
def test_probe_optimizer_steps_match_on_two_replicas(trained_on_both):
    """After two steps with the probe's own optimizer (--probe_learning_rate)
    next to the main one, every variable, slot and step count is equal on
    two replicas and on one device, and the probe did move."""
    (single, mirrored), start = trained_on_both
    single, mirrored = single["final"], mirrored["final"]
    assert single.keys() == mirrored.keys()
    # The probe's variables and slots each to 1e-4 of their norm, the whole
    # state to 1e-5 of its norm: two steps carry the float32 summation-order
    # differences of the gradients (see above) into the weights, while a
    # probe step that missed a replica's rows or its 1/R moves the probe by
    # O(1).
    def error(key):
        return np.linalg.norm(np.asarray(mirrored[key], np.float64) - single[key])

    for key in single:
        if "head_supervised" in key or key.startswith("probe_optimizer/"):
            assert error(key) <= 1e-4 * np.linalg.norm(single[key]) + 1e-7, (key, error(key))
    total = np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in single.values()))
    assert np.sqrt(sum(error(k) ** 2 for k in single)) <= 1e-5 * total
    assert single["optimizer/iteration"] == single["probe_optimizer/iteration"] == 2
    probe_kernel = [p for p in start if "head_supervised" in p and p.endswith("kernel")]
    assert probe_kernel and not np.allclose(single[f"model/{probe_kernel[0]}"], start[probe_kernel[0]])


# (loss, --prior, --loss_chunk_size): every loss, and the chunked ones in
# blocks of 3 of the 16 gathered rows (the last block partial).
LOSS_CASES = [(loss, None, None) for loss in objective.LOSSES] + [
    ("swd", "uniform_hypercube", None), ("swd", "normal", None)] + [
    (loss, None, 3) for loss in chunked_loss.LOSSES]


@pytest.mark.parametrize("loss,prior,chunk_size", LOSS_CASES,
                         ids=[loss + (f"-{prior}" if prior else "")
                              + (f"-chunk{chunk_size}" if chunk_size else "")
                              for loss, prior, chunk_size in LOSS_CASES])
def test_every_loss_mirrored_matches_single_device(strategies, loss, prior, chunk_size):
    """Objective.contrastive, the trainer's loss wiring (flags resolved as
    run.py resolves them, negatives gathered across replicas, SWD noise shared
    by the replicas), on projections z = tanh(x W): same loss and same
    gradient of W on 2 replicas as on one device."""
    overrides = {"prior": prior} if prior else {}
    if chunk_size:
        overrides["loss_chunk_size"] = chunk_size
    cfg = tiny_config(loss, **overrides)
    rng = np.random.RandomState(3)
    views = rng.normal(size=(GLOBAL_BATCH, 2, 12)).astype(np.float32)
    w0 = rng.normal(scale=0.5, size=(12, 16)).astype(np.float32)

    def loss_and_gradient(strategy):
        replicas = strategy.num_replicas_in_sync
        local = GLOBAL_BATCH // replicas
        with strategy.scope():
            w = tf.Variable(w0)
        trainer = trainer_tf.Trainer(cfg, strategy)
        objective_fn = train_lib.Objective(None, cfg, gather=trainer_tf.cross_replica_gather,
                                           normal_noise=trainer.normal_noise,
                                           num_replicas=replicas)

        def replica_fn():
            i = tf.distribute.get_replica_context().replica_id_in_sync_group
            x = tf.gather(tf.constant(views), tf.range(i * local, (i + 1) * local))
            with tf.GradientTape() as tape:
                z = tf.tanh(tf.concat([x[:, 0], x[:, 1]], axis=0) @ w)  # first views, then second
                loss_value, _ = objective_fn.contrastive(z, tf.constant(5, tf.int64))
                scaled = loss_value / replicas
            return loss_value, tape.gradient(scaled, w)

        @tf.function
        def compute():
            loss_value, grad = strategy.run(replica_fn)
            return (strategy.reduce(tf.distribute.ReduceOp.MEAN, loss_value, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, grad, axis=None))

        loss_value, grad = compute()
        return float(loss_value), np.asarray(grad)

    single, mirrored = strategies
    loss_1, grad_1 = loss_and_gradient(single)
    loss_2, grad_2 = loss_and_gradient(mirrored)
    assert np.isfinite(loss_1) and np.all(np.isfinite(grad_1)) and np.any(grad_1 != 0)
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_2, grad_1, rtol=1e-4, atol=1e-5 * np.abs(grad_1).max())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.processes
def test_multi_worker_matches_one_process(tmp_path):
    """Two worker processes (one replica each) on 127.0.0.1 train the same
    steps as one process on the whole batch, and report the same losses."""
    script = os.path.join(HERE, "multiworker_steps.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)

    single = subprocess.run([sys.executable, script, str(tmp_path / "single.json")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    ports = [free_port(), free_port()]
    workers = []
    for task_id in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": task_id}}
        workers.append(subprocess.Popen(
            [sys.executable, script, str(tmp_path / f"worker{task_id}.json")],
            env=dict(env, TF_CONFIG=json.dumps(tf_config)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]

    reference = json.loads((tmp_path / "single.json").read_text())
    assert reference["replicas"] == 1
    for task_id in range(2):
        result = json.loads((tmp_path / f"worker{task_id}.json").read_text())
        assert result["replicas"] == 2
        np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-4)
        np.testing.assert_allclose(result["weight_norm"], reference["weight_norm"], rtol=1e-4)


@pytest.mark.processes
def test_a_worker_killed_mid_run_and_the_run_restarted_loses_nothing(tmp_path):
    """Two `run.py` workers on 127.0.0.1 (--deterministic, checkpoints every
    4 steps); worker 1 is killed (SIGKILL) once the chief has logged step 5,
    past ckpt-4. The chief stops within seconds with one line naming ckpt-4
    and exit status 4 instead of hanging in its next collective. Both
    started again with the same command resume from ckpt-4 and finish:
    every step 1-8 is logged, and the steps trained twice log the same
    values the second time."""
    model_dir = tmp_path / "model"
    argv = [sys.executable] + command_line(
        model_dir, mode="train", deterministic=True, train_steps=8, checkpoint_steps=4,
        log_every_steps=1, warmup_epochs=0)

    def start():
        ports = [free_port(), free_port()]
        workers = []
        for task_id in range(2):
            tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                         "task": {"type": "worker", "index": task_id}}
            env = dict(os.environ, PYTHONPATH=ROOT, TF_CONFIG=json.dumps(tf_config))
            workers.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True))
        return workers

    chief, worker = start()
    wait_for_line(chief, "step 5/")
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=60)
    _, err = chief.communicate(timeout=120)
    assert chief.returncode == run.EXIT_PEER_LOST, err[-3000:]
    # TensorFlow's runtime logs the lost peer in lines of its own (E0000
    # ...); of this program's, there is one and no traceback.
    [line] = [line for line in err.splitlines() if line.startswith("run.py")]
    assert line == err.strip().splitlines()[-1] and "Traceback" not in err
    for words in ("another worker", "stopped during steps 6-", f"{model_dir}/ckpt-4",
                  "same command"):
        assert words in line, line
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-4")

    for process in start():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        assert f"resumed from {model_dir}/ckpt-4" in out
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-8")
    logged = {}
    for step, value in scalars(model_dir)["train/total_loss"]:
        logged.setdefault(step, []).append(value)
    assert sorted(logged) == list(range(1, 9))
    assert len(logged[5]) == 2
    for step, values in logged.items():
        assert len(set(values)) == 1, (step, values)


# A malformed TF_CONFIG: one line naming what is wrong, before anything is
# written (the original's json.loads raised a traceback, and a task outside
# its cluster trained silently as one process).
BAD_TF_CONFIGS = {
    "not_json": ("not json", ["TF_CONFIG is not JSON", "character 0"]),
    "not_an_object": ("[1, 2]", ["JSON list, not an object"]),
    "tasks_not_a_list": ('{"cluster": {"worker": "h:1"}}', ['"worker"', "host:port"]),
    "address_without_port": ('{"cluster": {"worker": ["h"]}}', ['"worker"', "host:port"]),
    "no_task": ('{"cluster": {"worker": ["h:1", "h:2"]}}', ['no "task"']),
    "type_not_in_cluster": ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief"}}',
                            ['"chief" is not in its cluster (worker)']),
    "index_outside": ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 3}}',
                      ["task index 3", '1 "worker" task(s)']),
    "index_not_int": ('{"cluster": {"worker": ["h:1", "h:2"]}, '
                      '"task": {"type": "worker", "index": "1"}}', ['task index "1"']),
}


@pytest.mark.parametrize("case", list(BAD_TF_CONFIGS))
def test_malformed_tf_config_is_one_line_and_exit_status_2(case, tmp_path, monkeypatch,
                                                          capfd):
    value, words = BAD_TF_CONFIGS[case]
    monkeypatch.setenv("TF_CONFIG", value)
    model_dir = tmp_path / "model"
    err = run_expecting_exit(command_line(model_dir), capfd)
    assert_one_line_error(err, ["TF_CONFIG", "expected", '"cluster"'] + words)
    assert not model_dir.exists()


def test_well_formed_tf_configs_give_their_cluster():
    assert config.tf_config_cluster(None) == config.tf_config_cluster("{}") == {}
    two = {"worker": ["localhost:1", "localhost:2"]}
    for index in (0, 1):
        value = json.dumps({"cluster": two, "task": {"type": "worker", "index": index}})
        assert config.tf_config_cluster(value) == two
    chief = {"chief": ["h:1"], "worker": ["h:2"]}
    value = json.dumps({"cluster": chief, "task": {"type": "chief", "index": 0}})
    assert config.tf_config_cluster(value) == chief


# A TPU that cannot be reached: one line naming it and the cause. The
# resolver is replaced by one failing as the real one does offline (no TPU,
# no network in tests): with a name, a URLError from the Cloud TPU API;
# --use_tpu outside a TPU VM, a ValueError.
TPU_FAILURES = {
    "unknown_name": (["--tpu_name=no-such-tpu"],
                     urllib.error.URLError("<urlopen error [Errno -2] Name or service not known>"),
                     ["'no-such-tpu'", "URLError", "Name or service not known"]),
    "use_tpu_outside_a_tpu_vm": (["--use_tpu"],
                                 ValueError("Please provide a TPU Name to connect to."),
                                 ["a local TPU (--use_tpu", "ValueError",
                                  "Please provide a TPU Name"]),
}


@pytest.mark.parametrize("case", list(TPU_FAILURES))
def test_unreachable_tpu_is_one_line_and_exit_status_2(case, tmp_path, monkeypatch, capfd):
    args, error, words = TPU_FAILURES[case]
    calls = []

    def resolver(**kwargs):
        calls.append(kwargs)
        raise error

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver)
    model_dir = tmp_path / "model"
    err = run_expecting_exit(command_line(model_dir) + args, capfd)
    assert_one_line_error(err, ["cannot reach", "--tpu_name"] + words)
    assert len(calls) == 1 and not model_dir.exists()
