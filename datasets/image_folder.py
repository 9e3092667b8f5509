"""Images stored as files: one directory per split and per class, or one
directory of unlabelled images.

Layouts of `--data_dir`:

    data_dir/                      labelled (`labelled` is True)
      train/            one directory per split (any names)
        cat/            one directory per class
          0001.png      PNG, JPEG, BMP or GIF files
        dog/ ...
      test/
        cat/ ...
        dog/ ...

    data_dir/                      unlabelled (`labelled` is False)
      0001.png          image files directly in data_dir, no sub-directories
      0002.jpg ...

In the labelled layout, class ids are the class directory names sorted
alphabetically and every split must hold the same class directories. The
unlabelled layout is one split, `train`, in sorted file-name order, with
label -1 for every image, `label_names` and `label_classes` () and
`num_classes` 0. A directory that holds sub-directories is read as the
labelled layout, and image files directly in it are then ignored: the split
directories say what the data is, and a stray file beside them (a preview, a
README image) is not a split. Files with other extensions and hidden entries
(names starting with '.') are ignored in both layouts.

Files that cannot be decoded (corrupt or truncated data, empty files) are
skipped: `skipped` lists their paths and one warning names how many there
were. So are images whose header declares more than `MAX_PIXELS` pixels
(`too_large`, one warning of their own): the size is read from the header
before anything is decoded, so one enormous image (or a file that merely
claims to be one) cannot exhaust memory. A split, or the unlabelled folder,
left without a readable image is a `DatasetError`.

All images are decoded once, when the source is opened, and kept in memory,
which suits the small image sets this source is meant for; large datasets
belong in a TFDS data directory. The shape of the first readable image (first
split, first class, first file, all in sorted order) fixes `image_shape`:
every other image must have the same height and width, otherwise
`DatasetError` names the offending file. Channels are made to agree instead:
an alpha channel is dropped and grey images become RGB when the first image
is RGB (or RGB images grey when it is grey), as
`tf.io.decode_image(channels=C)` converts them.
"""

import struct

from absl import logging
import numpy as np
import tensorflow as tf

from .base import DatasetError
from .base import InMemorySource
from .registry import register

NAME = "image_folder"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
UNLABELLED_SPLIT = "train"
_LAYOUT = ("--data_dir must be a directory with one sub-directory per split "
           "(e.g. train/, test/), each holding one sub-directory of image "
           "files per class, or a directory of image files without labels")
# What tf.io raises for a file that vanished, cannot be read, or does not
# decode; any other error is not the file's fault and propagates.
_UNREADABLE = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
               tf.errors.PermissionDeniedError, tf.errors.DataLossError)
# The most pixels one image may declare: Pillow's decompression-bomb bound
# (a 9,459 px square, 268 MB as RGB), far above what this in-memory source
# is for. The decoders allocate the declared size before reading the data.
MAX_PIXELS = 89_478_485
_PNG = b"\x89PNG\r\n\x1a\n"


def _subdirectories(path):
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(path))
    return sorted(name for name in names if not name.startswith(".")
                  and tf.io.gfile.isdir(_join(path, name)))


def _image_files(path):
    return sorted(name for name in tf.io.gfile.listdir(path)
                  if not name.startswith(".")
                  and name.lower().endswith(IMAGE_EXTENSIONS)
                  and not tf.io.gfile.isdir(_join(path, name)))


def _join(*parts):
    return "/".join(part.rstrip("/") for part in parts)


def declared_size(contents):
    """(height, width) that an encoded image's header declares, read without
    decoding: PNG (IHDR), GIF (logical screen), BMP (DIB header) or JPEG
    (its frame header); None for anything else, which the decoder refuses.

    Raises:
        tf.errors.InvalidArgumentError: a JPEG without a frame header.
    """
    if contents[:8] == _PNG and len(contents) >= 24:
        width, height = struct.unpack(">II", contents[16:24])
    elif contents[:6] in (b"GIF87a", b"GIF89a") and len(contents) >= 10:
        width, height = struct.unpack("<HH", contents[6:10])
    elif contents[:2] == b"BM" and len(contents) >= 26:
        width, height = struct.unpack("<ii", contents[18:26])
    elif contents[:2] == b"\xff\xd8":
        height, width = tf.image.extract_jpeg_shape(contents)[:2].numpy()
    else:
        return None
    return abs(int(height)), abs(int(width))  # a BMP stored top-down has height < 0


def _decode(path, channels):
    """(image, size): the image in `path` as uint8 [H, W, C] (C = `channels`,
    or the file's own when 0) and None; (None, None) when the file cannot be
    read or decoded; (None, (H, W)) when it declares more than `MAX_PIXELS`
    pixels, in which case it is not decoded."""
    try:
        contents = tf.io.read_file(path)
        size = declared_size(contents.numpy())
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            return None, size
        image = tf.io.decode_image(contents, channels=channels,
                                   expand_animations=False)
    except _UNREADABLE:
        return None, None
    return image.numpy(), None


def _channels_to_keep(image):
    # Grey+alpha -> grey, RGBA -> RGB: the augmentations expect 1 or 3.
    return 1 if image.shape[-1] <= 2 else 3


def _labelled_files(data_dir, split_names):
    """{split: [(path, label)]} of the labelled layout, and the class names."""
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
    return files, class_names


def _read(files):
    """Decodes {split: [(path, label)]} into {split: (images, labels)}, and
    returns the paths of the files that could not be decoded and
    {path: (H, W)} of those too large to decode, both in reading order."""
    channels = 0
    height = width = None
    arrays, skipped, too_large = {}, [], {}
    for split, entries in files.items():
        images, labels = [], []
        for path, label in entries:
            image, size = _decode(path, channels=channels)
            if size is not None:
                too_large[path] = size
            if image is None:
                skipped.append(path)
                continue
            if height is None:
                # The first readable image fixes the channels; decoding it
                # again with them converts it as every later image is.
                channels = _channels_to_keep(image)
                height, width = image.shape[:2]
                image, _ = _decode(path, channels=channels)
            if image.shape[:2] != (height, width):
                raise DatasetError(
                    f"--data_dir: image {path} is {image.shape[0]}x"
                    f"{image.shape[1]} but the first image is {height}x"
                    f"{width}; all images must have the same size")
            images.append(image)
            labels.append(label)
        arrays[split] = (images, np.asarray(labels, np.int64))
    return arrays, skipped, too_large


@register(NAME)
class ImageFolderSource(InMemorySource):
    """Images read from `data_dir/<split>/<class>/<file>` (labelled) or
    `data_dir/<file>` (unlabelled, one split `train`, labels -1).

    See the module docstring for the layouts, the shape rules and the
    handling of unreadable files.

    Args:
        data_dir: the root directory (local path or any filesystem URL that
            `tf.io.gfile` reads).

    Attributes:
        labelled: True for the split/class layout, False for a flat folder.
        class_names: the class directory names, in label-id order (() when
            unlabelled).
        skipped: the paths of the image files that were not read (they
            could not be decoded, or are too large), as a tuple, in reading
            order.
        too_large: {path: (height, width)} of the files skipped because
            they declare more than `MAX_PIXELS` pixels.
    """

    def __init__(self, data_dir):
        if not data_dir or not tf.io.gfile.isdir(data_dir):
            raise DatasetError(
                f"--dataset=image_folder needs --data_dir; {data_dir!r} is not "
                f"a directory. {_LAYOUT}")
        split_names = _subdirectories(data_dir)
        self.labelled = bool(split_names)
        if self.labelled:
            files, class_names = _labelled_files(data_dir, split_names)
        else:
            names = _image_files(data_dir)
            if not names:
                raise DatasetError(f"--data_dir {data_dir} has no split "
                                   f"directories and no image files. {_LAYOUT}")
            files = {UNLABELLED_SPLIT: [(_join(data_dir, name), -1)
                                        for name in names]}
            class_names = []

        arrays, skipped, too_large = _read(files)
        unreadable = [path for path in skipped if path not in too_large]
        if unreadable:
            logging.warning("image_folder: skipped %d unreadable image(s) in "
                            "%s, e.g. %s", len(unreadable), data_dir,
                            unreadable[0])
        if too_large:
            path, (h, w) = next(iter(too_large.items()))
            logging.warning("image_folder: skipped %d image(s) of more than "
                            "%d pixels in %s, e.g. %s (%dx%d)", len(too_large),
                            MAX_PIXELS, data_dir, path, h, w)
        for split, (images, _) in arrays.items():
            if not images:
                where = (f"split {split!r}" if self.labelled
                         else "the folder")
                raise DatasetError(
                    f"--data_dir {data_dir}: {where} holds no readable image; "
                    f"all {len(files[split])} image file(s) were unreadable or "
                    f"too large to decode, e.g. {files[split][0][0]}")

        self.class_names = tuple(class_names)
        self.data_dir = data_dir
        self.skipped = tuple(skipped)
        self.too_large = too_large
        arrays = {split: (np.stack(images), labels)
                  for split, (images, labels) in arrays.items()}
        if self.labelled:
            super().__init__(NAME, len(class_names), arrays)
        else:
            super().__init__(NAME, (), arrays, label_names=())
