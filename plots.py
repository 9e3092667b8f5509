"""PNG plots of a run: training curves, a PCA view of the embedding, and
the pairwise cosines against those of uniform points on the sphere.

Figures are `matplotlib.figure.Figure` objects on an Agg canvas, so the
global pyplot state is never touched (no backend switch, nothing to close).
Each panel is PANEL_INCHES at DPI, so a figure of R × C panels saves as
(C · 400) × (R · 300) pixels.
"""
import csv
import glob
import math
import os

import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import metrics

DPI = 100
PANEL_INCHES = (4.0, 3.0)      # width, height of one panel
EMBEDDING_INCHES = (5.0, 4.0)  # wider than a panel: room for the legend
MAX_COLUMNS = 3
HISTOGRAM_BINS = 60
EVAL_TAG = "eval/label_top_1_accuracy"


def _scalar(value):
    """The float of a Summary.Value holding a scalar, else None (images,
    histograms, text: anything that is not one number)."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    array = tf.make_ndarray(value.tensor) if kind == "tensor" else None
    scalar = (array is not None and array.size == 1
              and array.dtype.kind in "biuf")
    return float(array.reshape(())) if scalar else None


def read_scalars(directory):
    """{tag: [(step, value), ...]} sorted by step, of every scalar summary
    in the event files `events.out.tfevents.*` directly under `directory`
    (not recursive). TF2 scalars are read from their tensor, old-style ones
    from simple_value. Files are read in sorted name order (their names
    start with the creation time), and a (tag, step) seen again replaces
    the earlier value: a resumed run rewrites the steps after its checkpoint.
    A missing directory gives {}."""
    latest = {}
    pattern = os.path.join(glob.escape(os.fspath(directory)),
                           "events.out.tfevents.*")
    for path in sorted(glob.glob(pattern)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = _scalar(value)
                if number is not None:
                    latest.setdefault(value.tag, {})[int(event.step)] = number
    return {tag: sorted(points.items()) for tag, points in latest.items()}


def read_metrics_csv(path):
    """{column: float array} of a CSV file with a header line (first column
    `step`, then columns like `h/alignment`); empty cells and `nan` are NaN.
    A missing file gives {}."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    header, body = (rows[0], rows[1:]) if rows else ([], [])

    def number(cell):
        return float(cell) if cell.strip() else math.nan

    return {name: np.array([number(row[k]) if k < len(row) else math.nan
                            for row in body], dtype=np.float64)
            for k, name in enumerate(header)}


def pca_2d(x):
    """(coords [N, 2], explained_variance_ratio [2]) of the rows of `x`
    [N, m]: with X the centred rows and X = U S Vᵀ its SVD, coords = X V_{:2}
    and ratio_k = s_k² / Σ_j s_j² (0 when all rows are equal). The sign of
    each component is fixed so that its largest-magnitude loading (entry of
    the right singular vector) is positive, so the plot does not mirror
    between calls or LAPACK builds."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 2:
        raise ValueError(f"pca_2d needs an [N, m] array with N, m >= 2, got "
                         f"{x.shape}")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    largest = components[np.arange(2), np.argmax(np.abs(components), axis=1)]
    components = components * np.where(largest < 0, -1.0, 1.0)[:, None]
    total = np.sum(s ** 2)
    ratio = s[:2] ** 2 / total if total > 0 else np.zeros(2)
    return centred @ components.T, ratio


def sphere_cosine_density(c, dim):
    """Density of the cosine uᵀv of two independent uniform points on
    S^{m−1}, m = dim >= 2: Γ(m/2) / (√π Γ((m−1)/2)) · (1 − c²)^{(m−3)/2}
    on (−1, 1), 0 outside [−1, 1]. Computed as exp of its logarithm
    (lgamma, log1p) so that m = 2048 neither overflows nor underflows to
    NaN. m = 2 gives 1/(π√(1−c²)), m = 3 gives 1/2. A float for a scalar
    `c`, else an array of c's shape."""
    if dim < 2:
        raise ValueError(f"the cosine law needs a dimension >= 2, got {dim}")
    c_array = np.asarray(c, dtype=np.float64)
    log_norm = (math.lgamma(dim / 2.0) - 0.5 * math.log(math.pi)
                - math.lgamma((dim - 1) / 2.0))
    inside = np.abs(c_array) <= 1.0
    clipped = np.where(inside, c_array, 0.0)
    with np.errstate(divide="ignore"):
        # log(1 − c²) as two log1p terms: exact near ±1, −inf at ±1.
        log_base = np.log1p(-clipped) + np.log1p(clipped)
    # For m = 3 the power is 0; 0 · (−inf) at c = ±1 would be NaN.
    log_power = (dim - 3) / 2.0 * log_base if dim != 3 else 0.0
    density = np.where(inside, np.exp(log_norm + log_power), 0.0)
    return float(density) if density.ndim == 0 else density


def _figure(count, inches=PANEL_INCHES):
    """(figure, [axes] of `count` panels) on a grid of at most MAX_COLUMNS
    columns, spare cells removed."""
    columns = max(1, min(MAX_COLUMNS, count))
    rows = max(1, math.ceil(count / columns))
    fig = Figure(figsize=(inches[0] * columns, inches[1] * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[count:]:
        fig.delaxes(ax)
    return fig, axes[:count]


def _save(fig, path):
    fig.tight_layout()
    # dpi given again so a user's savefig.dpi rcParam cannot resize it.
    fig.savefig(path, dpi=DPI)
    return path


def _training_series(model_dir):
    """[(title, [(label, steps, values, marker)])] of the panels whose data
    exists, in display order."""
    scalars = read_scalars(model_dir)
    evaluated = read_scalars(os.path.join(model_dir, "eval")).get(EVAL_TAG)

    def lines(keep):
        return [(tag.removeprefix("train/"), *zip(*scalars[tag]), None)
                for tag in sorted(scalars) if keep(tag)]

    # The trainer logs "contrast_acc"; "acc" also matches "accuracy".
    panels = {"loss": lines(lambda t: t[:6] == "train/" and "loss" in t[6:]),
              "accuracy": lines(lambda t: t[:6] == "train/" and "acc" in t[6:]),
              "learning rate": lines(lambda t: t == "learning_rate")}
    if evaluated:
        panels["accuracy"].append((EVAL_TAG, *zip(*evaluated), "o"))
    table = read_metrics_csv(os.path.join(model_dir, "metrics.csv"))
    steps = table.pop("step", None)
    for column, values in table.items() if steps is not None else ():
        # "h/alignment" and "z/alignment" share the "alignment" panel;
        # markers, as a row comes only every few thousand steps.
        prefix, _, name = column.rpartition("/")
        keep = np.isfinite(values) & np.isfinite(steps)
        if np.any(keep):
            panels.setdefault(name, []).append(
                (prefix or name, steps[keep], values[keep], "."))
    return [(title, series) for title, series in panels.items() if series]


def training_panels(model_dir):
    """Titles of the panels `plot_training_curves` draws for `model_dir`:
    "loss", "accuracy", "learning rate" where their summaries exist, then
    one per metric name of metrics.csv with a finite value."""
    return [title for title, _ in _training_series(model_dir)]


def plot_training_curves(model_dir, path):
    """PNG at `path` of the training curves of `model_dir`: the train/*loss*
    summaries, the train/*acc* ones with eval/label_top_1_accuracy (from
    model_dir/eval) as points, the learning rate, and one panel per metric
    of metrics.csv with its h/ and z/ columns against step. Panels without
    data are left out. Returns `path`."""
    panels = _training_series(model_dir)
    fig, axes = _figure(max(1, len(panels)))
    if not panels:
        axes[0].text(0.5, 0.5, "no summaries or metrics.csv", ha="center")
    for ax, (title, series) in zip(axes, panels):
        for label, steps, values, marker in series:
            ax.plot(steps, values, marker=marker, label=label,
                    linestyle="none" if marker == "o" else "-")
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_embedding(h, labels, path, title=""):
    """PNG at `path` of the rows of `h` projected on their first two
    principal components (`pca_2d`), one colour per integer label (tab10 up
    to 10 classes, else tab20, colour = label mod the map's size so a class
    keeps its colour across plots). Returns `path`."""
    coords, ratio = pca_2d(h)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    classes = np.unique(labels)
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig, (ax,) = _figure(1, EMBEDDING_INCHES)
    for k in classes:
        mine = labels == k
        ax.scatter(coords[mine, 0], coords[mine, 1], s=6,
                   color=cmap(int(k) % cmap.N), label=str(k))
    ax.set(xlabel=f"PC1 ({100 * ratio[0]:.1f}% of variance)",
           ylabel=f"PC2 ({100 * ratio[1]:.1f}% of variance)", title=title)
    ax.legend(title="class", fontsize="x-small", markerscale=2,
              loc="center left", bbox_to_anchor=(1.0, 0.5),
              ncol=math.ceil(len(classes) / 20))
    return _save(fig, path)


def plot_cosine_histogram(embeddings, path, num_samples=10000, seed=0):
    """PNG at `path`, one panel per entry of `embeddings` ({name: [N, m]}):
    the density histogram (HISTOGRAM_BINS bins on [−1, 1]) of the cosines of
    `num_samples` random pairs of distinct rows
    (`metrics.pairwise_cosine_sample`), over `sphere_cosine_density` for the
    entry's own m; the title gives `metrics.wasserstein_uniformity` of the
    same pairs. Returns `path`."""
    fig, axes = _figure(len(embeddings))
    # Open interval: for m = 2 the density is infinite at ±1.
    grid = np.linspace(-1.0, 1.0, 2001)[1:-1]
    for ax, (name, x) in zip(axes, embeddings.items()):
        x = np.asarray(x, dtype=np.float32)
        dim = x.shape[-1]
        cosines = np.asarray(metrics.pairwise_cosine_sample(x, num_samples,
                                                            seed))
        distance = float(metrics.wasserstein_uniformity(x, num_samples, seed))
        ax.hist(cosines, bins=HISTOGRAM_BINS, range=(-1.0, 1.0), density=True,
                alpha=0.6, label="pairwise cosines")
        ax.plot(grid, sphere_cosine_density(grid, dim), color="black",
                linewidth=1, label=f"uniform on $S^{{{dim - 1}}}$")
        ax.set(title=f"{name} (m = {dim}), W-uniformity {distance:.4f}",
               xlabel="cosine", ylabel="density", xlim=(-1.0, 1.0))
        ax.legend(fontsize="small")
    return _save(fig, path)


def write_plots(model_dir, h, z, labels):
    """Writes plot_training.png, plot_embedding.png (of `h`) and
    plot_cosines.png (of `h`, and of `z` unless it is None) into
    `model_dir`; returns their paths in that order."""
    embeddings = {"h": h} if z is None else {"h": h, "z": z}
    return [
        plot_training_curves(model_dir,
                             os.path.join(model_dir, "plot_training.png")),
        plot_embedding(h, labels, os.path.join(model_dir, "plot_embedding.png"),
                       title="h, first two principal components"),
        plot_cosine_histogram(embeddings,
                              os.path.join(model_dir, "plot_cosines.png")),
    ]
