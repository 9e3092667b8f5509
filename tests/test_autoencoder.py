"""The autoencoder baseline and heads with several labels: the decoder, the
balanced reconstruction loss, and the per-label objective and accuracy,
against numpy written here. Backend-neutral: runs under TensorFlow and,
in the JAX session, under JAX."""
import keras
import numpy as np
import pytest

import autoencoder
import configs
import metrics
import model as model_lib
import train_lib

TINY_MODEL = dict(image_size=8, resnet_depth=18, width_multiplier=0.125, proj_out_dim=8,
                  num_proj_layers=1, global_bn=False)


@pytest.mark.parametrize("size,expected", [(8, (4, 1)), (28, (7, 2)), (32, (4, 3)),
                                           (224, (7, 5)), (9, (9, 0)), (4, (4, 0))])
def test_decoder_plan(size, expected):
    assert autoencoder.decoder_plan(size) == expected


def test_decoder_plan_reaches_every_size_from_a_small_start():
    for size in range(1, 300):
        side, steps = autoencoder.decoder_plan(size)
        assert side * 2 ** steps == size
        # No further halving was possible.
        assert side % 2 or side // 2 < autoencoder.MIN_START_SIDE


def balanced_mse_numpy(x, y, image_channels):
    squared = (y.astype(np.float64) - x) ** 2
    loss = squared[..., :image_channels].mean()
    if x.shape[-1] > image_channels:
        loss += squared[..., image_channels:].mean()
    return loss


@pytest.mark.parametrize("bits", [0, 1, 10])
def test_reconstruction_loss_averages_image_and_bit_channels_apart(bits):
    rng = np.random.default_rng(bits)
    x = rng.uniform(size=(4, 5, 5, 3 + bits)).astype(np.float32)
    y = rng.uniform(size=x.shape).astype(np.float32)
    got = float(autoencoder.reconstruction_loss(x, y, 3))
    assert got == pytest.approx(balanced_mse_numpy(x, y, 3), rel=1e-5)


def test_ten_perfect_bit_planes_do_not_hide_a_bad_image():
    """With 10 bit planes reconstructed exactly and the image wrong by 1
    everywhere, the balanced loss is 1, where a plain mean over the 13
    channels would be 3/13."""
    x = np.zeros((2, 4, 4, 13), np.float32)
    y = x.copy()
    y[..., :3] = 1.0
    assert float(autoencoder.reconstruction_loss(x, y, 3)) == pytest.approx(1.0)


def test_decoder_gives_images_in_the_unit_interval():
    decoder = autoencoder.Decoder(8, 5, width_multiplier=0.125)
    out = np.asarray(decoder(np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)))
    assert out.shape == (3, 8, 8, 5)
    assert np.all((out > 0) & (out < 1))


def test_autoencoder_model_reconstructs_the_augmented_view_only():
    """With the probe's clean view the input holds two views; the decoder
    reconstructs the first, the probe reads the second, and the objective's
    reconstruction term is the balanced loss of the first view."""
    keras.utils.set_random_seed(0)
    channels = 3 + 2
    model = model_lib.Model(10, train_mode="autoencoder", probe_view="clean",
                            view_channels=channels, **TINY_MODEL)
    x = np.random.default_rng(1).uniform(size=(4, 8, 8, 2 * channels)).astype(np.float32)
    output, logits = model(x, training=True)
    assert tuple(output.shape) == (4, 8, 8, channels)
    assert tuple(logits.shape) == (4, 10)
    cfg = configs.resolve(train_mode="autoencoder", num_rand_bits=2)[0]
    loss, logs = train_lib.Objective(model, cfg).reconstruction(x, output)
    expected = balanced_mse_numpy(x[..., :channels], np.asarray(output), 3)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"reconstruction_loss"}


def log_softmax_numpy(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_several_labels_each_get_a_linear_classifier_and_a_cross_entropy():
    """Labels of 3 and 5 classes: the head's 8 logit columns are two
    classifiers; the supervised loss is the sum of the two mean
    cross-entropies over both views, each accuracy its own."""
    keras.utils.set_random_seed(0)
    model = model_lib.Model((3, 5), **TINY_MODEL)
    cfg = configs.resolve()[0]
    objective = train_lib.Objective(model, cfg, label_names=("shape", "colour"))
    rng = np.random.default_rng(2)
    labels = np.stack([rng.integers(0, 3, 6), rng.integers(0, 5, 6)], axis=1).astype(np.int32)
    logits = rng.normal(size=(12, 8)).astype(np.float32)  # two views of 6 rows
    loss, logs = objective.supervised(labels, logits)
    tiled = np.tile(labels, (2, 1))
    parts = [log_softmax_numpy(logits[:, :3]), log_softmax_numpy(logits[:, 3:])]
    expected = sum(-part[np.arange(12), tiled[:, j]].mean() for j, part in enumerate(parts))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    accuracies = [np.mean(part.argmax(1) == tiled[:, j]) for j, part in enumerate(parts)]
    assert float(logs["supervised_acc/shape"]) == pytest.approx(accuracies[0])
    assert float(logs["supervised_acc/colour"]) == pytest.approx(accuracies[1])
    assert float(logs["supervised_acc"]) == pytest.approx(accuracies[0])
    names = train_lib.log_names(cfg, model, ("shape", "colour"))
    assert set(logs) <= set(names) and "supervised_acc/colour" in names


def test_label_top_k_counts_each_label_in_its_own_columns():
    rng = np.random.default_rng(3)
    labels = np.stack([rng.integers(0, 3, 50), rng.integers(0, 7, 50)], axis=1)
    logits = rng.normal(size=(50, 10)).astype(np.float32)
    top1, topk = metrics.label_top_k(labels, model_lib.label_logits(logits, (3, 7)), k=5)
    for j, (start, stop) in enumerate(((0, 3), (3, 10))):
        part = logits[:, start:stop]
        k = min(5, stop - start)
        ranks = (part > part[np.arange(50), labels[:, j]][:, None]).sum(axis=1)
        assert float(np.asarray(top1)[j]) == np.sum(ranks == 0)
        assert float(np.asarray(topk)[j]) == np.sum(ranks < k)
