"""A crash in the middle of a write never leaves a latest file that cannot
be read: `result.json`, `flags.json` and `metrics.csv`
(`checkpoint.write_text`), the SavedModel export (`export.save`) and the
checkpoints (`checkpoint.Checkpointer.save`, through TensorFlow's
CheckpointManager, which names a checkpoint in its state file only after
its data are written).

Each write is made to fail part-way through (the failure raised where a
crash would stop the process), and what a reader then finds is checked.
"""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management

import checkpoint as checkpoint_lib
import configs
import export
import train_lib
from test_export import TINY


class Crash(Exception):
    """Where the process would have died."""


def test_a_json_write_that_dies_half_way_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    checkpoint_lib.write_json(str(path), {"global_step": 1, "probe_top1": 0.5})
    original = tf.io.gfile.GFile.write

    def half_then_crash(self, data):
        original(self, data[:len(data) // 2])
        self.flush()
        raise Crash

    monkeypatch.setattr(tf.io.gfile.GFile, "write", half_then_crash)
    with pytest.raises(Crash):
        checkpoint_lib.write_json(str(path), {"global_step": 2, "probe_top1": 0.75})
    assert json.loads(path.read_text()) == {"global_step": 1, "probe_top1": 0.5}


def test_an_export_that_dies_half_way_leaves_no_numbered_directory(tmp_path, monkeypatch):
    """The SavedModel of step 3 dies after writing part of its files: no
    saved_model/3 appears (a loader would take it for a whole model), and
    the export of step 2 is still there."""
    cfg, source = configs.resolve(model_dir=str(tmp_path), **TINY)
    model = train_lib.build_model(cfg, source.num_classes)
    (tmp_path / export.SAVED_MODEL_DIR / "2").mkdir(parents=True)

    def write_some_then_crash(module, directory, **kwargs):
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(f"{directory}/saved_model.pb", "w") as f:
            f.write("part of a graph")
        raise Crash

    monkeypatch.setattr(tf.saved_model, "save", write_some_then_crash)
    with pytest.raises(Crash):
        export.save(model, str(tmp_path), 3, keep=1)
    assert export.exported_steps(str(tmp_path)) == [2]
    assert not tf.io.gfile.exists(export.export_dir(str(tmp_path), 3))


def test_a_checkpoint_that_dies_before_its_state_is_recorded_is_not_the_latest(
        tmp_path, monkeypatch):
    """ckpt-2's data are written and the process dies before the state file
    names it: the newest checkpoint is still ckpt-1, and resuming restores
    its values."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    saver = checkpoint_lib.Checkpointer(model, {"optimizer": optimizer}, str(tmp_path))
    first = [np.asarray(v).copy() for v in model.variables]
    saver.save(1)
    for variable in model.variables:
        variable.assign(np.asarray(variable) + 1.0)

    def crash(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", crash)
    with pytest.raises(Crash):
        saver.save(2)
    monkeypatch.undo()
    assert tf.io.gfile.glob(str(tmp_path / "ckpt-2.index"))  # its data did reach the disk
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-1")
    restored = checkpoint_lib.Checkpointer(model, {"optimizer": optimizer}, str(tmp_path))
    assert restored.restore_newest_good(str(tmp_path)) == str(tmp_path / "ckpt-1")
    for variable, value in zip(model.variables, first):
        np.testing.assert_array_equal(np.asarray(variable), value)
