"""run_record.py and config.py: what a command owes the runs on disk, and
what a run records.

Commands are resolved as `python run.py` resolves them (`configs.resolve`,
in-process, nothing trained) against run directories made here: a record
(flags.json) and a checkpoint written by TensorFlow itself.
"""
import json
import os

import pytest
import tensorflow as tf

import config
import configs
import run
import run_flags
import run_record
from errors import UsageError
from test_run import assert_one_line_error, command_line, run_expecting_exit
from test_run import reset_flags  # noqa: F401  (autouse fixture)


def trained_run(directory, **recorded):
    """A run directory: a checkpoint and the flags.json of a resolved
    command with `recorded` set."""
    cfg, _ = configs.resolve(**dict(dict(model_dir=str(directory)), **recorded))
    os.makedirs(directory, exist_ok=True)
    tf.train.Checkpoint(v=tf.Variable(1.0)).save(os.path.join(directory, "ckpt"))
    run_record.write_record(cfg)
    return cfg


def test_eval_takes_no_initialisation_flag_from_the_record(tmp_path):
    """A fine-tuned run whose --checkpoint (with --partial_checkpoint) has
    been moved away: --mode=eval resolves, with neither flag taken from its
    record; passing --checkpoint with --mode=eval is one line naming it."""
    pretrained = tmp_path / "pretrained"
    tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(pretrained / "ckpt"))
    model_dir = tmp_path / "finetuned"
    trained_run(model_dir, train_mode="finetune", checkpoint=str(pretrained),
                partial_checkpoint=True, zero_init_logits_layer=True)
    record = run_record.read_record(str(model_dir))
    assert record["checkpoint"] == str(pretrained) and record["partial_checkpoint"] is True
    os.rename(pretrained, tmp_path / "moved")

    cfg, _ = configs.resolve(mode="eval", model_dir=str(model_dir))
    assert cfg.train_mode == "finetune"
    assert (cfg.checkpoint, cfg.partial_checkpoint, cfg.zero_init_logits_layer) == (
        None, False, False)
    for flag in ("checkpoint", "partial_checkpoint"):
        with pytest.raises(UsageError, match=rf"^--{flag} does not apply to --mode=eval"):
            configs.resolve(mode="eval", model_dir=str(model_dir),
                            **{flag: str(tmp_path / "moved") if flag == "checkpoint" else True})


def test_an_unusable_model_dir_is_one_line_and_exit_status_2(tmp_path, capfd):
    """Under a regular file, or a file itself: one line naming it, exit
    status 2, nothing created."""
    regular = tmp_path / "file"
    regular.write_text("not a directory")
    for model_dir, words in ((regular / "run", ["is under", str(regular), "a file"]),
                             (regular, ["is a file"])):
        err = run_expecting_exit(command_line(model_dir), capfd)
        assert_one_line_error(err, [f"--model_dir={model_dir}", *words])
    assert sorted(os.listdir(tmp_path)) == ["file"]
    assert regular.read_text() == "not a directory"


def test_a_model_dir_in_a_directory_it_cannot_write_is_refused(tmp_path, monkeypatch):
    """The nearest existing ancestor is the one asked (as root, whom a
    read-only mode does not stop, `os.access` is what says no here)."""
    asked = []

    def access(path, mode):
        asked.append(path)
        return False

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(UsageError, match=rf"{tmp_path} is not writable"):
        run_record.check_model_dir(str(tmp_path / "a" / "b"))
    assert asked == [str(tmp_path)]


def test_a_multi_worker_run_without_model_dir_is_asked_for_one():
    """Each worker would stamp the default --model_dir with its own clock:
    with TF_CONFIG naming two workers the default is refused in one line;
    with one (or none) it is runs/<dataset>_<mode>_<loss>_<time>."""
    cfg, _ = configs.resolve()
    two = json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                      "task": {"type": "worker", "index": 1}})
    with pytest.raises(UsageError, match=r"TF_CONFIG names 2 workers.*--model_dir"):
        run_record.default_model_dir(cfg, {"TF_CONFIG": two})
    one = json.dumps({"cluster": {"worker": ["localhost:1"]},
                      "task": {"type": "worker", "index": 0}})
    for environ in ({"TF_CONFIG": one}, {}):
        name = run_record.default_model_dir(cfg, environ)
        assert name.startswith("runs/digits_pretrain_ntxent_"), name


# ---------------------------------------------------------------------------
# What a run records: null for every flag it does not use.
# ---------------------------------------------------------------------------
LOSS_AND_SUMMARY_FLAGS = ("loss", "loss_chunk_size", *config.LOSS_FLAGS)
PROBE_FLAGS = ("probe_learning_rate", "probe_weight_decay", "probe_view")


@pytest.mark.parametrize("train_mode", ["autoencoder", "finetune"])
def test_runs_without_a_contrastive_loss_record_its_flags_as_null(train_mode):
    """The digits preset sets --temperature and the probe's flags; an
    autoencoder or fine-tuning run uses no contrastive loss (and
    fine-tuning no online probe, no colour distortion): they are None."""
    cfg, _ = configs.resolve(train_mode=train_mode)
    record = cfg.record()
    for flag in LOSS_AND_SUMMARY_FLAGS:
        assert record[flag] is None, flag
    assert cfg.loss_params == {}
    finetune = train_mode == "finetune"
    for flag in PROBE_FLAGS + ("lineareval_while_pretraining", "color_jitter_strength",
                               "use_blur"):
        assert (record[flag] is None) == finetune, flag
    assert (record["fine_tune_after_block"] is None) != finetune
    assert record["probe_batch_norm"] is True  # the preset's: the head's input BN
    # Adam, the digits preset's optimizer, has no momentum.
    assert record["momentum"] is None and record["optimizer"] == "adam"


def test_pretraining_records_what_its_loss_and_probe_use():
    cfg, _ = configs.resolve(loss="kcl")
    record = cfg.record()
    # The summaries' temperature: the flag's default (another loss than the
    # preset's drops the preset's temperature).
    assert record["loss"] == "kcl" and record["temperature"] == 0.1
    assert record["kcl_kernel"] == "gaussian" and record["hidden_norm"] is None
    assert record["probe_view"] == "clean" and record["fine_tune_after_block"] is None
    cfg, _ = configs.resolve(lineareval_while_pretraining=False, optimizer="lars")
    record = cfg.record()
    assert all(record[flag] is None for flag in PROBE_FLAGS + ("probe_batch_norm",))
    assert record["momentum"] == 0.9


@pytest.mark.parametrize("flag,value", [("temperature", 0.5), ("loss", "dcl"),
                                        ("hidden_norm", False)])
def test_a_loss_flag_outside_pretraining_is_one_line(flag, value):
    with pytest.raises(UsageError, match=rf"^--{flag} applies to --train_mode=pretrain only"):
        configs.resolve(train_mode="autoencoder", **{flag: value})


def test_eval_wait_secs_applies_to_eval_mode_only():
    with pytest.raises(UsageError, match=r"^--eval_wait_secs applies to --mode=eval"):
        configs.resolve(mode="train", eval_wait_secs=10)


def test_an_autoencoder_record_evaluates_and_resumes_with_its_nulls(tmp_path):
    """Its nulls neither contradict a command nor break resolving it: eval
    takes them, and the same training command resumes."""
    model_dir = tmp_path / "model"
    trained = trained_run(model_dir, train_mode="autoencoder")
    cfg, _ = configs.resolve(mode="eval", model_dir=str(model_dir))
    assert cfg.train_mode == "autoencoder" and cfg.temperature is None
    again, _ = configs.resolve(model_dir=str(model_dir), train_mode="autoencoder")
    assert again.record() == trained.record()


def test_a_record_from_before_null_still_resumes(tmp_path):
    """A record that gave a value to a flag the run does not use (as runs
    recorded before it was null) is the same run: a flag this command does
    not use cannot contradict it."""
    model_dir = tmp_path / "model"
    trained_run(model_dir, train_mode="autoencoder")
    path = model_dir / run_record.RECORD_FILE
    record = json.loads(path.read_text())
    record.update(loss="ntxent", temperature=0.2, hidden_norm=True)
    path.write_text(json.dumps(record))
    configs.resolve(model_dir=str(model_dir), train_mode="autoencoder")
    with pytest.raises(UsageError, match=r"holds a run trained with --train_mode=autoencoder"):
        configs.resolve(model_dir=str(model_dir))


def test_every_flag_run_flags_defines_is_one_config_knows():
    """The flags of run_flags.py and the names config.py's rules speak of
    (a rule about a flag that does not exist would never apply)."""
    names = set(run_flags.PROJECT_FLAG_NAMES)
    for group in (config.LOSS_FLAGS, config.PRESET_OWNERS, config.SESSION_FLAGS,
                  config.INITIALISATION_FLAGS, config.ARCHITECTURE_FLAGS,
                  config.DATASET_FLAGS, config.unused_flags(run_flags.defaults()),
                  [name for name, _, _ in config.validators()], config.CHOICES):
        assert set(group) <= names, sorted(set(group) - names)
    assert set(config.PRESET_OWNERS.values()) <= names
    assert run.PROJECT_FLAG_NAMES == run_flags.PROJECT_FLAG_NAMES
