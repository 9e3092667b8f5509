"""bench/input_pipeline.py as a user runs it: its --smoke measurement of the
training input pipeline, with run.py flags appended."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_input_pipeline_bench_times_batches_of_the_flags_batch_size_and_views():
    flags = ["--train_batch_size=64", "--image_size=12", "--probe_view=augmented"]
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "input_pipeline.py"), "--smoke",
         "--repeats=3"] + flags,
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["measure"] == "pipeline" and record["flags"] == flags, record
    assert record["backend"] == "tensorflow" and record["device"].startswith("cpu"), record
    # Two augmented views of 12 x 12 RGB (no clean view with the probe on
    # the augmented ones); --smoke times 3 batches per block, 3 blocks here.
    assert (record["batch_size"], record["views"], record["view_shape"]) == (64, 2, [12, 12, 3])
    assert (record["batches"], record["repeats"], record["images"]) == (3, 3, 3 * 64 * 3)
    per_s, ms = record["images_per_s"], record["ms_per_batch"]
    assert 0 < per_s["min"] <= per_s["median"] <= per_s["max"], record
    assert 0 < ms["min"] <= ms["median"] <= ms["max"], record
    # The median block is the same block in both units (3 blocks): 64
    # images in ms_per_batch milliseconds, to the 0.1 they are rounded to.
    assert abs(per_s["median"] * ms["median"] / 1e3 - 64) < 64 * 0.01, record
