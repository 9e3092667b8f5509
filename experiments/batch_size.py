r"""Batch size against the loss (Koromilas et al., ICML 2024).

Claim tested (Koromilas et al., ICML 2024, "Bridging Mini-Batch and
Asymptotic Analysis in Contrastive Learning: From InfoNCE to Kernel-Based
Losses": their abstract's claims):
DHEL and KCL are more robust than NT-Xent and DCL across batch sizes, and
collapse fewer dimensions of the representation (a higher effective rank).

Sweeps `--batch_sizes` × `--losses` × `--seeds`, each loss at its own
default parameters, the learning rate scaled linearly with the batch (the
flags' default `--learning_rate_scaling=linear`, as SimCLR does), every run
the same number of epochs. From every run's result.json: the probe's and
kNN's top-1, and the effective rank (exp of the entropy of the normalised
singular values) and uniformity of h and z on the held-out batch.

    python experiments/batch_size.py
    python experiments/batch_size.py --batch_sizes=32,64,128,256,512,1024 --seeds=0,1,2
    python experiments/batch_size.py --smoke

Writes OUT/batch_size.csv, OUT/batch_size_summary.csv, OUT/batch_size.md,
OUT/batch_size_accuracy.png and OUT/batch_size_rank.png (probe top-1 and
the effective rank of h against the batch size, one line per loss); runs
live in OUT/runs/ and are not trained twice.
"""
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: E402

FLAGS = flags.FLAGS
sweep.define_flags("batch_size")
flags.adopt_module_key_flags(sweep)  # listed by --help as this driver's own
flags.DEFINE_list("batch_sizes", ["32", "128", "512"], "Global training batch sizes.")
flags.DEFINE_list("losses", ["ntxent", "dcl", "dhel", "kcl"], "Losses, each at its defaults.")

# A third of the digits preset's 60 epochs: the default sweep (12
# settings, 3 seeds) in under an hour on 2 CPU cores.
SWEEP_FLAGS = dict(train_epochs=20, compute_baselines=False, keep_hub_module_max=0)
KEYS = ["probe_top1", "knn_top1"] + [f"representation/{space}/{name}" for space in ("h", "z")
                                     for name in ("effective_rank", "uniformity")]


def sweep_runs(seeds, batch_sizes, losses, dataset="digits", data_dir=None, extra=None):
    """The `sweep.Run`s: every loss at every batch size, × seeds."""
    base = dict(SWEEP_FLAGS, dataset=dataset, **({"data_dir": data_dir} if data_dir else {}))
    runs = []
    for loss in losses:
        for batch in batch_sizes:
            for seed in seeds:
                flags_ = dict(base, loss=loss, train_batch_size=int(batch), seed=int(seed),
                              **(extra or {}))
                runs.append(sweep.Run(f"{loss}_batch{batch}_seed{seed}", flags_,
                                      dict(loss=loss, batch=int(batch), seed=int(seed))))
    return runs


def write_outputs(runs, out_dir, seconds):
    """CSVs, table and the two figures; returns (summary rows, table)."""
    _, summary = sweep.tabulate(runs, out_dir, seconds, KEYS, ["loss", "batch"], "batch_size")
    sweep.plot_lines(summary, "batch", "probe_top1", "loss",
                     os.path.join(out_dir, "batch_size_accuracy.png"),
                     title="linear probe", xlabel="batch size", ylabel="probe top-1",
                     log2_x=True)
    sweep.plot_lines(summary, "batch", "representation/h/effective_rank", "loss",
                     os.path.join(out_dir, "batch_size_rank.png"),
                     title="effective rank of h", xlabel="batch size",
                     ylabel="effective rank of h", log2_x=True)
    table = sweep.markdown_table(summary, ["loss", "batch", "n"],
                                 ["probe_top1", "knn_top1", "representation/h/effective_rank",
                                  "representation/z/effective_rank"])
    with open(os.path.join(out_dir, "batch_size.md"), "w") as f:
        f.write(table + "\n")
    return summary, table


def main(argv):
    extra = sweep.driver_start(argv, FLAGS.run_flag)
    sweep.refuse_swept(extra, ("loss", "train_batch_size", "seed"))
    seeds, batch_sizes, losses = FLAGS.seeds, FLAGS.batch_sizes, FLAGS.losses
    if FLAGS.smoke:
        extra = dict(sweep.SMOKE_FLAGS, **extra)
        extra.pop("train_batch_size")  # the swept flag
        seeds, batch_sizes, losses = ["0"], ["16"], ["dhel"]
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    runs = sweep_runs(seeds, batch_sizes, losses, FLAGS.dataset, FLAGS.data_dir, extra)
    seconds = sweep.train_or_fail(runs, FLAGS.out_dir)
    _, table = write_outputs(runs, FLAGS.out_dir, seconds)
    print(table)


if __name__ == "__main__":
    app.run(main)
