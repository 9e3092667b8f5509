r"""Hardness of negatives against the temperature (Wang & Liu, CVPR 2021).

Claims tested (Wang & Liu, "Understanding the Behaviour of Contrastive
Loss", CVPR 2021, §3-4):
- the temperature τ sets how hard negatives are weighted: the entropy of
  the softmax over the negatives, r_i(s_ij) = e^{s_ij/τ} / Σ_k e^{s_ik/τ},
  falls as τ falls;
- with NT-Xent, uniformity falls and tolerance rises as τ grows (the
  uniformity–tolerance dilemma);
- the hard contrastive loss (the K most similar negatives of each anchor)
  keeps uniformity nearly constant across τ with a low tolerance;
- the simple loss (−s_ii + λ Σ_j s_ij, no hardness awareness) is far less
  uniform and more tolerant.

Sweeps `--temperatures` for `--loss=ntxent` and `--loss=hard`, runs the
simple loss once per seed, and reads from every run's result.json the
probe's and kNN's top-1 and the representation metrics of z (the
normalised projection the losses see) and h on the held-out batch:
uniformity (t = 2; the paper reports its negative), tolerance, and the
mean entropy of r_i at the run's own τ (`metrics.negative_hardness`).

    python experiments/hardness.py
    python experiments/hardness.py --temperatures=0.07,0.3,0.7,1 --seeds=0,1,2
    python experiments/hardness.py --smoke

Writes OUT/hardness.csv, OUT/hardness_summary.csv, OUT/hardness.md and
OUT/hardness.png (uniformity, tolerance and negatives' entropy of z against
τ, the simple loss as a dashed line); runs live in OUT/runs/ and are not
trained twice.
"""
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: E402

FLAGS = flags.FLAGS
sweep.define_flags("hardness")
flags.adopt_module_key_flags(sweep)  # listed by --help as this driver's own
flags.DEFINE_list("temperatures", ["0.1", "0.2", "0.5", "1.0"],
                  "Temperatures of ntxent and hard.")
flags.DEFINE_integer("hard_num_negatives", 42,
                     "Negatives the hard loss keeps per anchor: Wang & Liu keep the upper "
                     "α = 0.0819 of them, 42 of the 510 of the digits preset's batch of 256.")

# Shorter than the digits preset's 60 epochs: the default sweep (9
# settings, 3 seeds) in under an hour on 2 CPU cores.
SWEEP_FLAGS = dict(train_epochs=30, compute_baselines=False, keep_hub_module_max=0)
METRICS = ("uniformity", "tolerance", "negative_entropy")
KEYS = ["probe_top1", "knn_top1"] + [f"representation/{space}/{name}"
                                     for space in ("z", "h") for name in METRICS]


def sweep_runs(seeds, temperatures, hard_num_negatives, dataset="digits", data_dir=None,
               extra=None):
    """The `sweep.Run`s: ntxent and hard at each τ, simple once, × seeds."""
    base = dict(SWEEP_FLAGS, dataset=dataset, **({"data_dir": data_dir} if data_dir else {}))
    grid = [(loss, float(t), dict(temperature=float(t)))
            for loss in ("ntxent", "hard") for t in temperatures]
    grid.append(("simple", None, {}))
    runs = []
    for loss, tau, loss_flags in grid:
        if loss == "hard":
            loss_flags = dict(loss_flags, hard_num_negatives=hard_num_negatives)
        for seed in seeds:
            flags_ = dict(base, loss=loss, **loss_flags, seed=int(seed), **(extra or {}))
            name = f"{loss}_tau{tau}_seed{seed}" if tau is not None else f"{loss}_seed{seed}"
            runs.append(sweep.Run(name, flags_, dict(loss=loss, tau=tau, seed=int(seed))))
    return runs


def write_outputs(runs, out_dir, seconds):
    """CSVs, table and figure; returns (summary rows, markdown table)."""
    _, summary = sweep.tabulate(runs, out_dir, seconds, KEYS, ["loss", "tau"], "hardness")
    _plot(summary, os.path.join(out_dir, "hardness.png"))
    table = sweep.markdown_table(summary, ["loss", "tau", "n"],
                                 ["probe_top1"] + [f"representation/z/{m}" for m in METRICS])
    with open(os.path.join(out_dir, "hardness.md"), "w") as f:
        f.write(table + "\n")
    return summary, table


def _plot(summary, path):
    """One panel per metric of z against τ (log scale): a line per
    τ-swept loss, mean ± std over seeds; a loss without τ (simple) as a
    dashed line with a band of ± std. The simple loss has no softmax over
    negatives, so it is not in the entropy panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = {"uniformity": "uniformity of z (lower: more uniform)",
              "tolerance": "tolerance of z (same-label cosine)",
              "negative_entropy": "entropy of the softmax over negatives"}
    fig = Figure(figsize=(13.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for k, metric in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), k + 1)
        key = f"representation/z/{metric}"
        for loss in dict.fromkeys(r["loss"] for r in summary):
            members = [r for r in summary if r["loss"] == loss]
            if members[0]["tau"] is None:
                if metric == "negative_entropy":
                    continue
                mean, std = members[0][f"{key}_mean"], members[0][f"{key}_std"]
                line = ax.axhline(mean, linestyle="--", color="grey", label=loss)
                ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.15)
                continue
            points = sorted((r["tau"], r[f"{key}_mean"], r[f"{key}_std"]) for r in members)
            taus, means, stds = zip(*points)
            ax.errorbar(taus, means, yerr=stds, marker="o", capsize=3, label=loss)
        ax.set_xscale("log")
        ax.set_xlabel("temperature τ")
        ax.set_ylabel(labels[metric], fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main(argv):
    extra = sweep.driver_start(argv, FLAGS.run_flag)
    sweep.refuse_swept(extra, ("loss", "temperature", "hard_num_negatives", "seed"))
    seeds, temperatures = FLAGS.seeds, FLAGS.temperatures
    if FLAGS.smoke:
        extra = dict(sweep.SMOKE_FLAGS, **extra)
        # One run: the hard loss, whose K a batch of 32 must admit.
        seeds, temperatures = ["0"], ["0.5"]
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    runs = sweep_runs(seeds, temperatures, FLAGS.hard_num_negatives, FLAGS.dataset,
                      FLAGS.data_dir, extra)
    if FLAGS.smoke:
        runs = [spec for spec in runs if spec.labels["loss"] == "hard"]
    seconds = sweep.train_or_fail(runs, FLAGS.out_dir)
    _, table = write_outputs(runs, FLAGS.out_dir, seconds)
    print(table)


if __name__ == "__main__":
    app.run(main)
