"""What every experiment driver shares: runs of `run.py`, resumable, their
results read back from the runs' own files, means over seeds, and plots.

A driver lists `Run`s (a name and run.py flags); `run_all` trains each one
that has no `result.json` yet as an ordinary `python run.py` process with
`--deterministic` and `--model_dir=OUT/runs/<name>`, so a sweep killed
midway continues where it stopped (a run interrupted during training
resumes from its last checkpoint: same command, same flags). `collect`
reads every run's `result.json` into rows; `summarise` gives mean and
standard deviation over seeds; `write_csv` and `plot_lines` write the
tables and figures.
"""
import csv
import importlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_FILE = "result.json"
# OUT/runs/<name>.seconds: the wall time of the run's training, its
# column of the tables whichever call trained it.
SECONDS_SUFFIX = ".seconds"
# --smoke: 2-step runs of a tiny encoder, the drivers' check in the suite.
SMOKE_FLAGS = dict(train_steps=2, checkpoint_steps=2, width_multiplier=0.125,
                   train_batch_size=32, eval_batch_size=100, image_size=8, log_every_steps=0)


class Run:
    """One training run of a sweep.

    Args:
        name: its directory name under OUT/runs (unique in the sweep).
        flags: {run.py flag: value}.
        labels: {column: value} describing the run in the tables (setting,
            bits, seed, ...).
    """

    def __init__(self, name, flags, labels):
        self.name = name
        self.flags = dict(flags)
        self.labels = dict(labels)

    def model_dir(self, out_dir):
        return os.path.join(out_dir, "runs", self.name)

    def command(self, out_dir):
        flags = dict(self.flags, model_dir=self.model_dir(out_dir), deterministic=True)
        flags.setdefault("mode", "train_then_eval")
        return [sys.executable, os.path.join(ROOT, "run.py")] + [
            f"--{name}={_flag_value(value)}" for name, value in flags.items()]


def _flag_value(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def import_quietly(name):
    """Imports the project's module `name` (from the repository root) with
    what TensorFlow's C++ runtime writes to file descriptor 2 as it loads
    and finds its devices hidden (`native_stderr.hidden`), as run.py does:
    a driver's error stays its only line."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import native_stderr
    with native_stderr.hidden():
        module = importlib.import_module(name)
        if "tensorflow" in sys.modules:  # its devices announce themselves on first use
            sys.modules["tensorflow"].config.list_physical_devices()
    return module


def fail(message):
    """One line `<driver>: error: message` on stderr, exit status 2."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(2)


def define_flags(name, dataset=True):
    """Defines the flags every one-study driver takes: --out_dir (default
    runs/<name>), --seeds, --dataset and --data_dir (unless not `dataset`:
    a driver that chooses its datasets), --run_flag and --smoke. The driver
    adopts them (`flags.adopt_module_key_flags(sweep)`) so that its --help
    lists them."""
    from absl import flags
    flags.DEFINE_string("out_dir", os.path.join("runs", name),
                        "Where the runs, tables and plots go.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every setting.")
    if dataset:
        flags.DEFINE_string("dataset", "digits", "The dataset (run.py --dataset).")
        flags.DEFINE_string("data_dir", None, "Its --data_dir, if any.")
    flags.DEFINE_multi_string("run_flag", [], "A run.py flag for every run, as name=value.")
    flags.DEFINE_bool("smoke", False, "A tiny sweep (one 2-step run) that checks the driver.")


def driver_start(argv, run_flag_items):
    """What every driver's `main` checks first: no positional arguments, and
    its --run_flag items as {name: value}; a mistake is one line, exit 2."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    try:
        return parse_run_flags(run_flag_items)
    except ValueError as e:
        fail(e)


def refuse_swept(extra, names):
    """One line, exit 2, when a --run_flag item sets a flag the driver
    sweeps (`names`): the driver's own flags set those."""
    for name in names:
        if name in extra:
            fail(f"--run_flag={name}={extra[name]} sets a flag this driver sweeps "
                 f"({', '.join(names)}); use the driver's own flags for it")


def train_or_fail(runs, out_dir, log=print):
    """`run_all`, with a run directory trained with other flags reported in
    one line, exit 2."""
    try:
        return run_all(runs, out_dir, log=log)
    except ValueError as e:
        fail(e)


def parse_run_flags(items):
    """{name: value} of `--run_flag name=value` items.

    Raises:
        ValueError: an item is not name=value.
    """
    parsed = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip("-"):
            raise ValueError(f"--run_flag must be name=value, got {item!r}")
        parsed[name.lstrip("-")] = value
    return parsed


def read_result(model_dir):
    """The run's result.json, or None while it has none."""
    path = os.path.join(model_dir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_all(runs, out_dir, log=print):
    """Trains every run without a result.json, in order; returns the wall
    seconds each run's training took ({name: s}), read back for runs done
    by an earlier call (None for one that left no record of its time).

    Raises:
        ValueError: a run's directory holds a run with other flags
            (`check_record`), checked before anything trains.
        RuntimeError: a run failed; the message holds its command and the
            end of its output (also in OUT/runs/<name>.log).
    """
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    seconds = {}
    for spec in runs:
        check_record(spec, out_dir)
    for i, spec in enumerate(runs):
        model_dir = spec.model_dir(out_dir)
        if read_result(model_dir) is not None:
            seconds[spec.name] = _read_seconds(model_dir)
            continue
        log(f"[{i + 1}/{len(runs)}] {spec.name}")
        start = time.time()
        with open(model_dir + ".log", "w") as out:
            done = subprocess.run(spec.command(out_dir), cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT)
        seconds[spec.name] = time.time() - start
        if done.returncode != 0 or read_result(model_dir) is None:
            with open(model_dir + ".log") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"run {spec.name} failed (exit {done.returncode}): "
                               f"{' '.join(spec.command(out_dir))}\n{tail}")
        with open(model_dir + SECONDS_SUFFIX, "w") as f:
            f.write(f"{seconds[spec.name]:.1f}\n")
    return seconds


def _read_seconds(model_dir):
    """The wall seconds `run_all` recorded for the run, or None."""
    try:
        with open(model_dir + SECONDS_SUFFIX) as f:
            return float(f.read())
    except (OSError, ValueError):
        return None


def _same(a, b):
    """Whether two flag values agree, numbers compared as numbers."""
    a, b = _flag_value(a), _flag_value(b)
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def check_record(spec, out_dir):
    """Raises ValueError when the run's directory holds a run (its
    flags.json) trained with other values of the flags `spec` sets: its
    results would be read as this sweep's."""
    path = os.path.join(spec.model_dir(out_dir), "flags.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        record = json.load(f)
    for name, value in spec.flags.items():
        if name in record and not _same(record[name], value):
            raise ValueError(
                f"{spec.model_dir(out_dir)} holds a run trained with --{name}="
                f"{_flag_value(record[name])}, this sweep asks --{name}={_flag_value(value)}: "
                f"use another --out_dir, or delete that run to train it again")


def collect(runs, out_dir, keys):
    """Rows {labels..., key: value} of the runs' result.json files, one per
    run, for the result keys `keys` (None where a result lacks one)."""
    rows = []
    for spec in runs:
        result = read_result(spec.model_dir(out_dir)) or {}
        rows.append(dict(spec.labels, **{key: result.get(key) for key in keys}))
    return rows


def tabulate(runs, out_dir, seconds, keys, group_by, name):
    """The runs' rows (`collect`) with the wall seconds each took to train
    (`run_all`), written to OUT/<name>.csv, and their mean ± std over the rows
    that share `group_by` (`summarise`), written to OUT/<name>_summary.csv.

    Returns:
        (rows, summary rows).
    """
    rows = collect(runs, out_dir, keys)
    for row, spec in zip(rows, runs):
        row["seconds"] = None if seconds[spec.name] is None else round(seconds[spec.name], 1)
    write_csv(rows, os.path.join(out_dir, f"{name}.csv"))
    summary = summarise(rows, group_by, keys)
    write_csv(summary, os.path.join(out_dir, f"{name}_summary.csv"))
    return rows, summary


def summarise(rows, group_by, keys):
    """Rows of mean and standard deviation (ddof = 1; 0 for one seed) of
    `keys` over the rows that share the values of `group_by`, in the order
    groups first appear, with `n` the number of rows in the group."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[name] for name in group_by), []).append(row)
    summary = []
    for values, members in groups.items():
        out = dict(zip(group_by, values), n=len(members))
        for key in keys:
            numbers = np.array([m[key] for m in members if m[key] is not None], np.float64)
            out[f"{key}_mean"] = float(numbers.mean()) if len(numbers) else math.nan
            out[f"{key}_std"] = float(numbers.std(ddof=1)) if len(numbers) > 1 else 0.0
        summary.append(out)
    return summary


def write_csv(rows, path):
    """Writes `rows` (dicts with the same keys) as CSV."""
    if not rows:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def plot_lines(summary, x, y, line, path, title="", xlabel=None, ylabel=None,
               panels=None, chance=None, log2_x=False):
    """A PNG of `y`_mean ± `y`_std against `x` (on a log2 axis with
    `log2_x`), one line per value of `line`, one panel per value of
    `panels` (if given); a dotted line at `chance`. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panel_values = list(dict.fromkeys(r[panels] for r in summary)) if panels else [None]
    fig = Figure(figsize=(4.5 * len(panel_values), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for k, panel in enumerate(panel_values):
        ax = fig.add_subplot(1, len(panel_values), k + 1)
        members = [r for r in summary if panels is None or r[panels] == panel]
        for value in dict.fromkeys(r[line] for r in members):
            points = sorted((r[x], r[f"{y}_mean"], r[f"{y}_std"])
                            for r in members if r[line] == value)
            xs, means, stds = (np.array(p, np.float64) for p in zip(*points))
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=str(value))
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1)
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        ax.set_title(f"{title} {panels}={panel}".strip() if panels else title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def markdown_table(summary, columns, keys, digits=3):
    """A Markdown table of `columns` and `key` mean ± std for each key."""
    head = "| " + " | ".join(columns + list(keys)) + " |"
    rule = "|" + "---|" * (len(columns) + len(keys))
    lines = [head, rule]
    for r in summary:
        cells = [str(r[c]) for c in columns] + [
            f"{r[f'{k}_mean']:.{digits}f} ± {r[f'{k}_std']:.{digits}f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
