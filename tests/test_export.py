"""The exported SavedModel (`export.py`) against the model it came from.

One tiny model, every variable set to random values (so that no batch norm
sits at its identity initialisation and no residual branch at γ = 0), is
exported once; the tests load it the three ways users do —
`tf.saved_model.load`, Keras 3's `TFSMLayer`, and `hub.KerasLayer` in a
tf-keras model — and compare it with the in-memory model:

- every output, in inference and in training mode, equals
  `Model.endpoints` of the same images, whatever the batch and image size;
- training mode updates the moving statistics as the Keras layers do;
- fine-tuning: every trainable variable gets a gradient, and a few steps of
  a new head plus the encoder change every encoder weight and lower the
  loss; the graph holds no custom-gradient op, whose gradient SavedModels
  drop (the original's LookupError, google-research/simclr #108).
"""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import configs
import export
import train_lib

# One worker exports the module's model (under `--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("test_export")

TINY = dict(image_size=8, width_multiplier=0.125, num_proj_layers=2, proj_out_dim=16)
STEP = 7


def randomise(model, seed=0):
    """Every variable drawn at random: moving variances in [0.5, 1.5],
    everything else N(0, 0.3²) around its initial value."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = np.asarray(variable) + rng.normal(0.0, 0.3, shape)
        variable.assign(value.astype(np.float32))


def images(batch, size=8, seed=1):
    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(in-memory model, SavedModel directory, run directory); the run
    directory held SavedModels of steps 1 and 2 before, keep = 2."""
    model_dir = tmp_path_factory.mktemp("export")
    for old in (1, 2):
        (model_dir / export.SAVED_MODEL_DIR / str(old)).mkdir(parents=True)
    cfg, source = configs.resolve(model_dir=str(model_dir), **TINY)
    model = train_lib.build_model(cfg, source.num_classes)
    randomise(model)
    path = export.save(model, str(model_dir), STEP, keep=2)
    return model, path, model_dir


def assert_close(actual, expected, what=""):
    """Equal to float32 round-off: graph and eager kernels sum in other
    orders, so the tolerance scales with the largest magnitude."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4,
                               atol=1e-5 * max(1.0, float(np.abs(expected).max())),
                               err_msg=what)


def moving_statistics(variables):
    """The moving means and variances among `variables`, in their order."""
    return [v.numpy() for v in variables if "moving_" in v.name]


def test_only_the_newest_exports_are_kept(exported):
    _, path, model_dir = exported
    assert path == export.export_dir(str(model_dir), STEP)
    assert sorted(p.name for p in (model_dir / export.SAVED_MODEL_DIR).iterdir()) == ["2", "7"]


@pytest.mark.parametrize("batch, size", [(1, 8), (5, 8), (3, 16)])
def test_outputs_equal_the_in_memory_model_in_inference(exported, batch, size):
    model, path, _ = exported
    loaded = tf.saved_model.load(path)
    x = images(batch, size)
    expected = model.endpoints(x, training=False)
    # Independently of Model.endpoints: the training model's own forward
    # pass on one view gives z and the logits, the encoder gives h.
    z, logits = model(x, training=False)
    h = model.encode(x, training=False)
    for call in (dict(trainable=False), dict(training=False)):
        got = loaded(x, **call)
        assert sorted(got) == sorted(export.OUTPUT_NAMES)
        for name in export.OUTPUT_NAMES:
            assert_close(got[name], expected[name], f"{call} {name}")
        for name, value in (("final_avg_pool", h), ("proj_head_input", h),
                            ("proj_head_output", z), ("logits_sup", logits)):
            assert_close(got[name], value, f"{call} {name}")


def test_training_mode_uses_batch_statistics_and_updates_moving_averages(exported):
    """`trainable=True` and `training=True` are the Keras layers in training:
    the same outputs and the same new moving statistics as the in-memory
    model called with training=True."""
    model, path, _ = exported
    x = images(6)
    before = [np.asarray(v) for v in model.variables]
    expected = model.endpoints(x, training=True)
    expected_stats = moving_statistics(model.variables)
    for variable, value in zip(model.variables, before):  # back as exported
        variable.assign(value)
    assert not any(np.array_equal(a, b) for a, b in
                   zip(expected_stats, moving_statistics(model.variables)))
    for call in (dict(trainable=True), dict(training=True)):
        loaded = tf.saved_model.load(path)
        got = loaded(x, **call)
        for name in ("final_avg_pool", "proj_head_output", "logits_sup"):
            assert_close(got[name], expected[name], f"{call} {name}")
        # The module's variables are the model's, in the model's order.
        stats = moving_statistics(loaded.variables)
        assert len(stats) == len(expected_stats) > 0
        for i, (actual, wanted) in enumerate(zip(stats, expected_stats)):
            assert_close(actual, wanted, f"{call} moving statistic {i}")


def test_variables_and_trainable_variables_are_attached(exported):
    model, path, _ = exported
    loaded = tf.saved_model.load(path)
    assert len(loaded.variables) == len(model.variables)
    encoder = model.resnet_model.trainable_variables
    assert len(loaded.trainable_variables) == len(encoder) > 0
    assert sorted(v.shape.num_elements() for v in loaded.trainable_variables) == \
        sorted(int(np.prod(v.shape)) for v in encoder)


def test_every_trainable_variable_gets_a_gradient(exported):
    _, path, _ = exported
    loaded = tf.saved_model.load(path)
    x = images(4)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(loaded(x, trainable=True)["final_avg_pool"]))
    grads = tape.gradient(loss, loaded.trainable_variables)
    assert all(g is not None for g in grads)
    assert sum(bool(np.any(g.numpy() != 0)) for g in grads) > 0.9 * len(grads)


def test_no_custom_gradient_op_is_exported(exported):
    """Ops with a tf.custom_gradient (a synchronised batch norm's
    all-reduce) lose their gradient in a SavedModel: a fresh process
    fine-tuning it would raise LookupError."""
    _, path, _ = exported
    saved = saved_model_pb2.SavedModel()
    with open(f"{path}/saved_model.pb", "rb") as f:
        saved.ParseFromString(f.read())
    library = saved.meta_graphs[0].graph_def.library
    custom = [f"{function.signature.name}/{node.name}" for function in library.function
              for node in function.node_def if "_gradient_op_type" in node.attr]
    assert custom == []


def test_keras3_users_load_it_with_tfsm_layer(exported):
    import keras
    model, path, _ = exported
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    x = images(5)
    assert_close(layer(x)["final_avg_pool"], model.encode(x, training=False))


def test_tf_hub_users_fine_tune_it_in_a_tf_keras_model(exported):
    """hub.KerasLayer(trainable=True) under a new head, in tf-keras: its
    inference output is h, and a few fit steps move every encoder weight
    and the moving statistics, and lower the loss."""
    import tensorflow_hub as hub
    import tf_keras
    model, path, _ = exported
    frozen = hub.KerasLayer(path, trainable=False, output_key="final_avg_pool")
    x = images(64, seed=2)
    assert_close(frozen(x), model.encode(x, training=False))

    layer = hub.KerasLayer(path, trainable=True, output_key="final_avg_pool")
    tf_keras.utils.set_random_seed(0)
    classifier = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), layer,
                                      tf_keras.layers.Dense(10)])
    classifier.compile(tf_keras.optimizers.SGD(0.05),
                       tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.random.default_rng(3).integers(0, 10, len(x))
    assert len(layer.trainable_weights) == len(model.resnet_model.trainable_variables)
    before = [w.numpy() for w in layer.trainable_weights]
    stats_before = moving_statistics(layer.weights)
    history = classifier.fit(x, labels, epochs=3, batch_size=64, verbose=0).history["loss"]
    assert history[-1] < history[0], history
    assert all(np.any(b != w.numpy()) for b, w in zip(before, layer.trainable_weights))
    stats_after = moving_statistics(layer.weights)
    assert len(stats_before) == len(stats_after) > 0
    assert all(np.any(a != b) for a, b in zip(stats_before, stats_after))


def test_a_model_built_under_mirrored_strategy_exports(mirrored_strategy, tmp_path):
    """Mirrored variables (several GPUs) export as plain ones, and the
    outputs are those of the model."""
    cfg, source = configs.resolve(model_dir=str(tmp_path), **TINY)
    with mirrored_strategy.scope():
        model = train_lib.build_model(cfg, source.num_classes)
    randomise(model, seed=4)
    loaded = tf.saved_model.load(export.save(model, str(tmp_path), 1, keep=1))
    x = images(3)
    assert_close(loaded(x, trainable=False)["logits_sup"],
                 model.endpoints(x, training=False)["logits_sup"])
    assert len(loaded.variables) == len(model.variables)
