"""TFDS builders for the project's generated datasets; nothing to download.

Importing this module registers three `tfds.core.GeneratorBasedBuilder`s
whose examples come from the generators of `datasets.digits_on_photos`,
`datasets.multi_digits` and scikit-learn's digits, so that they can be
prepared into any TFDS data directory offline and read with
`tfds.load(name, data_dir=...)`, or by the project through
`--dataset=<name> --data_dir=...` (`TFDSSource`, which reads 'image' and
'label'):

- `digits_on_photos_tfds`: `digits_on_photos.generate` (8 px digits);
  features image uint8 [32, 32, 3], object, digit, and label = object.
- `multi_digits_tfds/<config>`: `multi_digits.generate` for the configs'
  (large, small) sizes (`MULTI_DIGITS_SIZES`; the first is the default);
  features image uint8 [32, 32, 1], large, small, and label = large.
- `randbits_digits/bits_<K>` for K in `RANDBITS`: the scikit-learn digits
  split of the `digits` source, uint8 [8, 8, 1], with the K RandBits of
  each image (`rand_bits.hash_bits`) as the feature bits, uint8 [K].

The TFDS names differ from the `--dataset` names of the in-memory sources
(`digits_on_photos`, `multi_digits`), which `get_dataset` would open
instead of the prepared copy. These builders are not `--dataset` sources
of their own (`SOURCES`). Prepare one with e.g.

    import datasets.builders
    import tensorflow_datasets as tfds
    builder = tfds.builder("multi_digits_tfds/large16_small8", data_dir=DIR)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False))  # nothing to fetch, not even from GCS
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from sklearn.datasets import load_digits

from . import digits
from . import digits_on_photos
from . import multi_digits
from . import rand_bits

# (config name, (large, small)) of multi_digits_tfds; the first is the
# default config.
MULTI_DIGITS_SIZES = (("large20_small8", (20, 8)), ("large16_small8", (16, 8)),
                      ("large12_small8", (12, 8)), ("large8_small8", (8, 8)))
RANDBITS = (0, 5, 10, 15, 20)
# At most this many examples of each split are written (None: all); lets a
# test prepare a smaller copy.
MAX_EXAMPLES = None


def _limit(count):
    return count if MAX_EXAMPLES is None else min(count, MAX_EXAMPLES)


# TFDS looks for a builder's checksums file beside its code. For a builder
# in a package module its own lookup tests the package's resource path
# against `importlib_resources`, a package this project does not install;
# this file's path needs neither.
_code_path = tfds.core.utils.classproperty(classmethod(
    lambda cls: epath.Path(__file__)))


class DigitsOnPhotosTfds(tfds.core.GeneratorBasedBuilder):
    """`datasets.digits_on_photos` (8 px digits) as a TFDS dataset."""

    code_path = _code_path
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=digits_on_photos.__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(
                    shape=(digits_on_photos.IMAGE_SIZE,) * 2 + (3,)),
                "label": tfds.features.ClassLabel(names=digits_on_photos.PHOTOS),
                "object": tfds.features.ClassLabel(
                    names=digits_on_photos.PHOTOS),
                "digit": tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES),
            }),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split)
                for split in digits_on_photos.NUM_EXAMPLES}

    def _generate_examples(self, split):
        images, labels, _ = digits_on_photos.generate(split)
        for index in range(_limit(len(images))):
            yield index, {"image": images[index], "label": labels[index, 0],
                          "object": labels[index, 0],
                          "digit": labels[index, 1]}


@dataclasses.dataclass(eq=False)
class MultiDigitsConfig(tfds.core.BuilderConfig):
    """A `multi_digits_tfds` config: the (large, small) digit sizes."""

    sizes: tuple = multi_digits.DIGIT_SIZES


class MultiDigitsTfds(tfds.core.GeneratorBasedBuilder):
    """`datasets.multi_digits` as a TFDS dataset, one config per size pair."""

    code_path = _code_path
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        MultiDigitsConfig(name=name, sizes=sizes,
                          description=f"a {sizes[0]} px and a {sizes[1]} px digit")
        for name, sizes in MULTI_DIGITS_SIZES]

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=multi_digits.__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(
                    shape=(multi_digits.IMAGE_SIZE,) * 2 + (1,)),
                "label": tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES),
                "large": tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES),
                "small": tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES),
            }),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split)
                for split in multi_digits.NUM_EXAMPLES}

    def _generate_examples(self, split):
        images, labels, _ = multi_digits.generate(split, self.builder_config.sizes)
        for index in range(_limit(len(images))):
            yield index, {"image": images[index], "label": labels[index, 0],
                          "large": labels[index, 0], "small": labels[index, 1]}


@dataclasses.dataclass(eq=False)
class RandbitsConfig(tfds.core.BuilderConfig):
    """A `randbits_digits` config: the number of bits per image."""

    num_bits: int = 0


class RandbitsDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits with K RandBits per image (`rand_bits`), the
    splits of the `digits` source."""

    code_path = _code_path
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        RandbitsConfig(name=f"bits_{k}", num_bits=k,
                       description=f"{k} bits hashed from each image")
        for k in RANDBITS]

    def _info(self):
        num_bits = self.builder_config.num_bits
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES),
                "bits": tfds.features.Tensor(shape=(num_bits,), dtype=np.uint8),
            }),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(indices)
                for split, indices in digits.split_indices().items()}

    def _generate_examples(self, indices):
        data = load_digits()
        images = digits.to_uint8(data.images)[..., np.newaxis]
        num_bits = self.builder_config.num_bits
        # One traced graph instead of a handful of eager ops per image.
        hash_bits = tf.function(rand_bits.hash_bits)
        for index in indices[:_limit(len(indices))]:
            bits = hash_bits(images[index], num_bits).numpy()
            # Keyed by the index into load_digits(), unique across splits.
            yield int(index), {"image": images[index],
                               "label": int(data.target[index]),
                               "bits": bits.astype(np.uint8)}
