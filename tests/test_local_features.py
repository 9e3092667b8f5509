"""experiments/local_features.py: the best-matching IoU, the cluster maps'
upsampling and k-means, against numpy written here, and the driver's smoke
run end to end (a real run, its exported SavedModel, a random encoder).

The driver is imported in this process: it is the only driver any test
imports (the others run in fresh processes), so its absl flags are defined
once."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import local_features as lf  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from test_experiments import check_png  # noqa: E402
from test_experiments import check_tables  # noqa: E402
from test_experiments import distinct  # noqa: E402


def iou_by_counting(ids, mask):
    """max over cluster ids of |both| / |either|, counted pixel by pixel."""
    best = 0.0
    for c in set(ids.ravel().tolist()):
        both = either = 0
        for r in range(ids.shape[0]):
            for k in range(ids.shape[1]):
                inside, masked = ids[r, k] == c, bool(mask[r, k])
                both += inside and masked
                either += inside or masked
        best = max(best, both / either)
    return best


def test_best_iou_against_counting_and_closed_forms():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(0, 3, (7, 9))
        mask = rng.random((7, 9)) < 0.3
        assert lf.best_iou(ids, mask) == pytest.approx(iou_by_counting(ids, mask), abs=1e-12)
    halves = np.repeat([[0, 1]], 4, axis=0).repeat(4, axis=1)  # left 0, right 1; 4x8
    left = halves == 0
    assert lf.best_iou(halves, left) == 1.0
    quarter = np.zeros_like(left)
    quarter[:, :2] = True  # half of cluster 0: IoU 1/2
    assert lf.best_iou(halves, quarter) == 0.5
    assert np.isnan(lf.best_iou(halves, np.zeros_like(left)))


def test_upsample_is_nearest_neighbour():
    ids = np.arange(16).reshape(4, 4)
    assert np.array_equal(lf.upsample(ids, 32), np.kron(ids, np.ones((8, 8), np.int64)))
    # 2 -> 5: rows r take cell floor(2r/5) = 0, 0, 0, 1, 1.
    assert np.array_equal(lf.upsample(np.array([[1, 2], [3, 4]]), 5),
                          np.array([[1, 1, 1, 2, 2]] * 3 + [[3, 3, 3, 4, 4]] * 2))


def test_cluster_map_groups_locations_by_direction_not_norm():
    """A square whose vectors point one way inside another region pointing
    another way, with norms spread over three decades: clustered on
    directions the square is one cluster; clustered on raw vectors it is
    not (norms dominate)."""
    rng = np.random.default_rng(1)
    features = np.zeros((8, 8, 4))
    square = np.zeros((8, 8), bool)
    square[2:5, 3:7] = True
    features[square] = [1, 0.1, 0, 0]
    features[~square] = [0, 0.1, 1, 0]
    features *= 10.0 ** rng.uniform(-1.5, 1.5, (8, 8, 1))
    assert lf.best_iou(lf.cluster_map(features, 2), square) == 1.0
    assert lf.best_iou(lf.cluster_map(features, 2, normalise=False), square) < 1.0
    # Identical vectors: one cluster, no k-means error.
    assert np.array_equal(lf.cluster_map(np.ones((3, 3, 2)), 3), np.zeros((3, 3)))


def test_visible_keeps_the_mask_pixels_at_least_the_threshold_on_the_brightest_channel():
    images = np.zeros((1, 2, 3, 3), np.uint8)
    images[0, 0, :, 0] = [127, 128, 255]  # red channel of the first row
    images[0, 1, 0, 2] = 200              # blue channel, outside mask 0
    masks = np.zeros((1, 2, 2, 3), bool)
    masks[0, 0, 0] = True                 # mask 0: the first row
    masks[0, 1] = True                    # mask 1: everything
    kept = lf.visible(images, masks, 128)
    assert kept[0, 0].tolist() == [[False, True, True], [False, False, False]]
    assert kept[0, 1].tolist() == [[False, True, True], [True, False, False]]
    assert np.array_equal(lf.visible(images, masks, 0), masks)


def test_masks_of_names_each_mask():
    class OneMask:
        def digit_masks(self, split):
            return np.ones((5, 4, 4), bool)

    class TwoMasks(OneMask):
        label_names = ("large", "small")

        def digit_masks(self, split):
            return np.ones((5, 2, 4, 4), bool)

    names, masks = lf.masks_of(OneMask(), "test")
    assert names == ("digit",) and masks.shape == (5, 1, 4, 4)
    names, masks = lf.masks_of(TwoMasks(), "test")
    assert names == ("large", "small") and masks.shape == (5, 2, 4, 4)


def driver(*args):
    """The driver as a user runs it: without the suite's TF_CPP_MIN_LOG_LEVEL,
    which would ask for TensorFlow's start-up lines."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments",
                                                        "local_features.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.processes
def test_smoke_scores_a_trained_and_a_random_encoder_and_resumes(tmp_path):
    out = str(tmp_path / "out")
    done = driver("--smoke", f"--out_dir={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"local_features.csv", "local_features_summary.csv", "local_features.md",
            "local_features.png", "cluster_maps_multi_digits.png"} <= set(os.listdir(out))
    # The summary and the Markdown recomputed from the CSV; the IoU figure a
    # 4 x 3.4 in panel per (dataset, mask) with the first encoder's line; the
    # cluster maps 1.3 in a column (image, masks, 2 encoders x 4 block
    # groups, pixels) and 1.4 in a row of the 2 shown images plus 0.3, with
    # the tab10 colours 1 and 2 of the two masks (and of clusters 1 and 2).
    summary = check_tables(out, "local_features", ("local_features.md", 0))
    check_png(os.path.join(out, "local_features.png"),
              (4 * distinct(summary, "dataset", "mask"), 3.4))
    check_png(os.path.join(out, "cluster_maps_multi_digits.png"), (1.3 * 11, 1.4 * 2 + 0.3),
              colours=[colormaps["tab10"](1)[:3], colormaps["tab10"](2)[:3]])
    with open(os.path.join(out, "local_features.csv")) as f:
        rows = list(csv.DictReader(f))
    # 2 encoders x 4 block groups + the pixels, for each of the 2 masks.
    assert len(rows) == (2 * 4 + 1) * 2

    from datasets import multi_digits
    images, _, dataset_masks = multi_digits.generate("test")
    images, dataset_masks = images[:4], dataset_masks[:4]
    # The default --mask_threshold: the mask pixels at least half bright,
    # fewer than the dataset's masks and none of them dim.
    masks = dataset_masks & (images[..., 0] >= 128)[:, None]
    assert 0 < masks.sum() < dataset_masks.sum()
    for encoder in ("trained", "random", "pixels"):
        with np.load(os.path.join(out, "scores", f"multi_digits_seed0_{encoder}.npz")) as saved:
            ids = saved["ids"]
        assert ids.shape == (4, 1 if encoder == "pixels" else 4, 32, 32)
        # Each CSV row is the mean of the best IoU of the maps over the
        # images whose mask is not empty.
        for row in rows:
            if row["encoder"] == encoder:
                b = 0 if encoder == "pixels" else lf.BLOCK_GROUPS.index(row["block"])
                j = ("large", "small").index(row["mask"])
                expected = np.mean([iou_by_counting(ids[i, b], masks[i, j])
                                    for i in range(4) if masks[i, j].any()])
                assert float(row["iou"]) == pytest.approx(expected, abs=1e-12)
        if encoder != "pixels":
            # block_group4 of a 32 px image is 4x4: its map is constant on 8x8 cells.
            coarse = ids[:, 3, ::8, ::8]
            assert np.array_equal(ids[:, 3], np.kron(coarse, np.ones((1, 8, 8), np.uint8)))

    # The random encoder has the run's flags and weights other than the trained ones'.
    with open(os.path.join(out, "runs", "multi_digits_seed0", "flags.json")) as f:
        run_flags = json.load(f)
    with open(os.path.join(out, "random", "multi_digits_seed0", "flags.json")) as f:
        assert json.load(f) == run_flags
    trained = lf.trained_encoder(os.path.join(out, "runs", "multi_digits_seed0"))
    random = os.path.join(out, "random", "multi_digits_seed0", "saved_model", "0")
    assert open(os.path.join(trained, "variables", "variables.data-00000-of-00001"), "rb").read() \
        != open(os.path.join(random, "variables", "variables.data-00000-of-00001"), "rb").read()

    # A second call trains and clusters nothing; another threshold rescores
    # the same maps.
    stamps = {name: os.path.getmtime(os.path.join(out, "scores", name))
              for name in os.listdir(os.path.join(out, "scores"))}
    again = driver("--smoke", f"--out_dir={out}", "--mask_threshold=0")
    assert again.returncode == 0, again.stderr
    assert "[1/" not in again.stdout
    with open(os.path.join(out, "local_features.csv")) as f:
        pixels = [r for r in csv.DictReader(f) if r["encoder"] == "pixels"]
    with np.load(os.path.join(out, "scores", "multi_digits_seed0_pixels.npz")) as saved:
        ids = saved["ids"]
    assert float(pixels[0]["iou"]) == pytest.approx(
        np.mean([iou_by_counting(ids[i, 0], dataset_masks[i, 0]) for i in range(4)]), abs=1e-12)
    assert stamps == {name: os.path.getmtime(os.path.join(out, "scores", name))
                      for name in os.listdir(os.path.join(out, "scores"))}
    # Clusters of another k are not read as this call's: one line, exit 2.
    other = driver("--smoke", f"--out_dir={out}", "--clusters=4")
    lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert other.returncode == 2 and len(lines) == 1, other.stderr
    assert "--clusters" in lines[0]
