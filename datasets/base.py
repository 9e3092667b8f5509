"""The interface every dataset source implements, and its error type.

A source yields labelled uint8 images split by name. `data.py` builds the
augmented input pipelines on top of `Source.as_dataset`; the raw-pixel
baselines read whole splits through `Source.as_numpy`.
"""

import numpy as np
import tensorflow as tf

_SPLIT_FLAGS = "--train_split/--eval_split"


class DatasetError(ValueError):
    """A dataset flag names something that cannot be read.

    The message is a single line that names the offending flag(s)
    (`--dataset`, `--data_dir`, `--train_split`, `--eval_split`) and says what
    is allowed, so that `run.py` can print it as is.
    """

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


class Source:
    """A labelled image dataset, split by name.

    Attributes:
        name: the `--dataset` name it was opened with.
        num_classes: number of label ids; labels lie in [0, num_classes).
        image_shape: (H, W, C) of every image; H and W are None for sources
            whose images vary in size (some TFDS datasets).
        splits: the split names, as a tuple.
    """

    name = None
    num_classes = None
    image_shape = None
    splits = ()

    def num_examples(self, split):
        """Number of examples in `split`."""
        raise NotImplementedError

    def as_dataset(self, split, input_context=None, shuffle_files=False):
        """A `tf.data.Dataset` of (image uint8 [H, W, C], label int64 []).

        Args:
            split: a name from `self.splits`.
            input_context: a `tf.distribute.InputContext` or None. When given,
                input pipeline `input_pipeline_id` reads only its own part of
                the split; the parts of all `num_input_pipelines` pipelines are
                disjoint and together cover the split.
            shuffle_files: read the files of the split in random order (only
                meaningful for file-backed sources).
        """
        raise NotImplementedError

    def as_numpy(self, split):
        """The whole split as (images uint8 [N, H, W, C], labels int64 [N])."""
        raise NotImplementedError

    def check_split(self, split):
        """Raises `DatasetError` unless `split` is one of `self.splits`."""
        if split not in self.splits:
            raise DatasetError(
                f"split {split!r} does not exist in dataset {self.name!r}; "
                f"{_SPLIT_FLAGS} must be one of: {', '.join(self.splits)}")

    def __repr__(self):
        return (f"{type(self).__name__}(name={self.name!r}, "
                f"num_classes={self.num_classes}, "
                f"image_shape={self.image_shape}, splits={self.splits})")


class InMemorySource(Source):
    """A source whose splits are held as numpy arrays.

    Args:
        name: the dataset name.
        num_classes: number of label ids.
        arrays: dict split name -> (images uint8 [N, H, W, C],
            labels int64 [N]); all splits share H, W, C.
    """

    def __init__(self, name, num_classes, arrays):
        self.name = name
        self.num_classes = int(num_classes)
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

    def as_dataset(self, split, input_context=None, shuffle_files=False):
        """See `Source.as_dataset`.

        Pipeline k of n reads examples k, k + n, k + 2n, ... There are no
        files, so `shuffle_files` has nothing to shuffle; the training
        pipeline's shuffle buffer randomises the order instead.
        """
        del shuffle_files
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
