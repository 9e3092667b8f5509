"""Worker program of tests/test_distribute.py::test_multi_worker_matches_one_process.

Runs three optimizer steps of trainer_tf.Trainer on fixed global batches
under the strategy trainer_tf.get_strategy picks (MultiWorkerMirroredStrategy
when TF_CONFIG names two workers, one device otherwise) and writes the global
losses and the final weight norm to the JSON file named by argv[1]. Each
replica feeds its slice of the global batch, so all set-ups see the same
data.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from test_distribute import build, global_batch, shard, tiny_config  # noqa: E402


def main(out_path):
    cfg = tiny_config("ntxent")
    trainer = build(cfg, strategy=None)
    strategy = trainer.strategy

    @tf.function
    def train_step(features, labels):
        logs = strategy.run(trainer.train_step, (features, labels))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["total_loss"], axis=None)

    losses = []
    for i in range(3):
        features, labels = global_batch(seed=i)
        losses.append(float(train_step(shard(strategy, features), shard(strategy, labels))))
    model = trainer.model
    weight_norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in model.trainable_variables)))
    with open(out_path, "w") as f:
        json.dump({"replicas": trainer.num_replicas, "losses": losses, "weight_norm": weight_norm}, f)


if __name__ == "__main__":
    main(sys.argv[1])
