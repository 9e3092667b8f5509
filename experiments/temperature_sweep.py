r"""The temperature τ of NT-Xent and the weight λ of the generalized losses'
distribution term (Chen & Li 2021, §2; Wang & Liu 2021).

Sweeps `--temperatures` for `--loss=ntxent` and `--lambdas` for each of
`--lambda_losses` (the decoupled LogSumExp loss and SWD), `--seeds` each,
and records from every run's result.json the probe's top-1 and the
representation metrics of h and z on the held-out batch (uniformity,
t = 2; tolerance; `metrics.py`). Two figures: uniformity against tolerance
(one line per loss, through its τ or λ values: Wang & Liu's trade-off),
and probe accuracy against τ next to probe accuracy against λ (the τ↔λ
relation: a small τ and a large λ both weigh the distribution term more).

    python experiments/temperature_sweep.py
    python experiments/temperature_sweep.py --temperatures=0.05,0.1,0.2,0.5,1 --seeds=0,1,2
    python experiments/temperature_sweep.py --smoke

Writes OUT/temperature_sweep.csv, OUT/temperature_sweep_summary.csv,
OUT/temperature_sweep.md, OUT/uniformity_tolerance.png and
OUT/tau_lambda.png; runs live in OUT/runs/ and are not trained twice.
"""
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: E402

FLAGS = flags.FLAGS
sweep.define_flags("temperature_sweep")
flags.adopt_module_key_flags(sweep)  # listed by --help as this driver's own
flags.DEFINE_list("temperatures", ["0.05", "0.1", "0.2", "0.5"], "NT-Xent temperatures.")
flags.DEFINE_list("lambdas", ["0.3", "1.0", "3.0"],
                  "Weights λ of the distribution term of --lambda_losses.")
flags.DEFINE_list("lambda_losses", ["decoupled", "swd"], "Losses swept over λ.")

# Shorter than the digits preset's 60 epochs: the default sweep (10
# settings, 3 seeds) in well under an hour on 2 CPU cores.
SWEEP_FLAGS = dict(train_epochs=30, compute_baselines=False, keep_hub_module_max=0)
KEYS = ["probe_top1", "knn_top1"] + [f"representation/{space}/{name}" for space in ("h", "z")
                                     for name in ("uniformity", "tolerance", "alignment")]


def sweep_runs(seeds, temperatures, lambdas, lambda_losses, dataset="digits", data_dir=None,
               extra=None):
    """The `sweep.Run`s: NT-Xent at each τ, each λ-loss at each λ, × seeds."""
    base = dict(SWEEP_FLAGS, dataset=dataset, **({"data_dir": data_dir} if data_dir else {}))
    grid = [("ntxent", "tau", float(t), dict(temperature=float(t))) for t in temperatures]
    grid += [(loss, "lambda", float(w), dict(lambda_weight=float(w)))
             for loss in lambda_losses for w in lambdas]
    runs = []
    for loss, parameter, value, loss_flags in grid:
        for seed in seeds:
            flags_ = dict(base, loss=loss, **loss_flags, seed=int(seed), **(extra or {}))
            runs.append(sweep.Run(f"{loss}_{parameter}{value}_seed{seed}", flags_,
                                  dict(loss=loss, parameter=parameter, value=value,
                                       seed=int(seed))))
    return runs


def write_outputs(runs, out_dir, seconds):
    """CSVs, table and the two figures; returns the summary rows."""
    _, summary = sweep.tabulate(runs, out_dir, seconds, KEYS, ["loss", "parameter", "value"],
                                "temperature_sweep")
    _plot_tradeoff(summary, os.path.join(out_dir, "uniformity_tolerance.png"))
    sweep.plot_lines(summary, "value", "probe_top1", "loss",
                     os.path.join(out_dir, "tau_lambda.png"),
                     title="probe top-1", xlabel="τ (ntxent) or λ", ylabel="linear probe top-1",
                     panels="parameter")
    table = sweep.markdown_table(summary, ["loss", "parameter", "value", "n"],
                                 ["probe_top1", "representation/h/uniformity",
                                  "representation/h/tolerance"])
    with open(os.path.join(out_dir, "temperature_sweep.md"), "w") as f:
        f.write(table + "\n")
    return summary, table


def _plot_tradeoff(summary, path):
    """Tolerance against uniformity of h, one line per loss through its
    swept values, each point labelled with its τ or λ."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for loss in dict.fromkeys(r["loss"] for r in summary):
        points = sorted((r["value"], r["representation/h/uniformity_mean"],
                         r["representation/h/tolerance_mean"])
                        for r in summary if r["loss"] == loss)
        values, uniformity, tolerance = zip(*points)
        ax.plot(uniformity, tolerance, marker="o", label=loss)
        for v, u, t in points:
            ax.annotate(f"{v:g}", (u, t), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("uniformity of h (log E exp(-2|u - v|²), lower is more uniform)")
    ax.set_ylabel("tolerance of h (mean same-label cosine)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv):
    extra = sweep.driver_start(argv, FLAGS.run_flag)
    seeds, temperatures, lambdas = FLAGS.seeds, FLAGS.temperatures, FLAGS.lambdas
    lambda_losses = FLAGS.lambda_losses
    if FLAGS.smoke:
        extra = dict(sweep.SMOKE_FLAGS, **extra)
        # One run: the λ path (ntxent is every other run's loss).
        seeds, temperatures, lambdas, lambda_losses = ["0"], [], ["1.0"], ["decoupled"]
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    runs = sweep_runs(seeds, temperatures, lambdas, lambda_losses, FLAGS.dataset,
                      FLAGS.data_dir, extra)
    seconds = sweep.train_or_fail(runs, FLAGS.out_dir)
    _, table = write_outputs(runs, FLAGS.out_dir, seconds)
    print(table)


if __name__ == "__main__":
    app.run(main)
