r"""Local features of a globally trained encoder (Chen & Li 2021, §4).

Claim tested: instance-level contrastive learning with a global
representation still learns meaningful local features; k-means on the
per-location vectors of an intermediate block's feature map gives regions
that follow the objects in multi-object images.

For each of `--datasets` (images whose digit masks are known:
`digits_on_photos`, a digit on a photo crop; `multi_digits`, a large and a
small digit) and each seed, trains an encoder with the dataset's preset
(an ordinary `run.py` run), then loads it as a user would, from its
exported SavedModel, next to a randomly initialised encoder of the same
flags (`export.export_in_subprocess` with no checkpoint). For the first
`--num_images` test images and each of `block_group1`…`block_group4`:

- the feature map [h, w, c] is clustered by k-means (`--clusters`
  clusters) on its h·w location vectors, each L2-normalised (k-means on
  directions: a location is grouped by what its features respond to, not
  by how strongly);
- the cluster map, upsampled to the image (nearest), is scored per digit
  mask M by its best-matching IoU, max_c |C_c ∩ M| / |C_c ∪ M|, averaged
  over the images whose mask is not empty. M holds the digit's visible
  pixels: those of the dataset's mask whose grey value (the brightest
  channel) is at least `--mask_threshold` (0: the dataset's mask as it
  is, which for a resized digit also holds the faint fringe bilinear
  resizing leaves around its strokes).

The same score of k-means on the raw pixel values is the reference of what
colour alone separates.

    python experiments/local_features.py
    python experiments/local_features.py --datasets=multi_digits --clusters=4 --seeds=0,1,2
    python experiments/local_features.py --smoke

Every encoder's cluster maps are kept (OUT/scores/<run>_<encoder>.npz),
so scoring against other masks (`--mask_threshold`) computes no feature.
Writes OUT/local_features.csv (one row per run, encoder, block group and
mask), OUT/local_features_summary.csv (mean ± std over seeds),
OUT/local_features.md, OUT/local_features.png (IoU against block group,
trained against random, pixels dotted) and OUT/cluster_maps_<dataset>.png
(images, masks and the cluster maps of seed 0's encoders). Runs live in
OUT/runs/, random encoders in OUT/random/; none is computed twice.
"""
import os
import shutil
import sys
import warnings

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sweep  # noqa: E402

FLAGS = flags.FLAGS
sweep.define_flags("local_features", dataset=False)
flags.adopt_module_key_flags(sweep)  # listed by --help as this driver's own
flags.DEFINE_list("datasets", ["digits_on_photos", "multi_digits"],
                  "Datasets with digit masks (digits_on_photos, multi_digits).")
flags.DEFINE_integer("clusters", 3, "k of k-means per image and block group.")
flags.DEFINE_integer("num_images", 100, "Test images scored per encoder.")
flags.DEFINE_integer("num_shown", 6, "Images in each cluster-map figure.")
flags.DEFINE_integer("mask_threshold", 128,
                     "Grey value from which a pixel of a digit's mask counts as the digit's "
                     "(0: the dataset's masks as they are).")

BLOCK_GROUPS = ("block_group1", "block_group2", "block_group3", "block_group4")
ENCODERS = ("trained", "random")
SCORES_DIR = "scores"
# Each dataset's preset (15 epochs, an eighth-width ResNet-18, 32 px),
# keeping the newest SavedModel that the scoring loads.
SWEEP_FLAGS = dict(compute_baselines=False, keep_hub_module_max=1)


def sweep_runs(seeds, names, extra=None):
    """The `sweep.Run`s: one encoder per dataset and seed."""
    return [sweep.Run(f"{name}_seed{seed}",
                      dict(SWEEP_FLAGS, dataset=name, seed=int(seed), **(extra or {})),
                      dict(dataset=name, seed=int(seed)))
            for name in names for seed in seeds]


def l2_normalise(x, eps=1e-12):
    """Rows of x [n, c] divided by max(‖x_i‖, eps) (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cluster_map(features, k, seed=0, normalise=True):
    """k-means cluster ids int [h, w] of the location vectors of `features`
    [h, w, c] (each L2-normalised when `normalise`), k-means++ with 3
    restarts, fewer clusters when there are fewer distinct vectors."""
    from sklearn.cluster import KMeans

    h, w, c = features.shape
    x = features.reshape(h * w, c).astype(np.float64)
    if normalise:
        x = l2_normalise(x)
    k = min(k, len(np.unique(x, axis=0)))
    if k < 2:
        return np.zeros((h, w), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-duplicate vectors: fewer clusters found
        ids = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    return ids.reshape(h, w)


def upsample(ids, size):
    """Nearest-neighbour resize of a map [h, w] to [size, size]: pixel
    (r, c) takes the cell (⌊r·h/size⌋, ⌊c·w/size⌋)."""
    h, w = ids.shape
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    return ids[rows][:, cols]


def best_iou(ids, mask):
    """max over clusters c of |{ids = c} ∩ mask| / |{ids = c} ∪ mask|, for a
    cluster map and a bool mask of the same shape (NaN for an empty mask)."""
    if not mask.any():
        return float("nan")
    best = 0.0
    for c in np.unique(ids):
        region = ids == c
        best = max(best, (region & mask).sum() / (region | mask).sum())
    return float(best)


def masks_of(source, split):
    """(names, bool [N, M, S, S]) of a source's digit masks: one `digit`
    mask for digits_on_photos, one per label for multi_digits."""
    masks = source.digit_masks(split)
    if masks.ndim == 3:
        return ("digit",), masks[:, None]
    return tuple(source.label_names), masks


def cluster_maps(maps, k, size):
    """uint8 [N, len(maps), size, size]: the upsampled k-means cluster map of
    every image of each of `maps` ({block group: float [N, h, w, c]}, or the
    pixels under the key "pixels", clustered on raw values)."""
    n = len(next(iter(maps.values())))
    ids = np.zeros((n, len(maps), size, size), np.uint8)
    for b, (name, features) in enumerate(maps.items()):
        for i in range(n):
            ids[i, b] = upsample(cluster_map(features[i], k, normalise=name != "pixels"), size)
    return ids


def visible(images, masks, threshold):
    """The pixels of `masks` (bool [N, M, S, S]) whose grey value in `images`
    (uint8 [N, S, S, C], its brightest channel) is at least `threshold`."""
    return masks & (images.max(axis=-1) >= threshold)[:, None]


def scores(ids, masks):
    """float [N, B, M]: the best-matching IoU of cluster maps `ids` [N, B, S,
    S] with each mask of `masks` [N, M, S, S] (NaN for an empty mask)."""
    n, blocks, m = ids.shape[0], ids.shape[1], masks.shape[1]
    return np.array([[[best_iou(ids[i, b], masks[i, j]) for j in range(m)]
                      for b in range(blocks)] for i in range(n)]).reshape(n, blocks, m)


def encoder_maps(saved_model_dir, images, batch=50):
    """{block group: float [N, h, w, c]} of the SavedModel in inference
    mode on uint8 `images` [N, S, S, C] (grey replicated to RGB, as the
    input pipeline does)."""
    tf = sweep.import_quietly("tensorflow")
    module = tf.saved_model.load(saved_model_dir)
    x = images.astype(np.float32) / 255.0
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    outputs = {name: [] for name in BLOCK_GROUPS}
    for start in range(0, len(x), batch):
        result = module(tf.constant(x[start:start + batch]), trainable=False)
        for name in BLOCK_GROUPS:
            outputs[name].append(result[name].numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def random_encoder(run_dir, out_dir):
    """The SavedModel directory of the untrained model of the run's flags
    (seeded with its --seed), exported once into OUT/random/<run>/."""
    export = sweep.import_quietly("export")
    target = os.path.join(out_dir, "random", os.path.basename(run_dir))
    path = export.export_dir(target, 0)
    if not os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
        shutil.copy(os.path.join(run_dir, "flags.json"), target)
        export.export_in_subprocess(target, "", 0, 1)
    return path


def trained_encoder(run_dir):
    """The run's newest SavedModel directory."""
    export = sweep.import_quietly("export")
    steps = export.exported_steps(run_dir)
    if not steps:
        sweep.fail(f"{run_dir} holds no SavedModel (trained with --keep_hub_module_max=0?): "
                   "delete it to train it again")
    return export.export_dir(run_dir, steps[-1])


def test_data(run_dir, num_images):
    """(images uint8, mask names, masks) of the first `num_images` test
    images of the run's dataset, opened from its flags.json."""
    run_record = sweep.import_quietly("run_record")
    source = run_record.open_dataset(run_record.read_record(run_dir))
    images, _ = source.as_numpy("test")
    names, masks = masks_of(source, "test")
    return images[:num_images], names, masks[:num_images]


def run_cluster_maps(spec, out_dir, k, num_images):
    """{encoder: cluster ids [N, B, S, S]} of the run's trained and random
    encoders and of the pixels, each read from OUT/scores/ or computed and
    saved there; plus the images, mask names and masks."""
    run_dir = spec.model_dir(out_dir)
    images, names, masks = test_data(run_dir, num_images)
    ids = {}
    for encoder in ENCODERS + ("pixels",):
        path = os.path.join(out_dir, SCORES_DIR, f"{spec.name}_{encoder}.npz")
        if not os.path.exists(path):
            if encoder == "pixels":
                maps = {"pixels": images}
            else:
                model = (trained_encoder(run_dir) if encoder == "trained"
                         else random_encoder(run_dir, out_dir))
                maps = encoder_maps(model, images)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.savez(path + ".partial.npz", ids=cluster_maps(maps, k, masks.shape[-1]), k=k)
            os.replace(path + ".partial.npz", path)
        with np.load(path) as saved:
            if int(saved["k"]) != k or len(saved["ids"]) != len(images):
                sweep.fail(f"{path} holds the clusters of other --clusters or --num_images: "
                           "use another --out_dir, or delete it to cluster again")
            ids[encoder] = saved["ids"]
    return ids, images, names, masks


def rows_of(spec, ids, names, masks):
    """CSV rows {dataset, seed, encoder, block, mask, iou, images} of one
    run: the mean best-matching IoU over the images whose mask is not
    empty."""
    rows = []
    for encoder, maps in ids.items():
        iou = scores(maps, masks)
        blocks = ("pixels",) if encoder == "pixels" else BLOCK_GROUPS
        for b, block in enumerate(blocks):
            for j, mask in enumerate(names):
                values = iou[:, b, j][~np.isnan(iou[:, b, j])]
                rows.append(dict(spec.labels, encoder=encoder, block=block, mask=mask,
                                 iou=float(values.mean()), images=len(values)))
    return rows


def write_outputs(rows, shown, out_dir):
    """CSVs, the IoU figure, the cluster-map figures and the Markdown table;
    returns the table."""
    sweep.write_csv(rows, os.path.join(out_dir, "local_features.csv"))
    summary = sweep.summarise(rows, ["dataset", "mask", "encoder", "block"], ["iou"])
    sweep.write_csv(summary, os.path.join(out_dir, "local_features_summary.csv"))
    _plot_iou(summary, os.path.join(out_dir, "local_features.png"))
    for dataset, (images, names, masks, ids) in shown.items():
        _plot_maps(images, names, masks, ids,
                   os.path.join(out_dir, f"cluster_maps_{dataset}.png"))
    table = sweep.markdown_table(summary, ["dataset", "mask", "encoder", "block", "n"], ["iou"])
    with open(os.path.join(out_dir, "local_features.md"), "w") as f:
        f.write(table + "\n")
    return table


def _plot_iou(summary, path):
    """Best-matching IoU against block group, one panel per dataset and
    mask, a line per encoder, the pixels' score dotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(dict.fromkeys((r["dataset"], r["mask"]) for r in summary))
    fig = Figure(figsize=(4 * len(panels), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for k, (dataset, mask) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        members = [r for r in summary if (r["dataset"], r["mask"]) == (dataset, mask)]
        for encoder in ENCODERS:
            points = [(BLOCK_GROUPS.index(r["block"]) + 1, r["iou_mean"], r["iou_std"])
                      for r in members if r["encoder"] == encoder]
            if points:
                x, mean, std = zip(*sorted(points))
                ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=encoder)
        for r in members:
            if r["encoder"] == "pixels":
                ax.axhline(r["iou_mean"], color="grey", linestyle=":", label="pixels")
        ax.set_xticks(range(1, len(BLOCK_GROUPS) + 1))
        ax.set_xlabel("block group")
        ax.set_ylabel("best-matching IoU")
        ax.set_title(f"{dataset}: {mask}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _plot_maps(images, names, masks, ids, path):
    """A row per shown image: the image, its masks (one colour each), and
    the cluster maps of each encoder's block groups and of the pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [("image", None), ("masks", None)]
    columns += [(f"{e} {b.replace('block_group', 'bg')}", (e, j))
                for e in ENCODERS for j, b in enumerate(BLOCK_GROUPS)]
    columns.append(("pixels", ("pixels", 0)))
    n = len(images)
    fig = Figure(figsize=(1.3 * len(columns), 1.4 * n + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(n):
        for c, (title, which) in enumerate(columns):
            ax = fig.add_subplot(n, len(columns), i * len(columns) + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
            if title == "image":
                image = images[i]
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                          cmap="gray", vmin=0, vmax=255)
            elif title == "masks":
                label = np.zeros(masks.shape[-2:], np.int64)
                for j in range(len(names)):
                    label[masks[i, j]] = j + 1
                ax.imshow(label, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            else:
                encoder, b = which
                ax.imshow(ids[encoder][i, b], cmap="tab10", vmin=0, vmax=9,
                          interpolation="nearest")
    fig.tight_layout()
    fig.savefig(path)


def main(argv):
    extra = sweep.driver_start(argv, FLAGS.run_flag)
    sweep.refuse_swept(extra, ("dataset", "seed", "keep_hub_module_max"))
    seeds, names = FLAGS.seeds, FLAGS.datasets
    num_images, num_shown = FLAGS.num_images, FLAGS.num_shown
    if FLAGS.clusters < 2 or num_images < 1 or num_shown < 0 or FLAGS.mask_threshold < 0:
        sweep.fail("--clusters must be >= 2, --num_images >= 1, --num_shown >= 0 and "
                   "--mask_threshold >= 0")
    if FLAGS.smoke:
        extra = dict(sweep.SMOKE_FLAGS, **extra)
        # One run, of the dataset with two masks, and a few images.
        seeds, names, num_images, num_shown = ["0"], ["multi_digits"], 4, 2
    for name in names:
        if name not in ("digits_on_photos", "multi_digits"):
            sweep.fail(f"--datasets={name}: it has no digit masks; allowed: "
                       "digits_on_photos, multi_digits")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    runs = sweep_runs(seeds, names, extra)
    sweep.train_or_fail(runs, FLAGS.out_dir)
    rows, shown = [], {}
    for spec in runs:
        ids, images, mask_names, masks = run_cluster_maps(spec, FLAGS.out_dir, FLAGS.clusters,
                                                          num_images)
        masks = visible(images, masks, FLAGS.mask_threshold)
        rows += rows_of(spec, ids, mask_names, masks)
        shown.setdefault(spec.labels["dataset"], (
            images[:num_shown], mask_names, masks[:num_shown],
            {encoder: maps[:num_shown] for encoder, maps in ids.items()}))
    print(write_outputs(rows, shown, FLAGS.out_dir))


if __name__ == "__main__":
    app.run(main)
