"""bench/train_step.py as a user runs it: its --smoke measurement under each
backend, checked against numbers computed here, and its one-line refusals;
bench/torch_peer.py's NT-Xent and --smoke line where PyTorch is installed,
its refusal where it is not."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "train_step.py")
PEER = os.path.join(ROOT, "bench", "torch_peer.py")
HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))
# torchvision's ResNet-18 (ImageNet stem, 1,000-way fc), as published.
TORCHVISION_RESNET18 = 11_689_512


def bench(*args, script=SCRIPT, env=None):
    """The finished process, with `elapsed_ms`: its wall time in ms."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    done.elapsed_ms = (time.perf_counter() - start) * 1e3
    return done


def check_timing(record, batch, elapsed_ms):
    """The record's timing fields agree with each other, the batch and the
    wall time of the bench's run (`elapsed_ms`)."""
    times = record["ms_per_step"]
    assert (times["repeats"], times["steps"], times["warmup"]) == (2, 1, 1), times
    # --smoke times 2 blocks of 1 step: their median is their mean, to the
    # 0.001 ms each of the three numbers is rounded to.
    assert times["median"] == pytest.approx((times["min"] + times["max"]) / 2, abs=1.5e-3)
    # The two timed steps are milliseconds of this run, not a larger unit.
    assert 0 < 2 * times["min"] and 2 * times["max"] < elapsed_ms, times
    assert record["cpu_ms_per_step"] > 0, record
    assert record["pairs_per_s"] == pytest.approx(batch / (times["median"] / 1e3), rel=1e-3)
    assert math.isfinite(record["total_loss"]) and record["total_loss"] > 0, record
    assert record["device"].startswith("cpu") or record["peak_device_mib"] > 0, record
    assert record["peak_rss_mib"] >= record["start_rss_mib"] > 0, record


def resnet18_params(width, cifar_stem):
    """Trainable parameters of SimCLR's ResNet-18 encoder: 3x3 (CIFAR) or 7x7
    stem, four groups of two basic blocks, a projection shortcut in the first
    block of every group (group 1's too, unlike torchvision's), batch norm
    with scale and offset after every convolution, no biases, no fc."""
    def conv(size, inputs, outputs):
        return size * size * inputs * outputs

    widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
    total = conv(3 if cifar_stem else 7, 3, widths[0]) + 2 * widths[0]
    inputs = widths[0]
    for channels in widths:
        for block in range(2):
            total += conv(3, inputs, channels) + conv(3, channels, channels) + 4 * channels
            if block == 0:
                total += conv(1, inputs, channels) + 2 * channels
            inputs = channels
    return total


def head_params(width, proj_out_dim, classes, num_proj_layers=3):
    """Projection head (layers of `width` units without bias, batch norm with
    scale and offset; the last of `proj_out_dim` units, batch norm scale
    only) and the online probe (a dense layer with bias)."""
    hidden = (num_proj_layers - 1) * (width * width + 2 * width)
    return hidden + width * proj_out_dim + proj_out_dim + width * classes + classes


def test_resnet18_count_matches_torchvision():
    # Without its fc, plus the projection shortcut of group 1 that torchvision lacks.
    assert resnet18_params(1, cifar_stem=False) == (
        TORCHVISION_RESNET18 - (512 * 1000 + 1000) + 64 * 64 + 2 * 64)


def test_smoke_times_the_step_of_the_flags_given():
    """The project's own trainer, built from run.py's flags, on synthetic
    data. (Under JAX where TensorFlow cannot be imported, as on a GPU
    machine with JAX only, tests/test_bench_gpu.py runs it through
    bench/gpu.sh --smoke.)"""
    backend = "tensorflow"
    done = bench("--smoke", f"--backend={backend}", "--proj_out_dim=32", "--temperature=0.2")
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    record = json.loads(line)
    assert record["backend"] == backend and record["workload"] == "resnet18_32", record
    assert record["flags"][-3:] == ["--proj_out_dim=32", "--temperature=0.2",
                                    "--train_batch_size=8"], record
    config = record["config"]
    assert (config["temperature"], config["image_size"], config["width_multiplier"],
            config["train_batch_size"]) == (0.2, 16, 0.25, 8), config
    assert record["batch"] == 8 and record["views"] == 2, record
    assert record["trainable_params"] == (resnet18_params(0.25, cifar_stem=True)
                                          + head_params(128, 32, classes=10)), record
    check_timing(record, batch=8, elapsed_ms=done.elapsed_ms)


def test_a_bad_flag_is_one_line_and_status_2():
    for args, names in ((["--backend=torch"], ["--backend", "'torch'", "tensorflow, jax"]),
                        (["--optimizer=sgd"], ["--optimizer=sgd", "momentum|adam|lars"])):
        done = bench("--smoke", "--backend=jax", *args)
        assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith("bench/train_step.py: error: "), line
        assert all(name in line for name in names), line


def numpy_nt_xent(z1, z2, temperature):
    """NT-Xent anchor by anchor: for each direction, the mean over anchors i
    of LSE(its 2n - 1 candidates) minus its positive."""
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    total, n = 0.0, len(z1)
    for anchors, partners in ((z1, z2), (z2, z1)):
        for i in range(n):
            candidates = [anchors[i] @ partners[j] for j in range(n)] + [
                anchors[i] @ anchors[j] for j in range(n) if j != i]
            total += (np.logaddexp.reduce(np.array(candidates) / temperature)
                      - anchors[i] @ partners[i] / temperature) / n
    return total


def test_torch_peer_loss_and_smoke_line():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    spec = importlib.util.spec_from_file_location("torch_peer", PEER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((2, 6, 5))
    value = peer.nt_xent(torch.tensor(z1), torch.tensor(z2), 0.5)
    assert float(value) == pytest.approx(numpy_nt_xent(z1, z2, 0.5), rel=1e-5)

    done = bench("--smoke", script=PEER)
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    record = json.loads(line)
    assert (record["backend"], record["workload"], record["batch"]) == (
        "torch", "resnet18_32", 8), record
    assert record["config"]["image_size"] == 16 and record["views"] == 2, record
    # torchvision's encoder has no projection shortcut in group 1.
    assert record["trainable_params"] == (resnet18_params(1, cifar_stem=True) - 64 * 64 - 2 * 64
                                          + head_params(512, 128, classes=10)), record
    check_timing(record, batch=8, elapsed_ms=done.elapsed_ms)


@pytest.mark.skipif(HAS_TORCH, reason="torch and torchvision are installed")
def test_torch_peer_without_torch_is_one_line_and_status_2():
    done = bench("--smoke", script=PEER)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("bench/torch_peer.py: error: ") and "torch" in line, line
