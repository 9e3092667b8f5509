"""Input pipelines: augmented views for training, plain images for evaluation.

Mirrors the original release's `build_input_fn` / `build_distributed_dataset`.
In pretraining every example yields `num_views` independently augmented views
concatenated along the channel axis, c = `model.view_channels(num_rand_bits)`
channels each, so a batch of two-view examples is [b, H, W, 2c]: view k
occupies channels k·c .. (k + 1)·c − 1. With `clean_view` the evaluation view
of the same example follows them (for the online probe). The model splits the
channels back into views (`model.Model(view_channels=)`).

A view is RGB (`model.RGB_CHANNELS`), then, with `num_rand_bits` = K > 0, the K
RandBits channels of its image (`datasets.rand_bits`): constant planes of
the bits of a hash of the stored image, the same in every view of the image
and in its evaluation view, never augmented.

Randomness: training example j of input pipeline k of n (j counted from the
start of training, over the repeated, shuffled split) is cropped and flipped
with the stateless seed fold_in((seed, 0), j * n + k), and a batch is
colour-distorted and blurred with the seed of its first example (each
example with its own draws), so a view depends only on (seed, example
position) however the parallel map is scheduled. With `deterministic` the order is
seeded too and kept, and `start_step` makes the pipeline start where a run
that stopped after that many steps left off.
"""

import tensorflow as tf

import augment
import data_util
import model as model_lib
import train_lib
from datasets import rand_bits

# Salts of the per-example and per-batch seeds, so the two never coincide.
_EXAMPLE_SALT = 0
_BATCH_SALT = 1


def _view_count(is_training, train_mode, num_views):
    """Views per example: `num_views` augmented ones when pretraining (the
    run's own count by default, `model.augmented_views`), else one."""
    default = model_lib.augmented_views(train_mode)  # checks train_mode
    if not (is_training and train_mode == "pretrain"):
        return 1
    if num_views is None:
        return default
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    return num_views


def eval_view_fn(image_size, num_rand_bits=0):
    """image uint8 [H, W, C] -> its evaluation view float32
    [image_size, image_size, model.view_channels(num_rand_bits)] in [0, 1]:
    centre-cropped (small images, `model.SMALL_IMAGE_SIDE`, are resized
    whole), resized, RGB, then its RandBits."""
    def eval_view(image):
        view = data_util.preprocess_image(
            image, image_size, image_size, is_training=False,
            test_crop=image_size > model_lib.SMALL_IMAGE_SIDE)
        return _with_bits(view, image, num_rand_bits)
    return eval_view


def _with_bits(view, image, num_rand_bits):
    """`view` [H, W, 3] followed by the RandBits planes of `image`."""
    if not num_rand_bits:
        return view
    bits = rand_bits.hash_bits(image, num_rand_bits)
    shape = tf.shape(view)
    return tf.concat([view, rand_bits.bit_channels(bits, shape[0], shape[1])], -1)


def build_input_fn(source, global_batch_size, is_training, *, split,
                   image_size, train_mode="pretrain", color_jitter_strength=1.0,
                   use_blur=True, cache_dataset=False, area_range=(0.08, 1.0),
                   num_views=None, flip=True, clean_view=False, seed=0,
                   deterministic=False, start_step=0, num_rand_bits=0,
                   augment_in_step=False):
    """Builds the input function for `distribute_datasets_from_function`.

    Training (`is_training=True`) reads the split forever in shuffled order
    (buffer = per-replica batch x 50 for small images, x 10 otherwise)
    and drops the last partial batch. `pretrain` gives `num_views` views with
    random crop, flip and colour distortion of strength
    `color_jitter_strength`, then (if `use_blur`) Gaussian blur with one sigma
    per view batch; `autoencoder` gives one such view; `finetune` gives one
    view with crop and flip only.
    Evaluation reads the split once, in order, one centre-cropped view per
    example (no crop for small images, `model.SMALL_IMAGE_SIDE`), keeping
    the last partial batch.

    Args:
        source: a `datasets.Source`.
        global_batch_size: batch size summed over replicas.
        is_training: training or evaluation pipeline.
        split: the split of `source` to read.
        image_size: output height and width.
        train_mode: 'pretrain', 'finetune' or 'autoencoder'.
        color_jitter_strength: strength s of colour jitter (pretraining).
        use_blur: blur pretraining views.
        cache_dataset: cache the decoded examples before augmentation.
        area_range: range of the random crop's area fraction.
        num_views: views per example in pretraining (None: the two of
            `model.augmented_views`).
        flip: random horizontal flips in training (off for data whose
            mirror image is another class, such as digits).
        clean_view: in pretraining (and autoencoder training), append the
            evaluation view of each example (no augmentation, never blurred)
            after its augmented views.
        seed: int, the seed of every augmentation (and of the order with
            `deterministic`).
        deterministic: seeded shuffle (and file order), elements kept in
            order through the parallel maps: the same seed gives the same
            batches on every run.
        start_step: with `deterministic`, skip the examples of the first
            `start_step` global batches, so a resumed run sees what an
            uninterrupted one would have (the skipped examples are read,
            not augmented).
        num_rand_bits: K RandBits planes after the RGB of every view.
        augment_in_step: training batches carry the images and the draws
            of their views instead of the views, which the training step
            makes (`augment.augment_views`).

    Returns:
        `input_fn(input_context=None)` -> `tf.data.Dataset` of
        (images float32 [b, image_size, image_size, c * views] in [0, 1]
        with c = view_channels(num_rand_bits), labels int32 [b], or [b, L]
        for L labels), with views = num_views (+ 1 with `clean_view`) when
        pretraining, 1 (+ 1) for the autoencoder and 1 otherwise, and b = the
        per-replica batch
        `input_context.get_per_replica_batch_size(global_batch_size)`
        (`global_batch_size` when `input_context` is None). With
        `augment_in_step` the images are the in-step inputs of
        `augment.augment_views` instead: {"images": uint8 [b, H, W, 3] (the
        source's images when they share one size H x W, else resized to
        image_size), "draws": float32 [b, views, augment.DRAWS], "bits"
        (with RandBits) float32 [b, K], "clean" (with `clean_view`) float32
        [b, image_size, image_size, 3]}, the draws uniform from the same
        per-example seeds as the host's views.

    Raises:
        datasets.DatasetError: `split` is not a split of `source`.
    """
    source.num_examples(split)  # A missing split fails here, not mid-run.
    views = _view_count(is_training, train_mode, num_views)
    pretraining = is_training and train_mode in ("pretrain", "autoencoder")
    blur = pretraining and use_blur
    color = pretraining and color_jitter_strength > 0
    clean_view = pretraining and clean_view
    base_seed = tf.constant([seed, _EXAMPLE_SALT], tf.int64)
    batch_base_seed = tf.constant([seed, _BATCH_SALT], tf.int64)
    eval_view = eval_view_fn(image_size, num_rand_bits)
    rgb_eval_view = eval_view_fn(image_size)

    def train_view(image, view_seed):
        # Colour distortion runs on whole batches (batch_fn).
        return data_util.preprocess_image(
            image, image_size, image_size, is_training=True,
            area_range=area_range, flip=flip, seed=view_seed)

    def input_fn(input_context=None):
        if input_context is None:
            batch_size, pipelines, pipeline_id = global_batch_size, 1, 0
        else:
            batch_size = input_context.get_per_replica_batch_size(
                global_batch_size)
            pipelines = input_context.num_input_pipelines
            pipeline_id = input_context.input_pipeline_id
        dataset = source.as_dataset(
            split, input_context=input_context, shuffle_files=is_training,
            seed=seed if deterministic else None)
        if cache_dataset:
            dataset = dataset.cache()
        if not is_training:
            dataset = dataset.map(
                tf.autograph.experimental.do_not_convert(
                    lambda image, label: (eval_view(image),
                                          tf.cast(label, tf.int32))),
                num_parallel_calls=tf.data.AUTOTUNE)
            return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

        options = tf.data.Options()
        options.deterministic = deterministic
        options.experimental_slack = not deterministic
        dataset = dataset.with_options(options)
        buffer_multiplier = 50 if image_size <= model_lib.SMALL_IMAGE_SIDE else 10
        dataset = dataset.shuffle(batch_size * buffer_multiplier,
                                  seed=seed if deterministic else None)
        dataset = dataset.repeat(-1)
        first = start_step * global_batch_size // pipelines if deterministic else 0
        if first:
            dataset = dataset.skip(first)
        dataset = dataset.enumerate(start=first)

        def example_seed(index):
            # Training example `index` of this pipeline, over all pipelines.
            return tf.random.experimental.stateless_fold_in(
                base_seed, index * pipelines + pipeline_id)

        def map_fn(index, example):
            image, label = example
            view_seeds = tf.unstack(
                tf.random.experimental.stateless_split(example_seed(index), views))
            parts = [train_view(image, s) for s in view_seeds]
            if clean_view:
                parts.append(rgb_eval_view(image))
            bits = (rand_bits.hash_bits(image, num_rand_bits) if num_rand_bits
                    else tf.zeros([0], tf.float32))
            return tf.concat(parts, axis=-1), bits, tf.cast(label, tf.int32), index

        # Batches need one image size: the images' own when they share one.
        stored = (source.image_shape or (None, None))[:2]
        in_step_size = image_size if None in stored else stored

        def in_step_map_fn(index, example):
            # The views are made in the step: the image and its draws only.
            image, label = example
            inputs = {"images": data_util.fixed_size_uint8(image, in_step_size),
                      "draws": tf.random.stateless_uniform([views, augment.DRAWS],
                                                           example_seed(index))}
            if clean_view:
                inputs["clean"] = rgb_eval_view(image)
            if num_rand_bits:
                inputs["bits"] = rand_bits.hash_bits(image, num_rand_bits)
            return inputs, tf.cast(label, tf.int32)

        def batch_fn(images, bits, labels, indices):
            batch_seed = tf.random.experimental.stateless_fold_in(
                batch_base_seed, indices[0] * pipelines + pipeline_id)
            color_seed, blur_seed = tf.unstack(
                tf.random.experimental.stateless_split(batch_seed, 2))
            view_batches = tf.split(images, views + int(clean_view), axis=-1)
            if color:
                view_seeds = tf.unstack(tf.random.experimental.stateless_split(color_seed, views))
                view_batches[:views] = [
                    data_util.batch_random_color_jitter(v, color_jitter_strength, s)
                    for v, s in zip(view_batches[:views], view_seeds)]
            if blur:
                view_batches[:views] = data_util.batch_random_blur(
                    view_batches[:views], image_size, image_size, seed=blur_seed)
            return tf.concat(view_batches, axis=-1), bits, labels, indices

        def attach_bits(images, bits, labels, indices):
            # The planes follow each view's RGB, after colour and blur.
            shape = tf.shape(images)
            planes = tf.broadcast_to(bits[:, tf.newaxis, tf.newaxis, :],
                                     [shape[0], shape[1], shape[2], num_rand_bits])
            parts = []
            for view in tf.split(images, views + int(clean_view), axis=-1):
                parts += [view, planes]
            return tf.concat(parts, axis=-1), labels

        if augment_in_step:
            dataset = dataset.map(
                tf.autograph.experimental.do_not_convert(in_step_map_fn),
                num_parallel_calls=tf.data.AUTOTUNE)
            return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        # The augmentations branch with tf.cond / tf.switch_case themselves;
        # AutoGraph would only spend seconds re-parsing them.
        dataset = dataset.map(tf.autograph.experimental.do_not_convert(map_fn),
                              num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        if color or blur:
            dataset = dataset.map(
                tf.autograph.experimental.do_not_convert(batch_fn),
                num_parallel_calls=tf.data.AUTOTUNE)
        if num_rand_bits:
            dataset = dataset.map(attach_bits, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            dataset = dataset.map(lambda images, bits, labels, _: (images, labels))
        return dataset.prefetch(tf.data.AUTOTUNE)

    return input_fn


def _distortion(cfg):
    """The colour strength and blur of a run's flags; fine-tuning records
    both as null (it neither distorts colour nor blurs)."""
    return dict(color_jitter_strength=cfg.color_jitter_strength or 0.0,
                use_blur=bool(cfg.use_blur))


def train_input_fn(cfg, source, start_step=0):
    """The training `input_fn` of a run's flags (`config.Config`), from step
    `start_step` on."""
    return build_input_fn(
        source, cfg.train_batch_size, is_training=True, split=cfg.train_split,
        image_size=cfg.image_size, train_mode=cfg.train_mode, **_distortion(cfg),
        cache_dataset=cfg.cache_dataset, area_range=(cfg.crop_min_area, 1.0),
        flip=cfg.use_flip, clean_view=train_lib.clean_probe_view(cfg),
        seed=cfg.seed, deterministic=cfg.deterministic, start_step=start_step,
        num_rand_bits=cfg.num_rand_bits, augment_in_step=bool(cfg.augment_in_step))


def eval_input_fn(cfg, source):
    """The evaluation `input_fn` of a run's flags: --eval_split, in order."""
    return build_input_fn(
        source, cfg.eval_batch_size, is_training=False, split=cfg.eval_split,
        image_size=cfg.image_size, train_mode=cfg.train_mode,
        num_rand_bits=cfg.num_rand_bits)


def heldout_input_fn(cfg, source, batch_size):
    """Batches of `batch_size` held-out examples (--eval_split) for the
    representation metrics: two augmented views (the run's augmentation)
    and the evaluation view, [b, H, W, 3c] (c = `model.view_channels`), in a
    seeded order with seeded views, so the first batch is the same at every
    checkpoint and in every process of a run."""
    return build_input_fn(
        source, batch_size, is_training=True, split=cfg.eval_split,
        image_size=cfg.image_size, train_mode="pretrain", **_distortion(cfg),
        area_range=(cfg.crop_min_area, 1.0), flip=cfg.use_flip, clean_view=True,
        seed=cfg.seed, deterministic=True, num_rand_bits=cfg.num_rand_bits)


def build_distributed_dataset(input_fn, strategy):
    """Distributes the datasets of `input_fn` over the replicas of `strategy`.

    `strategy` calls `input_fn(input_context)` once per input pipeline (worker)
    and hands successive elements of that dataset, each a per-replica batch,
    to the replicas of that worker.
    """
    return strategy.distribute_datasets_from_function(input_fn)
