"""SavedModel export of a run's model, for TF Hub and Keras 3 users.

Mirrors the original's `build_saved_model` and `save` (`tf2/run.py`): a
SavedModel in `model_dir/saved_model/<global_step>/`, the newest
`--keep_hub_module_max` kept, called as

    m = tf.saved_model.load(path)
    outputs = m(images, trainable=False)  # float32 [b, H, W, c] in [0, 1]
    h = outputs["final_avg_pool"]

for any batch size and image size (c = 3 channels, RGB; 3 + K with
`--num_rand_bits=K`: the RandBits planes follow the RGB), with the
outputs of `Model.endpoints`
(`OUTPUT_NAMES`; `logits_sup` only when the run has a supervised head).
`trainable=True` runs batch norm on the batch's statistics and updates its
moving averages, as a Keras layer in training does. Unlike the original's
exports, these fine-tune:

- `m.variables` holds every variable and `m.trainable_variables` the
  encoder's trainable ones (the weights a new head on `final_avg_pool`
  fine-tunes; the heads are loaded as constants of the module), and
  every op of the forward pass has a gradient;
- `__call__` also takes the `training=` keyword that `hub.KerasLayer`
  passes when it is trainable (tensorflow/hub #745, #763): `training`, when
  given, overrides `trainable`;
- the `serving_default` signature (inference mode) is what
  `keras.layers.TFSMLayer(path, call_endpoint="serving_default")` and
  servers call.

`hub.KerasLayer` is a tf-keras layer that a Keras 3 model cannot hold, so a
TF Hub user's model is a tf-keras one (`import tf_keras`, or
`TF_USE_LEGACY_KERAS=1`); Keras 3 users load through `TFSMLayer`.

Exporting needs TensorFlow graphs: under the JAX backend the newest
checkpoint is exported by a TensorFlow process (`export_in_subprocess`,
which runs this file), the checkpoint format being the same.
"""
import contextlib
import os
import subprocess
import sys

import keras
import tensorflow as tf

import checkpoint as checkpoint_lib
import config
import resnet
import run_record
import tf_kernels  # noqa: F401  (registers TensorFlow's fused batch norm)
import train_lib

SAVED_MODEL_DIR = "saved_model"
OUTPUT_NAMES = resnet.ENDPOINT_NAMES + (
    "proj_head_input", "proj_head_output", "logits_sup")


def image_spec(channels):
    """The images a module takes: float32 [b, H, W, channels], any b, H, W."""
    return tf.TensorSpec([None, None, None, channels], tf.float32, name="images")


class HubModule(tf.__internal__.tracking.AutoTrackable):
    """The exported object: `__call__(images, trainable=False,
    training=None)` -> {name: tensor} of `model.endpoints`, plus
    `variables`, `trainable_variables` and `regularization_losses` (empty:
    weight decay is the fine-tuner's choice), the attributes TF Hub reads.

    Args:
        model: a built `model.Model` under the TensorFlow backend.
    """

    def __init__(self, model):
        # The Keras model is held by closures, not attributes, so that the
        # SavedModel holds the module's functions and variables only. The
        # forward pass is traced once per mode, whichever call form runs it.
        modes = {training: tf.function(
            lambda images, training=training: model.endpoints(images, training=training))
            for training in (False, True)}
        self._endpoints = lambda images, training: modes[training](images)
        self._spec = image_spec(model.view_channels)
        self.variables = list(model.variables)
        self.trainable_variables = list(model.resnet_model.trainable_variables)
        self.regularization_losses = []

    @tf.function
    def __call__(self, images, trainable=False, training=None):
        mode = trainable if training is None else training
        return self._endpoints(images, bool(mode))

    def trace(self):
        """Traces the call forms users and TF Hub use; returns the inference
        concrete function (the `serving_default` signature)."""
        serving = self.__call__.get_concrete_function(self._spec, trainable=False)
        self.__call__.get_concrete_function(self._spec, trainable=True)
        for training in (False, True):
            self.__call__.get_concrete_function(self._spec, training=training)
        return serving


@contextlib.contextmanager
def _local_batch_norm(model):
    """Batch norm on the statistics of the batch it is given while tracing.
    A synchronised batch norm all-reduces through the replica context, whose
    gradient is a custom one that SavedModels do not keep: the original's
    exports failed with LookupError when fine-tuned (#108, #116)."""
    layers = [layer for layer in model._flatten_layers()
              if getattr(layer, "synchronized", False)]
    for layer in layers:
        layer.synchronized = False
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronized = True


def export_dir(model_dir, step):
    return os.path.join(model_dir, SAVED_MODEL_DIR, str(step))


def exported_steps(model_dir):
    """Steps of the SavedModels in `model_dir/saved_model/`, ascending."""
    root = os.path.join(model_dir, SAVED_MODEL_DIR)
    if not tf.io.gfile.isdir(root):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(root)
                  if name.rstrip("/").isdigit())


def save(model, model_dir, step, keep):
    """Writes the SavedModel of `model` to `model_dir/saved_model/<step>/`
    and deletes all but the newest `keep` (a step already exported is
    rewritten). The model is written to a temporary directory and renamed
    into place, so a numbered directory always holds a whole SavedModel.

    Returns:
        The SavedModel's directory.
    """
    module = HubModule(model)
    final = export_dir(model_dir, step)
    partial = os.path.join(model_dir, SAVED_MODEL_DIR, f".partial-{step}")
    for path in (partial, final):
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    tf.io.gfile.makedirs(os.path.dirname(final))
    # Saving traces the functions again, so batch norm stays local until
    # the SavedModel is written.
    with _local_batch_norm(model):
        tf.saved_model.save(module, partial, signatures={"serving_default": module.trace()})
    tf.io.gfile.rename(partial, final)
    for old in exported_steps(model_dir)[:-keep]:
        tf.io.gfile.rmtree(export_dir(model_dir, old))
    return final


def export_run(cfg, trainer, prefix):
    """The SavedModel of a trainer's current weights, those of its checkpoint
    `prefix`, in model_dir/saved_model/<step>/, the newest
    --keep_hub_module_max kept; returns its directory (None on a worker
    that does not write the run's outputs).

    A float32 TensorFlow trainer exports its own model (`save`); every
    worker of a multi-worker run writes, as collective saves need, the
    others into their scratch directory. Any other run is exported from the
    checkpoint by a float32 TensorFlow process (`export_in_subprocess`):
    SavedModels hold TensorFlow graphs, and they compute in float32.
    """
    keep = cfg.keep_hub_module_max
    if trainer.backend == "tensorflow" and cfg.precision == "float32":
        return save(trainer.model, trainer.worker_dir, trainer.step, keep)
    if not trainer.chief:
        return None
    return export_in_subprocess(cfg.model_dir, prefix, trainer.step, keep)


def export_in_subprocess(model_dir, prefix, step, keep):
    """Exports the checkpoint at `prefix` (of step `step`) of the run in
    `model_dir` from a TensorFlow-backend process: how a run trained under
    another backend exports. An empty `prefix` exports the untrained model
    of the run's flags, initialised from its --seed (a random encoder to
    compare a trained one with).

    Returns:
        The SavedModel's directory.

    Raises:
        RuntimeError: the export process failed; its output is in the message.
    """
    # On the CPU: the GPUs belong to the process that trained.
    env = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="-1")
    command = [sys.executable, os.path.abspath(__file__), model_dir, prefix, str(step), str(keep)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"SavedModel export of {prefix} failed: "
                           f"{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def _export_checkpoint(model_dir, prefix, step, keep):
    """Builds the model of the run's `flags.json`, restores the checkpoint
    at `prefix` into it (none when `prefix` is empty) and exports it."""
    cfg = config.Config(run_record.read_record(model_dir))
    source = run_record.open_dataset(cfg.record())
    keras.utils.set_random_seed(cfg.seed)
    model = train_lib.build_model(cfg, source.label_classes, precision="float32")
    if prefix:
        checkpoint_lib.restore_weights(model, prefix)
    return save(model, model_dir, step, keep)


if __name__ == "__main__":
    model_dir, prefix, step, keep = sys.argv[1:]
    print(_export_checkpoint(model_dir, prefix, int(step), int(keep)))
