"""Evaluation: the supervised head's accuracy, kNN, representation metrics,
baselines, and result files.

`evaluate` scores the supervised head (the online probe while pretraining)
on --eval_split through the trainer of either backend; `knn_top1` is the
weighted kNN on h; `representation_metrics` measures h and z on a fixed
held-out batch (at every checkpoint, `metrics.csv`, and in `result.json`);
`compute_baselines` fits logistic regressions on raw pixels and on encoder
features; `write_result` writes `result.json`, `result_<step>.json` and the
eval summaries.
"""
import csv
import io
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import checkpoint as checkpoint_lib
import data
import metrics
import train_lib
from datasets import rand_bits

# Rows of the held-out batch the representation metrics are measured on
# (at most: fewer when --eval_split or --eval_steps has fewer examples).
HELDOUT_SIZE = 512
METRICS_FILE = "metrics.csv"
# Representation metrics, for h (encoder) and z (projection) each.
METRIC_NAMES = ("alignment", "uniformity", "tolerance", "wasserstein_uniformity",
                "effective_rank", "negative_entropy", "top_negative_share")
# The kNN protocol as commonly reported (Wu et al. 2018): k = 200, τ = 0.1.
KNN_K = 200
KNN_TEMPERATURE = 0.1
# kNN and baselines hold the training split's features in memory.
MAX_FEATURE_EXAMPLES = 100_000
# τ of the negative-hardness diagnostics of runs without a contrastive loss
# (autoencoder, fine-tuning), which have no --temperature: the original's
# default.
HARDNESS_TEMPERATURE = 0.1


def label_keys(source):
    """[(label index, key suffix)] of the source's labels: ("", 0) for the
    one label of single-label data; with several, the first label also
    gets the plain keys (probe_top1 is always the first label's) and every
    label j its own, suffixed `_<name>`."""
    if len(source.label_names) <= 1:
        return [(0, "")] if source.label_names else []
    return [(0, "")] + [(j, f"_{name}") for j, name in enumerate(source.label_names)]


def label_column(labels, j):
    """Label j of `labels` [N] or [N, L]."""
    return labels if labels.ndim == 1 else labels[:, j]


def evaluate(cfg, trainer, source):
    """{"global_step", "eval/regularization_loss", and with a supervised
    head "eval/label_top_1_accuracy", "eval/label_top_5_accuracy" and
    "probe_top1" (per label with several: `label_keys`, "eval/<name>_top_1
    _accuracy")} of the trainer's current weights."""
    trainer.sync()
    result = {"global_step": trainer.step, "backend": trainer.backend,
              "eval/regularization_loss": float(train_lib.weight_decay_loss(trainer.model, cfg))}
    if trainer.model.supervised_head is None:
        logging.info("No supervised head (pretrain without --lineareval_while_pretraining, or "
                     "unlabelled data): top-1 is not measured.")
        return result
    top1, topk, count = trainer.top_k_counts(data.eval_input_fn(cfg, source), 5, cfg.eval_steps)
    for j, suffix in label_keys(source):
        name = f"{source.label_names[j]}_" if suffix else "label_"
        result[f"eval/{name}top_1_accuracy"] = float(top1[j]) / max(count, 1)
        result[f"eval/{name}top_5_accuracy"] = float(topk[j]) / max(count, 1)
        result[f"probe_top1{suffix}"] = result[f"eval/{name}top_1_accuracy"]
    return result


def eval_examples(cfg, source):
    """How many examples of --eval_split an evaluation measures: all, or
    with --eval_steps the first --eval_steps × --eval_batch_size (top-1,
    kNN and the baselines on those, the representation metrics on a batch
    of at most that many)."""
    count = source.num_examples(cfg.eval_split)
    return min(count, cfg.eval_steps * cfg.eval_batch_size) if cfg.eval_steps else count


def encode_split(cfg, trainer, model, images, batch_size=512):
    """h of `model` for uint8 `images` [N, H, W, C], each as its eval view
    (with its RandBits), in batches of `batch_size`, the last one padded to
    that size so the encoder runs at one shape (one compilation under JAX)."""
    dataset = tf.data.Dataset.from_tensor_slices(images).map(
        data.eval_view_fn(cfg.image_size, cfg.num_rand_bits)).batch(batch_size)
    features = []
    for batch in dataset.as_numpy_iterator():
        rows = len(batch)
        if rows < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - rows,) + batch.shape[1:],
                                                    batch.dtype)])
        features.append(trainer.encode(model, batch)[:rows])
    return np.concatenate(features)


# The flags a held-out batch depends on.
HELDOUT_FLAGS = ("dataset", "data_dir", "digit_sizes", "eval_split", "eval_steps",
                 "eval_batch_size", "image_size", "seed", "color_jitter_strength", "use_blur",
                 "crop_min_area", "use_flip", "num_rand_bits")
_heldout_batches = {}


def _kept(cache, cfg, names, make, *extra):
    """make() for the values of the flags `names` of `cfg` (and `extra`),
    kept in `cache` for later calls with the same values; one entry at a
    time, as what it keeps can be large."""
    # (--digit_sizes is a list.)
    key = tuple(str(getattr(cfg, name)) for name in names) + tuple(map(str, extra))
    if key not in cache:
        cache.clear()
        cache[key] = make()
    return cache[key]


def heldout_batch(cfg, source):
    """(views [n, H, W, 3c], labels [n] or [n, L]) as numpy: the first
    batch of `data.heldout_input_fn`, n = min(HELDOUT_SIZE, `eval_examples`);
    kept for the other commands of the process with the same HELDOUT_FLAGS
    (training, then evaluation)."""
    def make():
        size = min(HELDOUT_SIZE, eval_examples(cfg, source))
        images, labels = next(iter(data.heldout_input_fn(cfg, source, size)()))
        return images.numpy(), labels.numpy()
    return _kept(_heldout_batches, cfg, HELDOUT_FLAGS, make)


def representation_metrics(cfg, trainer, batch):
    """{"h/<name>", "z/<name>": float} of `METRIC_NAMES` for the trainer's
    current weights on a `heldout_batch`, the model in inference mode:
    alignment (α = 2) and the negative-hardness diagnostics (τ =
    --temperature, or `HARDNESS_TEMPERATURE` without a contrastive loss;
    top-1 share) of the two augmented views; uniformity
    (t = 2), tolerance (by the first label), Wasserstein uniformity (10,000
    pairs, seed 0) and effective rank of the evaluation views (`metrics.py`)."""
    images, labels = batch
    labels = label_column(labels, 0)
    c = train_lib.view_channels(cfg)
    (h1, z1), (h2, z2), (h, z) = [trainer.embed(images[..., v * c:(v + 1) * c])
                                  for v in range(3)]
    result = {}
    temperature = HARDNESS_TEMPERATURE if cfg.temperature is None else cfg.temperature
    for space, (a, b, clean) in (("h", (h1, h2, h)), ("z", (z1, z2, z))):
        entropy, top_share = metrics.negative_hardness(a, b, temperature=temperature)
        values = dict(
            alignment=metrics.alignment(a, b), uniformity=metrics.uniformity(clean),
            # Unlabelled images (-1) have no tolerance.
            tolerance=metrics.tolerance(clean, labels) if np.all(labels >= 0) else math.nan,
            wasserstein_uniformity=metrics.wasserstein_uniformity(clean),
            effective_rank=metrics.effective_rank(clean), negative_entropy=entropy,
            top_negative_share=top_share)
        result.update({f"{space}/{name}": float(values[name]) for name in METRIC_NAMES})
    return result


def write_metrics_row(model_dir, step, values):
    """Adds the row of `step` to model_dir/metrics.csv (columns: step, then
    the keys of `values`), dropping rows of that step or later first: a run
    resumed from an earlier checkpoint measures them again. Atomic."""
    path = os.path.join(model_dir, METRICS_FILE)
    columns = ["step"] + list(values)
    rows = []
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) < step]
    rows.append(dict(values, step=step))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    checkpoint_lib.write_text(path, text.getvalue())


def eval_arrays(cfg, source):
    """(images, labels) of the `eval_examples` of --eval_split."""
    images, labels = source.as_numpy(cfg.eval_split)
    count = eval_examples(cfg, source)
    return images[:count], labels[:count]


def split_features(cfg, trainer, source, model=None):
    """(h_train, y_train, h_eval, y_eval) of --train_split and of the
    `eval_examples` of --eval_split (`model`, else the trainer's), or None
    when the training split is over MAX_FEATURE_EXAMPLES."""
    if source.num_examples(cfg.train_split) > MAX_FEATURE_EXAMPLES:
        return None
    model = model or trainer.model
    x_train, y_train = source.as_numpy(cfg.train_split)
    x_eval, y_eval = eval_arrays(cfg, source)
    return (encode_split(cfg, trainer, model, x_train), y_train,
            encode_split(cfg, trainer, model, x_eval), y_eval)


def knn_top1(features, num_classes, label=0):
    """Top-1 of the weighted kNN on h (`metrics.knn_predict`, k = 200,
    τ = 0.1) of `split_features`: eval rows classified by train rows, by
    label `label` (of `num_classes` ids)."""
    h_train, y_train, h_eval, y_eval = features
    y_train, y_eval = label_column(y_train, label), label_column(y_eval, label)
    predicted = np.asarray(metrics.knn_predict(h_train, y_train, h_eval, num_classes,
                                               KNN_K, KNN_TEMPERATURE))
    return float(np.mean(predicted == y_eval))


def raw_pixels(cfg, images):
    """The raw-pixel baseline's inputs of uint8 `images` [N, H, W, C]:
    pixels / 255, flattened, followed by the RandBits of each image."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    if not cfg.num_rand_bits:
        return flat
    bits = tf.data.Dataset.from_tensor_slices(images).map(
        lambda image: rand_bits.hash_bits(image, cfg.num_rand_bits)).batch(4096)
    return np.concatenate([flat, np.concatenate(list(bits.as_numpy_iterator()))], axis=1)


# The flags that define the untrained model of `random_encoder`.
RANDOM_ENCODER_FLAGS = ("seed", "train_mode", "image_size", "resnet_depth", "width_multiplier",
                        "sk_ratio", "se_ratio", "batch_norm_decay", "global_bn",
                        "fine_tune_after_block", "proj_head_mode", "proj_out_dim",
                        "num_proj_layers", "ft_proj_selector", "lineareval_while_pretraining",
                        "probe_batch_norm", "probe_view", "num_rand_bits", "precision")
_random_encoders = {}


def random_encoder(cfg, num_classes):
    """The run's model as its training started: built and initialised from
    --seed as `trainers.build_trainer` builds it, so its encoder is the
    trained one's left untrained. One per process for the flags that
    define it (`RANDOM_ENCODER_FLAGS`), so the evaluations of an eval loop
    share one model and one compiled encoder."""
    def make():
        keras.utils.set_random_seed(cfg.seed)
        return train_lib.build_model(cfg, num_classes)
    return _kept(_random_encoders, cfg, RANDOM_ENCODER_FLAGS, make, num_classes)


def compute_baselines(cfg, trainer, source, features):
    """Logistic regression on raw pixels (and RandBits), on the trained
    encoder's h (`features`, from `split_features`) and on the same encoder
    left untrained (`random_encoder`; eval-mode batch norm, no
    augmentation), all standardised and scored on the `eval_examples` of
    --eval_split, for each label (`label_keys`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = source.as_numpy(cfg.train_split)
    x_test, y_test = eval_arrays(cfg, source)
    untrained = random_encoder(cfg, source.label_classes)
    random_features = split_features(cfg, trainer, source, untrained)
    inputs = dict(raw_pixel=(raw_pixels(cfg, x_train), raw_pixels(cfg, x_test)),
                  random_encoder=(random_features[0], random_features[2]),
                  encoder_logreg=(features[0], features[2]))
    result = {}
    for j, suffix in label_keys(source):
        for name, (f_train, f_test) in inputs.items():
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            classifier.fit(f_train, label_column(y_train, j))
            result[f"{name}_top1{suffix}"] = float(
                classifier.score(f_test, label_column(y_test, j)))
    return result


def write_result(cfg, result, chief):
    """Writes result.json, result_<step>.json and the eval summaries (chief
    only), and prints the result."""
    if chief:
        eval_dir = os.path.join(cfg.model_dir, f"eval_{cfg.eval_name}" if cfg.eval_name else "eval")
        with tf.summary.create_file_writer(eval_dir).as_default():
            for key, value in result.items():
                if isinstance(value, float):
                    tf.summary.scalar(key if "/" in key else f"eval/{key}", value,
                                      step=result["global_step"])
        checkpoint_lib.write_json(
            os.path.join(cfg.model_dir, f"result_{result['global_step']}.json"), result)
        checkpoint_lib.write_json(os.path.join(cfg.model_dir, "result.json"), result)
    print(json.dumps(result, indent=2, sort_keys=True), flush=True)


def evaluate_and_write(cfg, trainer, source):
    """Evaluates the trainer's current weights (`evaluate`, `knn_top1`,
    `representation_metrics` under "representation/", the baselines with
    --compute_baselines, the plots with --plot) and writes the result."""
    result = evaluate(cfg, trainer, source)
    batch = heldout_batch(cfg, source)
    representation = representation_metrics(cfg, trainer, batch)
    result.update({f"representation/{k}": v for k, v in representation.items()})
    features = None if not source.label_names else split_features(cfg, trainer, source)
    if features is None and source.label_names:
        logging.warning("kNN and baselines skipped: --train_split has more than %d examples",
                        MAX_FEATURE_EXAMPLES)
    elif features is not None:
        for j, suffix in label_keys(source):
            result[f"knn_top1{suffix}"] = knn_top1(features, source.label_classes[j], j)
        if cfg.compute_baselines:
            result.update(compute_baselines(cfg, trainer, source, features))
    # NaN (tolerance without two rows of one label) is not JSON: null.
    result = {k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in result.items()}
    write_result(cfg, result, trainer.chief)
    if cfg.plot and trainer.chief:
        import plots
        c = train_lib.view_channels(cfg)
        h, z = trainer.embed(batch[0][..., 2 * c:3 * c])
        for path in plots.write_plots(cfg.model_dir, h, z, label_column(batch[1], 0)):
            print(f"plot: {path}", flush=True)
    return result
