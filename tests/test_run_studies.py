"""End-to-end runs of the feature-suppression study's modes (TensorFlow
backend, in-process, tiny as in tests/test_run.py): the autoencoder with
RandBits and several labels with their own probes, and unlabelled folders
(trained, then evaluated and exported by --mode=eval without a head).

What is checked against what: the probes' accuracies against logits
computed here from the checkpoint, the views' bits against the hash bits
of tests/test_rand_bits.py, the export against the checkpoint's encoder,
the logs against the event files.
"""

import numpy as np
import pytest
import tensorflow as tf

import checkpoint as checkpoint_lib
import configs
import data
import datasets
import evaluation
import export
from test_run import assert_training_metrics_finite
from test_run import rebuild
from test_run import read_json
from test_run import reset_flags  # noqa: F401  (autouse fixture)
from test_run import scalars
from test_run import train
from test_rand_bits import bits_numpy

BITS = 2
# One run covers the autoencoder, RandBits and two labels: the autoencoder
# on MultiDigits (labels large, small) with bits, exported.
AUTOENCODER = dict(train_mode="autoencoder", dataset="multi_digits", digit_sizes="16,8",
                   num_rand_bits=BITS, mode="train_then_eval", eval_batch_size=250,
                   keep_hub_module_max=1)


def multi_digit_views(split, k):
    """(eval views [N, 8, 8, 3 + k], labels [N, 2]) of a MultiDigits split
    through the pipeline's eval view, after checking its bit planes against
    the bits of each stored image's hash computed here."""
    images, labels = datasets.get_dataset("multi_digits", digit_sizes=(16, 8)).as_numpy(split)
    views = tf.stack([data.eval_view_fn(8, k)(image) for image in images]).numpy()
    expected = np.broadcast_to(bits_numpy(images, k)[:, None, None, :], views.shape[:3] + (k,))
    np.testing.assert_array_equal(views[..., 3:], expected)
    return views, labels


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("autoencoder") / "model"
    return model_dir, train(model_dir, **AUTOENCODER)


def test_autoencoder_trains_the_reconstruction_and_the_probe(autoencoder_run):
    model_dir, result = autoencoder_run
    assert_training_metrics_finite(model_dir, [1, 2])
    logged = scalars(model_dir)
    assert "train/reconstruction_loss" in logged and "train/contrast_loss" not in logged
    saved = read_json(model_dir / "flags.json")
    assert saved["train_mode"] == "autoencoder" and saved["num_rand_bits"] == BITS
    # The decoder is part of the checkpoint.
    reader = tf.train.load_checkpoint(checkpoint_lib.latest_checkpoint(str(model_dir)))
    assert any("decoder" in name for name in reader.get_variable_to_shape_map())
    # The export takes 3 + K channels and gives the checkpoint's h.
    _, trainer, checkpointer = rebuild(model_dir, **AUTOENCODER)
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(model_dir)))
    views, _ = multi_digit_views("test", BITS)
    loaded = tf.saved_model.load(str(model_dir / "saved_model" / "2"))
    np.testing.assert_allclose(loaded(views, trainable=False)["final_avg_pool"].numpy(),
                               np.asarray(trainer.model.encode(views)), rtol=1e-4, atol=1e-5)


def test_two_labels_get_two_probes_in_the_logs_and_the_result(autoencoder_run):
    """Each label of MultiDigits has its own columns of the probe, its own
    accuracy in TensorBoard and in result.json (probe, kNN), the plain keys
    being the first label's; the probe accuracies are those of the
    checkpoint's head on views with bits built here."""
    model_dir, result = autoencoder_run
    logged = scalars(model_dir)
    assert {"train/supervised_acc/large", "train/supervised_acc/small"} <= set(logged)
    for key in ("probe_top1", "knn_top1"):
        assert result[key] == result[f"{key}_large"], key
        assert f"{key}_small" in result, key
    assert result["eval/small_top_1_accuracy"] == result["probe_top1_small"]
    _, trainer, checkpointer = rebuild(model_dir, **AUTOENCODER)
    checkpointer.restore(checkpoint_lib.latest_checkpoint(str(model_dir)))
    views, labels = multi_digit_views("test", BITS)
    _, logits = trainer.model(views, training=False)
    logits = np.asarray(logits)
    assert logits.shape == (500, 20)
    for j, name in enumerate(("large", "small")):
        expected = np.mean(np.argmax(logits[:, 10 * j:10 * (j + 1)], axis=1) == labels[:, j])
        assert result[f"probe_top1_{name}"] == pytest.approx(expected, abs=1.5 / 500), name


def test_unlabelled_folder_trains_a_representation_and_says_so(tmp_path, capsys):
    """A flat folder of 8 px PNGs and one corrupt file: pretraining runs on
    the 40 readable images, with one notice that the probe, kNN and the
    baselines are off (recorded so in flags.json). --mode=eval of the run
    (no supervised head) gives the representation metrics and no accuracy,
    and exports a SavedModel with every output but logits_sup."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        (folder / f"{i:02d}.png").write_bytes(tf.io.encode_png(image).numpy())
    (folder / "broken.png").write_bytes(b"not a png")
    flags = dict(dataset="image_folder", data_dir=str(folder), train_batch_size=16,
                 eval_batch_size=16)
    model_dir = tmp_path / "model"
    assert train(model_dir, mode="train", **flags) is None
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "unlabelled" in notes[0] and "probe" in notes[0], out
    saved = read_json(model_dir / "flags.json")
    assert saved["lineareval_while_pretraining"] is False and saved["compute_baselines"] is False
    assert saved["eval_split"] == "train"
    result = train(model_dir, mode="eval", keep_hub_module_max=1, **flags)
    assert result["global_step"] == 2
    assert not [key for key in result if "top1" in key or "accuracy" in key], result
    assert result["representation/h/tolerance"] is None
    loaded = tf.saved_model.load(str(model_dir / "saved_model" / "2"))
    outputs = loaded(np.zeros((2, 8, 8, 3), np.float32), trainable=False)
    assert sorted(outputs) == sorted(set(export.OUTPUT_NAMES) - {"logits_sup"})
    # The uniformity of h (Wang & Isola, t = 2) of the held-out batch's
    # evaluation views, recomputed in numpy from the exported encoder.
    cfg, source = configs.resolve(model_dir=str(model_dir), mode="eval")
    views, _ = evaluation.heldout_batch(cfg, source)
    h = loaded(views[..., 6:9], trainable=False)["final_avg_pool"].numpy().astype(np.float64)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    upper = np.triu_indices(len(h), k=1)
    squared = np.sum((h[:, None] - h[None]) ** 2, axis=-1)[upper]
    expected = np.log(np.mean(np.exp(-2.0 * squared)))
    assert len(h) == 40
    assert result["representation/h/uniformity"] == pytest.approx(expected, abs=1e-4)
