"""The JAX edge: the same objective, differentiated and applied with JAX.

The whole global batch is one jitted program whose batch axis is sharded
over all local devices (GSPMD): every replica's negatives are in the loss,
and batch-norm statistics are those of the global batch, as with
`--global_bn` under tf.distribute. The training state lives outside the
Keras variables as lists of arrays: `train_lib.Objective` runs inside a
`keras.StatelessScope` that maps each variable to its traced value,
`jax.value_and_grad` differentiates it, and `optimizer.stateless_apply`
applies the gradients. `sync()` writes the state back into the variables
(before checkpoints and evaluation), `load()` reads it from them (after a
restore).

TensorFlow-free: the batches come as numpy arrays from any iterable (the
run's tf.data pipeline through `train_iterator`, or synthetic ones in the
benchmarks), and the TensorFlow edges write checkpoints and SavedModels from
the Keras variables.
"""
import os

import jax
import keras
import numpy as np
from jax._src import xla_bridge
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import metrics
import model as model_lib
import train_lib
from errors import UsageError

# XLA's flag for deterministic GPU kernels (scatter-adds and reductions
# otherwise sum in a scheduling-dependent order).
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def deterministic_kernels():
    """Adds `DETERMINISTIC_XLA_FLAG` to XLA_FLAGS, which XLA reads when JAX
    creates its backends: before the process's first JAX computation.

    Raises:
        UsageError: JAX has already created them without it.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_XLA_FLAG in current.split():
        return
    if xla_bridge.backends_are_initialized():
        raise UsageError("--deterministic under JAX needs XLA's deterministic kernels, set "
                         "before JAX starts: run with XLA_FLAGS=" + DETERMINISTIC_XLA_FLAG)
    os.environ["XLA_FLAGS"] = f"{current} {DETERMINISTIC_XLA_FLAG}".strip()


def stateless(model, fn):
    """jit of (trainable values, non-trainable values, *args) -> fn(*args),
    with `model`'s variables read as those values."""
    def call(trainable, non_trainable, *args):
        mapping = list(zip(model.trainable_variables, trainable)) + list(
            zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping):
            return fn(*args)
    return jax.jit(call)


def values(variables):
    return [v.value for v in variables]


class Trainer:
    """Builds, trains and evaluates a run's model with JAX on all local
    devices (`devices` to choose).

    Args:
        cfg: a `config.Config`.
        devices: the devices to shard the batch over; all local ones when None.
    """

    backend = "jax"

    def __init__(self, cfg, devices=None):
        self.cfg = cfg
        if cfg.deterministic:
            deterministic_kernels()
        devices = list(devices or jax.local_devices())
        self.num_replicas = len(devices)
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.data_sharding = NamedSharding(self.mesh, PartitionSpec("batch"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.chief = jax.process_index() == 0
        self.worker_dir = cfg.model_dir
        self.device_summary = f"{len(devices)} {devices[0].platform} device(s)"
        # Only the training batch is sharded; evaluation runs on one device.
        if cfg.train_batch_size % self.num_replicas:
            raise UsageError(f"--train_batch_size={cfg.train_batch_size} is not divisible by "
                             f"the {self.num_replicas} JAX devices")
        if not cfg.global_bn and self.num_replicas > 1:
            raise UsageError("--global_bn=false needs the TensorFlow backend: under JAX the "
                             "batch is one program over all devices and batch norm always "
                             "uses the statistics of the global batch")
        self._encoders = {}

    def build(self, num_classes, num_train_examples, label_names=None):
        """Creates the model, the optimizers and the jitted step."""
        cfg = self.cfg
        self.model = train_lib.build_model(cfg, num_classes)
        self.optimizer, self.probe_optimizer = train_lib.build_optimizers(
            cfg, self.model, num_train_examples)
        self.schedule = train_lib.learning_rate_schedule(cfg, cfg.learning_rate, num_train_examples)
        self.objective = train_lib.Objective(self.model, cfg, normal_noise=self.normal_noise,
                                             label_names=label_names)
        self.log_names = train_lib.log_names(cfg, self.model, label_names)
        self._iteration = [id(v) for v in self.optimizer.variables].index(
            id(self.optimizer.iterations))
        trainable = self.model.trainable_variables
        if self.probe_optimizer is not None:
            indices = list(range(len(trainable)))
            self._probe_indices, self._other_indices = train_lib.split_probe(
                self.model, indices, variable=lambda i: trainable[i])
        self._train_step = jax.jit(self._step, donate_argnums=(0, 1))
        self._logits = stateless(self.model, lambda x: self.model(x, training=False)[1])
        self._embed = stateless(self.model, lambda x: tuple(
            self.model.endpoints(x, training=False)[name]
            for name in ("final_avg_pool", "proj_head_output")))
        self.load()
        return self

    @property
    def optimizers(self):
        return {"optimizer": self.optimizer, "probe_optimizer": self.probe_optimizer}

    def _optimizer_list(self):
        return [o for o in (self.optimizer, self.probe_optimizer) if o is not None]

    def load(self):
        """Reads the training state from the Keras variables."""
        state = (values(self.model.trainable_variables),
                 values(self.model.non_trainable_variables),
                 [values(o.variables) for o in self._optimizer_list()])
        self.state = jax.device_put(state, self.replicated)
        # (loss scale, finite steps in a row) of mixed_float16, () otherwise;
        # not checkpointed: a resumed run finds its scale again in a few steps.
        scaling = ()
        if train_lib.uses_loss_scale(self.cfg):
            scaling = (np.float32(train_lib.INITIAL_LOSS_SCALE), np.int32(0))
        self.scaling = jax.device_put(scaling, self.replicated)

    def sync(self):
        """Writes the training state into the Keras variables."""
        trainable, non_trainable, optimizer_values = self.state
        pairs = list(zip(self.model.trainable_variables, trainable)) + list(
            zip(self.model.non_trainable_variables, non_trainable))
        for optimizer, vals in zip(self._optimizer_list(), optimizer_values):
            pairs += list(zip(optimizer.variables, vals))
        for variable, value in pairs:
            variable.assign(value)

    @property
    def step(self):
        return int(self.state[2][0][self._iteration])

    def normal_noise(self, shape, step, stream):
        """Standard-normal noise seeded by (--seed, stream, step)."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.cfg.seed), stream), step)
        return jax.random.normal(key, shape)

    # -- training -----------------------------------------------------------
    def loss_and_gradients(self, state, features, labels, scale=1.0):
        """((total · scale, (logs, new non-trainable values)), gradients of
        total · scale) of the objective at `state` on one global batch."""
        trainable, non_trainable, optimizer_values = state
        model = self.model
        step = optimizer_values[0][self._iteration]

        def loss_fn(trainable):
            mapping = list(zip(model.trainable_variables, trainable)) + list(
                zip(model.non_trainable_variables, non_trainable))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                total, logs = self.objective(features, labels, step)
            updated = [scope.get_current_value(v) for v in model.non_trainable_variables]
            return total * scale, (logs, updated)

        return jax.value_and_grad(loss_fn, has_aux=True)(trainable)

    def _step(self, state, scaling, features, labels):
        """(state, scaling, logs) after one step; with loss scaling the
        update is applied only when the unscaled gradients are finite (a
        skipped step still advances each optimizer's iteration, as the data
        did), and the scale follows `train_lib.next_loss_scale`."""
        scale = scaling[0] if scaling else 1.0
        (_, (logs, non_trainable)), grads = self.loss_and_gradients(
            state, features, labels, scale)
        if not scaling:
            logs["gradients_finite"] = train_lib.all_finite(grads)
            return self._apply_gradients(state, grads, non_trainable), scaling, logs
        grads = [g / scale for g in grads]
        finite = train_lib.all_finite(grads) > 0
        applied = self._apply_gradients(state, grads, non_trainable)
        trainable, _, optimizer_values = state
        skipped = (trainable, non_trainable, [
            [v + 1 if i == self._iteration else v for i, v in enumerate(values)]
            for values in optimizer_values])
        state = jax.tree.map(lambda a, b: jax.numpy.where(finite, a, b), applied, skipped)
        logs["gradients_finite"] = train_lib.scaled_step_finite(finite, scale)
        return state, train_lib.next_loss_scale(scale, scaling[1], finite), logs

    def _apply_gradients(self, state, grads, non_trainable):
        """The state after the optimizers apply `grads` (the online probe's
        with its own optimizer when it has one)."""
        trainable, _, optimizer_values = state
        if self.probe_optimizer is None:
            trainable, main = self.optimizer.stateless_apply(optimizer_values[0], grads, trainable)
            optimizer_values = [main]
        else:
            updated = list(trainable)
            new_values = []
            for optimizer, indices, vals in (
                    (self.optimizer, self._other_indices, optimizer_values[0]),
                    (self.probe_optimizer, self._probe_indices, optimizer_values[1])):
                new, vals = optimizer.stateless_apply(
                    vals, [grads[i] for i in indices], [trainable[i] for i in indices])
                for i, value in zip(indices, new):
                    updated[i] = value
                new_values.append(vals)
            trainable, optimizer_values = updated, new_values
        return trainable, non_trainable, optimizer_values

    def train_iterator(self, input_fn):
        """Iterator over the global training batches (numpy) of `input_fn`
        (`data.train_input_fn`)."""
        return input_fn().as_numpy_iterator()

    def run_steps(self, iterator, num_steps):
        """Runs `num_steps` steps; returns {log: mean over the steps} as floats."""
        totals = None
        for _ in range(num_steps):
            features, labels = jax.device_put(next(iterator), self.data_sharding)
            self.state, self.scaling, logs = self._train_step(
                self.state, self.scaling, features, labels)
            totals = logs if totals is None else jax.tree.map(lambda a, b: a + b, totals, logs)
        return {k: float(totals[k]) / num_steps for k in self.log_names + ["gradients_finite"]}

    # -- evaluation ---------------------------------------------------------
    def top_k_counts(self, input_fn, k, max_steps=0):
        """(top-1 hits [L], top-k hits [L], examples) of the supervised head
        on the batches of `input_fn` (`data.eval_input_fn`), the first
        `max_steps` of them when > 0, for each of its L labels
        (`metrics.label_top_k`)."""
        trainable, non_trainable, _ = self.state
        classes = self.model.label_classes
        top1, topk, count = np.zeros(len(classes)), np.zeros(len(classes)), 0
        for i, (features, labels) in enumerate(input_fn().as_numpy_iterator()):
            if max_steps and i >= max_steps:
                break
            logits = self._logits(trainable, non_trainable, features)
            hits = metrics.label_top_k(
                labels, model_lib.label_logits(logits, classes), k)
            top1 += np.asarray(hits[0])
            topk += np.asarray(hits[1])
            count += len(labels)
        return top1, topk, count

    def embed(self, images):
        """(h, z) of the model in inference mode for one batch of views
        (`Model.endpoints`), as numpy."""
        trainable, non_trainable, _ = self.state
        return tuple(np.asarray(x) for x in self._embed(trainable, non_trainable, images))

    def encode(self, model, images):
        """h = model.encode(images) for one batch of eval views, as numpy."""
        if id(model) not in self._encoders:
            self._encoders[id(model)] = (model, stateless(
                model, lambda x: model.encode(x, training=False)))
        _, encode = self._encoders[id(model)]
        trainable = values(model.trainable_variables)
        non_trainable = values(model.non_trainable_variables)
        return np.asarray(encode(trainable, non_trainable, images))
