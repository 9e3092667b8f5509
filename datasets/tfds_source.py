"""TFDS datasets that were prepared beforehand, read without any network.

`tfds.builder(name)` may fetch dataset metadata from Google Cloud Storage when
the data is not present locally, and `download_and_prepare` downloads. Neither
is ever called here: the dataset is opened from the files of a prepared copy
(`tfds build NAME --data_dir=DIR`, or `download_and_prepare()`, run beforehand
on a machine with network access), using the `features.json` and
`dataset_info.json` stored beside the records, so the builder's code is not
even needed. When no prepared copy exists a `DatasetError` says so at once.

Images come from the 'image' feature (uint8) and labels from the 'label'
feature (a `ClassLabel`).
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from .base import DatasetError
from .base import Source
from .registry import SOURCES


def _known():
    return f"--dataset must be {', '.join(SOURCES)}, or a TFDS dataset name"


def default_data_dir():
    """The directory TFDS reads when no data_dir is given ($TFDS_DATA_DIR or
    ~/tensorflow_datasets)."""
    return os.path.expanduser(tfds.core.constants.DATA_DIR)


def _is_registered(name):
    try:
        tfds.builder_cls(name)
    except tfds.core.DatasetNotFoundError:
        return False
    return True


def _prepared_builder(name, data_dir):
    """A read-only builder over the prepared copy of `name` in `data_dir`."""
    try:
        dataset_name, _ = tfds.core.naming.parse_builder_name_kwargs(name)
    except ValueError:
        raise DatasetError(f"{_known()}; got {name!r}") from None
    if dataset_name.namespace:
        # Community and Hugging Face namespaces resolve through the network.
        raise DatasetError(f"{_known()} without a namespace; got {name!r}")
    try:
        # Looks only at files under data_dir, unlike tfds.builder().
        return tfds.core.read_only_builder.builder_from_files(
            name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        pass
    if _is_registered(dataset_name.name):
        raise DatasetError(
            f"TFDS dataset {name!r} is not prepared under {data_dir}; "
            f"--data_dir must point to a TFDS data directory that holds it, "
            f"prepared beforehand with `tfds build {dataset_name.name} "
            f"--data_dir=DIR` (or download_and_prepare) on a machine with "
            f"network access")
    raise DatasetError(f"{_known()}; {name!r} is neither (no TFDS builder of "
                       f"that name and no prepared copy under {data_dir})")


class TFDSSource(Source):
    """A TFDS dataset read from a prepared TFDS data directory.

    Args:
        name: TFDS name, optionally with config and version
            ('cifar10', 'mnist:3.*.*', 'my_dataset/config').
        data_dir: the TFDS data directory; None means TFDS's default one.
    """

    def __init__(self, name, data_dir=None):
        data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
        self._builder = _prepared_builder(name, data_dir)
        features = self._builder.info.features
        if "image" not in features or "label" not in features:
            raise DatasetError(
                f"--dataset {name!r} has features {sorted(features.keys())}; "
                f"an 'image' and a 'label' feature are required")
        image_dtype = tf.as_dtype(features["image"].dtype)
        if image_dtype != tf.uint8:
            raise DatasetError(f"--dataset {name!r}: the 'image' feature is "
                               f"{image_dtype.name}, not uint8")
        if getattr(features["label"], "num_classes", None) is None:
            raise DatasetError(f"--dataset {name!r}: the 'label' feature is "
                               f"not a ClassLabel with a number of classes")
        self.name = name
        self.data_dir = data_dir
        self.num_classes = int(features["label"].num_classes)
        self.image_shape = tuple(features["image"].shape)
        self.splits = tuple(self._builder.info.splits.keys())

    def _split_info(self, split):
        # TFDS also accepts slices and unions ('train[:10%]', 'train+test').
        try:
            return self._builder.info.splits[split]
        except (KeyError, ValueError):
            self.check_split(split)
            raise

    def num_examples(self, split):
        return int(self._split_info(split).num_examples)

    def as_dataset(self, split, input_context=None, shuffle_files=False,
                   seed=None):
        """See `Source.as_dataset`.

        With an input context, TFDS gives each input pipeline its own record
        files. A split stored in fewer files than there are pipelines cannot be
        divided that way; it is then read in file order and divided by
        example (pipeline k of n keeps examples k, k + n, ...).
        """
        num_files = len(self._split_info(split).file_instructions)
        pipelines = 1 if input_context is None else (
            input_context.num_input_pipelines)
        shard_examples = 1 < pipelines and num_files < pipelines
        if shard_examples:
            # Every pipeline must see the same order for the shards to be
            # disjoint: one file at a time, unshuffled.
            read_config = tfds.ReadConfig(interleave_cycle_length=1,
                                          interleave_block_length=1)
            shuffle_files = False
        else:
            read_config = tfds.ReadConfig(input_context=input_context,
                                          interleave_cycle_length=32,
                                          interleave_block_length=1,
                                          shuffle_seed=seed)
        dataset = self._builder.as_dataset(
            split=split, shuffle_files=shuffle_files, read_config=read_config)
        if shard_examples:
            dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
        return dataset.map(
            lambda example: (example["image"],
                             tf.cast(example["label"], tf.int64)),
            num_parallel_calls=tf.data.AUTOTUNE)

    def as_numpy(self, split):
        if None in self.image_shape:
            raise DatasetError(
                f"--dataset {self.name!r} has images of varying size "
                f"{self.image_shape}; raw-pixel arrays need a fixed size")
        images, labels = [], []
        for image_batch, label_batch in self.as_dataset(split).batch(1024):
            images.append(image_batch.numpy())
            labels.append(label_batch.numpy())
        if not images:
            return (np.zeros((0,) + self.image_shape, np.uint8),
                    np.zeros((0,), np.int64))
        return np.concatenate(images), np.concatenate(labels)
