"""bench/input_pipeline.py as a user runs it: its --smoke measurement of the
training input pipeline, with run.py flags appended; its timed blocks
against a clock whose readings the test sets."""
import importlib.util
import json
import os
import subprocess
import sys
import time
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "input_pipeline.py")


@pytest.mark.parametrize("in_step", [False, True], ids=["views", "augment_in_step"])
def test_input_pipeline_bench_times_batches_of_the_flags_batch_size_and_views(in_step):
    """The --smoke record has the flags' batch size and views, the shape of
    a view (with --augment_in_step of the delivered image: the digits' own
    8 x 8 pixels, whatever --image_size), and timings consistent with each
    other and with the run."""
    flags = ["--train_batch_size=64", "--image_size=12", "--probe_view=augmented"]
    flags += ["--augment_in_step"] if in_step else []
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--repeats=3"] + flags,
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    assert done.returncode == 0, done.stdout + done.stderr
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["measure"] == "pipeline" and record["flags"] == flags, record
    assert record["backend"] == "tensorflow" and record["device"].startswith("cpu"), record
    # Two augmented views of 12 x 12 RGB (no clean view with the probe on
    # the augmented ones); --smoke times 3 batches per block, 3 blocks here.
    delivered = ("image_shape", [8, 8, 3]) if in_step else ("view_shape", [12, 12, 3])
    assert (record["batch_size"], record["views"], record[delivered[0]]) == (64, 2, delivered[1])
    assert (record["batches"], record["repeats"], record["images"]) == (3, 3, 3 * 64 * 3)
    per_s, ms = record["images_per_s"], record["ms_per_batch"]
    # Each block's images/s is 64 images over its ms per batch, so the
    # slowest block in one unit is the slowest in the other: min images/s
    # goes with max ms, max with min, and the median with the median (3
    # blocks), to the 0.1 and 0.01 they are rounded to.
    for rate, per_batch in (("min", "max"), ("median", "median"), ("max", "min")):
        assert per_s[rate] * ms[per_batch] / 1e3 == pytest.approx(64, rel=0.01), record
    # The 9 timed batches are milliseconds of this run.
    assert 0 < 9 * ms["min"] and 9 * ms["max"] < elapsed_ms, record


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_input_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_pipeline_times_blocks_of_batches_after_the_warmup(monkeypatch):
    bench = load_bench()
    clock = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(
        perf_counter=lambda: clock["wall"], process_time=lambda: clock["cpu"]))

    def batches():
        """Batch k takes 2^k s of wall time and k s of CPU time to read."""
        for k in range(100):
            clock["wall"] += 2.0 ** k
            clock["cpu"] += k
            yield k

    args = types.SimpleNamespace(warmup=2, batches=3, repeats=2)
    seconds, cpu_seconds, batch = bench.time_pipeline(batches(), args)
    # Batches 0 and 1 warm up; blocks are batches 2-4 and 5-7.
    assert seconds == [4 + 8 + 16, 32 + 64 + 128]
    assert cpu_seconds == [2 + 3 + 4, 5 + 6 + 7]
    assert batch == 1, "the last warm-up batch, whose shape the record reports"
    assert bench.spread([s / 3 * 1e3 for s in seconds], 2) == dict(
        median=pytest.approx((28 + 224) / 6 * 1e3), min=pytest.approx(28 / 3 * 1e3),
        max=pytest.approx(224 / 3 * 1e3))
