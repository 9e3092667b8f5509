"""Tests of plots.py: the readers against summaries and CSV files written
here, PCA against scikit-learn, the cosine law against closed forms,
quadrature and metrics.sphere_cosine_sample, and the PNGs' geometry."""
import math
import os

import matplotlib.image
import numpy as np
import pytest
import sklearn.decomposition
import tensorflow as tf
from matplotlib import colormaps

import metrics
import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_scalars(directory, points):
    """Writes [(tag, step, value)] as TF2 scalar summaries, in that order,
    into one new event file under `directory`; returns the file's path."""
    before = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        for tag, step, value in points:
            tf.summary.scalar(tag, value, step=step)
    writer.close()
    (new,) = set(os.listdir(directory)) - before
    return os.path.join(directory, new)


# ---------------------------------------------------------------------------
# Readers.
# ---------------------------------------------------------------------------

def test_read_scalars_reads_back_sorted_and_keeps_the_last_duplicate(tmp_path):
    # Written out of step order, with step 2 of "a" written twice in a file.
    first = write_scalars(tmp_path, [("train/a", 3, 0.25), ("train/a", 1, 1.5),
                                     ("train/a", 2, -4.0), ("train/a", 2, 8.0),
                                     ("b", 5, 0.125)])
    # A resumed run: a later file (by name) rewrites step 3 and adds 4.
    second = write_scalars(tmp_path, [("train/a", 3, 0.75),
                                      ("train/a", 4, 2.0)])
    os.rename(first, tmp_path / "events.out.tfevents.1000.host.1.v2")
    os.rename(second, tmp_path / "events.out.tfevents.2000.host.1.v2")
    with tf.summary.create_file_writer(str(tmp_path / "eval")).as_default():
        tf.summary.scalar("nested", 1.0, step=1)  # not read: not directly under
    # An old-style simple_value summary, and non-scalars that must be skipped.
    writer = tf.summary.create_file_writer(str(tmp_path / "old"))
    with writer.as_default():
        old = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(
            tag="old/loss", simple_value=0.5)])
        tf.summary.experimental.write_raw_pb(old.SerializeToString(), step=7)
        tf.summary.text("note", "not a number", step=7)
        tf.summary.histogram("weights", [1.0, 2.0, 3.0], step=7)
    writer.close()
    assert plots.read_scalars(str(tmp_path)) == {
        "train/a": [(1, 1.5), (2, 8.0), (3, 0.75), (4, 2.0)], "b": [(5, 0.125)]}
    assert plots.read_scalars(str(tmp_path / "old")) == {"old/loss": [(7, 0.5)]}
    assert plots.read_scalars(str(tmp_path / "missing")) == {}


def test_read_metrics_csv_round_trips_with_nan_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,h/alignment,z/uniformity\n"
                    "100,0.5,-1.25\n"
                    "200,,nan\n"
                    "300,0.125,-3\n")
    table = plots.read_metrics_csv(str(path))
    assert list(table) == ["step", "h/alignment", "z/uniformity"]
    np.testing.assert_array_equal(table["step"], [100, 200, 300])
    np.testing.assert_array_equal(table["h/alignment"], [0.5, np.nan, 0.125])
    np.testing.assert_array_equal(table["z/uniformity"], [-1.25, np.nan, -3.0])
    assert all(v.dtype == np.float64 for v in table.values())
    assert plots.read_metrics_csv(str(tmp_path / "missing.csv")) == {}


# ---------------------------------------------------------------------------
# PCA.
# ---------------------------------------------------------------------------

def test_pca_2d_matches_sklearn_up_to_sign():
    rng = np.random.default_rng(0)
    # Correlated columns far from the origin, so centring matters.
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 5.0
    coords, ratio = plots.pca_2d(x)
    reference = sklearn.decomposition.PCA(n_components=2).fit(x)
    expected = reference.transform(x)
    signs = np.sign(np.sum(coords * expected, axis=0))
    np.testing.assert_allclose(coords, expected * signs, atol=1e-9)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_,
                               rtol=1e-10)


def test_pca_2d_sign_makes_the_largest_loading_positive():
    # Rows t1·d1 + t2·d2 + offset with known axes, whose largest loadings
    # are negative: the convention takes −d1 and −d2 as the components.
    t1 = np.array([3.0, -3.0, 1.0, -1.0, 0.0, 0.0])
    t2 = np.array([0.0, 0.0, 1.0, 1.0, -1.0, -1.0])  # mean 0, ⊥ t1, smaller
    d1 = np.array([-0.8, 0.6, 0.0])
    d2 = np.array([0.0, 0.0, -1.0])
    x = np.outer(t1, d1) + np.outer(t2, d2) + [1.0, 2.0, 3.0]
    coords, ratio = plots.pca_2d(x)
    np.testing.assert_allclose(coords, np.stack([-t1, -t2], axis=1),
                               atol=1e-12)
    np.testing.assert_allclose(ratio, [20 / 24, 4 / 24], rtol=1e-12)
    coords_negated, _ = plots.pca_2d(-x)  # components flip to stay positive
    np.testing.assert_allclose(coords_negated, -coords, atol=1e-12)


# ---------------------------------------------------------------------------
# The cosine law of the sphere.
# ---------------------------------------------------------------------------

def test_sphere_cosine_density_closed_forms():
    c = np.array([-0.99, -0.5, 0.0, 0.3, 0.999])
    np.testing.assert_allclose(plots.sphere_cosine_density(c, 2),
                               1 / (np.pi * np.sqrt(1 - c ** 2)), rtol=1e-12)
    np.testing.assert_allclose(plots.sphere_cosine_density(c, 3), 0.5,
                               rtol=1e-12)
    # m = 5: Γ(5/2) / (√π Γ(2)) = 3/4, times (1 − c²).
    np.testing.assert_allclose(plots.sphere_cosine_density(c, 5),
                               0.75 * (1 - c ** 2), rtol=1e-12)
    outside = plots.sphere_cosine_density(np.array([-1.5, 1.01]), 64)
    np.testing.assert_array_equal(outside, [0.0, 0.0])
    assert plots.sphere_cosine_density(1.0, 3) == pytest.approx(0.5)  # not NaN
    assert plots.sphere_cosine_density(1.0, 64) == 0.0
    assert isinstance(plots.sphere_cosine_density(0.0, 2048), float)


@pytest.mark.parametrize("dim", [2, 3, 5, 64, 2048])
def test_sphere_cosine_density_integrates_to_one(dim):
    # c = cos θ: ∫ f(c) dc = ∫_0^π f(cos θ) sin θ dθ, finite at the ends
    # even for m = 2; the midpoint rule never evaluates θ = 0 or π. Its
    # error for smooth integrands at this step is far below 1e-6.
    steps = 200000
    theta = (np.arange(steps) + 0.5) * (np.pi / steps)
    integrand = plots.sphere_cosine_density(np.cos(theta), dim) * np.sin(theta)
    assert np.all(np.isfinite(integrand))
    assert np.sum(integrand) * (np.pi / steps) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("dim", [4, 64])
def test_sphere_cosine_density_matches_the_sampled_law(dim):
    n, bins = 200000, plots.HISTOGRAM_BINS
    samples = metrics.sphere_cosine_sample(dim, n, seed=3)
    counts, edges = np.histogram(samples, bins=bins, range=(-1.0, 1.0))
    # Each bin's probability: the density integrated over the bin (midpoint
    # rule on 200 sub-intervals, exact to ~1e-7 here).
    sub = (np.arange(200) + 0.5) / 200
    width = edges[1] - edges[0]
    inner = edges[:-1, None] + width * sub[None, :]
    p = plots.sphere_cosine_density(inner, dim).mean(axis=1) * width
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    # A bin's count is Binomial(n, p): 5 standard deviations (plus one count
    # for the empty tail bins) has a chance ~1e-5 of failing over 60 bins
    # for a correct density; a wrong normalising constant or exponent moves
    # the central bins by hundreds of standard deviations.
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) <= 5 * sigma + 1), \
        np.max(np.abs(counts - n * p) / (sigma + 1))


# ---------------------------------------------------------------------------
# The PNGs.
# ---------------------------------------------------------------------------

def model_dir_with(tmp_path, scalars=(), csv_text=None, eval_points=()):
    model_dir = tmp_path / "model"
    model_dir.mkdir(parents=True)
    if scalars:
        write_scalars(model_dir, scalars)
    if eval_points:
        (model_dir / "eval").mkdir()
        write_scalars(model_dir / "eval", eval_points)
    if csv_text is not None:
        (model_dir / "metrics.csv").write_text(csv_text)
    return str(model_dir)


def png_pixels(path):
    """The RGB pixels [H, W, 3] in [0, 1] of the PNG at `path`."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[-1] in (3, 4)
    return image[..., :3]


def png_size(path):
    """(width, height) in pixels of the PNG at `path`."""
    pixels = png_pixels(path)
    return pixels.shape[1], pixels.shape[0]


def count_colour(pixels, colour, tolerance=0.01):
    return int(np.sum(np.all(np.abs(pixels - np.asarray(colour[:3])) < tolerance, axis=-1)))


def captured_figures(monkeypatch):
    """{file name: Figure} of the figures plots.py saves from now on."""
    figures = {}
    save = plots._save

    def capture(fig, path):
        figures[os.path.basename(path)] = fig
        return save(fig, path)
    monkeypatch.setattr(plots, "_save", capture)
    return figures


def cosine_density(c, dim):
    """Gamma(m/2) / (sqrt(pi) Gamma((m-1)/2)) (1 - c^2)^((m-3)/2), the law of
    the cosine of two independent uniform points on S^(m-1)."""
    log_norm = (math.lgamma(dim / 2) - 0.5 * math.log(math.pi)
                - math.lgamma((dim - 1) / 2))
    return np.exp(log_norm + (dim - 3) / 2 * np.log1p(-np.square(c)))


TRAIN = [("train/total_loss", 10, 2.0), ("train/total_loss", 20, 1.5),
         ("train/contrast_loss", 20, 1.4), ("train/contrast_acc", 20, 0.3),
         ("train/contrast_entropy", 20, 3.0), ("learning_rate", 20, 0.1)]
CSV = ("step,h/alignment,z/alignment,h/uniformity,z/tolerance\n"
       "10,0.5,0.4,-1.0,\n"
       "20,0.6,0.3,-1.5,nan\n")  # z/tolerance has no value: no panel


def test_training_panels_are_those_whose_data_exists(tmp_path):
    full = model_dir_with(tmp_path / "a", TRAIN, CSV,
                          [("eval/label_top_1_accuracy", 20, 0.5)])
    assert plots.training_panels(full) == [
        "loss", "accuracy", "learning rate", "alignment", "uniformity"]
    only_rate = model_dir_with(tmp_path / "b", [("learning_rate", 1, 0.1)])
    assert plots.training_panels(only_rate) == ["learning rate"]
    # The eval accuracy alone makes the accuracy panel; no csv, no metrics.
    eval_only = model_dir_with(tmp_path / "c", [("train/total_loss", 1, 1.0)],
                               eval_points=[("eval/label_top_1_accuracy", 1,
                                             0.2)])
    assert plots.training_panels(eval_only) == ["loss", "accuracy"]


def test_write_plots_writes_three_pngs_of_the_expected_size(tmp_path):
    model_dir = model_dir_with(tmp_path, TRAIN, CSV,
                               [("eval/label_top_1_accuracy", 20, 0.5)])
    rng = np.random.default_rng(0)
    h = rng.normal(size=(40, 8)).astype(np.float32)
    z = rng.normal(size=(40, 3)).astype(np.float32)
    labels = np.arange(40) % 4
    paths = plots.write_plots(model_dir, h, z, labels)
    assert paths == [os.path.join(model_dir, name) for name in
                     ("plot_training.png", "plot_embedding.png",
                      "plot_cosines.png")]
    # At 100 dpi and 4 × 3 in a panel: 5 panels on 3 columns × 2 rows;
    # the embedding is one 5 × 4 in figure; the cosines 2 panels in a row.
    assert [png_size(p) for p in paths] == [(1200, 600), (500, 400),
                                            (800, 300)]
    _, _, cosines = plots.write_plots(model_dir, h, None, labels)
    assert png_size(cosines) == (400, 300)


def test_training_curves_draw_the_summaries_and_metrics_given(tmp_path, monkeypatch):
    """Each panel's lines are the series written here: train/*loss* and
    train/*acc* by tag, the eval accuracy as points, the learning rate, and
    the h/ and z/ columns of metrics.csv where finite."""
    model_dir = model_dir_with(tmp_path, TRAIN, CSV, [("eval/label_top_1_accuracy", 20, 0.5)])
    figures = captured_figures(monkeypatch)
    plots.plot_training_curves(model_dir, os.path.join(model_dir, "plot_training.png"))
    fig = figures["plot_training.png"]
    drawn = {ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                              for line in ax.get_lines()} for ax in fig.axes}
    expected = {
        "loss": {"total_loss": ([10, 20], [2.0, 1.5]), "contrast_loss": ([20], [1.4])},
        "accuracy": {"contrast_acc": ([20], [0.3]),
                     "eval/label_top_1_accuracy": ([20], [0.5])},
        "learning rate": {"learning_rate": ([20], [0.1])},
        "alignment": {"h": ([10, 20], [0.5, 0.6]), "z": ([10, 20], [0.4, 0.3])},
        "uniformity": {"h": ([10, 20], [-1.0, -1.5])},
    }
    assert list(drawn) == list(expected)
    for title, lines in expected.items():
        assert sorted(drawn[title]) == sorted(lines), title
        for label, (steps, values) in lines.items():
            assert drawn[title][label][0] == steps, (title, label)
            # Summaries hold float32.
            np.testing.assert_allclose(drawn[title][label][1], values, rtol=1e-6)
    [eval_line] = [line for line in fig.axes[1].get_lines()
                   if line.get_label() == "eval/label_top_1_accuracy"]
    assert eval_line.get_marker() == "o" and eval_line.get_linestyle() == "None"


def test_embedding_scatters_each_class_at_its_principal_components(tmp_path, monkeypatch):
    """One scatter per class at the rows' first two principal components
    (sklearn's, up to sign), in its tab10 colour; the PNG holds pixels of
    the four classes' colours and none of the unused colours'."""
    rng = np.random.default_rng(1)
    labels = np.arange(60) % 4
    h = (rng.normal(size=(60, 6)) + 3.0 * labels[:, None]).astype(np.float32)
    figures = captured_figures(monkeypatch)
    path = plots.plot_embedding(h, labels, str(tmp_path / "embedding.png"))
    [ax] = figures["embedding.png"].axes
    expected = sklearn.decomposition.PCA(n_components=2).fit_transform(h.astype(np.float64))
    tab10 = colormaps["tab10"]
    assert len(ax.collections) == 4
    for k, points in enumerate(ax.collections):
        coords = np.asarray(points.get_offsets())
        signs = np.sign(np.sum(coords * expected[labels == k], axis=0))
        np.testing.assert_allclose(coords, expected[labels == k] * signs, atol=1e-4)
        np.testing.assert_allclose(points.get_facecolor()[0], tab10(k))
        assert points.get_label() == str(k)
    pixels = png_pixels(path)
    # tab10's grey (7) is also the anti-aliased edge of black text.
    for k in (0, 1, 2, 3, 4, 5, 6, 8, 9):
        found = count_colour(pixels, tab10(k))
        assert (found > 0) == (k < 4), (k, found)


def test_cosine_histograms_are_of_the_sampled_cosines_over_the_sphere_law(tmp_path,
                                                                         monkeypatch):
    """Each panel: the density histogram (60 bins on [-1, 1]) of the sampled
    pair cosines, the law of uniform points on S^(m-1) for its own m, and
    the W-uniformity of the same pairs in its title."""
    rng = np.random.default_rng(2)
    embeddings = {"h": rng.normal(size=(50, 8)).astype(np.float32),
                  "z": rng.normal(size=(50, 3)).astype(np.float32)}
    figures = captured_figures(monkeypatch)
    plots.plot_cosine_histogram(embeddings, str(tmp_path / "cosines.png"), num_samples=500,
                                seed=3)
    axes = figures["cosines.png"].axes
    assert len(axes) == 2
    for ax, (name, x) in zip(axes, embeddings.items()):
        cosines = np.asarray(metrics.pairwise_cosine_sample(x, 500, 3))
        heights, edges = np.histogram(cosines, bins=60, range=(-1.0, 1.0), density=True)
        bars = ax.patches
        np.testing.assert_allclose([bar.get_height() for bar in bars], heights, rtol=1e-6)
        np.testing.assert_allclose([bar.get_x() for bar in bars], edges[:-1], atol=1e-12)
        [curve] = ax.get_lines()
        grid = np.asarray(curve.get_xdata())
        assert grid.min() > -1 and grid.max() < 1
        np.testing.assert_allclose(curve.get_ydata(), cosine_density(grid, x.shape[1]),
                                   rtol=1e-9)
        distance = float(metrics.wasserstein_uniformity(x, 500, 3))
        assert ax.get_title() == f"{name} (m = {x.shape[1]}), W-uniformity {distance:.4f}"
