"""`--deterministic`: the same command twice gives bit-identical summaries
and weights, also when the second run is killed with SIGKILL after a
checkpoint, its newest checkpoint damaged, and started again with the same
command; SIGINT and SIGTERM save the step reached.

Real `python run.py` processes (TensorFlow backend, and JAX for one leg of
the SIGINT/SIGTERM test), tiny configuration; their stdout is a pipe, so
the progress must come as plain lines. (The SIGKILL test under JAX is in
tests/test_trainer_jax.py.)
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

import checkpoint as checkpoint_lib
import run
from test_run import ROOT, command_line, damage, saved_groups, scalars
from test_run import reset_flags  # noqa: F401  (autouse fixture)

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


@pytest.mark.processes
def test_deterministic_runs_repeat_and_survive_sigkill(tmp_path):
    """Two runs of the same command, side by side on two cores: one runs
    through; the other is killed after its second checkpoint, whose data
    file is then cut in half (a disk that filled, a bad copy), and started
    again. It names the damaged checkpoint in one warning line and resumes
    from the one before it. Every scalar that either process of the second
    run logged, and its final state, must be the first run's bit for bit:
    the part before the kill repeats a fresh run, the part after it a
    resumed one."""
    first, killed = tmp_path / "first", tmp_path / "killed"
    runs = [launch(first), launch(killed)]
    deadline = time.time() + 300
    # After its second complete checkpoint: the state file names it.
    every = FLAGS["checkpoint_steps"]
    while (tf.train.latest_checkpoint(str(killed)) or "-0").endswith(("-0", f"-{every}")):
        assert runs[1].poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    runs[1].send_signal(signal.SIGKILL)
    runs[1].communicate(timeout=60)
    assert runs[1].returncode == -signal.SIGKILL
    interrupted_at = checkpoint_lib.checkpoint_step(tf.train.latest_checkpoint(str(killed)))
    assert interrupted_at < STEPS, "the run finished before it was killed"
    [data] = killed.glob(f"ckpt-{interrupted_at}.data-*")
    damage(data, "truncated")
    before_resume = training_scalars(killed)
    resumed = launch(killed)

    out = finish(runs[0])
    assert f"step {STEPS}/{STEPS}" in out
    assert "\x1b[" not in out and "\r" not in out and "\b" not in out
    reference = training_scalars(first)
    assert sorted(s for s, _ in reference["train/total_loss"]) == list(range(5, STEPS + 1, 5))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from {killed}/ckpt-{interrupted_at - every}" in out
    [warning] = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert f"{killed}/ckpt-{interrupted_at} cannot be read" in warning, warning
    expected = {tag: dict(points) for tag, points in reference.items()}
    logged = training_scalars(killed)
    # Summaries are flushed before each checkpoint: the killed process logged
    # up to its checkpoint at least, and the two processes cover every step.
    before = {s for s, _ in before_resume["train/total_loss"]}
    assert set(range(5, interrupted_at + 1, 5)) <= before
    assert {s for s, _ in logged["train/total_loss"]} == set(range(5, STEPS + 1, 5))
    for tag, points in logged.items():
        for step, value in points:
            assert value == expected[tag][step], (tag, step)
    assert_same_state(final_state(killed), final_state(first))


def wait_for_line(process, prefix, timeout=300):
    """Reads the process's stdout until a line starting with `prefix`; a
    process silent for `timeout` seconds is killed, which ends its stdout."""
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            if line.startswith(prefix):
                return line
    finally:
        timer.cancel()
    raise AssertionError(f"stdout ended before a line starting with {prefix!r} "
                         f"(exit status {process.poll()})")


@pytest.mark.processes
def test_sigint_and_sigterm_save_the_step_reached_and_say_how_to_resume(tmp_path, capsys):
    """A run far from its end (checkpoints every 1,000 steps) gets SIGINT
    after its first logged steps: within seconds it exits with 128 + 2,
    having saved a checkpoint of the step it reached, with one line on
    stderr naming that step and the command to resume. That command, run
    under JAX, resumes from exactly there; SIGTERM then stops it the same
    way (128 + 15). Every step's summaries are written once across the
    two. --mode=eval of the stopped run evaluates its newest checkpoint and
    exits; with --eval_wait_secs it waits that long for a newer one."""
    model_dir = tmp_path / "model"
    argv = [sys.executable] + command_line(
        model_dir, mode="train", train_steps=100_000, checkpoint_steps=1000, log_every_steps=2,
        warmup_epochs=0)
    stopped = []
    for signum, backend in ((signal.SIGINT, "tensorflow"), (signal.SIGTERM, "jax")):
        env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=backend)
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        if stopped:
            assert wait_for_line(process, "resumed from").strip() == (
                f"resumed from {model_dir}/ckpt-{stopped[-1]}")
        wait_for_line(process, "step ")
        process.send_signal(signum)
        sent = time.time()
        _, err = process.communicate(timeout=120)
        assert time.time() - sent < 30
        assert process.returncode == 128 + signum, err[-2000:]
        lines = [line for line in err.splitlines() if line.startswith("run.py:")]
        assert len(lines) == 1, err[-2000:]
        step = int(lines[0].split(" at step ")[1].split(",")[0])
        name = signal.Signals(signum).name
        assert lines[0].startswith(f"run.py: interrupted by {name} at step {step}, saved as "
                                   f"{model_dir}/ckpt-{step}; to resume, run the same command: ")
        assert f"--model_dir={model_dir}" in lines[0] and "Traceback" not in err
        assert step % 2 == 0 and step % 1000 != 0 and step > (stopped or [0])[-1]
        assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{step}")
        reader = tf.train.load_checkpoint(str(model_dir / f"ckpt-{step}"))
        assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == step
        stopped.append(step)
    logged = sorted(s for s, _ in scalars(model_dir)["train/total_loss"])
    assert logged == list(range(2, stopped[-1] + 1, 2))

    # The run stopped before its last step and trains no more: --mode=eval
    # evaluates its newest checkpoint and exits, instead of waiting for the
    # next as the original's evaluator would (a real process, as a user runs
    # it); with --eval_wait_secs it waits that long for a newer one first.
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "run.py", "--mode=eval", f"--model_dir={model_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((model_dir / "result.json").read_text())["global_step"] == stopped[-1]
    assert "no checkpoint newer than" not in done.stdout
    (model_dir / "result.json").unlink()
    start = time.time()
    run.FLAGS.unparse_flags()
    run.parse_flags(["run.py", "--mode=eval", f"--model_dir={model_dir}", "--eval_wait_secs=2"])
    run.run_main(["run.py"])
    assert time.time() - start >= 2
    assert json.loads((model_dir / "result.json").read_text())["global_step"] == stopped[-1]
    assert f"no checkpoint newer than {model_dir}/ckpt-{stopped[-1]} in 2 s" in capsys.readouterr().out


@pytest.mark.processes
def test_deterministic_from_a_flagfile_turns_on_xlas_deterministic_kernels(tmp_path):
    """--deterministic read by absl, in any spelling (here `=1` in a
    --flagfile), reaches XLA under JAX: the JAX trainer adds XLA's
    deterministic-kernel flag to XLA_FLAGS before JAX creates its
    backends (which it refuses to do after)."""
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--deterministic=1\n--model_dir={tmp_path / 'model'}\n")
    code = (
        "import os\n"
        "from jax._src import xla_bridge\n"
        "import run, trainers\n"
        f"run.parse_flags(['run.py', '--flagfile={flagfile}'])\n"
        "cfg, _ = run.resolve_flags()\n"
        "before = xla_bridge.backends_are_initialized()\n"
        "trainers.make_trainer(cfg)\n"
        "print(cfg.deterministic, before, xla_bridge.backends_are_initialized())\n"
        "print('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''))\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=ROOT, KERAS_BACKEND="jax")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    states, xla_flags = done.stdout.strip().splitlines()[-2:]
    assert states == "True False True"
    assert xla_flags == "XLA_FLAGS=--xla_gpu_deterministic_ops=true"
