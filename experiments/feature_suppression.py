r"""Feature suppression (Chen & Li 2021, §3): easy features shared by the
views of an image are learnt, and they suppress the others.

Three studies, each a sweep of ordinary `run.py` trainings (several seeds,
`--deterministic`), contrastive (NT-Xent at each `--temperatures`) against
the autoencoder baseline (`--train_mode=autoencoder`) on the same data and
budget:

- `randbits`: the digit probe's accuracy as `--bits` RandBits channels are
  added to every image (`--num_rand_bits`); on the embedded digits by
  default, any `--dataset` (mnist, cifar10, ... from `--data_dir`) on a
  bigger machine;
- `digits_on_photos`: the object probe against the digit probe on photo
  crops that carry a digit (`--dataset=digits_on_photos`), and the object
  probe on the same crops without the digit (`--digit_sizes=0`);
- `multi_digits`: the small digit's probe as the large digit grows
  (`--dataset=multi_digits --digit_sizes=L,8` for each of `--large_sizes`).

    python experiments/feature_suppression.py                  # all three
    python experiments/feature_suppression.py --study=randbits --seeds=0,1,2
    python experiments/feature_suppression.py --study=randbits --dataset=mnist \
        --data_dir=DIR --run_flag=train_epochs=10 --run_flag=resnet_depth=18
    python experiments/feature_suppression.py --smoke         # seconds: the suite's

Writes OUT/<study>.csv (one row per run, read from its result.json),
OUT/<study>_summary.csv (mean and std over seeds), OUT/<study>.png and
OUT/<study>.md (the summary as a Markdown table); runs live in OUT/runs/
and a run that has a result.json is not trained again.
"""
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: E402

STUDIES = ("randbits", "digits_on_photos", "multi_digits")
FLAGS = flags.FLAGS
flags.DEFINE_list("study", list(STUDIES), f"Studies to run: {', '.join(STUDIES)}.")
flags.DEFINE_string("out_dir", os.path.join("runs", "feature_suppression"),
                    "Where the runs, tables and plots go.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every setting.")
flags.DEFINE_list("bits", ["0", "5", "10", "15"], "randbits: --num_rand_bits values.")
flags.DEFINE_list("temperatures", ["0.2"],
                  "NT-Xent temperatures of the contrastive runs (the original's notebook: "
                  "0.05,0.1,0.2).")
flags.DEFINE_list("large_sizes", ["8", "20"],
                  "multi_digits: sizes of the large digit (the small one is --small_size).")
flags.DEFINE_integer("small_size", 8, "multi_digits: size of the small digit.")
flags.DEFINE_bool("autoencoder", True, "Also run the autoencoder baseline of every setting.")
flags.DEFINE_string("dataset", "digits", "randbits: the dataset the bits are added to.")
flags.DEFINE_string("data_dir", None, "randbits: --data_dir of a TFDS or image-folder dataset.")
flags.DEFINE_multi_string("run_flag", [], "A run.py flag for every run, as name=value "
                          "(repeatable), e.g. --run_flag=train_epochs=30.")
flags.DEFINE_bool("smoke", False, "A tiny sweep (two 2-step runs) that checks the driver.")

# Every run of the study: shorter than the dataset presets (40 rather than
# 60 epochs of the digits preset) so that the default sweep of the three
# studies, 3 seeds, fits in well under an hour on 2 CPU cores.
STUDY_FLAGS = {
    "randbits": dict(train_epochs=40, compute_baselines=False, keep_hub_module_max=0),
    "digits_on_photos": dict(dataset="digits_on_photos", compute_baselines=False,
                             keep_hub_module_max=0),
    "multi_digits": dict(dataset="multi_digits", compute_baselines=False,
                         keep_hub_module_max=0),
}
# The result keys each study reads, and the chance level of its probes.
KEYS = {
    "randbits": ["probe_top1", "knn_top1"],
    "digits_on_photos": ["probe_top1_object", "probe_top1_digit",
                         "knn_top1_object", "knn_top1_digit"],
    "multi_digits": ["probe_top1_large", "probe_top1_small",
                     "knn_top1_large", "knn_top1_small"],
}


# The plot title and x-axis label of the studies with two probes.
TWO_PROBE_PLOTS = {"digits_on_photos": ("Digits on photos", "digit size (0: no digit)"),
                   "multi_digits": ("MultiDigits", "large digit size (px)")}


def settings(temperatures, autoencoder):
    """[(setting name, run.py flags)]: NT-Xent at each temperature, then the
    autoencoder."""
    out = [(f"ntxent_t{t}", dict(loss="ntxent", temperature=float(t))) for t in temperatures]
    if autoencoder:
        out.append(("autoencoder", dict(train_mode="autoencoder")))
    return out


def study_runs(study, seeds, temperatures, autoencoder, bits=(), large_sizes=(),
               small_size=8, dataset="digits", data_dir=None, extra=None):
    """The `sweep.Run`s of a study: setting × swept value × seed."""
    extra = dict(extra or {})
    if study == "randbits":
        values = [("bits", int(k), dict(num_rand_bits=int(k))) for k in bits]
        base = dict(dataset=dataset, **({"data_dir": data_dir} if data_dir else {}))
    elif study == "multi_digits":
        values = [("large_size", int(size), dict(digit_sizes=[int(size), small_size]))
                  for size in large_sizes]
        base = {}
    else:
        # With the digit, and the control without it (the same crops).
        values = [("digit_size", 8, {}), ("digit_size", 0, dict(digit_sizes=[0]))]
        base = {}
    runs = []
    for setting, setting_flags in settings(temperatures, autoencoder):
        for column, value, value_flags in values:
            for seed in seeds:
                run_flags = dict(STUDY_FLAGS[study], **base, **setting_flags, **value_flags,
                                 seed=int(seed), **extra)
                name = f"{study}_{setting}_{column}{value}_seed{seed}"
                runs.append(sweep.Run(name, run_flags,
                                      dict(setting=setting, **{column: value}, seed=int(seed))))
    return runs, values[0][0]


def run_study(study, out_dir, runs, column, log=print):
    """Trains the runs, then writes the study's CSVs, plot and table;
    returns the summary rows."""
    start = time.time()
    seconds = sweep.train_or_fail(runs, out_dir, log=log)
    keys = KEYS[study]
    _, summary = sweep.tabulate(runs, out_dir, seconds, keys, ["setting", column], study)
    path = os.path.join(out_dir, f"{study}.png")
    if study == "randbits":
        sweep.plot_lines(summary, column, "probe_top1", "setting", path, title="RandBits",
                         xlabel="random bits", ylabel="linear probe top-1", chance=0.1)
    else:
        # Two probes: one row per (setting, swept value, probe), a panel per probe.
        long = [dict(r, probe=key.replace("probe_top1_", ""), top1_mean=r[f"{key}_mean"],
                     top1_std=r[f"{key}_std"])
                for r in summary for key in keys if key.startswith("probe")]
        title, xlabel = TWO_PROBE_PLOTS[study]
        sweep.plot_lines(long, column, "top1", "setting", path, title=title, xlabel=xlabel,
                         ylabel="linear probe top-1", panels="probe", chance=0.1)
    table = sweep.markdown_table(summary, ["setting", column, "n"], keys)
    with open(os.path.join(out_dir, f"{study}.md"), "w") as f:
        f.write(table + "\n")
    log(f"{study}: {len(runs)} runs, {time.time() - start:.0f} s\n{table}")
    return summary


def main(argv):
    extra = sweep.driver_start(argv, FLAGS.run_flag)
    unknown = set(FLAGS.study) - set(STUDIES)
    if unknown:
        sweep.fail(f"--study must be among {', '.join(STUDIES)}; got {', '.join(sorted(unknown))}")
    seeds, bits, temperatures = FLAGS.seeds, FLAGS.bits, FLAGS.temperatures
    large_sizes, studies = FLAGS.large_sizes, FLAGS.study
    if FLAGS.smoke:
        extra = dict(sweep.SMOKE_FLAGS, **extra)
        seeds, bits, temperatures, large_sizes = ["0"], ["2"], ["0.2"], ["8"]
        studies = [s for s in studies if s == "randbits"] or studies[:1]
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    for study in studies:
        runs, column = study_runs(study, seeds, temperatures, FLAGS.autoencoder, bits=bits,
                                  large_sizes=large_sizes, small_size=FLAGS.small_size,
                                  dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, extra=extra)
        run_study(study, FLAGS.out_dir, runs, column)


if __name__ == "__main__":
    app.run(main)
