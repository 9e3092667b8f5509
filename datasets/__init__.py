"""Dataset sources behind `--dataset` and `--data_dir`, none touching a network.

`get_dataset(name, data_dir)` returns a `Source` (see `datasets.base`):

- `digits`: scikit-learn's handwritten digits, shipped with scikit-learn
  (`datasets.digits`); the default, needs no data directory.
- `image_folder`: image files under `data_dir/<split>/<class>/`
  (`datasets.image_folder`).
- `digits_on_photos`: crops of scikit-image's photographs with a 3x3 grid of
  one digit, labels (object, digit) (`datasets.digits_on_photos`).
- `multi_digits`: a large and a small digit per image, labels (large,
  small) (`datasets.multi_digits`).
- any other name: a TFDS dataset already prepared in the TFDS data directory
  `data_dir` (TFDS's default directory when None) (`datasets.tfds_source`).

A new source registers its name with `@register("name")` in its own module,
imported below; nothing else changes (`@register("name", options=(...))`
when it takes dataset flags). Every source yields (image uint8
[H, W, C], label int64) examples and may carry a preset of flags of its
own (`Source.preset`; by default a run is sized by its images). Bad names,
directories or splits raise `DatasetError`, whose one-line message names
the flag to fix.
"""

from .base import DatasetError
from .base import InMemorySource
from .base import Source
from .registry import OPTIONS
from .registry import SOURCES
from .registry import register
from . import digits  # noqa: F401  (registers "digits")
from . import image_folder  # noqa: F401  (registers "image_folder")
from . import digits_on_flowers  # noqa: F401  (registers "digits_on_flowers")
from . import digits_on_photos  # noqa: F401  (registers "digits_on_photos")
from . import multi_digits  # noqa: F401  (registers "multi_digits")
from .digits import DigitsSource
from .digits_on_photos import DigitsOnPhotosSource
from .image_folder import ImageFolderSource
from .multi_digits import MultiDigitsSource
from .tfds_source import TFDSSource


def get_dataset(name, data_dir=None, **options):
    """Opens the dataset `name` (see the module docstring).

    Args:
        name: a registered name (`SOURCES`) or a TFDS name.
        data_dir: the source's directory (the image folder for
            `image_folder`, the TFDS data directory for TFDS names); unused
            by sources that ship their data.
        **options: dataset flags (`OPTIONS[name]`, e.g. `digit_sizes`);
            None values are ignored (the source's defaults apply).

    Returns:
        A `Source`.

    Raises:
        DatasetError: the name is unknown, the directory is missing or
            malformed, or the TFDS dataset is not prepared in it.
    """
    if not name:
        raise DatasetError(f"--dataset must be {', '.join(SOURCES)}, or a "
                           "TFDS dataset name; got an empty name")
    options = {k: v for k, v in options.items() if v is not None}
    accepted = OPTIONS.get(name, ())
    for option in options:
        if option not in accepted:
            users = [n for n, names in OPTIONS.items() if option in names]
            raise DatasetError(f"--{option} does not apply to --dataset={name}; "
                               f"it applies to --dataset={'|'.join(users)}")
    if name in SOURCES:
        return SOURCES[name](data_dir, **options)
    return TFDSSource(name, data_dir)


__all__ = ["DatasetError", "DigitsOnPhotosSource", "DigitsSource",
           "ImageFolderSource", "InMemorySource", "MultiDigitsSource", "OPTIONS",
           "SOURCES", "Source", "TFDSSource", "get_dataset",
           "register"]
