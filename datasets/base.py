"""The interface every dataset source implements, and its error type.

A source yields labelled uint8 images split by name. `data.py` builds the
augmented input pipelines on top of `Source.as_dataset`; the raw-pixel
baselines read whole splits through `Source.as_numpy`; `config.py` gives the
flags a user leaves unset the values of `Source.preset()` (by default those
of the images' size).
"""

import numpy as np
import tensorflow as tf

from errors import DatasetError  # noqa: F401  (raised by every source)

_SPLIT_FLAGS = "--train_split/--eval_split"


class Source:
    """An image dataset, split by name, with zero, one or several labels per
    image.

    Attributes:
        name: the `--dataset` name it was opened with.
        label_names: the name of each label, as a tuple: ("label",) for
            single-label data, e.g. ("object", "digit") for images that hold
            two things to recognise, () for unlabelled images.
        label_classes: the number of label ids of each label, a tuple as
            long as `label_names`; label j lies in [0, label_classes[j]).
        num_classes: the first label's number of ids (0 when unlabelled).
        image_shape: (H, W, C) of every image; H and W are None for sources
            whose images vary in size (some TFDS datasets).
        splits: the split names, as a tuple.

    Labels are int64 scalars per image with one label, vectors of
    len(label_names) with several; unlabelled sources yield -1.
    """

    name = None
    label_names = ("label",)
    label_classes = None
    image_shape = None
    splits = ()

    @property
    def num_classes(self):
        return self.label_classes[0] if self.label_classes else 0

    @num_classes.setter
    def num_classes(self, value):
        # Single-label sources set num_classes; it is their one label's.
        self.label_classes = (int(value),)

    def num_examples(self, split):
        """Number of examples in `split`."""
        raise NotImplementedError

    def preset(self):
        """Flag values for the flags a user leaves unset, or None (the
        default): the run is then sized by its images
        (`config.image_size_preset`)."""
        return None

    def as_dataset(self, split, input_context=None, shuffle_files=False,
                   seed=None):
        """A `tf.data.Dataset` of (image uint8 [H, W, C], label int64 []).

        Args:
            split: a name from `self.splits`.
            input_context: a `tf.distribute.InputContext` or None. When given,
                input pipeline `input_pipeline_id` reads only its own part of
                the split; the parts of all `num_input_pipelines` pipelines are
                disjoint and together cover the split.
            shuffle_files: read the files of the split in random order (only
                meaningful for file-backed sources).
            seed: with `shuffle_files`, the seed of that order (None: a
                fresh one each time).
        """
        raise NotImplementedError

    def as_numpy(self, split):
        """The whole split as (images uint8 [N, H, W, C], labels int64 [N],
        or [N, L] with L > 1 labels)."""
        raise NotImplementedError

    def check_split(self, split):
        """Raises `DatasetError` unless `split` is one of `self.splits`."""
        if split not in self.splits:
            raise DatasetError(
                f"split {split!r} does not exist in dataset {self.name!r}; "
                f"{_SPLIT_FLAGS} must be one of: {', '.join(self.splits)}")

    def __repr__(self):
        return (f"{type(self).__name__}(name={self.name!r}, "
                f"label_names={self.label_names}, "
                f"label_classes={self.label_classes}, "
                f"image_shape={self.image_shape}, splits={self.splits})")


class InMemorySource(Source):
    """A source whose splits are held as numpy arrays.

    Args:
        name: the dataset name.
        num_classes: number of label ids, or a sequence of them, one per
            label.
        arrays: dict split name -> (images uint8 [N, H, W, C],
            labels int64 [N], or [N, L] for L labels); all splits share
            H, W, C.
        label_names: the labels' names; ("label",) by default.
    """

    def __init__(self, name, num_classes, arrays, label_names=("label",)):
        self.name = name
        if isinstance(num_classes, (tuple, list)):
            self.label_classes = tuple(int(n) for n in num_classes)
        else:
            self.num_classes = num_classes
        self.label_names = tuple(label_names)
        if len(self.label_names) != len(self.label_classes):
            raise ValueError(f"{len(self.label_names)} label names for "
                             f"{len(self.label_classes)} labels")
        self._arrays = {
            split: (np.asarray(images, np.uint8), np.asarray(labels, np.int64))
            for split, (images, labels) in arrays.items()
        }
        self.splits = tuple(self._arrays)
        first_images = self._arrays[self.splits[0]][0]
        self.image_shape = tuple(int(d) for d in first_images.shape[1:])

    def num_examples(self, split):
        self.check_split(split)
        return len(self._arrays[split][1])

    def as_dataset(self, split, input_context=None, shuffle_files=False,
                   seed=None):
        """See `Source.as_dataset`.

        Pipeline k of n reads examples k, k + n, k + 2n, ... There are no
        files, so `shuffle_files` and `seed` have nothing to shuffle; the
        training pipeline's shuffle buffer randomises the order instead.
        """
        del shuffle_files, seed
        self.check_split(split)
        dataset = tf.data.Dataset.from_tensor_slices(self._arrays[split])
        if input_context is not None and input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
        return dataset

    def as_numpy(self, split):
        self.check_split(split)
        images, labels = self._arrays[split]
        return images.copy(), labels.copy()
