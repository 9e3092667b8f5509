"""Load: a long run keeps its disk use and memory flat.

One real `python run.py` process (TensorFlow backend, the tiny
configuration of tests/test_run.py) trains 200 steps with a checkpoint
every 5 steps and `--keep_checkpoint_max=2`; at every progress
line the test reads the process's resident memory (/proc/PID/status) and
the files of its model_dir.
"""
import os
import subprocess
import sys

import pytest

from test_run import ROOT, command_line

STEPS = 200
EVERY = 5
# Resident memory may move by allocator noise (about 10 MB seen between
# samples); a leak of 512 KB a step would add 60 MB between the second
# quarter of the run and its end.
MEMORY_SLACK_MB = 32


def resident_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def files(model_dir):
    """{name: bytes} of the files directly in model_dir."""
    return {entry.name: entry.stat().st_size for entry in os.scandir(model_dir)
            if entry.is_file()}


@pytest.mark.processes
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_a_long_run_keeps_disk_use_and_memory_flat(tmp_path):
    """40 checkpoints, 2 kept: at every sample the directory holds at most
    2 checkpoints, of the same total size once there are 2; the logs (the
    events file, metrics.csv's row per checkpoint) grow by the same bytes
    per step in the second half as in the first; the resident
    memory of the last quarter stays within MEMORY_SLACK_MB of the first
    quarter after warm-up."""
    model_dir = tmp_path / "model"
    argv = [sys.executable] + command_line(
        model_dir, mode="train", train_steps=STEPS, checkpoint_steps=EVERY,
        log_every_steps=EVERY, keep_checkpoint_max=2, warmup_epochs=0)
    process = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = {}  # step: (resident MB, checkpoint files, checkpoint bytes, log bytes)
    for line in process.stdout:
        if not line.startswith("step "):
            continue
        step = int(line.split()[1].split("/")[0])
        found = files(model_dir)
        checkpoints = {name: size for name, size in found.items() if name.startswith("ckpt-")}
        logs = sum(size for name, size in found.items() if name not in checkpoints)
        samples[step] = (resident_mb(process.pid), len(checkpoints),
                         sum(checkpoints.values()), logs)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert sorted(samples) == list(range(EVERY, STEPS + 1, EVERY))

    # A checkpoint is an .index and one .data file.
    assert max(count for _, count, _, _ in samples.values()) == 4
    full = {size for step, (_, _, size, _) in samples.items() if step >= 2 * EVERY}
    assert len(full) == 1, sorted(full)

    half = STEPS // 2
    logs = {step: sample[3] for step, sample in samples.items()}
    first = (logs[half] - logs[EVERY]) / (half - EVERY)  # bytes per step
    second = (logs[STEPS] - logs[half]) / (STEPS - half)
    assert first > 0 and abs(second - first) <= 0.05 * first, (first, second)

    memory = [samples[step][0] for step in sorted(samples)]
    quarter = len(memory) // 4
    baseline = sorted(memory[quarter:2 * quarter])[quarter // 2]
    assert max(memory[-quarter:]) - baseline <= MEMORY_SLACK_MB, memory
