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


def png_size(path):
    """(width, height) in pixels of a valid PNG at `path`."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and np.ptp(image) > 0  # decodes, is not blank
    return image.shape[1], image.shape[0]


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
