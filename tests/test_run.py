"""End-to-end tests of the trainer `run.py` on the embedded digits data.

Runs are tiny (8×8 views, ResNet-18 at 1/8 width, batch 32, 2–4 steps) and
happen in-process through `run.parse_flags` + `run.run_main`, bad flags
included (stderr read at the file descriptor). Three bad-flag cases also run
`python run.py` as a fresh subprocess, with TF_CPP_MIN_LOG_LEVEL removed from
its environment so that TensorFlow's native start-up lines would show.

What is checked against what:
- outputs against the files TensorFlow itself reads back (checkpoints through
  `tf.train.load_checkpoint`, summaries through the event files);
- the raw-pixel baseline against a scikit-learn fit computed here;
- resume and fine-tuning against the saved tensors, bit for bit, every saved
  value matched to its live variable by walking the checkpoint's object graph
  alongside the live objects.
"""
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tensorflow.core.protobuf import trackable_object_graph_pb2

import datasets
import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(image_size=8, width_multiplier=0.125, resnet_depth=18, train_batch_size=32,
            eval_batch_size=100, train_steps=2, checkpoint_steps=1, num_proj_layers=2,
            proj_out_dim=16, compute_baselines=False)


def command_line(model_dir, **flags):
    """`run.py` argv: the tiny configuration, overridden by `flags`."""
    values = dict(TINY, model_dir=str(model_dir), **flags)
    return ["run.py"] + [f"--{k}={str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in values.items()]


def train(model_dir, **flags):
    """One in-process `python run.py ...`; returns result.json (None if not written)."""
    run.FLAGS.unparse_flags()
    run.parse_flags(command_line(model_dir, **flags))
    run.run_main(["run.py"])
    return read_json(os.path.join(model_dir, "result.json"))


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


@pytest.fixture(autouse=True)
def reset_flags():
    yield
    run.FLAGS.unparse_flags()


def scalars(directory):
    """{tag: [(step, value), ...]} of every scalar summary in the event files
    directly under `directory`."""
    values = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return values


def assert_training_metrics_finite(model_dir, steps):
    logged = scalars(model_dir)
    assert "train/total_loss" in logged, sorted(logged)
    for tag, points in logged.items():
        if tag.startswith("train/"):
            assert sorted(step for step, _ in points) == steps, (tag, points)
            assert all(math.isfinite(v) for _, v in points), (tag, points)


def ckpt_numbers(model_dir):
    return sorted(int(os.path.basename(p)[len("ckpt-"):-len(".index")])
                  for p in glob.glob(os.path.join(model_dir, "ckpt-*.index")))


# ---------------------------------------------------------------------------
# Reading checkpoints variable by variable.
# ---------------------------------------------------------------------------
def rebuild(model_dir, **flags):
    """Model, optimizer, checkpoint and manager built the way `run.main` builds
    them for this command line (nothing restored yet)."""
    run.FLAGS.unparse_flags()
    run.parse_flags(command_line(model_dir, **flags))
    run.apply_preset()
    cfg = run.FLAGS
    source = datasets.get_dataset(cfg.dataset, cfg.data_dir)
    strategy = run.get_strategy(cfg)
    model, optimizer, _, _, probe_optimizer = run.build_all(
        cfg, strategy, source.num_classes, source.num_examples(cfg.train_split))
    checkpoint = run.training_checkpoint(model, optimizer, probe_optimizer)
    manager = tf.train.CheckpointManager(checkpoint, cfg.model_dir,
                                         max_to_keep=cfg.keep_checkpoint_max)
    return cfg, model, optimizer, checkpoint, manager


def saved_values(prefix, root, variables):
    """{variable.path: value saved at `prefix`} for those of `variables` that
    the checkpoint holds.

    The checkpoint's object graph is walked together with the live object
    graph of `root` (a `tf.train.Checkpoint` of the same structure), which
    pairs each saved tensor with the live variable it was saved from.
    """
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    key_of = {}
    stack, seen = [(0, root)], set()
    while stack:
        node_id, obj = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = graph.nodes[node_id]
        for attribute in node.attributes:
            if attribute.name == "VARIABLE_VALUE":
                key_of[id(obj)] = attribute.checkpoint_key
        live_children = tf.train.TrackableView.children(obj) if node.children else {}
        for child in node.children:
            # save_counter is created lazily, at the first save.
            if child.local_name in live_children:
                stack.append((child.node_id, live_children[child.local_name]))
    values = {}
    for variable in variables:
        key = key_of.get(id(variable)) or key_of.get(id(getattr(variable, "value", None)))
        if key is not None:
            values[variable.path] = reader.get_tensor(key)
    return values


def assert_bitwise_equal(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert actual.tobytes() == expected.tobytes(), what


# ---------------------------------------------------------------------------
# 1. Bad flags: one line on stderr, exit status 2, nothing written.
# ---------------------------------------------------------------------------
# (extra flags, words the message must contain: the flag and what is allowed)
BAD_FLAGS = {
    "mode": (["--mode=foo"], ["mode", "train", "eval", "train_then_eval"]),
    "resnet_depth": (["--resnet_depth=19"], ["resnet_depth", "18", "34", "50", "101", "152", "200"]),
    "batch_size": (["--train_batch_size=-4"], ["train_batch_size", "0"]),
    "optimizer": (["--optimizer=sgd"], ["optimizer", "momentum", "adam", "lars"]),
    "proj_head_mode": (["--proj_head_mode=mlp"], ["proj_head_mode", "none", "linear", "nonlinear"]),
    "unknown_flag": (["--no_such_flag=1"], ["no_such_flag"]),
    "prior_without_swd": (["--prior=normal"], ["prior", "ntxent", "swd"]),
    "kcl_t_without_kcl": (["--kcl_t=3", "--loss=ntxent"], ["kcl_t", "ntxent", "kcl"]),
    "tfds_not_prepared": (["--dataset=mnist", "--data_dir={empty}"], ["mnist", "data_dir"]),
    "unknown_dataset": (["--dataset=no_such_dataset"], ["dataset", "no_such_dataset", "digits"]),
    "unknown_split": (["--eval_split=nope"], ["eval_split", "nope", "train", "test"]),
    "freeze_in_pretrain": (["--fine_tune_after_block=2"], ["fine_tune_after_block", "-1", "finetune"]),
    "eval_without_checkpoint": (["--mode=eval", "--model_dir={empty}"], ["eval", "checkpoint", "model_dir"]),
    "probe_lr_in_finetune": (["--probe_learning_rate=0.1", "--train_mode=finetune"],
                             ["probe_learning_rate", "pretrain", "lineareval_while_pretraining"]),
    "probe_view_without_probe": (["--probe_view=clean", "--lineareval_while_pretraining=false"],
                                 ["probe_view", "pretrain", "lineareval_while_pretraining"]),
    "probe_view_unknown": (["--probe_view=blurry"], ["probe_view", "augmented", "clean"]),
    "probe_weight_decay_negative": (["--probe_weight_decay=-1"], ["probe_weight_decay", "0"]),
}


def assert_one_line_error(stderr, words):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("run.py: error: "), lines[0]
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], f"{word!r} missing from: {lines[0]}"


def bad_flag_argv(case, base):
    """(argv, model_dir, empty dir) of a bad-flag case, in fresh folders under `base`."""
    extra, _ = BAD_FLAGS[case]
    model_dir, empty = base / case / "model", base / case / "empty"
    empty.mkdir(parents=True)
    return command_line(model_dir) + [arg.format(empty=empty) for arg in extra], model_dir, empty


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag_is_one_line_and_exit_status_2(case, tmp_path, capfd):
    """In-process, through the same parse_flags + run_main pair that
    `python run.py` runs; capfd reads file descriptor 2, so native TensorFlow
    lines would count too."""
    argv, model_dir, empty = bad_flag_argv(case, tmp_path)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run.FLAGS.unparse_flags()
        run.parse_flags(argv)
        run.run_main(["run.py"])
    assert exit_info.value.code == 2
    assert_one_line_error(capfd.readouterr().err, BAD_FLAGS[case][1])
    assert not model_dir.exists()
    assert list(empty.iterdir()) == []


# What a user sees from a fresh process, where TensorFlow's and TFDS's
# start-up lines would land on the same stderr: one case per phase (flag
# parsing, dataset lookup, after the strategy is built).
COMMAND_LINE_CASES = ["unknown_flag", "tfds_not_prepared", "eval_without_checkpoint"]


@pytest.mark.parametrize("case", COMMAND_LINE_CASES)
def test_bad_flag_from_a_fresh_process(case, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TFDS_DATA_DIR=str(tmp_path / "tfds_default"))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    argv, model_dir, empty = bad_flag_argv(case, tmp_path)
    proc = subprocess.run([sys.executable] + argv, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, BAD_FLAGS[case][1])
    assert not model_dir.exists()
    assert list(empty.iterdir()) == []


def test_batch_not_divisible_by_replicas(mirrored_strategy, monkeypatch, capsys, tmp_path):
    # mirrored_strategy (tests/conftest.py) spans the two logical CPUs.
    assert mirrored_strategy.num_replicas_in_sync == 2
    monkeypatch.setattr(run, "get_strategy", lambda cfg: mirrored_strategy)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path / "model", train_batch_size=33)
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, ["train_batch_size", "33", "2"])
    assert not (tmp_path / "model").exists()


# ---------------------------------------------------------------------------
# 2. What a full run writes.
# ---------------------------------------------------------------------------
FULL_RUN_STEPS = 4


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("full_run") / "model"
    result = train(model_dir, mode="train_then_eval", train_steps=FULL_RUN_STEPS,
                   keep_checkpoint_max=2, compute_baselines=True)
    return model_dir, result


def test_full_run_writes_checkpoints_summaries_flags_and_result(full_run):
    model_dir, result = full_run
    assert (model_dir / "checkpoint").is_file()
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{FULL_RUN_STEPS}")
    assert glob.glob(str(model_dir / "events.out.tfevents.*"))
    assert glob.glob(str(model_dir / "eval" / "events.out.tfevents.*"))

    saved_flags = read_json(model_dir / "flags.json")
    assert saved_flags["resnet_depth"] == 18 and saved_flags["image_size"] == 8
    assert saved_flags["train_steps"] == FULL_RUN_STEPS

    assert result == read_json(model_dir / f"result_{FULL_RUN_STEPS}.json")
    assert result["global_step"] == FULL_RUN_STEPS
    assert 0.0 <= result["probe_top1"] <= 1.0
    assert result["eval/label_top_1_accuracy"] == result["probe_top1"]
    assert result["eval/label_top_1_accuracy"] <= result["eval/label_top_5_accuracy"] <= 1.0
    # The eval summary says the same as result.json.
    logged = scalars(model_dir / "eval")
    [(step, top1)] = logged["eval/label_top_1_accuracy"]
    assert step == FULL_RUN_STEPS and top1 == pytest.approx(result["probe_top1"], abs=1e-6)
    assert_training_metrics_finite(model_dir, list(range(1, FULL_RUN_STEPS + 1)))


def test_keep_checkpoint_max_keeps_the_newest(full_run):
    model_dir, _ = full_run
    assert ckpt_numbers(model_dir) == [FULL_RUN_STEPS - 1, FULL_RUN_STEPS]


def test_baselines_match_an_independent_logistic_regression(full_run):
    model_dir, result = full_run
    saved_flags = read_json(model_dir / "flags.json")
    for key in ("raw_pixel_top1", "random_encoder_top1", "encoder_logreg_top1"):
        assert 0.0 <= result[key] <= 1.0, key
    source = datasets.get_dataset("digits")
    x_train, y_train = source.as_numpy(saved_flags["train_split"])
    x_test, y_test = source.as_numpy(saved_flags["eval_split"])
    pixels = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(pixels(x_train), y_train)
    assert result["raw_pixel_top1"] == pytest.approx(classifier.score(pixels(x_test), y_test), abs=1e-12)


# ---------------------------------------------------------------------------
# 3. Resume is exact; 5. fine-tuning from a pretrained directory.
# ---------------------------------------------------------------------------
# warmup_epochs=0 so that the very first steps move the weights.
PRETRAIN = dict(mode="train", warmup_epochs=0, keep_checkpoint_max=5)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("pretrained") / "model"
    train(model_dir, **PRETRAIN)
    return model_dir


def test_resume_restores_every_variable_and_continues(pretrained, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(pretrained, model_dir)
    prefix = tf.train.latest_checkpoint(str(model_dir))
    assert prefix.endswith("ckpt-2")

    cfg, model, optimizer, checkpoint, manager = rebuild(model_dir, **PRETRAIN)
    run.restore(cfg, model, optimizer, manager)
    optimizers = [o for o in (optimizer, getattr(checkpoint, "probe_optimizer", None)) if o is not None]
    variables = model.variables + [v for o in optimizers for v in o.variables
                                   if all(v is not w for w in model.variables)]
    saved = saved_values(prefix, checkpoint, variables)
    missing = [v.path for v in variables if v.path not in saved]
    assert not missing, f"{len(missing)} variables are not in the checkpoint, e.g. {missing[:4]}"
    for variable in variables:
        assert_bitwise_equal(variable.numpy(), saved[variable.path], variable.path)
    assert int(optimizer.iterations.numpy()) == 2
    # The momenta were restored, not merely left at their zero start.
    assert any(np.any(v.numpy() != 0) for v in optimizer.variables if "momentum" in v.path)

    capsys.readouterr()
    result = train(model_dir, **dict(PRETRAIN, mode="train_then_eval", train_steps=4))
    assert "resumed from" in capsys.readouterr().out
    assert result["global_step"] == 4
    assert ckpt_numbers(model_dir) == [1, 2, 3, 4]
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 4
    # Steps 1-2 were logged by the first run only: the second one went on from 3.
    assert_training_metrics_finite(model_dir, [1, 2, 3, 4])


def test_probe_learning_rate_moves_the_probe_at_its_own_rate(tmp_path):
    """One plain SGD step (momentum 0, no warm-up, no weight decay) from the
    same weights: the probe's variables move by −η_probe·g, every other
    trainable variable by −η·g, with η = base·B/256 for both rates."""
    batch = TINY["train_batch_size"]
    cfg, model, optimizer, checkpoint, _ = rebuild(
        tmp_path, optimizer="momentum", momentum=0.0, warmup_epochs=0, weight_decay=0.0,
        learning_rate=0.1, probe_learning_rate=3.0)
    probe_optimizer = checkpoint.probe_optimizer
    source = datasets.get_dataset("digits")
    images, labels = source.as_numpy("train")
    images = np.repeat(images, 3 // images.shape[-1], axis=-1)  # grey digits as RGB
    views = run.num_input_views(cfg)
    features = np.concatenate([images[k * batch:(k + 1) * batch] for k in range(views)], axis=-1)
    features = tf.image.resize(tf.cast(features, tf.float32) / 255.0, [cfg.image_size] * 2)
    labels = tf.constant(labels[:batch], tf.int32)
    step = run.TrainStep(model, optimizer, cfg, {}, 1, probe_optimizer=probe_optimizer)

    state = [v.numpy() for v in model.non_trainable_variables]
    grads, _ = step.gradients(features, labels)
    before = [v.numpy() for v in model.trainable_variables]
    # The step's own forward pass must start from the same batch-norm moving
    # statistics (the probe's clean view is encoded with them).
    for variable, value in zip(model.non_trainable_variables, state):
        variable.assign(value)
    step(features, labels)
    probe = {id(v) for v in model.supervised_head.trainable_variables}
    assert len(probe) == 2
    for variable, g, old in zip(model.trainable_variables, grads, before):
        rate = (3.0 if id(variable) in probe else 0.1) * batch / 256
        np.testing.assert_allclose(variable.numpy(), old - rate * g.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=variable.path)
    assert int(optimizer.iterations.numpy()) == int(probe_optimizer.iterations.numpy()) == 1


def test_finetune_head_only_keeps_the_pretrained_encoder(pretrained, tmp_path):
    finetune = dict(mode="train", train_mode="finetune", fine_tune_after_block=4,
                    checkpoint=str(pretrained), warmup_epochs=0, learning_rate=1.0, seed=1)
    model_dir = tmp_path / "model"
    train(model_dir, **finetune)
    assert ckpt_numbers(model_dir) == [1, 2]

    _, before_model, before_optimizer, before_root, _ = rebuild(pretrained, **PRETRAIN)
    _, after_model, after_optimizer, after_root, _ = rebuild(model_dir, **finetune)
    encoder = after_model.resnet_model.variables
    assert any("moving_mean" in v.path for v in encoder)
    before = saved_values(tf.train.latest_checkpoint(str(pretrained)), before_root,
                          before_model.variables)
    after = saved_values(tf.train.latest_checkpoint(str(model_dir)), after_root,
                         after_model.variables)
    for path in [v.path for v in encoder]:
        assert path in before, f"{path} is not in the pretraining checkpoint"
        assert path in after, f"{path} is not in the fine-tuning checkpoint"
        assert_bitwise_equal(after[path], before[path], path)
    # The linear head did train.
    head = [v.path for v in after_model.supervised_head.variables]
    assert any(np.any(after[p] != before[p]) for p in head)


def test_eval_without_supervised_head(tmp_path):
    flags = dict(lineareval_while_pretraining=False)
    model_dir = tmp_path / "model"
    assert train(model_dir, mode="train", **flags) is None
    result = train(model_dir, mode="eval", **flags)
    assert result["global_step"] == 2
    assert "probe_top1" not in result and "eval/label_top_1_accuracy" not in result


# ---------------------------------------------------------------------------
# 4. Loss flags reach the trainer; 5./6. heads and optimizers.
# ---------------------------------------------------------------------------
# Every loss's step, flags resolved as here, is checked on one and two
# replicas in tests/test_distribute.py; these whole runs check that loss
# flags reach the trainer and its summaries.
@pytest.mark.parametrize("flags", [
    dict(loss="swd", prior="uniform_hypercube", lambda_weight=0.5),
    dict(loss="kcl", kcl_kernel="log", kcl_t=1.5),
], ids=["swd-uniform_hypercube", "kcl-log"])
def test_loss_trains_through_run_py(tmp_path, flags):
    result = train(tmp_path / "model", mode="train_then_eval", **flags)
    assert result["global_step"] == 2
    assert 0.0 <= result["probe_top1"] <= 1.0
    assert_training_metrics_finite(tmp_path / "model", [1, 2])
    assert "train/contrast_loss" in scalars(tmp_path / "model")
    saved_flags = read_json(tmp_path / "model" / "flags.json")
    assert all(saved_flags[k] == v for k, v in flags.items())


@pytest.mark.parametrize("flags", [
    dict(proj_head_mode="linear", optimizer="momentum"),
    dict(proj_head_mode="none", optimizer="adam"),
], ids=["proj_linear-momentum", "proj_none-adam"])
def test_variant_trains(tmp_path, flags):
    result = train(tmp_path / "model", mode="train_then_eval", **flags)
    assert result["global_step"] == 2
    assert 0.0 <= result["probe_top1"] <= 1.0
    assert_training_metrics_finite(tmp_path / "model", [1, 2])
    saved_flags = read_json(tmp_path / "model" / "flags.json")
    assert all(saved_flags[k] == v for k, v in flags.items())

