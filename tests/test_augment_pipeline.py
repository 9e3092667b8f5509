"""The input pipeline of `--augment_in_step` (TensorFlow edge): the batches
of `data.build_input_fn(augment_in_step=True)` hold the images and draws
seeded by (seed, example), images of another size are resized whole, and a
run's flags reach both the pipeline and the step's views
(`train_lib.in_step_views`)."""
import numpy as np
import pytest
import tensorflow as tf

import augment
import data
import data_util
from test_augment import images_01
from test_data import digits_source  # noqa: F401  (fixture)


def test_the_pipeline_delivers_images_and_seeded_draws(digits_source):  # noqa: F811
    def first_batch(seed):
        input_fn = data.build_input_fn(
            digits_source, 16, is_training=True, split="train", image_size=32,
            clean_view=True, seed=seed, deterministic=True, augment_in_step=True)
        return next(iter(input_fn()))

    inputs, labels = first_batch(0)
    assert set(inputs) == {"images", "draws", "clean"}
    # The digits' own 8 x 8 pixels: the crop is taken from them, as on the host.
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape == (16, 8, 8, 3)
    assert inputs["draws"].shape == (16, 2, augment.DRAWS)
    assert inputs["clean"].shape == (16, 32, 32, 3) and labels.shape == (16,)
    # The clean view is the host's evaluation view of the image.
    eval_view = data.eval_view_fn(32)
    want = np.stack([eval_view(image).numpy() for image in inputs["images"]])
    np.testing.assert_allclose(inputs["clean"].numpy(), want, atol=1e-6)
    again, _ = first_batch(0)
    other, _ = first_batch(1)
    np.testing.assert_array_equal(again["draws"].numpy(), inputs["draws"].numpy())
    assert not np.array_equal(other["draws"].numpy(), inputs["draws"].numpy())
    draws = inputs["draws"].numpy()
    assert 0.0 <= draws.min() and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.02


def test_fixed_size_uint8_resizes_other_sizes_and_keeps_its_own():
    pixels, _ = images_01((20, 30, 1))
    out = data_util.fixed_size_uint8(tf.constant(pixels), 10).numpy()
    want = tf.image.resize(tf.image.grayscale_to_rgb(
        tf.image.convert_image_dtype(pixels, tf.float32)), [10, 10], method="bicubic")
    want = np.round(np.clip(want.numpy(), 0, 1) * 255)
    assert out.dtype == np.uint8 and out.shape == (10, 10, 3)
    assert np.abs(out.astype(int) - want).max() <= 1
    same, _ = images_01((10, 12, 3))
    np.testing.assert_array_equal(
        data_util.fixed_size_uint8(tf.constant(same), (10, 12)).numpy(), same)


@pytest.mark.parametrize("train_mode", ["pretrain", "finetune"])
def test_a_run_with_augment_in_step_trains_on_the_views_it_makes(train_mode):
    """--augment_in_step reaches the pipeline (`data.train_input_fn`) and the
    step (`train_lib.in_step_views`): the run's crop, flip, colour and
    blur flags, and none of colour or blur in fine-tuning."""
    import configs
    import train_lib
    flags = dict(augment_in_step=True, train_batch_size=8, train_mode=train_mode,
                 color_jitter_strength=0.7, use_blur=True, crop_min_area=0.3)
    if train_mode == "finetune":
        del flags["color_jitter_strength"], flags["use_blur"]
    cfg, source = configs.resolve(**flags)
    inputs, _ = next(iter(data.train_input_fn(cfg, source)()))
    views = 2 if train_mode == "pretrain" else 1
    assert inputs["draws"].shape == (8, views, augment.DRAWS)
    pretrain = train_mode == "pretrain"
    want = augment.augment_views(
        {k: v.numpy() for k, v in inputs.items()}, views=views, size=cfg.image_size,
        area_range=(0.3, 1.0), flip=cfg.use_flip, color_jitter_strength=0.7 if pretrain else 0,
        blur=pretrain)
    np.testing.assert_array_equal(np.asarray(train_lib.in_step_views(cfg, inputs)), want)
    plain, _ = configs.resolve(**dict(flags, augment_in_step=False))
    views_batch, _ = next(iter(data.train_input_fn(plain, source)()))
    assert views_batch.shape == (8, cfg.image_size, cfg.image_size,
                                 3 * train_lib.num_input_views(cfg))
