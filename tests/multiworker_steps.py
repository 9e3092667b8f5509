"""Worker program of tests/test_distribute.py::test_multi_worker_matches_one_process.

Runs three optimizer steps of run.TrainStep on fixed global batches under the
strategy run.get_strategy picks (MultiWorkerMirroredStrategy when TF_CONFIG
names two workers, one device otherwise) and writes the global losses and
the final weight norm to the JSON file named by argv[1]. Each replica feeds
its slice of the global batch, so all set-ups see the same data.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import run  # noqa: E402
from test_distribute import GLOBAL_BATCH, build, global_batch, run_loss_params, tiny_config  # noqa: E402


def main(out_path):
    cfg = tiny_config("ntxent", use_tpu=False, tpu_name=None, master=None)
    strategy = run.get_strategy(cfg)
    replicas = strategy.num_replicas_in_sync
    local = GLOBAL_BATCH // replicas
    model, optimizer = build(cfg, strategy)
    step = run.TrainStep(model, optimizer, cfg, run_loss_params(cfg), replicas)

    @tf.function
    def train_step(features, labels):
        logs = strategy.run(step, (features, labels))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["total_loss"], axis=None)

    losses = []
    for i in range(3):
        features, labels = global_batch(seed=i)
        shard = lambda a: strategy.experimental_distribute_values_from_function(  # noqa: E731
            lambda ctx: a[ctx.replica_id_in_sync_group * local:(ctx.replica_id_in_sync_group + 1) * local])
        losses.append(float(train_step(shard(features), shard(labels))))
    weight_norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in model.trainable_variables)))
    with open(out_path, "w") as f:
        json.dump({"replicas": replicas, "losses": losses, "weight_norm": weight_norm}, f)


if __name__ == "__main__":
    main(sys.argv[1])
