"""evaluation.py: the random-encoder baseline is the run's own encoder left
untrained, built once per process; --eval_steps bounds every measure of an
evaluation, not top-1 alone."""
import keras
import numpy as np

import configs
import evaluation
import trainers
from test_run import TINY
from test_run import reset_flags  # noqa: F401  (autouse fixture)


def tiny(**flags):
    return configs.resolve(**dict(TINY, model_dir="unused", **flags))


def weights(model):
    return {v.path: np.asarray(v).copy() for v in model.variables}


def test_the_random_encoder_is_the_runs_initial_encoder_built_once():
    """The untrained baseline is the model the run started from (its
    initial weights, variable by variable, under --seed), whatever the
    random state since; evaluating again reuses it; another seed is
    another model."""
    cfg, source = tiny(seed=3)
    initial = weights(trainers.build_trainer(cfg, source).model)
    keras.utils.set_random_seed(12345)
    keras.random.normal((7,))  # the random state moves on, as training does
    untrained = evaluation.random_encoder(cfg, source.label_classes)
    assert weights(untrained).keys() == initial.keys()
    for path, value in weights(untrained).items():
        np.testing.assert_array_equal(value, initial[path], err_msg=path)
    assert evaluation.random_encoder(cfg, source.label_classes) is untrained
    other, _ = tiny(seed=4)
    different = evaluation.random_encoder(other, source.label_classes)
    assert different is not untrained
    kernel = untrained.resnet_model.variables[0].path
    assert not np.array_equal(weights(different)[kernel], initial[kernel])


def test_eval_steps_bounds_knn_the_baselines_and_the_representation_batch():
    """--eval_steps=2 with --eval_batch_size=40: kNN and the baselines see
    the first 80 examples of the split (in its order), and the
    representation metrics a batch of 80 rows; without it, all 500 of them
    and a batch of min(`HELDOUT_SIZE`, 500)."""
    cfg, source = tiny(eval_steps=2, eval_batch_size=40)
    trainer = trainers.build_trainer(cfg, source)
    images, labels = source.as_numpy(cfg.eval_split)
    assert len(labels) == 500
    assert evaluation.eval_examples(cfg, source) == 80
    x_eval, y_eval = evaluation.eval_arrays(cfg, source)
    np.testing.assert_array_equal(x_eval, images[:80])
    _, _, h_eval, y_features = evaluation.split_features(cfg, trainer, source)
    assert h_eval.shape[0] == 80
    np.testing.assert_array_equal(y_features, labels[:80])
    assert len(evaluation.heldout_batch(cfg, source)[1]) == 80

    everything, _ = tiny(eval_batch_size=40)
    assert evaluation.eval_examples(everything, source) == 500
    assert len(evaluation.heldout_batch(everything, source)[1]) == 500
