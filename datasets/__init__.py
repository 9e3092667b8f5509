"""Dataset sources behind `--dataset` and `--data_dir`, none touching a network.

`get_dataset(name, data_dir)` returns a `Source` (see `datasets.base`):

- `digits`: scikit-learn's handwritten digits, shipped with scikit-learn
  (`datasets.digits`); the default, needs no data directory.
- `image_folder`: image files under `data_dir/<split>/<class>/`
  (`datasets.image_folder`).
- any other name: a TFDS dataset already prepared in the TFDS data directory
  `data_dir` (TFDS's default directory when None) (`datasets.tfds_source`).

Every source yields (image uint8 [H, W, C], label int64) examples. Bad names,
directories or splits raise `DatasetError`, whose one-line message names the
flag to fix.
"""

from .base import DatasetError
from .base import InMemorySource
from .base import Source
from .digits import DigitsSource
from .image_folder import ImageFolderSource
from .tfds_source import TFDSSource


def get_dataset(name, data_dir=None):
    """Opens the dataset `name` (see the module docstring).

    Args:
        name: `digits`, `image_folder`, or a TFDS name.
        data_dir: the image folder for `image_folder`, the TFDS data directory
            for TFDS names; unused by `digits`.

    Returns:
        A `Source`.

    Raises:
        DatasetError: the name is unknown, the directory is missing or
            malformed, or the TFDS dataset is not prepared in it.
    """
    if not name:
        raise DatasetError("--dataset must be digits, image_folder, or a "
                           "TFDS dataset name; got an empty name")
    if name == "digits":
        return DigitsSource()
    if name == "image_folder":
        return ImageFolderSource(data_dir)
    return TFDSSource(name, data_dir)


__all__ = ["DatasetError", "DigitsSource", "ImageFolderSource",
           "InMemorySource", "Source", "TFDSSource", "get_dataset"]
