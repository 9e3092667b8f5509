"""The experiment drivers (`experiments/`): their --smoke sweeps end to end
as a user runs them (fresh processes), resumability, and the tables they
derive, against the runs' own result.json files and numpy."""
import csv
import json
import math
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import sweep  # noqa: E402

pytestmark = pytest.mark.processes


def driver(name, *args):
    """The driver as a user runs it: without the suite's TF_CPP_MIN_LOG_LEVEL,
    which would ask for TensorFlow's start-up lines."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", f"{name}.py"),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def result_of(out_dir, name):
    with open(os.path.join(out_dir, "runs", name, "result.json")) as f:
        return json.load(f)


# matplotlib's first line colour (C0, #1f77b4): every figure draws its first
# line, or first errorbar, in it.
FIRST_LINE_COLOUR = (0x1f / 255, 0x77 / 255, 0xb4 / 255)


def png_pixels(path):
    """The RGB pixels [H, W, 3] in [0, 1] of the PNG at `path`."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path)[..., :3]


def count_colour(pixels, colour, tolerance=0.01):
    return int(np.sum(np.all(np.abs(pixels - np.asarray(colour)) < tolerance, axis=-1)))


def check_png(path, inches, colours=(FIRST_LINE_COLOUR,)):
    """A PNG of the figure size the driver asks, `inches` (width, height)
    at 100 dpi, with pixels of each of `colours`."""
    pixels = png_pixels(path)
    assert pixels.shape[:2] == (round(100 * inches[1]), round(100 * inches[0])), path
    for colour in colours:
        assert count_colour(pixels, colour) > 0, (path, colour)


def distinct(rows, *columns):
    return len({tuple(r[c] for c in columns) for r in rows})


def check_summary(rows, summary):
    """Each summary row is the count, mean and sample std (0 for one row)
    of each key over the run rows that share its group columns, and the
    groups cover the runs."""
    for s in summary:
        group = [c for c in s if c != "n" and not c.endswith(("_mean", "_std"))]
        members = [r for r in rows if all(r[c] == s[c] for c in group)]
        assert int(s["n"]) == len(members) > 0, s
        for key in (c[:-len("_mean")] for c in s if c.endswith("_mean")):
            values = np.array([float(m[key]) for m in members if m[key] != ""])
            mean = values.mean() if len(values) else math.nan
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            assert float(s[f"{key}_mean"]) == pytest.approx(mean, rel=1e-12, nan_ok=True), key
            assert float(s[f"{key}_std"]) == pytest.approx(std, rel=1e-12, abs=1e-15), key
    assert sum(int(s["n"]) for s in summary) == len(rows)


def check_markdown_table(text, summary):
    """A Markdown table of the summary rows in order: a key's cell is its
    mean ± std to 3 decimals, another column's cell its value."""
    lines = text.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= set("|-") and len(lines) == 2 + len(summary), text
    for line, s in zip(lines[2:], summary):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        for column, cell in zip(header, cells):
            if f"{column}_mean" in s:
                mean, std = float(s[f"{column}_mean"]), float(s[f"{column}_std"])
                assert cell == f"{mean:.3f} ± {std:.3f}", (column, line)
            else:
                assert cell == (s[column] if s[column] != "" else "None"), (column, line)


def check_tables(out_dir, name, markdown=None):
    """OUT/<name>.csv and OUT/<name>_summary.csv agree (`check_summary`),
    and, with `markdown` (a file and the index of its table), so does that
    table of the Markdown. Returns the summary rows."""
    rows = read_csv(os.path.join(out_dir, f"{name}.csv"))
    summary = read_csv(os.path.join(out_dir, f"{name}_summary.csv"))
    check_summary(rows, summary)
    if markdown:
        path, index = markdown
        with open(os.path.join(out_dir, path)) as f:
            check_markdown_table(f.read().split("\n\n")[index], summary)
    return summary


def check_outputs(name, out_dir):
    """The tables and figures of driver `name`'s smoke sweep: the summary and
    the Markdown recomputed from the runs' CSV, each PNG of its figure's
    size (panels counted from the summary) with its first line drawn."""
    if name == "feature_suppression":
        check_tables(out_dir, "randbits", ("randbits.md", 0))
        check_png(os.path.join(out_dir, "randbits.png"), (4.5, 3.4))
    elif name == "temperature_sweep":
        summary = check_tables(out_dir, "temperature_sweep", ("temperature_sweep.md", 0))
        check_png(os.path.join(out_dir, "uniformity_tolerance.png"), (5, 4))
        check_png(os.path.join(out_dir, "tau_lambda.png"),
                  (4.5 * distinct(summary, "parameter"), 3.4))
    elif name == "hardness":
        check_tables(out_dir, "hardness", ("hardness.md", 0))
        check_png(os.path.join(out_dir, "hardness.png"), (13.5, 3.6))
    elif name == "batch_size":
        check_tables(out_dir, "batch_size", ("batch_size.md", 0))
        for figure in ("batch_size_accuracy.png", "batch_size_rank.png"):
            check_png(os.path.join(out_dir, figure), (4.5, 3.4))
    else:
        assert name == "loss_family"
        check_tables(out_dir, "loss_family", ("loss_family.md", 0))
        summary = check_tables(out_dir, "tau_lambda", ("loss_family.md", 1))
        check_png(os.path.join(out_dir, "loss_family.png"), (9, 3.6))
        check_png(os.path.join(out_dir, "tau_lambda.png"),
                  (4.5 * distinct(summary, "parameter"), 3.4))


@pytest.mark.parametrize("name,expected_runs,outputs", [
    ("feature_suppression", {"randbits_ntxent_t0.2_bits2_seed0": "probe_top1",
                             "randbits_autoencoder_bits2_seed0": "probe_top1"},
     ["randbits.csv", "randbits_summary.csv", "randbits.png", "randbits.md"]),
    ("temperature_sweep", {"decoupled_lambda1.0_seed0": "representation/h/uniformity"},
     ["temperature_sweep.csv", "temperature_sweep_summary.csv", "temperature_sweep.md",
      "uniformity_tolerance.png", "tau_lambda.png"]),
    ("hardness", {"hard_tau0.5_seed0": "representation/z/negative_entropy"},
     ["hardness.csv", "hardness_summary.csv", "hardness.png", "hardness.md"]),
    ("batch_size", {"dhel_batch16_seed0": "representation/h/effective_rank"},
     ["batch_size.csv", "batch_size_summary.csv", "batch_size_accuracy.png",
      "batch_size_rank.png", "batch_size.md"]),
    ("loss_family", {"swd_uniform_hypercube_head1_lambda1_seed0":
                     "representation/h/effective_rank"},
     ["loss_family.csv", "loss_family_summary.csv", "loss_family.png", "tau_lambda.csv",
      "tau_lambda_summary.csv", "tau_lambda.png", "loss_family.md"]),
])
def test_smoke_sweep_writes_tables_from_its_runs_and_resumes(tmp_path, name, expected_runs,
                                                             outputs):
    out_dir = str(tmp_path / "out")
    done = driver(name, "--smoke", f"--out_dir={out_dir}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(f for f in os.listdir(out_dir) if f != "runs") == sorted(outputs)
    check_outputs(name, out_dir)
    rows = read_csv(os.path.join(out_dir, outputs[0]))
    assert len(rows) == len(expected_runs)
    # Each row holds what its run's result.json says.
    for row, (run_name, key) in zip(rows, expected_runs.items()):
        assert float(row[key]) == pytest.approx(result_of(out_dir, run_name)[key], rel=1e-12)
    # The runs trained with --deterministic.
    with open(os.path.join(out_dir, "runs", next(iter(expected_runs)), "flags.json")) as f:
        assert json.load(f)["deterministic"] is True
    # A second call trains nothing: the results stay as they were.
    stamps = {n: os.path.getmtime(os.path.join(out_dir, "runs", n, "result.json"))
              for n in expected_runs}
    again = driver(name, "--smoke", f"--out_dir={out_dir}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[1/" not in again.stdout
    # Each run's time is the one its training took, not this call's.
    assert [row["seconds"] for row in read_csv(os.path.join(out_dir, outputs[0]))] == [
        row["seconds"] for row in rows] and all(float(row["seconds"]) > 0 for row in rows)
    assert stamps == {n: os.path.getmtime(os.path.join(out_dir, "runs", n, "result.json"))
                      for n in expected_runs}
    # The same directory with another run flag: refused before anything trains.
    other = driver(name, "--smoke", f"--out_dir={out_dir}", "--run_flag=train_steps=3")
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2 and len(lines) == 1, other.stderr
    assert "--train_steps=2" in lines[0] and "--train_steps=3" in lines[0], lines[0]


def grid(name, call):
    """[(run name, flags, labels)] of `name`.sweep_runs`call`, computed in a
    fresh process: each driver defines its flags on absl's global FLAGS at
    import, so two drivers cannot share one."""
    code = (f"import json, {name}; print(json.dumps([(r.name, r.flags, r.labels) "
            f"for r in {name}.sweep_runs{call}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(ROOT, "experiments"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_hardness_sweep_holds_every_loss_and_temperature_once_per_seed():
    """ntxent and hard at every τ, simple once (it has no τ), × seeds; the
    hard loss keeps the driver's K, and only the τ-swept losses get a τ."""
    runs = grid("hardness", '(["0", "1"], ["0.1", "1.0"], 7)')
    assert sorted(name for name, _, _ in runs) == sorted(
        [f"{loss}_tau{t}_seed{s}" for loss in ("ntxent", "hard") for t in (0.1, 1.0)
         for s in (0, 1)] + ["simple_seed0", "simple_seed1"])
    for _, flags, labels in runs:
        assert flags["loss"] == labels["loss"]
        assert flags.get("temperature") == labels["tau"]
        assert flags.get("hard_num_negatives") == (7 if labels["loss"] == "hard" else None)


def test_batch_size_sweep_holds_every_loss_and_batch_once_per_seed():
    runs = grid("batch_size", '(["0", "1"], ["32", "512"], ["dcl", "kcl"])')
    assert sorted((f["loss"], f["train_batch_size"], f["seed"]) for _, f, _ in runs) == sorted(
        (loss, b, s) for loss in ("dcl", "kcl") for b in (32, 512) for s in (0, 1))
    assert all(labels["batch"] == flags["train_batch_size"] for _, flags, labels in runs)


def test_loss_family_sweeps_head_depths_and_tau_lambda_sharing_their_common_runs():
    """Head depth 0 is no head, 1 linear, d >= 2 nonlinear of d layers;
    swd:PRIOR sets --prior; each loss's head-depth runs set its parameter
    at its default, so the τ/λ sweep at the deepest head reuses them; the
    best τ or λ of each loss is the one of highest mean probe accuracy."""
    code = (
        "import json, loss_family as lf\n"
        "d, t = lf.sweep_runs(['0'], ['ntxent', 'swd:normal'], ['0', '1', '3'], ['0.1', '0.5'],"
        " ['1.0', '3.0'], ['swd:normal'])\n"
        "best = lf.best_settings([dict(loss='a', parameter='tau', value=v, probe_top1_mean=m,"
        " probe_top1_std=0.01) for v, m in ((0.1, 0.5), (0.2, 0.7), (0.5, 0.6))])\n"
        "print(json.dumps([[(r.name, r.flags, r.labels) for r in runs] for runs in (d, t)]"
        " + [[id(r) for r in d], [id(r) for r in t], best]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(ROOT, "experiments"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    depth_runs, tl_runs, depth_ids, tl_ids, best = json.loads(done.stdout)
    heads = {0: dict(proj_head_mode="none"), 1: dict(proj_head_mode="linear"),
             3: dict(proj_head_mode="nonlinear", num_proj_layers=3)}
    assert len(depth_runs) == 6
    for name, flags, labels in depth_runs:
        depth = labels["depth"]
        assert {k: flags[k] for k in ("proj_head_mode", "num_proj_layers") if k in flags} == \
            heads[depth], name
        if labels["loss"] == "ntxent":
            assert flags["loss"] == "ntxent" and flags["temperature"] == 0.1
            assert "prior" not in flags
        else:
            assert (flags["loss"], flags["prior"], flags["lambda_weight"]) == ("swd", "normal", 1)
    assert [(f["loss"], f.get("temperature"), f.get("lambda_weight"), f["num_proj_layers"])
            for _, f, _ in tl_runs] == [("ntxent", 0.1, None, 3), ("ntxent", 0.5, None, 3),
                                        ("swd", None, 1.0, 3), ("swd", None, 3.0, 3)]
    shared = {n for n, _, _ in depth_runs} & {n for n, _, _ in tl_runs}
    assert shared == {"ntxent_head3_tau0.1_seed0", "swd_normal_head3_lambda1_seed0"}
    # The shared settings are one Run object, trained once.
    assert len(set(depth_ids) | set(tl_ids)) == 8
    assert [(b["best"], b["runner_up"]) for b in best] == [(0.2, 0.5)]


def test_bad_driver_flags_are_one_line_and_exit_status_2(tmp_path):
    for name, args, words in (
            ("feature_suppression", ["--study=nope"], ["--study", "randbits", "nope"]),
            ("feature_suppression", ["--run_flag=seed"], ["--run_flag", "name=value"]),
            ("batch_size", ["--run_flag=train_batch_size=64"],
             ["--run_flag=train_batch_size=64", "sweeps"]),
            ("loss_family", ["--losses=ntxent:normal"], ["ntxent:normal", "swd:PRIOR"]),
            ("loss_family", ["--lambda_losses=kcl"], ["kcl", "decoupled"]),
            ("local_features", ["--datasets=digits"], ["--datasets=digits", "multi_digits"]),
            ("local_features", ["--clusters=1"], ["--clusters", ">= 2"])):
        done = driver(name, f"--out_dir={tmp_path}", *args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert all(word in lines[0] for word in words), lines[0]


def test_summarise_gives_mean_and_sample_std_per_group():
    rows = [dict(setting=s, bits=b, seed=k, acc=a) for s, b, k, a in [
        ("c", 0, 0, 0.9), ("c", 0, 1, 0.8), ("c", 0, 2, 0.6),
        ("c", 5, 0, 0.5), ("a", 0, 0, 0.7), ("a", 0, 1, None)]]
    summary = sweep.summarise(rows, ["setting", "bits"], ["acc"])
    assert [(r["setting"], r["bits"], r["n"]) for r in summary] == [
        ("c", 0, 3), ("c", 5, 1), ("a", 0, 2)]
    assert summary[0]["acc_mean"] == pytest.approx(np.mean([0.9, 0.8, 0.6]))
    assert summary[0]["acc_std"] == pytest.approx(np.std([0.9, 0.8, 0.6], ddof=1))
    assert summary[1]["acc_std"] == 0.0
    # A run without the key (None) is left out of the mean.
    assert summary[2]["acc_mean"] == pytest.approx(0.7)


def test_run_commands_hold_the_flags_and_a_deterministic_model_dir(tmp_path):
    spec = sweep.Run("r", dict(num_rand_bits=5, digit_sizes=[20, 8], plot=False), {})
    command = spec.command(str(tmp_path))
    assert command[1] == os.path.join(ROOT, "run.py")
    assert set(command[2:]) == {"--num_rand_bits=5", "--digit_sizes=20,8", "--plot=false",
                                f"--model_dir={tmp_path / 'runs' / 'r'}",
                                "--deterministic=true", "--mode=train_then_eval"}


def test_a_run_trained_with_other_flags_is_not_taken_as_the_sweeps(tmp_path):
    spec = sweep.Run("r", dict(num_rand_bits=10, temperature=0.2, train_epochs="40"), {})
    os.makedirs(spec.model_dir(str(tmp_path)))
    with open(os.path.join(spec.model_dir(str(tmp_path)), "flags.json"), "w") as f:
        json.dump(dict(num_rand_bits=10, temperature=0.2, train_epochs=40, seed=3), f)
    sweep.check_record(spec, str(tmp_path))  # the same values, as numbers or strings
    other = sweep.Run("r", dict(num_rand_bits=5), {})
    with pytest.raises(ValueError, match="--num_rand_bits=10.*--num_rand_bits=5"):
        sweep.check_record(other, str(tmp_path))
