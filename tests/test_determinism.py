"""`--deterministic`: the same command twice gives bit-identical summaries
and weights, and so does a run killed with SIGKILL after a checkpoint and
started again with the same command.

Real `python run.py` processes (TensorFlow backend), tiny configuration;
their stdout is a pipe, so the progress must come as plain lines.
"""
import os
import signal
import subprocess
import sys
import time

import tensorflow as tf

from test_run import ROOT, TINY, command_line, saved_groups, scalars

STEPS = 40
FLAGS = dict(mode="train", deterministic=True, train_steps=STEPS, checkpoint_steps=10,
             log_every_steps=5, warmup_epochs=0)


def launch(model_dir):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable] + command_line(model_dir, **FLAGS), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def final_state(model_dir):
    prefix = tf.train.latest_checkpoint(str(model_dir))
    assert prefix.endswith(f"ckpt-{STEPS}"), prefix
    return saved_groups(prefix)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for group in a:
        assert a[group].keys() == b[group].keys(), group
        for key, value in a[group].items():
            assert value.tobytes() == b[group][key].tobytes(), f"{group}/{key}"


def training_scalars(model_dir):
    return {tag: points for tag, points in scalars(model_dir).items()
            if tag.startswith("train/") or tag == "learning_rate"}


def test_deterministic_runs_repeat_and_survive_sigkill(tmp_path):
    first, second, killed = tmp_path / "first", tmp_path / "second", tmp_path / "killed"
    runs = [launch(first), launch(second)]  # side by side, on two cores
    out, _ = [finish(process) for process in runs]
    assert f"step {STEPS}/{STEPS}" in out
    assert "\x1b[" not in out and "\r" not in out and "\b" not in out
    reference = training_scalars(first)
    assert sorted(s for s, _ in reference["train/total_loss"]) == list(range(5, STEPS + 1, 5))
    assert training_scalars(second) == reference
    assert_same_state(final_state(second), final_state(first))

    process = launch(killed)
    deadline = time.time() + 300
    # After a complete checkpoint: the state file names it.
    while tf.train.latest_checkpoint(str(killed)) is None:
        assert process.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    interrupted_at = int(tf.train.latest_checkpoint(str(killed)).rsplit("-", 1)[1])
    assert interrupted_at < STEPS, "the run finished before it was killed"
    out = finish(launch(killed))
    assert f"resumed from {killed}/ckpt-{interrupted_at}" in out
    # Every logged point, from both processes, is the uninterrupted run's.
    expected = {tag: dict(points) for tag, points in reference.items()}
    for tag, points in training_scalars(killed).items():
        for step, value in points:
            assert value == expected[tag][step], (tag, step)
    assert_same_state(final_state(killed), final_state(first))
