"""The TensorFlow edge: strategy, cross-replica gather, gradients, the loop.

One code path for every set-up (`get_strategy`): one device, several GPUs
(MirroredStrategy), several machines (MultiWorkerMirroredStrategy) and TPUs
(TPUStrategy). Each replica differentiates `train_lib.Objective` on its part
of the global batch with the negatives of all replicas, and several steps run
in one `tf.function` call, as in the original.
"""
import os

import numpy as np
import tensorflow as tf

import config
import data
import metrics
import model as model_lib
import tf_kernels  # noqa: F401  (registers TensorFlow's fused batch norm)
import train_lib
from errors import UsageError
from errors import error_line


def get_strategy(cfg):
    """One strategy for every set-up.

    TPUStrategy when --use_tpu, --tpu_name or --master is given;
    MultiWorkerMirroredStrategy when TF_CONFIG names several tasks;
    MirroredStrategy over the visible GPUs when there are several;
    OneDeviceStrategy on the single GPU or the CPU otherwise.
    """
    if cfg.use_tpu or cfg.tpu_name or cfg.master:
        return tpu_strategy(cfg)
    if config.num_workers(os.environ) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def tpu_strategy(cfg):
    """TPUStrategy on the TPU of --tpu_name (or --master; the local one of a
    TPU VM with neither).

    Raises:
        UsageError: the TPU cannot be found or reached: one line naming it
            and the cause, instead of the resolver's traceback.
    """
    name = cfg.tpu_name or cfg.master
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=name, zone=cfg.tpu_zone, project=cfg.gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as e:
        what = (f"the TPU {name!r}" if name else
                "a local TPU (--use_tpu without --tpu_name or --master)")
        raise UsageError(
            f"cannot reach {what}: {type(e).__name__}: {error_line(e)}; pass --tpu_name (with "
            "--tpu_zone and --gcp_project outside its project) or --master=grpc://host:port, "
            "or run --use_tpu on a TPU VM") from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this process writes the run's outputs (worker 0, or the chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict() or \
            isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def cross_replica_gather(x):
    """(rows of x from every replica in replica order, this replica's index).

    All-gather is differentiable: the gradient reaching a gathered row is
    summed over replicas and routed back to the replica that owns the row, so
    each replica's loss sees every replica's embeddings with gradients.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x, 0
    gathered = context.all_gather(x, axis=0)
    rows = None if x.shape[0] is None else x.shape[0] * context.num_replicas_in_sync
    gathered.set_shape([rows] + x.shape[1:])  # all_gather drops the static shape
    return gathered, context.replica_id_in_sync_group


class Trainer:
    """Builds, trains and evaluates a run's model under a tf.distribute
    strategy.

    Args:
        cfg: a `config.Config`.
        strategy: the strategy; `get_strategy(cfg)` when None.
    """

    backend = "tensorflow"

    def __init__(self, cfg, strategy=None):
        self.cfg = cfg
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.strategy = strategy or get_strategy(cfg)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.chief = is_chief(self.strategy)
        self.device_summary = f"{type(self.strategy).__name__}, {self.num_replicas} replica(s)"
        for flag in ("train_batch_size", "eval_batch_size"):
            if getattr(cfg, flag) % self.num_replicas:
                raise UsageError(f"--{flag}={getattr(cfg, flag)} is not divisible by the "
                                 f"{self.num_replicas} replicas of {type(self.strategy).__name__}")
        self._loop = None
        self._functions = {}

    @property
    def worker_dir(self):
        """Where this process writes checkpoints: model_dir on the chief, a
        scratch directory on other workers (collective saves need every
        worker to write)."""
        if self.chief:
            return self.cfg.model_dir
        return os.path.join(self.cfg.model_dir, f"worker_tmp_{self.strategy.cluster_resolver.task_id}")

    def build(self, num_classes, num_train_examples, label_names=None):
        """Creates the model and optimizers (every variable) under the strategy."""
        cfg = self.cfg
        with self.strategy.scope():
            self.model = train_lib.build_model(cfg, num_classes)
            self.optimizer, self.probe_optimizer = train_lib.build_optimizers(
                cfg, self.model, num_train_examples)
        self.schedule = train_lib.learning_rate_schedule(cfg, cfg.learning_rate, num_train_examples)
        self.objective = train_lib.Objective(
            self.model, cfg, gather=cross_replica_gather, normal_noise=self.normal_noise,
            num_replicas=self.num_replicas, label_names=label_names)
        self.log_names = train_lib.log_names(cfg, self.model, label_names)
        self.loss_scale = self.good_steps = None
        if train_lib.uses_loss_scale(cfg):
            # Not checkpointed: a resumed run finds its scale again in a few steps.
            with self.strategy.scope():
                self.loss_scale = tf.Variable(
                    train_lib.INITIAL_LOSS_SCALE, trainable=False, name="loss_scale",
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                self.good_steps = tf.Variable(
                    0, trainable=False, name="loss_scale_good_steps",
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        return self

    @property
    def optimizers(self):
        return {"optimizer": self.optimizer, "probe_optimizer": self.probe_optimizer}

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def sync(self):
        """Nothing to do: the Keras variables hold the state."""

    def load(self):
        """Nothing to do: the Keras variables hold the state."""

    def normal_noise(self, shape, step, stream):
        """Standard-normal noise seeded by (--seed, stream, step), the same
        on every replica."""
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant([self.cfg.seed, stream], tf.int64), tf.cast(step, tf.int64))
        return tf.random.stateless_normal(shape, seed)

    # -- training -----------------------------------------------------------
    def gradients(self, features, labels):
        """Per replica: (gradients of total / R, logs); with loss scaling the
        gradients of total · scale / R, divided by the scale."""
        with tf.GradientTape() as tape:
            total, logs = self.objective(features, labels, self.optimizer.iterations)
            scaled = total / self.num_replicas
            if self.loss_scale is not None:
                scaled = scaled * self.loss_scale
        grads = tape.gradient(scaled, self.model.trainable_variables)
        if self.loss_scale is not None:
            grads = [None if g is None else g / self.loss_scale for g in grads]
        logs["gradients_finite"] = train_lib.all_finite(grads)
        return grads, logs

    def apply_gradients(self, grads):
        """Per replica: applies `gradients`' output (summed over replicas by
        the optimizers), the online probe's part with its own optimizer when
        it has one."""
        pairs = [(g, v) for g, v in zip(grads, self.model.trainable_variables) if g is not None]
        if self.probe_optimizer is not None:
            probe_pairs, pairs = train_lib.split_probe(self.model, pairs,
                                                       variable=lambda pair: pair[1])
            self.probe_optimizer.apply_gradients(probe_pairs)
        self.optimizer.apply_gradients(pairs)

    def train_step(self, features, labels):
        """Per replica: one optimizer step; returns the logs."""
        grads, logs = self.gradients(features, labels)
        self.apply_gradients(grads)
        return logs

    def _compiled(self, fn):
        """`fn` for `strategy.run`: XLA-compiled with --jit_compile, else as
        it is. The step has no data-dependent Python control flow, so
        AutoGraph would only re-parse the model, loss and optimizer code:
        skipping it saves seconds of tracing per run."""
        if self.cfg.jit_compile:
            return tf.function(fn, jit_compile=True, autograph=False)
        return tf.autograph.experimental.do_not_convert(fn)

    def scaled_train_step(self, features, labels):
        """In cross-replica context: one loss-scaled step. The update is
        applied only when every replica's gradients are finite; a skipped
        step still counts (each optimizer's iteration advances, as the data
        did). The scale then follows `train_lib.next_loss_scale`."""
        strategy = self.strategy
        grads, logs = strategy.run(self._compiled(self.gradients), (features, labels))
        non_finite = strategy.reduce(tf.distribute.ReduceOp.SUM,
                                     1.0 - logs["gradients_finite"], axis=None)
        finite = tf.equal(non_finite, 0.0)
        scale = tf.identity(self.loss_scale)

        def apply():
            strategy.run(tf.autograph.experimental.do_not_convert(self.apply_gradients),
                         (grads,))
            return tf.constant(True)

        def skip():
            for optimizer in (self.optimizer, self.probe_optimizer):
                if optimizer is not None:
                    optimizer.iterations.assign_add(1)
            return tf.constant(False)

        tf.cond(finite, apply, skip)
        new_scale, good_steps = train_lib.next_loss_scale(scale, self.good_steps, finite)
        self.loss_scale.assign(new_scale)
        self.good_steps.assign(good_steps)
        logs["gradients_finite"] = train_lib.scaled_step_finite(finite, scale)
        return logs

    def train_iterator(self, input_fn):
        """Iterator over the per-replica training batches of `input_fn`
        (`data.train_input_fn`), distributed over the strategy's replicas."""
        return iter(data.build_distributed_dataset(input_fn, self.strategy))

    def run_steps(self, iterator, num_steps):
        """Runs `num_steps` steps in one call; returns {log: mean over the
        steps and replicas} as floats (with `gradients_finite`)."""
        if self._loop is None:
            names = self.log_names + ["gradients_finite"]
            strategy = self.strategy
            step_fn = self._compiled(self.train_step)
            if self.loss_scale is None:
                def one_step(features, labels):
                    return strategy.run(step_fn, (features, labels))
            else:
                one_step = self.scaled_train_step

            @tf.function
            def loop(iterator, num_steps):
                totals = tf.zeros([len(names)], tf.float32)
                for _ in tf.range(num_steps):
                    features, labels = next(iterator)
                    logs = one_step(features, labels)
                    totals += tf.stack([strategy.reduce(tf.distribute.ReduceOp.MEAN, logs[k], axis=None)
                                        for k in names])
                return totals / tf.cast(num_steps, tf.float32)

            self._loop, self._names = loop, names
        means = self._loop(iterator, tf.constant(num_steps))
        return dict(zip(self._names, means.numpy().tolist()))

    # -- evaluation ---------------------------------------------------------
    def top_k_counts(self, input_fn, k, max_steps=0):
        """(top-1 hits [L], top-k hits [L], examples) of the supervised head
        on the batches of `input_fn` (`data.eval_input_fn`), the first
        `max_steps` of them when > 0, for each of its L labels
        (`metrics.label_top_k`), summed over replicas."""
        dataset = data.build_distributed_dataset(input_fn, self.strategy)
        model, strategy = self.model, self.strategy
        classes = model.label_classes

        @tf.function(autograph=False)
        def eval_step(features, labels):
            def step(features, labels):
                _, logits = model(features, training=False)
                top1, topk = metrics.label_top_k(
                    labels, model_lib.label_logits(logits, classes), k)
                return top1, topk, tf.shape(labels)[0]
            per_replica = strategy.run(step, (features, labels))
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica]

        top1, topk, count = np.zeros(len(classes)), np.zeros(len(classes)), 0
        for i, (features, labels) in enumerate(dataset):
            if max_steps and i >= max_steps:
                break
            hits1, hitsk, rows = eval_step(features, labels)
            top1 += hits1.numpy()
            topk += hitsk.numpy()
            count += int(rows)
        return top1, topk, count

    def _inference(self, model, name, fn):
        """`fn(model, images)` as a tf.function, traced once per model (and a
        second time for a batch of another size, then for any size)."""
        key = (id(model), name)
        if key not in self._functions:
            self._functions[key] = (model, tf.function(
                lambda images: fn(model, images), reduce_retracing=True, autograph=False))
        return self._functions[key][1]

    def encode(self, model, images):
        """h = model.encode(images) for one batch of eval views, as numpy."""
        encode = self._inference(model, "encode", lambda m, x: m.encode(x, training=False))
        return encode(tf.convert_to_tensor(images)).numpy()

    def embed(self, images):
        """(h, z) of the model in inference mode for one batch of views
        (`Model.endpoints`), as numpy."""
        def h_and_z(model, images):
            outputs = model.endpoints(images, training=False)
            return outputs["final_avg_pool"], outputs["proj_head_output"]
        h, z = self._inference(self.model, "embed", h_and_z)(tf.convert_to_tensor(images))
        return h.numpy(), z.numpy()
