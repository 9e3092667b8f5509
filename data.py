"""Input pipelines: augmented views for training, plain images for evaluation.

Mirrors the original release's `build_input_fn` / `build_distributed_dataset`.
In pretraining every example yields `num_views` independently augmented views
concatenated along the channel axis, so a batch of two-view examples is
[b, H, W, 6]: view k occupies channels 3k..3k+2. With `clean_view` the
evaluation view of the same example follows them (for the online probe). The
model splits the channels back into views.
"""

import tensorflow as tf

import data_util


def _view_count(is_training, train_mode, num_views):
    if train_mode not in ("pretrain", "finetune"):
        raise ValueError(
            f"train_mode must be 'pretrain' or 'finetune', got {train_mode!r}")
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    return num_views if is_training and train_mode == "pretrain" else 1


def build_input_fn(source, global_batch_size, is_training, *, split,
                   image_size, train_mode="pretrain", color_jitter_strength=1.0,
                   use_blur=True, cache_dataset=False, area_range=(0.08, 1.0),
                   num_views=2, flip=True, clean_view=False):
    """Builds the input function for `distribute_datasets_from_function`.

    Training (`is_training=True`) reads the split forever in shuffled order
    (buffer = per-replica batch x 50 when image_size <= 32, x 10 otherwise)
    and drops the last partial batch. `pretrain` gives `num_views` views with
    random crop, flip and colour distortion of strength
    `color_jitter_strength`, then (if `use_blur`) Gaussian blur with one sigma
    per view batch; `finetune` gives one view with crop and flip only.
    Evaluation reads the split once, in order, one centre-cropped view per
    example (no crop when image_size <= 32), keeping the last partial batch.

    Args:
        source: a `datasets.Source`.
        global_batch_size: batch size summed over replicas.
        is_training: training or evaluation pipeline.
        split: the split of `source` to read.
        image_size: output height and width.
        train_mode: 'pretrain' or 'finetune'.
        color_jitter_strength: strength s of colour jitter (pretraining).
        use_blur: blur pretraining views.
        cache_dataset: cache the decoded examples before augmentation.
        area_range: range of the random crop's area fraction.
        num_views: views per example in pretraining.
        flip: random horizontal flips in training (off for data whose
            mirror image is another class, such as digits).
        clean_view: in pretraining, append the evaluation view of each
            example (no augmentation, never blurred) after its `num_views`
            augmented views.

    Returns:
        `input_fn(input_context=None)` -> `tf.data.Dataset` of
        (images float32 [b, image_size, image_size, 3 * views] in [0, 1],
        labels int32 [b]), with views = num_views (+ 1 with `clean_view`)
        when pretraining and 1 otherwise, and b = the per-replica batch
        `input_context.get_per_replica_batch_size(global_batch_size)`
        (`global_batch_size` when `input_context` is None).

    Raises:
        datasets.DatasetError: `split` is not a split of `source`.
    """
    source.num_examples(split)  # A missing split fails here, not mid-run.
    views = _view_count(is_training, train_mode, num_views)
    pretraining = is_training and train_mode == "pretrain"
    blur = pretraining and use_blur
    clean_view = pretraining and clean_view

    def eval_view(image):
        return data_util.preprocess_image(
            image, image_size, image_size, is_training=False,
            test_crop=image_size > 32)

    def preprocess(image):
        if not is_training:
            return eval_view(image)
        return data_util.preprocess_image(
            image, image_size, image_size, is_training=True,
            color_distort=train_mode == "pretrain",
            color_jitter_strength=color_jitter_strength,
            area_range=area_range, flip=flip)

    def map_fn(image, label):
        parts = [preprocess(image) for _ in range(views)]
        if clean_view:
            parts.append(eval_view(image))
        return tf.concat(parts, axis=-1), tf.cast(label, tf.int32)

    def blur_fn(images, labels):
        view_batches = tf.split(images, views + int(clean_view), axis=-1)
        view_batches[:views] = data_util.batch_random_blur(
            view_batches[:views], image_size, image_size)
        return tf.concat(view_batches, axis=-1), labels

    def input_fn(input_context=None):
        if input_context is None:
            batch_size = global_batch_size
        else:
            batch_size = input_context.get_per_replica_batch_size(
                global_batch_size)
        dataset = source.as_dataset(split, input_context=input_context,
                                    shuffle_files=is_training)
        if cache_dataset:
            dataset = dataset.cache()
        if is_training:
            options = tf.data.Options()
            options.deterministic = False
            options.experimental_slack = True
            dataset = dataset.with_options(options)
            buffer_multiplier = 50 if image_size <= 32 else 10
            dataset = dataset.shuffle(batch_size * buffer_multiplier)
            dataset = dataset.repeat(-1)
        # The augmentations branch with tf.cond / tf.switch_case themselves;
        # AutoGraph would only spend seconds re-parsing them.
        dataset = dataset.map(tf.autograph.experimental.do_not_convert(map_fn),
                              num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size, drop_remainder=is_training)
        if blur:
            dataset = dataset.map(tf.autograph.experimental.do_not_convert(blur_fn),
                                  num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return input_fn


def build_distributed_dataset(input_fn, strategy):
    """Distributes the datasets of `input_fn` over the replicas of `strategy`.

    `strategy` calls `input_fn(input_context)` once per input pipeline (worker)
    and hands successive elements of that dataset, each a per-replica batch,
    to the replicas of that worker.
    """
    return strategy.distribute_datasets_from_function(input_fn)
