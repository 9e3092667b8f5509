"""End-to-end tests of the trainer `run.py` (TensorFlow backend) on the
embedded digits data and on generated image folders.

Runs are tiny (8×8 views, ResNet-18 at 1/8 width, batch 32, 2–4 steps) and
happen in-process through `run.parse_flags` + `run.run_main`, bad flags
included (stderr read at the file descriptor). A few cases run `python
run.py` as a fresh subprocess, with TF_CPP_MIN_LOG_LEVEL removed from its
environment so that TensorFlow's native start-up lines would show.

What is checked against what:
- outputs against the files TensorFlow itself reads back (checkpoints through
  `tf.train.load_checkpoint` and their object graph, summaries through the
  event files);
- the probe's accuracy against logits computed here from the checkpoint, the
  raw-pixel baseline against a scikit-learn fit computed here;
- resume and fine-tuning against the saved tensors, bit for bit;
- what reaches the loss against the flags, by recording the arguments of
  `objective.compute_loss`.
"""
import csv
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tensorflow.core.protobuf import trackable_object_graph_pb2

import checkpoint as checkpoint_lib
import config
import configs
import datasets
import evaluation
import export
import objective
import run
import train_lib
import trainer_tf
from test_metrics import knn_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(image_size=8, width_multiplier=0.125, resnet_depth=18, train_batch_size=32,
            eval_batch_size=100, train_steps=2, checkpoint_steps=1, num_proj_layers=2,
            proj_out_dim=16, compute_baselines=False, keep_hub_module_max=0)


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


class Recorder:
    """Wraps objective.compute_loss and keeps the loss's name and plain
    (non-tensor) keyword arguments of every call, at trace time."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = objective.compute_loss

        def compute_loss(name, z1, z2, **kwargs):
            plain = {k: v for k, v in kwargs.items()
                     if v is None or isinstance(v, (bool, int, float, str))}
            self.calls.append(dict(plain, name=name))
            return original(name, z1, z2, **kwargs)

        monkeypatch.setattr(objective, "compute_loss", compute_loss)


# ---------------------------------------------------------------------------
# Reading checkpoints variable by variable.
# ---------------------------------------------------------------------------
def rebuild(model_dir, **flags):
    """(cfg, trainer, checkpointer) built the way `run.main` builds them for
    this command line (nothing restored yet)."""
    cfg, source = configs.resolve(**dict(TINY, model_dir=str(model_dir), **flags))
    keras.utils.set_random_seed(cfg.seed)
    trainer = trainer_tf.Trainer(cfg).build(source.label_classes,
                                            source.num_examples(cfg.train_split),
                                            source.label_names)
    checkpointer = checkpoint_lib.Checkpointer(trainer.model, trainer.optimizers,
                                               cfg.model_dir, cfg.keep_checkpoint_max)
    return cfg, trainer, checkpointer


def saved_groups(prefix):
    """{group: {key: saved value}} of a checkpoint, read through its object
    graph: the root's children are the groups, a group's children the
    variables by key."""
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    groups = {}
    for group in graph.nodes[0].children:
        for child in graph.nodes[group.node_id].children:
            for attribute in graph.nodes[child.node_id].attributes:
                if attribute.name == "VARIABLE_VALUE":
                    groups.setdefault(group.local_name, {})[child.local_name] = \
                        reader.get_tensor(attribute.checkpoint_key)
    return groups


def assert_bitwise_equal(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert actual.tobytes() == expected.tobytes(), what


def digits_rgb(split):
    """(images as RGB in [0, 1], labels) of a digits split: the eval view
    at image_size 8 is the image itself."""
    images, labels = datasets.get_dataset("digits").as_numpy(split)
    return np.repeat(images.astype(np.float32) / 255.0, 3, axis=-1), labels


def probe_accuracy_from_checkpoint(model_dir, **flags):
    """Top-1 of the supervised head on the digits test split, computed here:
    the newest checkpoint restored into a freshly built model, the 8×8 test
    images as RGB in [0, 1] (the eval view at image_size 8 is the image)."""
    _, trainer, checkpointer = rebuild(model_dir, **flags)
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(model_dir)))
    rgb, labels = digits_rgb("test")
    _, logits = trainer.model(rgb, training=False)
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == labels))


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
    "kcl_t_negative_gaussian": (["--loss=kcl", "--kcl_t=-1"], ["kcl_t", "> 0", "riesz"]),
    "kcl_t_zero_riesz": (["--loss=kcl", "--kcl_kernel=riesz", "--kcl_t=0"], ["kcl_t", "riesz", "!= 0"]),
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
    "checkpoint_missing": (["--train_mode=finetune", "--checkpoint={empty}/ckpt-3"],
                           ["checkpoint", "ckpt-3", "prefix"]),
    "keep_hub_module_max_negative": (["--keep_hub_module_max=-1"], ["keep_hub_module_max", "0"]),
    "rand_bits_negative": (["--num_rand_bits=-1"], ["num_rand_bits", "0", "32"]),
    "digit_sizes_for_digits": (["--digit_sizes=8"], ["--digit_sizes", "digits", "multi_digits"]),
    "digit_sizes_not_numbers": (["--dataset=multi_digits", "--digit_sizes=big,small"],
                                ["--digit_sizes", "20,8", "big"]),
    "multi_digits_one_size": (["--dataset=multi_digits", "--digit_sizes=8"],
                              ["--digit_sizes", "two sizes"]),
    "loss_in_autoencoder": (["--train_mode=autoencoder", "--loss=swd"],
                            ["--loss", "pretrain", "autoencoder"]),
    "prior_in_finetune": (["--train_mode=finetune", "--prior=normal"],
                          ["--prior", "pretrain", "finetune"]),
    "loss_in_finetune": (["--train_mode=finetune", "--loss=swd"],
                         ["--loss", "pretrain", "finetune"]),
    "batch_larger_than_the_data": (["--train_batch_size=2000"],
                                   ["--train_batch_size=2000", "1297", "digits", "'train'"]),
    "lambda_without_lambda_loss": (["--lambda_weight=0.5"], ["lambda_weight", "ntxent"]),
    "dhel_flag_with_dcl": (["--loss=dcl", "--dhel_include_augs=false"],
                           ["dhel_include_augs", "dcl", "dhel"]),
    "partial_without_checkpoint": (["--train_mode=finetune", "--partial_checkpoint"],
                                   ["--partial_checkpoint", "--checkpoint"]),
    "loss_chunk_size_zero": (["--loss_chunk_size=0"], ["--loss_chunk_size", ">= 1"]),
    "loss_chunk_size_unchunked_loss": (["--loss=kcl", "--loss_chunk_size=8"],
                                       ["--loss_chunk_size", "--loss=kcl",
                                        "ntxent|decoupled|dcl|dhel"]),
    "loss_chunk_size_in_finetune": (["--train_mode=finetune", "--loss_chunk_size=8"],
                                    ["--loss_chunk_size", "pretrain", "finetune"]),
    "precision_unknown": (["--precision=float16"],
                          ["--precision", "float32", "mixed_bfloat16", "mixed_float16"]),
    "float16_on_tpu": (["--precision=mixed_float16", "--tpu_name=my-tpu"],
                       ["--precision=mixed_float16", "TPU", "mixed_bfloat16"]),
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


def run_expecting_exit(argv, capfd, status=2):
    """stderr of an in-process run of `argv` that must exit with `status`."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run.FLAGS.unparse_flags()
        run.parse_flags(argv)
        run.run_main(["run.py"])
    assert exit_info.value.code == status
    return capfd.readouterr().err


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag_is_one_line_and_exit_status_2(case, tmp_path, capfd):
    """In-process, through the same parse_flags + run_main pair that
    `python run.py` runs; capfd reads file descriptor 2, so native TensorFlow
    lines would count too."""
    argv, model_dir, empty = bad_flag_argv(case, tmp_path)
    assert_one_line_error(run_expecting_exit(argv, capfd), BAD_FLAGS[case][1])
    assert not model_dir.exists()
    assert list(empty.iterdir()) == []


# What a user sees from a fresh process, where TensorFlow's and TFDS's
# start-up lines would land on the same stderr: one case per phase (flag
# parsing, dataset lookup, after the strategy is built).
COMMAND_LINE_CASES = ["unknown_flag", "tfds_not_prepared", "eval_without_checkpoint"]


def fresh_env(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TFDS_DATA_DIR=str(tmp_path / "tfds_default"))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


@pytest.mark.parametrize("case", COMMAND_LINE_CASES)
def test_bad_flag_from_a_fresh_process(case, tmp_path):
    argv, model_dir, empty = bad_flag_argv(case, tmp_path)
    proc = subprocess.run([sys.executable] + argv, cwd=ROOT, env=fresh_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, BAD_FLAGS[case][1])
    assert not model_dir.exists()
    assert list(empty.iterdir()) == []


def test_help_exits_0_and_shows_what_a_bare_run_uses(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, env=fresh_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    help_text = proc.stdout
    preset = datasets.get_dataset("digits").preset()
    for name in ("image_size", "temperature", "optimizer"):
        block = help_text[help_text.index(f"--{name}:"):]
        block = block[:block.index("\n  --")]
        assert f"[bare run: {preset[name]}, digits preset]" in " ".join(block.split()), block


def test_batch_not_divisible_by_replicas(mirrored_strategy, monkeypatch, capsys, tmp_path):
    # mirrored_strategy (tests/conftest.py) spans the two logical CPUs.
    assert mirrored_strategy.num_replicas_in_sync == 2
    monkeypatch.setattr(trainer_tf, "get_strategy", lambda cfg: mirrored_strategy)
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
FULL_RUN = dict(mode="train_then_eval", train_steps=FULL_RUN_STEPS, checkpoint_steps=2,
                log_every_steps=1, keep_checkpoint_max=1, compute_baselines=True,
                keep_hub_module_max=1, plot=True)


# Tests that share a module-scoped run: under `--dist loadgroup` each group
# runs in one worker, so the run is trained once rather than once per worker.
SHARES_FULL_RUN = pytest.mark.xdist_group("test_run_full_run")
SHARES_PRETRAINED = pytest.mark.xdist_group("test_run_pretrained")
FULL_RUN_LOSS_CALLS = []


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """(model_dir, result) of a bare digits run (shortened); the calls of
    its loss (`Recorder`) go to FULL_RUN_LOSS_CALLS."""
    model_dir = tmp_path_factory.mktemp("full_run") / "model"
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder = Recorder(monkeypatch)
        result = train(model_dir, **FULL_RUN)
    FULL_RUN_LOSS_CALLS[:] = recorder.calls
    return model_dir, result


@SHARES_FULL_RUN
def test_full_run_writes_checkpoints_summaries_flags_and_result(full_run):
    model_dir, result = full_run
    assert (model_dir / "checkpoint").is_file()
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{FULL_RUN_STEPS}")
    assert glob.glob(str(model_dir / "eval" / "events.out.tfevents.*"))
    assert result == read_json(model_dir / f"result_{FULL_RUN_STEPS}.json")
    assert result["global_step"] == FULL_RUN_STEPS and result["backend"] == "tensorflow"
    assert result["eval/label_top_1_accuracy"] == result["probe_top1"]
    # The eval summary says the same as result.json.
    [(step, top1)] = scalars(model_dir / "eval")["eval/label_top_1_accuracy"]
    assert step == FULL_RUN_STEPS and top1 == pytest.approx(result["probe_top1"], abs=1e-6)


@SHARES_FULL_RUN
def test_summaries_follow_log_every_steps_not_checkpoints(full_run):
    """log_every_steps=1 with checkpoints every 2 steps: scalars at every
    step, checkpoints at 2 and 4 only (1 kept)."""
    model_dir, _ = full_run
    assert_training_metrics_finite(model_dir, list(range(1, FULL_RUN_STEPS + 1)))
    assert [step for step, _ in scalars(model_dir)["learning_rate"]] == [1, 2, 3, 4]
    assert ckpt_numbers(model_dir) == [FULL_RUN_STEPS]


@SHARES_FULL_RUN
def test_flags_json_holds_the_project_flags_as_trained(full_run):
    """Only run.py's own flags (no absl flags), with the preset's
    temperature recorded as the loss's, unused loss flags as null."""
    model_dir, _ = full_run
    saved = read_json(model_dir / "flags.json")
    assert set(saved) == set(run.PROJECT_FLAG_NAMES)
    assert "verbosity" not in saved and "logtostderr" not in saved
    assert saved["resnet_depth"] == 18 and saved["image_size"] == 8
    assert saved["train_steps"] == FULL_RUN_STEPS
    assert saved["temperature"] == datasets.get_dataset("digits").preset()["temperature"]
    assert saved["kcl_t"] is None and saved["prior"] is None


@SHARES_FULL_RUN
def test_probe_top1_is_the_accuracy_of_the_saved_probe(full_run):
    model_dir, result = full_run
    expected = probe_accuracy_from_checkpoint(model_dir, **FULL_RUN)
    assert result["probe_top1"] == pytest.approx(expected, abs=1.5 / 500)


@SHARES_FULL_RUN
def test_raw_pixel_baseline_matches_an_independent_logistic_regression(full_run):
    model_dir, result = full_run
    saved_flags = read_json(model_dir / "flags.json")
    source = datasets.get_dataset("digits")
    x_train, y_train = source.as_numpy(saved_flags["train_split"])
    x_test, y_test = source.as_numpy(saved_flags["eval_split"])
    pixels = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(pixels(x_train), y_train)
    assert result["raw_pixel_top1"] == pytest.approx(classifier.score(pixels(x_test), y_test), abs=1e-12)


def test_full_run_exports_a_saved_model_of_its_last_step(full_run):
    """saved_model/<last step> (one kept) gives the checkpoint's h and probe
    logits."""
    model_dir, _ = full_run
    assert sorted(os.listdir(model_dir / "saved_model")) == [str(FULL_RUN_STEPS)]
    loaded = tf.saved_model.load(str(model_dir / "saved_model" / str(FULL_RUN_STEPS)))
    _, trainer, checkpointer = rebuild(model_dir, **FULL_RUN)
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(model_dir)))
    rgb, _ = digits_rgb("test")
    outputs = loaded(rgb, trainable=False)
    _, logits = trainer.model(rgb, training=False)
    for got, expected in ((outputs["final_avg_pool"], trainer.model.encode(rgb)),
                          (outputs["logits_sup"], logits)):
        expected = np.asarray(expected)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())


def test_mixed_precision_run_records_it_and_exports_a_float32_saved_model(tmp_path):
    """--precision=mixed_bfloat16 is recorded, and the SavedModel of its
    last step computes in float32 what a float32 model with the
    checkpoint's weights computes."""
    model_dir = tmp_path / "bf16"
    train(model_dir, mode="train", precision="mixed_bfloat16", keep_hub_module_max=1)
    assert read_json(model_dir / "flags.json")["precision"] == "mixed_bfloat16"
    loaded = tf.saved_model.load(str(model_dir / "saved_model" / str(TINY["train_steps"])))
    _, trainer, checkpointer = rebuild(model_dir, precision="float32")
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(model_dir)))
    rgb, _ = digits_rgb("test")
    outputs = loaded(rgb[:64], trainable=False)
    expected = np.asarray(trainer.model.encode(rgb[:64]))
    assert outputs["final_avg_pool"].dtype == tf.float32
    np.testing.assert_allclose(outputs["final_avg_pool"].numpy(), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


@SHARES_FULL_RUN
def test_knn_top1_is_a_weighted_knn_on_the_checkpoints_features(full_run):
    model_dir, result = full_run
    _, trainer, checkpointer = rebuild(model_dir, **FULL_RUN)
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(model_dir)))
    (train_rgb, train_labels), (test_rgb, test_labels) = digits_rgb("train"), digits_rgb("test")
    predicted = knn_numpy(np.asarray(trainer.model.encode(train_rgb)), train_labels,
                          np.asarray(trainer.model.encode(test_rgb)), classes=10, k=200,
                          temperature=0.1)
    # Features computed in other batches may differ in the last bits, which
    # can flip a near tie: one example of 500.
    assert result["knn_top1"] == pytest.approx(np.mean(predicted == test_labels), abs=1.5 / 500)


@SHARES_FULL_RUN
def test_representation_metrics_are_logged_at_every_checkpoint(full_run):
    """metrics.csv has one row per checkpoint, the TensorBoard scalars say
    the same, and the last row is what result.json reports for those weights
    on the same held-out batch."""
    model_dir, result = full_run
    with open(model_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    names = [f"{space}/{name}" for space in ("h", "z") for name in evaluation.METRIC_NAMES]
    assert list(rows[0]) == ["step"] + names
    logged = scalars(model_dir)
    for name in names:
        assert logged[f"representation/{name}"] == [
            (int(r["step"]), pytest.approx(float(r[name]), rel=1e-6)) for r in rows], name
        assert result[f"representation/{name}"] == pytest.approx(float(rows[-1][name]),
                                                                 rel=1e-5, abs=1e-6), name


@SHARES_FULL_RUN
def test_full_run_writes_the_plots(full_run):
    model_dir, _ = full_run
    for name in ("plot_training.png", "plot_embedding.png", "plot_cosines.png"):
        with open(model_dir / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_metrics_rows_of_steps_trained_again_are_replaced(tmp_path):
    """A run resumed from step 2 measures steps 3 and 4 again: their rows
    are replaced, not repeated."""
    for step in (2, 4, 6):
        evaluation.write_metrics_row(str(tmp_path), step, {"h/alignment": float(step)})
    evaluation.write_metrics_row(str(tmp_path), 4, {"h/alignment": 40.0})
    with open(tmp_path / "metrics.csv") as f:
        assert f.read() == "step,h/alignment\n2,2.0\n4,40.0\n"


@SHARES_FULL_RUN
def test_eval_mode_takes_the_record_and_keeps_it(full_run, capfd):
    """--mode=eval with no model flags evaluates the run as trained (the
    record's 8×8 views, not the digits preset's 16), leaves flags.json as it
    was, and refuses a contradicting model flag in one line."""
    model_dir, result = full_run
    cfg, _ = configs.resolve(mode="eval", model_dir=str(model_dir))
    saved = read_json(model_dir / "flags.json")
    for name in ("image_size", "width_multiplier", "proj_out_dim", "train_steps", "temperature"):
        assert getattr(cfg, name) == saved[name], name
    before = (model_dir / "flags.json").read_bytes()
    run.FLAGS.unparse_flags()
    run.parse_flags(["run.py", "--mode=eval", f"--model_dir={model_dir}"])
    run.run_main(["run.py"])
    assert (model_dir / "flags.json").read_bytes() == before
    assert read_json(model_dir / "result.json")["probe_top1"] == result["probe_top1"]
    err = run_expecting_exit(["run.py", "--mode=eval", f"--model_dir={model_dir}",
                              "--image_size=16"], capfd)
    assert_one_line_error(err, ["--image_size=16", "--image_size=8", str(model_dir)])


# ---------------------------------------------------------------------------
# 3. What reaches the loss.
# ---------------------------------------------------------------------------
@SHARES_FULL_RUN
def test_preset_temperature_reaches_the_loss(full_run, tmp_path):
    """A bare digits run trains NT-Xent at the preset's τ (not the loss's own
    default), with the parameters passing --temperature explicitly gives."""
    preset = datasets.get_dataset("digits").preset()["temperature"]
    assert preset != objective.LOSS_PARAMS["ntxent"]["temperature"]
    assert full_run and FULL_RUN_LOSS_CALLS
    [call] = {json.dumps(c, sort_keys=True) for c in FULL_RUN_LOSS_CALLS}
    call = json.loads(call)
    assert call["name"] == "ntxent" and call["temperature"] == preset
    explicit, _ = configs.resolve(**dict(TINY, temperature=preset, model_dir=str(tmp_path / "x")))
    assert {k: call[k] for k in explicit.loss_params} == explicit.loss_params


# Each variant is a loss with its flags, a head and an optimizer other than
# the bare run's (ntxent, nonlinear head, the preset's adam).
@pytest.mark.parametrize("flags,expected", [
    (dict(loss="swd", prior="uniform_hypercube", lambda_weight=0.5, proj_head_mode="none",
          optimizer="adam"),
     dict(prior="uniform_hypercube", lambda_weight=0.5, hidden_norm=False, scale=1.0)),
    (dict(loss="kcl", kcl_kernel="log", kcl_t=1.5, proj_head_mode="linear",
          optimizer="momentum"),
     dict(kernel="log", t=1.5, gamma=16.0)),
], ids=["swd-uniform_hypercube-proj_none-adam", "kcl-log-proj_linear-momentum"])
def test_variants_train_and_their_loss_flags_reach_the_loss_and_the_record(
        tmp_path, monkeypatch, flags, expected):
    recorder = Recorder(monkeypatch)
    train(tmp_path / "model", mode="train", **flags)
    assert ckpt_numbers(tmp_path / "model") == [1, 2]
    assert_training_metrics_finite(tmp_path / "model", [1, 2])
    [call] = {json.dumps(c, sort_keys=True) for c in recorder.calls}
    call = json.loads(call)
    assert call["name"] == flags["loss"]
    assert {k: call[k] for k in expected} == expected
    saved = read_json(tmp_path / "model" / "flags.json")
    assert all(saved[k] == v for k, v in flags.items())
    if flags["loss"] == "swd":  # the hypercube prior trains unnormalised, and says so
        assert saved["hidden_norm"] is False


def test_chunked_loss_trains_the_same_losses_and_may_change_on_resume(tmp_path, monkeypatch):
    """--loss_chunk_size=5 (batch 32: blocks of 5 rows, the last one of 2)
    reaches the loss, is recorded, and trains the losses and summaries of
    the whole matrices step for step (--deterministic: the same batches); a
    run may resume without it, the same loss in other memory."""
    summaries = ("contrast_loss", "contrast_acc", "contrast_entropy")
    recorder = Recorder(monkeypatch)
    summary_chunk_sizes = []
    whole_summaries = objective.contrastive_accuracy_and_entropy

    def recorded_summaries(*args, **kwargs):
        summary_chunk_sizes.append(kwargs.get("chunk_size"))
        return whole_summaries(*args, **kwargs)

    monkeypatch.setattr(objective, "contrastive_accuracy_and_entropy", recorded_summaries)
    losses = {}
    for chunk_size in (None, 5):
        model_dir = tmp_path / f"chunk_{chunk_size}"
        flags = dict(mode="train", deterministic=True, log_every_steps=1)
        if chunk_size is not None:
            flags["loss_chunk_size"] = chunk_size
        train(model_dir, **flags)
        assert read_json(model_dir / "flags.json")["loss_chunk_size"] == chunk_size
        logged = scalars(model_dir)
        losses[chunk_size] = {name: logged[f"train/{name}"] for name in summaries}
    assert {call["chunk_size"] for call in recorder.calls} == {None, 5}
    assert set(summary_chunk_sizes) == {None, 5}  # the summaries' [n, B] matrix too
    assert [step for step, _ in losses[5]["contrast_loss"]] == [1, 2]
    for name in summaries:
        np.testing.assert_allclose([v for _, v in losses[5][name]],
                                   [v for _, v in losses[None][name]], rtol=1e-5, err_msg=name)
    # Resuming the chunked run without the flag is not refused.
    cfg, _ = configs.resolve(**dict(TINY, model_dir=str(tmp_path / "chunk_5"), mode="train",
                                    deterministic=True, train_steps=3))
    assert cfg.loss_chunk_size is None


def test_jit_compile_compiles_the_step_with_xla_and_trains_the_same_losses(tmp_path,
                                                                            monkeypatch):
    """--jit_compile hands the replica step to XLA (a tf.function with
    jit_compile=True) and trains the losses of TensorFlow's own kernels
    step for step (--deterministic: the same batches)."""
    compiled, real_function = [], tf.function

    def recording_function(fn=None, **kwargs):
        compiled.append((getattr(fn, "__name__", None), bool(kwargs.get("jit_compile"))))
        return real_function(fn, **kwargs) if fn else real_function(**kwargs)

    monkeypatch.setattr(tf, "function", recording_function)
    # Read at XLA's first compilation: without its backend optimisations
    # the tiny model compiles in a third of the time.
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    losses = {}
    for jit_compile in (False, True):
        compiled.clear()
        model_dir = tmp_path / f"jit_{jit_compile}"
        train(model_dir, mode="train", deterministic=True, log_every_steps=1,
              jit_compile=jit_compile)
        assert (("train_step", True) in compiled) == jit_compile
        logged = scalars(model_dir)
        losses[jit_compile] = [v for name in ("total_loss", "contrast_loss", "supervised_loss")
                               for _, v in logged[f"train/{name}"]]
    assert len(losses[True]) == 6
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


def test_simple_loss_records_the_lambda_it_used(tmp_path):
    cfg, _ = configs.resolve(**dict(TINY, loss="simple", model_dir=str(tmp_path)))
    batch = TINY["train_batch_size"]
    assert cfg.lambda_weight == cfg.loss_params["lambda_weight"] == 1.0 / (2 * batch - 2)


# ---------------------------------------------------------------------------
# 4. Resume, record checks, non-finite stops.
# ---------------------------------------------------------------------------
# warmup_epochs=0 so that the very first steps move the weights.
PRETRAIN = dict(mode="train", warmup_epochs=0, keep_checkpoint_max=5)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("pretrained") / "model"
    train(model_dir, **PRETRAIN)
    return model_dir


@SHARES_PRETRAINED
def test_resume_restores_every_variable_and_continues(pretrained, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(pretrained, model_dir)
    prefix = tf.train.latest_checkpoint(str(model_dir))
    assert prefix.endswith("ckpt-2")

    _, trainer, checkpointer = rebuild(model_dir, **PRETRAIN)
    checkpointer.restore(prefix)
    saved = saved_groups(prefix)
    live = checkpoint_lib.variable_groups(trainer.model, trainer.optimizers)
    assert set(saved) == set(live)
    for group, variables in live.items():
        missing = sorted(set(variables) - set(saved[group]))
        assert not missing, f"{group}: {len(missing)} variables not saved, e.g. {missing[:3]}"
        for key, variable in variables.items():
            assert_bitwise_equal(variable.numpy(), saved[group][key], f"{group}/{key}")
    assert len(live["model"]) == len(trainer.model.variables)
    assert trainer.step == 2
    # The momenta were restored, not merely left at their zero start.
    assert any(np.any(v != 0) for k, v in saved["optimizer"].items() if "momentum" in k)

    capsys.readouterr()
    result = train(model_dir, **dict(PRETRAIN, mode="train_then_eval", train_steps=4))
    assert "resumed from" in capsys.readouterr().out
    assert result["global_step"] == 4
    assert ckpt_numbers(model_dir) == [1, 2, 3, 4]
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 4
    # Steps 1-2 were logged by the first run only: the second one went on from 3.
    assert_training_metrics_finite(model_dir, [1, 2, 3, 4])


def file_contents(directory):
    """{name: bytes} of the files directly in `directory`."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def damage(path, how):
    """Truncates the file at `path` to half, or flips a byte in its middle."""
    content = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(content[:len(content) // 2]))
    else:
        content[len(content) // 2] ^= 0xFF
        path.write_bytes(bytes(content))


@SHARES_PRETRAINED
@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_latest_checkpoint_is_reported_and_the_one_before_it_restored(
        pretrained, tmp_path, capfd, how):
    """The newest checkpoint's data file damaged: resuming says so in one
    line and restores the checkpoint before it, every variable as saved
    there; the damaged files stay. With every checkpoint damaged: one line,
    exit status 2, nothing changed."""
    model_dir = tmp_path / "model"
    shutil.copytree(pretrained, model_dir)
    [data_2] = model_dir.glob("ckpt-2.data-*")
    damage(data_2, how)
    files = file_contents(model_dir)
    cfg, trainer, checkpointer = rebuild(model_dir, **PRETRAIN)
    capfd.readouterr()
    run.restore(cfg, trainer, checkpointer)
    out, err = capfd.readouterr()
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("warning: ") and "ckpt-2" in line and "the one before it" in line
    assert "function_node" not in line and "[Op:" not in line, line
    assert f"resumed from {model_dir}/ckpt-1" in out
    saved = saved_groups(str(model_dir / "ckpt-1"))
    for group, variables in checkpoint_lib.variable_groups(trainer.model,
                                                           trainer.optimizers).items():
        for key, variable in variables.items():
            assert_bitwise_equal(variable.numpy(), saved[group][key], f"{group}/{key}")
    assert trainer.step == 1
    assert file_contents(model_dir) == files

    [data_1] = model_dir.glob("ckpt-1.data-*")
    damage(data_1, how)
    files = file_contents(model_dir)
    err = run_expecting_exit(command_line(model_dir, **PRETRAIN), capfd)
    assert_one_line_error(err, ["no checkpoint in", str(model_dir), "ckpt-2", "ckpt-1",
                                "from scratch"])
    assert file_contents(model_dir) == files


@SHARES_PRETRAINED
def test_eval_mode_evaluates_the_newest_readable_checkpoint(pretrained, tmp_path, capfd):
    """--mode=eval of a finished run whose last checkpoint is truncated:
    one warning line naming it, the one before it evaluated (result.json
    of step 1), and the loop ends instead of waiting for a step that
    already came. With none readable: one line, exit status 2."""
    model_dir = tmp_path / "model"
    shutil.copytree(pretrained, model_dir)
    [data_2] = model_dir.glob("ckpt-2.data-*")
    damage(data_2, "truncated")
    argv = ["run.py", "--mode=eval", f"--model_dir={model_dir}"]
    capfd.readouterr()
    run.FLAGS.unparse_flags()
    run.parse_flags(argv)
    run.run_main(["run.py"])
    err = capfd.readouterr().err
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("warning: checkpoint") and "ckpt-2" in line, line
    assert read_json(model_dir / "result.json")["global_step"] == 1
    [data_1] = model_dir.glob("ckpt-1.data-*")
    damage(data_1, "truncated")
    err = run_expecting_exit(argv, capfd)
    assert_one_line_error(err, ["no checkpoint in", str(model_dir), "ckpt-2", "ckpt-1"])


@SHARES_PRETRAINED
def test_rerun_with_another_loss_or_model_refuses(pretrained, tmp_path, capfd):
    model_dir = tmp_path / "model"
    shutil.copytree(pretrained, model_dir)
    before = file_contents(model_dir)
    for flag, words in (("--loss=dcl", ["--loss=ntxent", "--loss=dcl"]),
                        ("--width_multiplier=0.25", ["width_multiplier", "0.125", "0.25"])):
        argv = command_line(model_dir, **PRETRAIN, train_steps=4) + [flag]
        err = run_expecting_exit(argv, capfd)
        assert_one_line_error(err, words + [str(model_dir)])
    assert file_contents(model_dir) == before


def test_non_finite_loss_stops_before_anything_is_written(tmp_path, monkeypatch, capfd):
    """A total loss that turns NaN at step 3: training stops with one line
    naming steps 3-3 and the term, exit status 3; ckpt-2 stays the newest
    checkpoint and no result is written."""
    original = train_lib.Objective.__call__

    def poisoned(self, features, labels, step):
        total, logs = original(self, features, labels, step)
        factor = keras.ops.where(keras.ops.greater_equal(step, 2), np.nan, 1.0)
        logs["total_loss"] = total * factor
        return total * factor, logs

    monkeypatch.setattr(train_lib.Objective, "__call__", poisoned)
    model_dir = tmp_path / "model"
    argv = command_line(model_dir, mode="train_then_eval", train_steps=4, log_every_steps=1)
    err = run_expecting_exit(argv, capfd, status=run.EXIT_NON_FINITE)
    assert_one_line_error(err, ["non-finite", "total_loss", "steps 3-3", "ckpt-2"])
    assert ckpt_numbers(model_dir) == [1, 2]
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")
    assert not (model_dir / "result.json").exists()


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch, capfd):
    """Weights that turn infinite in the last step, after its (finite) loss
    and gradients: the final checkpoint is not written, ckpt-2 stays the
    newest, one line names the variables, exit status 3."""
    original = trainer_tf.Trainer.train_step

    def poisoned(self, features, labels):
        logs = original(self, features, labels)
        bias = self.model.supervised_head.trainable_variables[-1]
        bias.assign(tf.where(self.optimizer.iterations >= 4, np.inf, bias))
        return logs

    monkeypatch.setattr(trainer_tf.Trainer, "train_step", poisoned)
    model_dir = tmp_path / "model"
    argv = command_line(model_dir, mode="train", train_steps=4, checkpoint_steps=2,
                        log_every_steps=1)
    err = run_expecting_exit(argv, capfd, status=run.EXIT_NON_FINITE)
    assert_one_line_error(err, ["non-finite variables after step 4", "head_supervised", "ckpt-2"])
    assert ckpt_numbers(model_dir) == [2]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="Python handles signals in the main thread only")
def test_a_signal_to_a_worker_that_is_not_the_chief_names_the_runs_checkpoint(
        tmp_path, monkeypatch, capfd):
    """A worker other than the chief (made so here) saves into its scratch
    directory, which nothing resumes from: SIGINT after its first step
    gives exit status 130 and one line naming the run's newest checkpoint
    (none yet: only the chief writes them), not its scratch save."""
    model_dir = tmp_path / "model"
    scratch = model_dir / "worker_tmp_1"
    monkeypatch.setattr(trainer_tf, "is_chief", lambda strategy: False)
    monkeypatch.setattr(trainer_tf.Trainer, "worker_dir", property(lambda self: str(scratch)))
    original = trainer_tf.Trainer.run_steps

    def run_then_signal(self, iterator, num_steps):
        logs = original(self, iterator, num_steps)
        os.kill(os.getpid(), signal.SIGINT)
        return logs

    monkeypatch.setattr(trainer_tf.Trainer, "run_steps", run_then_signal)
    argv = command_line(model_dir, mode="train", train_steps=4, checkpoint_steps=4,
                        log_every_steps=1)
    err = run_expecting_exit(argv, capfd, status=128 + signal.SIGINT)
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line == ("run.py: interrupted by SIGINT at step 1 on a worker that does not write "
                    "the run's checkpoints; the run's newest checkpoint is none: to resume, "
                    "start every worker again with its same command"), line
    assert tf.train.latest_checkpoint(str(scratch)).endswith("ckpt-1")


def test_probe_learning_rate_moves_the_probe_at_its_own_rate(tmp_path):
    """One plain SGD step (momentum 0, no warm-up, no weight decay) from the
    same weights: the probe's variables move by −η_probe·g, every other
    trainable variable by −η·g, with η = base·B/256 for both rates."""
    batch = TINY["train_batch_size"]
    cfg, trainer, _ = rebuild(
        tmp_path, optimizer="momentum", momentum=0.0, warmup_epochs=0, weight_decay=0.0,
        learning_rate=0.1, probe_learning_rate=3.0)
    model, optimizer, probe_optimizer = trainer.model, trainer.optimizer, trainer.probe_optimizer
    images, labels = datasets.get_dataset("digits").as_numpy("train")
    images = np.repeat(images, 3 // images.shape[-1], axis=-1)  # grey digits as RGB
    views = train_lib.num_input_views(cfg)
    features = np.concatenate([images[k * batch:(k + 1) * batch] for k in range(views)], axis=-1)
    features = tf.image.resize(tf.cast(features, tf.float32) / 255.0, [cfg.image_size] * 2)
    labels = tf.constant(labels[:batch], tf.int32)

    state = [v.numpy() for v in model.non_trainable_variables]
    grads, _ = trainer.gradients(features, labels)
    before = [v.numpy() for v in model.trainable_variables]
    # The step's own forward pass must start from the same batch-norm moving
    # statistics (the probe's clean view is encoded with them).
    for variable, value in zip(model.non_trainable_variables, state):
        variable.assign(value)
    trainer.train_step(features, labels)
    probe = {id(v) for v in model.supervised_head.trainable_variables}
    assert len(probe) == 2
    for variable, g, old in zip(model.trainable_variables, grads, before):
        rate = (3.0 if id(variable) in probe else 0.1) * batch / 256
        np.testing.assert_allclose(variable.numpy(), old - rate * g.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=variable.path)
    assert int(optimizer.iterations.numpy()) == int(probe_optimizer.iterations.numpy()) == 1


# ---------------------------------------------------------------------------
# 5. Fine-tuning from a pretrained run.
# ---------------------------------------------------------------------------
FINETUNE = dict(mode="train", train_mode="finetune", fine_tune_after_block=4, warmup_epochs=0,
                learning_rate=1.0, seed=1)


@SHARES_PRETRAINED
def test_finetune_head_only_keeps_the_pretrained_encoder(pretrained, tmp_path, capsys):
    model_dir = tmp_path / "model"
    capsys.readouterr()
    train(model_dir, checkpoint=str(pretrained), **FINETUNE)
    report = capsys.readouterr().out
    assert ckpt_numbers(model_dir) == [1, 2]
    _, after_trainer, _ = rebuild(model_dir, checkpoint=str(pretrained), **FINETUNE)
    encoder = [v.path for v in after_trainer.model.resnet_model.variables]
    assert any("moving_mean" in p for p in encoder)
    assert f"encoder {len(encoder)}/{len(encoder)}" in report, report
    before = saved_groups(tf.train.latest_checkpoint(str(pretrained)))["model"]
    after = saved_groups(tf.train.latest_checkpoint(str(model_dir)))["model"]
    for path in encoder:
        assert path in before and path in after, path
        assert_bitwise_equal(after[path], before[path], path)
    # The linear head did train.
    head = [v.path for v in after_trainer.model.supervised_head.variables]
    assert any(np.any(after[p] != before[p]) for p in head)


@SHARES_PRETRAINED
def test_finetune_takes_the_architecture_of_its_checkpoint(pretrained, tmp_path, capfd):
    """Unset architecture flags come from the checkpoint's run; a
    contradicting one is one line, exit 2."""
    cfg, _ = configs.resolve(**dict(FINETUNE, checkpoint=str(pretrained),
                                    model_dir=str(tmp_path / "a")))
    saved = read_json(pretrained / "flags.json")
    for name in config.ARCHITECTURE_FLAGS + ("image_size",):
        assert getattr(cfg, name) == saved[name], name
    argv = command_line(tmp_path / "b", checkpoint=str(pretrained), **FINETUNE) + ["--resnet_depth=34"]
    assert_one_line_error(run_expecting_exit(argv, capfd),
                          ["--resnet_depth=34", "--resnet_depth=18", str(pretrained)])


@SHARES_PRETRAINED
def test_checkpoint_of_another_encoder_is_refused(pretrained, tmp_path, capfd):
    """Without a record to read, a checkpoint whose encoder does not match
    (another width) fails in one line naming a mismatched variable and its
    shapes, before anything is trained."""
    bare = tmp_path / "bare"
    shutil.copytree(pretrained, bare)
    (bare / "flags.json").unlink()
    model_dir = tmp_path / "model"
    argv = command_line(model_dir, checkpoint=str(bare), **FINETUNE) + ["--width_multiplier=0.25"]
    err = run_expecting_exit(argv, capfd)
    assert_one_line_error(err, ["does not hold this encoder", "in the checkpoint", "here"])
    assert ckpt_numbers(model_dir) == []


@SHARES_PRETRAINED
def test_partial_checkpoint_restores_what_matches_and_lists_the_rest(
        pretrained, tmp_path, capsys):
    """#182 of the original: a ResNet-34 initialised from a ResNet-18 run.
    Refused without --partial_checkpoint; with it, every variable whose
    path and shape the checkpoint holds is restored bit for bit, and every
    other one is listed, one line each, as found by reading the checkpoint
    here."""
    flags = dict(FINETUNE, checkpoint=str(pretrained), train_steps=1)
    model_dir = tmp_path / "model"
    capsys.readouterr()
    train(model_dir, resnet_depth=34, partial_checkpoint=True, **flags)
    out = capsys.readouterr().out.splitlines()
    saved = saved_groups(tf.train.latest_checkpoint(str(pretrained)))["model"]
    _, trainer, _ = rebuild(model_dir, resnet_depth=34, partial_checkpoint=True, **flags)
    encoder = {v.path: tuple(v.shape) for v in trainer.model.resnet_model.variables}
    matching = [p for p, shape in encoder.items() if p in saved and saved[p].shape == shape]
    expected_skipped = sorted(set(encoder) - set(matching))
    assert 0 < len(matching) < len(encoder)
    [index] = [i for i, line in enumerate(out) if line.startswith("initialised from")]
    assert f"encoder {len(matching)}/{len(encoder)}" in out[index], out[index]
    assert out[index].endswith(f"skipped {len(expected_skipped)}:"), out[index]
    listed = out[index + 1:index + 1 + len(expected_skipped)]
    assert sorted(line.split()[1] for line in listed) == expected_skipped, listed
    assert all(line.startswith("  skipped ") for line in listed)
    # The encoder is frozen (--fine_tune_after_block=4): what was restored
    # is still the checkpoint's after training.
    after = saved_groups(tf.train.latest_checkpoint(str(model_dir)))["model"]
    for path in matching:
        assert_bitwise_equal(after[path], saved[path], path)


def test_checkpoint_of_the_original_tf1_release_is_refused(tmp_path, capfd):
    """A name-based checkpoint (the original's TF1 `tf.train.Saver`
    format, google-research/simclr #63, #135): one line saying what it is
    and what was expected, exit status 2, before anything is trained."""
    prefix = str(tmp_path / "tf1" / "model.ckpt-100")
    with tf.Graph().as_default():
        # A constant initialiser: a --deterministic run earlier in this
        # process turns on op determinism, which refuses unseeded random ops.
        tf.compat.v1.get_variable("base_model/conv2d/kernel", shape=[3, 3, 3, 8],
                                  initializer=tf.compat.v1.zeros_initializer())
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, prefix)
    model_dir = tmp_path / "model"
    argv = command_line(model_dir, checkpoint=prefix, **FINETUNE)
    err = run_expecting_exit(argv, capfd)
    assert_one_line_error(err, [f"--checkpoint={prefix}", "name-based (TF1)",
                                "expected one written by this project"])
    assert ckpt_numbers(model_dir) == []


@SHARES_PRETRAINED
def test_finetune_on_other_classes_skips_the_head_and_says_so(pretrained, tmp_path, capsys):
    """The pretrained 10-class probe does not fit a 2-class task: the encoder
    is restored, the supervised head is skipped, and the report says which."""
    write_folder(tmp_path / "images", size=8, per_class=20)
    capsys.readouterr()
    run.FLAGS.unparse_flags()
    run.parse_flags(["run.py", "--dataset=image_folder", f"--data_dir={tmp_path / 'images'}",
                     f"--model_dir={tmp_path / 'model'}", f"--checkpoint={pretrained}",
                     "--train_mode=finetune", "--fine_tune_after_block=4", "--mode=train",
                     "--train_steps=1", "--train_batch_size=32"])
    run.run_main(["run.py"])
    report = [line for line in capsys.readouterr().out.splitlines() if "initialised from" in line]
    assert len(report) == 1, report
    assert "supervised head 0/2" in report[0] and "head_supervised" in report[0], report[0]
    assert ckpt_numbers(tmp_path / "model") == [1]


def test_riesz_kernel_takes_a_negative_exponent(tmp_path):
    cfg, _ = configs.resolve(loss="kcl", kcl_kernel="riesz", kcl_t=-1.0, model_dir=str(tmp_path))
    assert cfg.loss_params["t"] == -1.0 and cfg.kcl_t == -1.0


def test_finetune_without_checkpoint_says_it_starts_from_random_weights(tmp_path):
    cfg, _ = configs.resolve(**dict(FINETUNE, model_dir=str(tmp_path)))
    assert any("random weights" in line for line in cfg.notices), cfg.notices


# ---------------------------------------------------------------------------
# 6. Presets.
# ---------------------------------------------------------------------------
def test_overriding_the_optimizer_drops_the_presets_learning_rates(tmp_path):
    """--optimizer=lars on digits does not inherit Adam's learning rates: they
    fall back to the flags' defaults, and a notice says so."""
    preset = datasets.get_dataset("digits").preset()
    assert preset["optimizer"] == "adam"
    cfg, _ = configs.resolve(optimizer="lars", model_dir=str(tmp_path))
    defaults = configs.defaults()
    assert cfg.learning_rate == defaults["learning_rate"] != preset["learning_rate"]
    assert cfg.probe_learning_rate == defaults["probe_learning_rate"]
    [notice] = cfg.notices
    assert "--learning_rate=0.3" in notice and f"--learning_rate={preset['learning_rate']}" in notice
    # Keeping the preset's optimizer keeps its learning rate; a loss other
    # than the preset's NT-Xent drops the preset's temperature.
    cfg, _ = configs.resolve(optimizer="adam", model_dir=str(tmp_path))
    assert cfg.learning_rate == preset["learning_rate"] and not cfg.notices
    cfg, _ = configs.resolve(loss="dcl", model_dir=str(tmp_path))
    assert cfg.temperature == objective.LOSS_PARAMS["dcl"]["temperature"]


def write_folder(root, size=32, per_class=70, classes=("a", "b")):
    """root/{train,test}/<class>/<i>.png of random RGB images."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 4)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


def test_small_image_folder_gets_a_laptop_preset_and_writes_a_result(tmp_path):
    """A folder of 32 px PNGs: CIFAR-stem ResNet-18 at its own size, batch
    128, trained then evaluated; a plain run (only shortened) writes
    result.json."""
    write_folder(tmp_path / "images")
    cfg, _ = configs.resolve(dataset="image_folder", data_dir=str(tmp_path / "images"),
                             model_dir=str(tmp_path / "model"))
    assert (cfg.image_size, cfg.resnet_depth, cfg.train_batch_size) == (32, 18, 128)
    assert cfg.mode == "train_then_eval" and cfg.eval_split == "test"
    run.FLAGS.unparse_flags()
    run.parse_flags(["run.py", "--dataset=image_folder", f"--data_dir={tmp_path / 'images'}",
                     f"--model_dir={tmp_path / 'model'}", "--train_steps=1",
                     "--width_multiplier=0.125", "--keep_hub_module_max=0"])
    run.run_main(["run.py"])
    result = read_json(tmp_path / "model" / "result.json")
    assert result["global_step"] == 1
    assert read_json(tmp_path / "model" / "flags.json")["image_size"] == 32
