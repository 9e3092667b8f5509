"""bench/loss.py as a user runs it: its --smoke measurements (each in a fresh
process, under JAX, the quicker to start) and the line of a size it skips."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loss_bench_measures_whole_and_chunked_losses_and_skips_what_would_not_fit():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "loss.py"), "--smoke", "--backend=jax",
         "--losses=ntxent,kcl", "--sizes=64,1048576", "--max_mib=100"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    # kcl has no chunked form; at 2N = 2^20 both would need far over 100 MiB.
    assert [(r["loss"], r["two_n"], r["chunk_size"]) for r in records] == [
        ("ntxent", 64, None), ("ntxent", 64, 24), ("kcl", 64, None),
        ("ntxent", 1048576, None), ("ntxent", 1048576, 24), ("kcl", 1048576, None)]
    for record in records[:3]:
        assert record["backend"] == "jax" and record["d"] == 16, record
        assert record["device"].startswith("cpu") or record["peak_device_mib"] > 0, record
        times = record["ms_fwd_bwd"]
        assert 0 < times["min"] <= times["median"] <= times["max"] and times["repeats"] == 2
        assert record["peak_rss_mib"] >= record["start_rss_mib"] > 0, record
    for record in records[3:]:
        assert "--max_mib=100" in record["skipped"] and "ms_fwd_bwd" not in record, record
