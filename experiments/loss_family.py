r"""Instantiations of the generalized contrastive loss against the depth of
the projection head, and the temperature τ against the weight λ (Chen & Li
2021, §2; the uniformity of Wang & Isola, ICML 2020).

Claims tested:
- NT-Xent, the decoupled LogSumExp loss and SWD with each prior perform
  similarly once the projection head is deep (2–3 layers) and differ with
  a shallow head or none;
- τ of NT-Xent and λ of the distribution term are inversely related within
  a range: a small τ and a large λ both weigh the distribution term more.

Sweeps `--losses` × `--head_depths` × `--seeds`, each loss at its default
parameters. Head depth d is the projection head g of z = g(h):

    d = 0: `--proj_head_mode=none` (z = h)
    d = 1: `--proj_head_mode=linear` (z = BN(W h); a nonlinear head of one
           layer is the same map)
    d ≥ 2: `--proj_head_mode=nonlinear --num_proj_layers=d`

Then, at the deepest head, `--temperatures` of NT-Xent and `--lambdas` of
each of `--lambda_losses` (the runs the two sweeps share are trained
once). A loss is a `run.py --loss` name, `swd:PRIOR` for SWD with
`--prior=PRIOR`. From every run's result.json: the probe's and kNN's top-1
and the alignment, uniformity (t = 2) and effective rank of h (what the
probe reads) and z (what the loss sees) on the held-out batch.

    python experiments/loss_family.py
    python experiments/loss_family.py --losses=ntxent,swd:normal --head_depths=0,2 --seeds=0,1,2
    python experiments/loss_family.py --smoke

Writes OUT/loss_family.csv, OUT/loss_family_summary.csv,
OUT/loss_family.png (probe top-1 and the effective rank of h against head
depth, one line per loss), OUT/tau_lambda.csv, OUT/tau_lambda_summary.csv,
OUT/tau_lambda.png (probe top-1 and uniformity of z against τ and against
λ) and OUT/loss_family.md (the tables and the best τ or λ of each loss);
runs live in OUT/runs/ and are not trained twice.
"""
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: E402

FLAGS = flags.FLAGS
sweep.define_flags("loss_family")
flags.adopt_module_key_flags(sweep)  # listed by --help as this driver's own
flags.DEFINE_list("losses", ["ntxent", "decoupled", "swd", "swd:uniform_hypercube"],
                  "Losses of the head-depth sweep: a run.py --loss, or swd:PRIOR.")
flags.DEFINE_list("head_depths", ["0", "1", "2", "3"],
                  "Projection-head depths: 0 none, 1 linear, d >= 2 nonlinear of d layers.")
flags.DEFINE_list("temperatures", ["0.1", "0.2", "0.5"],
                  "Temperatures of ntxent at the deepest head.")
flags.DEFINE_list("lambdas", ["0.3", "1.0", "3.0"],
                  "Weights λ of the distribution term of --lambda_losses at the deepest head.")
flags.DEFINE_list("lambda_losses", ["decoupled", "swd"], "Losses swept over λ.")

# A third of the digits preset's 60 epochs: the default sweep (16 head
# settings and 4 more τ/λ ones, 3 seeds) in about an hour on 2 CPU cores.
SWEEP_FLAGS = dict(train_epochs=20, compute_baselines=False, keep_hub_module_max=0)
# The parameter each swept loss sets explicitly, at its default, so that a
# head-depth run and the τ/λ run of the same setting are one run.
DEFAULT_PARAMETER = {"ntxent": ("temperature", 0.1), "decoupled": ("lambda_weight", 1.0),
                     "swd": ("lambda_weight", 1.0)}
SYMBOL = {"temperature": "tau", "lambda_weight": "lambda"}
KEYS = ["probe_top1", "knn_top1"] + [f"representation/{space}/{name}" for space in ("h", "z")
                                     for name in ("alignment", "uniformity", "effective_rank")]


def head_flags(depth):
    """run.py's projection-head flags of head depth `depth` (0, 1, ...)."""
    if depth == 0:
        return dict(proj_head_mode="none")
    if depth == 1:
        return dict(proj_head_mode="linear")
    return dict(proj_head_mode="nonlinear", num_proj_layers=depth)


def parse_loss(spec):
    """(run.py --loss, --prior or None) of a `--losses` item: `name` or
    `swd:PRIOR`.

    Raises:
        ValueError: an unknown loss or prior, or a prior on a loss other
            than swd.
    """
    objective = sweep.import_quietly("objective")
    loss, sep, prior = spec.partition(":")
    if loss not in objective.LOSSES:
        raise ValueError(f"loss {loss!r} in {spec!r}; allowed: {', '.join(objective.LOSSES)}")
    if not sep:
        return loss, None
    if loss != "swd":
        raise ValueError(f"{spec!r}: only swd takes a prior (swd:PRIOR)")
    if prior not in objective.PRIORS:
        raise ValueError(f"prior {prior!r} in {spec!r}; allowed: {', '.join(objective.PRIORS)}")
    return loss, prior


def sweep_runs(seeds, losses, head_depths, temperatures, lambdas, lambda_losses,
               dataset="digits", data_dir=None, extra=None):
    """The `sweep.Run`s of the two sweeps.

    Returns:
        (head-depth runs, τ/λ runs): lists that share the `Run` of a
        setting both sweep (same name, same flags).
    """
    base = dict(SWEEP_FLAGS, dataset=dataset, **({"data_dir": data_dir} if data_dir else {}))
    made = {}

    def run(spec, depth, parameter, value, seed):
        loss, prior = parse_loss(spec)
        flags_ = dict(base, loss=loss, **head_flags(depth), seed=int(seed))
        if prior:
            flags_["prior"] = prior
        name = f"{spec.replace(':', '_')}_head{depth}"
        if parameter:
            flags_[parameter] = value
            name += f"_{SYMBOL[parameter]}{value:g}"
        name += f"_seed{seed}"
        flags_.update(extra or {})
        labels = dict(loss=spec, depth=depth, parameter=SYMBOL.get(parameter),
                      value=value, seed=int(seed))
        return made.setdefault(name, sweep.Run(name, flags_, labels))

    depth_runs = []
    for spec in losses:
        parameter, value = DEFAULT_PARAMETER.get(parse_loss(spec)[0], (None, None))
        for depth in head_depths:
            for seed in seeds:
                depth_runs.append(run(spec, int(depth), parameter, value, seed))
    deepest = max(int(d) for d in head_depths)
    grid = [("ntxent", "temperature", float(t)) for t in temperatures]
    grid += [(spec, "lambda_weight", float(w)) for spec in lambda_losses for w in lambdas]
    tau_lambda_runs = [run(spec, deepest, parameter, value, seed)
                       for spec, parameter, value in grid for seed in seeds]
    return depth_runs, tau_lambda_runs


def best_settings(summary):
    """Per loss of the τ/λ summary, its setting of highest mean probe top-1
    and the runner-up: rows {loss, parameter, best, probe (mean, std),
    runner_up, runner_up_probe (mean, std)}, runner-up None for one
    setting."""
    best = []
    for loss in dict.fromkeys(r["loss"] for r in summary):
        ranked = sorted((r for r in summary if r["loss"] == loss),
                        key=lambda r: -r["probe_top1_mean"])
        top, second = ranked[0], (ranked[1] if len(ranked) > 1 else None)
        best.append(dict(
            loss=loss, parameter=top["parameter"], best=top["value"],
            probe=(top["probe_top1_mean"], top["probe_top1_std"]),
            runner_up=second and second["value"],
            runner_up_probe=second and (second["probe_top1_mean"], second["probe_top1_std"])))
    return best


def _best_table(best):
    lines = ["| loss | best | probe top-1 | runner-up | its probe top-1 |", "|---|---|---|---|---|"]
    for b in best:
        second = ("—", "—") if b["runner_up"] is None else (
            f"{b['parameter']} = {b['runner_up']:g}",
            "{:.3f} ± {:.3f}".format(*b["runner_up_probe"]))
        lines.append(f"| {b['loss']} | {b['parameter']} = {b['best']:g} | "
                     "{:.3f} ± {:.3f} | ".format(*b["probe"]) + " | ".join(second) + " |")
    return "\n".join(lines)


def write_outputs(depth_runs, tau_lambda_runs, out_dir, seconds):
    """CSVs, figures and OUT/loss_family.md; returns the Markdown."""
    _, depth_summary = sweep.tabulate(depth_runs, out_dir, seconds, KEYS, ["loss", "depth"],
                                      "loss_family")
    _, tl_summary = sweep.tabulate(tau_lambda_runs, out_dir, seconds, KEYS,
                                   ["loss", "parameter", "value"], "tau_lambda")
    _plot_depth(depth_summary, os.path.join(out_dir, "loss_family.png"))
    if tl_summary:
        sweep.plot_lines(tl_summary, "value", "probe_top1", "loss",
                         os.path.join(out_dir, "tau_lambda.png"), title="probe top-1",
                         xlabel="τ (ntxent) or λ", ylabel="linear probe top-1",
                         panels="parameter")
    text = "\n\n".join([
        sweep.markdown_table(depth_summary, ["loss", "depth", "n"],
                             ["probe_top1", "knn_top1", "representation/h/effective_rank",
                              "representation/z/uniformity", "representation/z/alignment"]),
        sweep.markdown_table(tl_summary, ["loss", "parameter", "value", "n"],
                             ["probe_top1", "knn_top1", "representation/z/uniformity",
                              "representation/h/uniformity"]),
        _best_table(best_settings(tl_summary))])
    with open(os.path.join(out_dir, "loss_family.md"), "w") as f:
        f.write(text + "\n")
    return text


def _plot_depth(summary, path):
    """Probe top-1 and the effective rank of h against head depth, one line
    per loss, mean ± std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for k, (key, label) in enumerate([("probe_top1", "linear probe top-1 (on h)"),
                                      ("representation/h/effective_rank",
                                       "effective rank of h")]):
        ax = fig.add_subplot(1, 2, k + 1)
        for loss in dict.fromkeys(r["loss"] for r in summary):
            points = sorted((r["depth"], r[f"{key}_mean"], r[f"{key}_std"])
                            for r in summary if r["loss"] == loss)
            depths, means, stds = zip(*points)
            ax.errorbar(depths, means, yerr=stds, marker="o", capsize=3, label=loss)
        ax.set_xticks(sorted({r["depth"] for r in summary}))
        ax.set_xlabel("projection-head depth (0 none, 1 linear)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main(argv):
    extra = sweep.driver_start(argv, FLAGS.run_flag)
    sweep.refuse_swept(extra, ("loss", "prior", "proj_head_mode", "num_proj_layers",
                               "temperature", "lambda_weight", "seed"))
    seeds, losses, depths = FLAGS.seeds, FLAGS.losses, FLAGS.head_depths
    temperatures, lambdas, lambda_losses = FLAGS.temperatures, FLAGS.lambdas, FLAGS.lambda_losses
    if FLAGS.smoke:
        extra = dict(sweep.SMOKE_FLAGS, **extra)
        # One run in both sweeps: SWD off the hypersphere under a linear head.
        seeds, losses, depths = ["0"], ["swd:uniform_hypercube"], ["1"]
        temperatures, lambdas, lambda_losses = [], ["1.0"], ["swd:uniform_hypercube"]
    try:
        if not depths or min(int(d) for d in depths) < 0:
            raise ValueError(f"--head_depths={','.join(depths)}: give depths >= 0")
        for spec in lambda_losses:
            if parse_loss(spec)[0] not in ("decoupled", "swd"):
                raise ValueError(f"--lambda_losses: {spec!r} has no λ; allowed: decoupled, "
                                 "swd, swd:PRIOR")
        runs = sweep_runs(seeds, losses, depths, temperatures, lambdas, lambda_losses,
                          FLAGS.dataset, FLAGS.data_dir, extra)
    except ValueError as e:
        sweep.fail(e)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    depth_runs, tau_lambda_runs = runs
    every = list({spec.name: spec for spec in depth_runs + tau_lambda_runs}.values())
    seconds = sweep.train_or_fail(every, FLAGS.out_dir)
    print(write_outputs(depth_runs, tau_lambda_runs, FLAGS.out_dir, seconds))


if __name__ == "__main__":
    app.run(main)
