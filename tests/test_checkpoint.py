"""checkpoint.py: what restoring says of a checkpoint that is not this
model's, and waiting for a newer checkpoint."""
import threading
import time

import keras
import numpy as np
import pytest

import checkpoint as checkpoint_lib
from errors import UsageError


def dense_model(width, name="model"):
    """A model with one Dense layer of `width` units on 3 inputs, and its
    SGD optimizer, built."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(width, name="dense")],
                             name=name)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return model, {"optimizer": optimizer}


def test_a_checkpoint_of_other_shapes_is_named_a_mismatch_not_damage(tmp_path, capfd):
    """Another model's checkpoint in the directory (another width, no
    flags.json to say so): one error naming the variable and both shapes,
    never a warning that the checkpoint is damaged, and nothing restored."""
    model, optimizers = dense_model(4)
    checkpoint_lib.Checkpointer(model, optimizers, str(tmp_path)).save(1)
    other, other_optimizers = dense_model(5)
    before = [np.asarray(v).copy() for v in other.variables]
    checkpointer = checkpoint_lib.Checkpointer(other, other_optimizers, str(tmp_path))
    with pytest.raises(UsageError) as raised:
        checkpointer.restore_newest_good(str(tmp_path))
    message = str(raised.value)
    assert "\n" not in message
    assert "dense/kernel" in message and "[3, 4]" in message and "[3, 5]" in message, message
    assert "another model" in message and "cannot be read" not in message, message
    assert "warning" not in capfd.readouterr().err
    for variable, value in zip(other.variables, before):
        np.testing.assert_array_equal(np.asarray(variable), value)


def test_a_checkpoint_missing_variables_of_this_model_is_named_a_mismatch(tmp_path):
    model, optimizers = dense_model(4)
    checkpoint_lib.Checkpointer(model, optimizers, str(tmp_path)).save(1)
    bigger = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="dense"),
                               keras.layers.Dense(2, name="extra")], name="model")
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(bigger.trainable_variables)
    checkpointer = checkpoint_lib.Checkpointer(bigger, {"optimizer": optimizer}, str(tmp_path))
    with pytest.raises(UsageError, match=r"another model.*variables of this model are not in it, e.g. model/extra/kernel"):
        checkpointer.restore_newest_good(str(tmp_path))


def test_wait_for_newer_returns_the_next_checkpoint_or_none_after_its_timeout(tmp_path):
    model, optimizers = dense_model(2)
    saver = checkpoint_lib.Checkpointer(model, optimizers, str(tmp_path))
    first = saver.save(1)
    start = time.monotonic()
    assert checkpoint_lib.wait_for_newer(str(tmp_path), first, 0.6, poll_secs=0.1) is None
    assert 0.6 <= time.monotonic() - start < 5

    later = threading.Timer(0.5, lambda: saver.save(3))
    later.start()
    newer = checkpoint_lib.wait_for_newer(str(tmp_path), first, 30, poll_secs=0.1)
    later.join()
    assert newer == str(tmp_path / "ckpt-3")
