"""Images stored as files, one directory per split and per class.

Layout of `--data_dir`:

    data_dir/
      train/            one directory per split (any names)
        cat/            one directory per class
          0001.png      PNG, JPEG, BMP or GIF files
        dog/ ...
      test/
        cat/ ...
        dog/ ...

Class ids are the class directory names sorted alphabetically; every split
must hold the same class directories. Files with other extensions and hidden
entries (names starting with '.') are ignored.

All images are decoded once, when the source is opened, and kept in memory,
which suits the small image sets this source is meant for; large datasets
belong in a TFDS data directory. The shape of the first image (first split,
first class, first file, all in sorted order) fixes `image_shape`: every other
image must have the same height and width, otherwise `DatasetError` names the
offending file. Channels are made to agree instead: an alpha channel is
dropped and grey images become RGB when the first image is RGB (or RGB images
grey when it is grey), as `tf.io.decode_image(channels=C)` converts them.
"""

import numpy as np
import tensorflow as tf

from .base import DatasetError
from .base import InMemorySource
from .registry import register

NAME = "image_folder"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_LAYOUT = ("--data_dir must be a directory with one sub-directory per split "
           "(e.g. train/, test/), each holding one sub-directory of image "
           "files per class")


def _subdirectories(path):
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(path))
    return sorted(name for name in names if not name.startswith(".")
                  and tf.io.gfile.isdir(_join(path, name)))


def _image_files(path):
    return sorted(name for name in tf.io.gfile.listdir(path)
                  if not name.startswith(".")
                  and name.lower().endswith(IMAGE_EXTENSIONS))


def _join(*parts):
    return "/".join(part.rstrip("/") for part in parts)


def _decode(path, channels):
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels,
                                   expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise DatasetError(
            f"--data_dir: cannot decode image file {path}: {e.message}") from e
    return image.numpy()


def _channels_to_keep(image):
    # Grey+alpha -> grey, RGBA -> RGB: the augmentations expect 1 or 3.
    return 1 if image.shape[-1] <= 2 else 3


@register(NAME)
class ImageFolderSource(InMemorySource):
    """Labelled images read from `data_dir/<split>/<class>/<file>`.

    See the module docstring for the layout and the shape rules.

    Args:
        data_dir: the root directory (local path or any filesystem URL that
            `tf.io.gfile` reads).
    """

    def __init__(self, data_dir):
        if not data_dir or not tf.io.gfile.isdir(data_dir):
            raise DatasetError(
                f"--dataset=image_folder needs --data_dir; {data_dir!r} is not "
                f"a directory. {_LAYOUT}")
        split_names = _subdirectories(data_dir)
        if not split_names:
            raise DatasetError(f"--data_dir {data_dir} has no split "
                               f"directories. {_LAYOUT}")

        class_names = None
        files = {}
        for split in split_names:
            split_dir = _join(data_dir, split)
            split_classes = _subdirectories(split_dir)
            if class_names is None:
                class_names = split_classes
            elif split_classes != class_names:
                raise DatasetError(
                    f"--data_dir {data_dir}: split {split!r} has classes "
                    f"{split_classes} but split {split_names[0]!r} has "
                    f"{class_names}; all splits must share the class list")
            files[split] = [
                (_join(split_dir, name, file_name), label)
                for label, name in enumerate(class_names)
                for file_name in _image_files(_join(split_dir, name))
            ]
            if not files[split]:
                raise DatasetError(f"--data_dir {data_dir}: split {split!r} "
                                   f"holds no image files. {_LAYOUT}")

        first = _decode(files[split_names[0]][0][0], channels=0)
        channels = _channels_to_keep(first)
        height, width = first.shape[:2]
        arrays = {}
        for split in split_names:
            images = []
            for path, _ in files[split]:
                image = _decode(path, channels=channels)
                if image.shape[:2] != (height, width):
                    raise DatasetError(
                        f"--data_dir: image {path} is {image.shape[0]}x"
                        f"{image.shape[1]} but the first image is {height}x"
                        f"{width}; all images must have the same size")
                images.append(image)
            labels = [label for _, label in files[split]]
            arrays[split] = (np.stack(images), np.asarray(labels, np.int64))

        self.class_names = tuple(class_names)
        self.data_dir = data_dir
        super().__init__(NAME, len(class_names), arrays)
