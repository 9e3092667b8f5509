"""Evaluation: the supervised head's accuracy, baselines, and result files.

`evaluate` scores the supervised head (the online probe while pretraining)
on --eval_split through the trainer of either backend; `compute_baselines`
fits logistic regressions on raw pixels and on encoder features;
`write_result` writes `result.json`, `result_<step>.json` and the eval
summaries.
"""
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import checkpoint as checkpoint_lib
import data
import data_util
import train_lib


def evaluate(cfg, trainer, source):
    """{"global_step", "eval/regularization_loss", and with a supervised
    head "eval/label_top_1_accuracy", "eval/label_top_5_accuracy" and
    "probe_top1"} of the trainer's current weights."""
    trainer.sync()
    result = {"global_step": trainer.step, "backend": trainer.backend,
              "eval/regularization_loss": float(train_lib.weight_decay_loss(trainer.model, cfg))}
    if trainer.model.supervised_head is None:
        logging.info("No supervised head (pretrain without --lineareval_while_pretraining): "
                     "top-1 is not measured.")
        return result
    k = min(5, source.num_classes)
    top1, topk, count = trainer.top_k_counts(source, k, cfg.eval_steps)
    result["eval/label_top_1_accuracy"] = top1 / max(count, 1)
    result["eval/label_top_5_accuracy"] = topk / max(count, 1)
    result["probe_top1"] = result["eval/label_top_1_accuracy"]
    return result


def encode_split(cfg, trainer, model, images, batch_size=512):
    """h of `model` for uint8 `images` [N, H, W, C], each as its eval view."""
    dataset = tf.data.Dataset.from_tensor_slices(images).map(
        lambda image: data_util.preprocess_image(
            image, cfg.image_size, cfg.image_size, is_training=False,
            test_crop=cfg.image_size > 32)).batch(batch_size)
    return np.concatenate([trainer.encode(model, batch.numpy()) for batch in dataset])


def compute_baselines(cfg, trainer, source):
    """Logistic regression on raw pixels, on the trained encoder's h and on
    an untrained encoder's h (eval-mode batch norm, no augmentation), all
    standardised and scored on --eval_split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = source.as_numpy(cfg.train_split)
    x_test, y_test = source.as_numpy(cfg.eval_split)

    def fit_score(f_train, f_test):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        classifier.fit(f_train, y_train)
        return float(classifier.score(f_test, y_test))

    def features(model):
        return (encode_split(cfg, trainer, model, x_train),
                encode_split(cfg, trainer, model, x_test))

    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    keras.utils.set_random_seed(cfg.seed + 1)
    untrained = train_lib.build_model(cfg, source.num_classes, data.VIEW_CHANNELS)
    return {
        "raw_pixel_top1": fit_score(flat(x_train), flat(x_test)),
        "random_encoder_top1": fit_score(*features(untrained)),
        "encoder_logreg_top1": fit_score(*features(trainer.model)),
    }


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
    result = evaluate(cfg, trainer, source)
    if cfg.compute_baselines:
        result.update(compute_baselines(cfg, trainer, source))
    write_result(cfg, result, trainer.chief)
    return result
