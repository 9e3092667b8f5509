"""bench/loss.py as a user runs it: its --smoke measurements (each in a fresh
process, under JAX, the quicker to start) and the line of a size it skips;
its timing statistics against a clock whose readings the test sets."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "loss.py")


def test_loss_bench_measures_whole_and_chunked_losses_and_skips_what_would_not_fit():
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--backend=jax",
         "--losses=ntxent,kcl", "--sizes=64,1048576", "--max_mib=100"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    # kcl has no chunked form; at 2N = 2^20 both would need far over 100 MiB.
    assert [(r["loss"], r["two_n"], r["chunk_size"]) for r in records] == [
        ("ntxent", 64, None), ("ntxent", 64, 24), ("kcl", 64, None),
        ("ntxent", 1048576, None), ("ntxent", 1048576, 24), ("kcl", 1048576, None)]
    timed_ms = 0.0
    for record in records[:3]:
        assert record["backend"] == "jax" and record["d"] == 16, record
        assert record["device"].startswith("cpu") or record["peak_device_mib"] > 0, record
        times = record["ms_fwd_bwd"]
        # --smoke times 2 passes: their median is their mean, to the 0.001 ms
        # each of the three numbers is rounded to.
        assert times["repeats"] == 2, times
        assert times["median"] == pytest.approx((times["min"] + times["max"]) / 2, abs=1.5e-3)
        assert times["min"] > 0, times
        timed_ms += 2 * times["median"]
        assert record["peak_rss_mib"] >= record["start_rss_mib"] > 0, record
    # The timed passes are milliseconds of this run, not a larger unit.
    assert timed_ms < elapsed_ms
    for record in records[3:]:
        assert "--max_mib=100" in record["skipped"] and "ms_fwd_bwd" not in record, record


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """perf_counter readings that advance by the given seconds between a
    pass's start and end, and stand still between passes."""

    def __init__(self, durations):
        self.readings = []
        now = 100.0
        for seconds in durations:
            self.readings += [now, now + seconds]
            now += seconds
        self.readings.reverse()

    def perf_counter(self):
        return self.readings.pop()


def test_measure_reports_the_median_min_and_max_of_its_timed_passes_in_ms(monkeypatch):
    bench = load_bench()
    durations = [0.004, 0.001, 0.0025, 0.0105]  # seconds, in the order timed
    clock = FakeClock(durations)
    monkeypatch.setattr(bench, "time", clock)
    record = bench.measure(dict(loss="ntxent", two_n=8, d=4, chunk_size=None,
                                repeats=len(durations), warmup=1))
    assert clock.readings == [], "one reading before and one after each timed pass"
    ms = 1e3 * np.array(durations)
    assert record["ms_fwd_bwd"] == dict(median=pytest.approx(np.median(ms)),
                                        min=pytest.approx(ms.min()),
                                        max=pytest.approx(ms.max()), repeats=4)
    assert (record["loss"], record["two_n"], record["d"], record["chunk_size"]) == (
        "ntxent", 8, 4, None)
