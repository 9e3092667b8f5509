"""bench/gpu.sh, the prepared GPU measurement, at --smoke sizes on this CPU
where TensorFlow cannot be imported (tests/no_tensorflow.py), as on a GPU
machine with JAX, Keras, NumPy and absl-py only: every part runs in its own
processes and writes its JSON lines; PyTorch parts are skipped with a record
where torch is absent; the budget and the options are enforced."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import no_tensorflow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TORCH = all(importlib.util.find_spec(name) for name in ("torch", "torchvision"))


def gpu_sh(tmp_path, *args):
    env = no_tensorflow.environment(tmp_path, PYTHON=sys.executable)
    done = subprocess.run(["bash", "bench/gpu.sh", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, records


def by_part(records):
    parts = {}
    for record in records:
        parts.setdefault(record.get("part"), []).append(record)
    return parts


@pytest.mark.processes
def test_smoke_runs_every_part_without_tensorflow(tmp_path):
    out = tmp_path / "out"
    done, records = gpu_sh(tmp_path, "--smoke", f"--out={out}")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    parts = by_part(records)
    [environment] = parts.pop(None)
    assert environment["versions"]["keras"] and environment["jax_platform"] == "cpu"
    assert json.loads((out / "environment.json").read_text()) == environment
    assert set(parts) == {"loss", "step", "in_step", "torch", "torch_compile"}, parts.keys()
    for part, lines in parts.items():
        assert not [r for r in lines if "error" in r], lines
        if part.startswith("torch") and not HAVE_TORCH:
            [record] = lines
            assert "torch" in record["skipped"]
        else:
            assert not [r for r in lines if "skipped" in r], lines
    files = {"loss": "loss.jsonl", "step": "step.jsonl", "in_step": "in_step.jsonl",
             "torch": "torch.jsonl", "torch_compile": "torch.jsonl"}
    for part, name in files.items():
        written = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert [r for r in written if r["part"] == part] == parts[part]
    # NT-Xent whole and in blocks, forward and backward, under JAX.
    assert [(r["loss"], r["chunk_size"], r["backend"]) for r in parts["loss"]] == [
        ("ntxent", None, "jax"), ("ntxent", 24, "jax")]
    assert all(r["ms_fwd_bwd"]["median"] > 0 for r in parts["loss"])
    # The step fed views, and the step making them from uint8 images.
    [step], [in_step] = parts["step"], parts["in_step"]
    for record, in_step_flag in ((step, False), (in_step, True)):
        assert record["backend"] == "jax" and record["workload"] == "resnet18_32", record
        assert record["config"]["precision"] == "mixed_bfloat16", record
        assert record["config"]["augment_in_step"] is in_step_flag, record
        assert record["ms_per_step"]["median"] > 0 and record["pairs_per_s"] > 0, record
    assert in_step["trainable_params"] == step["trainable_params"]
    if HAVE_TORCH:
        assert all(r["backend"] == "torch" for r in parts["torch"] + parts["torch_compile"])


def test_a_spent_budget_skips_what_no_longer_fits(tmp_path):
    done, records = gpu_sh(tmp_path, "--smoke", "--budget=1", f"--out={tmp_path / 'out'}")
    assert done.returncode == 1, done.stdout + done.stderr
    parts = by_part(records)
    assert {"loss", "step", "in_step"} <= set(parts)
    for part in ("loss", "step", "in_step"):
        assert all("--budget of 1 s ran out" in r["skipped"] for r in parts[part]), parts[part]


@pytest.mark.parametrize("args,names", [
    ((), ["--out=DIR is required"]),
    (("--out=x", "--budget=soon"), ["--budget", "soon"]),
    (("--out=x", "--fast"), ["unknown option --fast"]),
    (("--out=x", "--wheels=/nonexistent"), ["--wheels=/nonexistent", ".whl"]),
])
def test_a_mistake_is_one_line_and_status_2(tmp_path, args, names):
    done, _ = gpu_sh(tmp_path, *args)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("bench/gpu.sh: error: ") and all(n in line for n in names), line
