"""The trainer of each Keras backend: adding a backend touches this.

Each backend's module holds a `Trainer(cfg)` with one interface (`build`,
`run_steps`, `sync`, `load`, `embed`, `encode`, `top_k_counts`, ...):
`trainer_tf.py` under tf.distribute, `trainer_jax.py` as one jitted program
sharded over the local devices. Only the module of the backend in use is
imported, so a JAX run never imports `trainer_tf` (nor TensorFlow through
it).
"""
import importlib

import keras

from errors import UsageError

TRAINERS = {"tensorflow": "trainer_tf", "jax": "trainer_jax"}


def make_trainer(cfg):
    """The trainer of the Keras backend (KERAS_BACKEND) for `cfg`."""
    backend = keras.backend.backend()
    if backend not in TRAINERS:
        raise UsageError(f"KERAS_BACKEND={backend} is not supported; it must be one of "
                         f"{', '.join(TRAINERS)}")
    return importlib.import_module(TRAINERS[backend]).Trainer(cfg)


def build_trainer(cfg, source):
    """The backend's trainer with its model and optimizers built, seeded
    with --seed, for the labels and training split of `source` (a
    `datasets.Source`, or any object with its `label_classes`,
    `label_names` and `num_examples(split)`)."""
    trainer = make_trainer(cfg)
    keras.utils.set_random_seed(cfg.seed)
    trainer.build(source.label_classes, source.num_examples(cfg.train_split), source.label_names)
    return trainer
