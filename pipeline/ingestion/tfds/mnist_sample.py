"""The project's own TFDS dataset: the MNIST sample shipped in data/mnist_sample.

``tfprod_mnist_sample`` is a real ``tfds.core.GeneratorBasedBuilder``. It reads
the four IDX files from the builder's manual directory (the shipped sample by
default) and so builds offline, with the same TFDS machinery that prepares
catalogue datasets (sharded TFRecords, dataset_info.json, split metadata).

Two configs: ``full`` (all 10,000 train / 2,000 test images) and ``small``
(the first 2,000 / 500, for fast tests and smoke runs).

Build it with ``tfprod tfds-build --data-dir DIR`` (see pipeline/ingestion/tfds/cli.py) or
from Python with :func:`build`.
"""

import dataclasses
import os
import pathlib
import tempfile
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfprod import errors
from tfprod.contract import idx

DATASET_NAME = "tfprod_mnist_sample"
VERSION = "1.0.0"
CONFIG_NAMES = ("full", "small")

# The sample shipped in the repository (present in a source checkout / editable install).
SHIPPED_SAMPLE_DIR = pathlib.Path(__file__).resolve().parents[3] / "data" / "mnist_sample"


class SourceFilesError(errors.ConfigError, FileNotFoundError):
    """The IDX source files the builder reads are missing."""


@dataclasses.dataclass
class MnistSampleConfig(tfds.core.BuilderConfig):
    """A subset of the sample: the first max_train / max_test images (None = all)."""

    max_train_examples: Optional[int] = None
    max_test_examples: Optional[int] = None


class TfprodMnistSample(tfds.core.GeneratorBasedBuilder):
    """The MNIST sample shipped with tfprod, as a TFDS dataset (registered as tfprod_mnist_sample)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "The 10,000 / 2,000 image MNIST sample of data/mnist_sample."}
    BUILDER_CONFIGS = [
        MnistSampleConfig(name="full", description="All 10,000 train and 2,000 test images."),
        MnistSampleConfig(name="small", description="The first 2,000 train and 500 test images.",
                          max_train_examples=2000, max_test_examples=500),
    ]
    DEFAULT_CONFIG_NAME = "full"
    # Where TFDS looks for the builder's metadata files (README, CITATIONS). TFDS derives
    # it from the module name, which names the installed package path (tfprod/pipeline/...),
    # not the folder this file is in (setup.py's package_dir maps pipeline/ to it).
    pkg_dir_path = epath.Path(__file__).resolve().parent
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "The manual directory must hold the four MNIST IDX files "
        f"({', '.join(idx.IDX_FILES)}); tfprod ships them in data/mnist_sample.")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="A sample of MNIST: 28x28 grayscale handwritten digits, 10 classes.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            # Keep the IDX order, so `train[:N]` is the first N images of the IDX files and
            # the dataset is a faithful copy of them (the pipeline shuffles when it trains).
            disable_shuffling=True,
            homepage="http://yann.lecun.com/exdb/mnist/",
            citation=("LeCun, Bottou, Bengio and Haffner, Gradient-based learning applied to "
                      "document recognition, Proc. IEEE 86(11), 1998."),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source_dir = pathlib.Path(dl_manager.manual_dir)
        missing = [name for name in idx.IDX_FILES if not (source_dir / name).is_file()]
        if missing:
            raise SourceFilesError(
                f"{source_dir} is missing {', '.join(missing)}; pass the directory that holds "
                f"the four IDX files (e.g. data/mnist_sample) as the manual directory.")
        config = self.builder_config
        return {
            "train": self._generate_examples(source_dir / idx.TRAIN_IMAGES,
                                             source_dir / idx.TRAIN_LABELS,
                                             config.max_train_examples),
            "test": self._generate_examples(source_dir / idx.TEST_IMAGES,
                                            source_dir / idx.TEST_LABELS,
                                            config.max_test_examples),
        }

    def _generate_examples(self, images_path: pathlib.Path, labels_path: pathlib.Path,
                           limit: Optional[int]) -> Iterator[Tuple[int, dict]]:
        images, labels = idx.read_image_label_pair(str(images_path), str(labels_path))
        count = len(labels) if limit is None else min(limit, len(labels))
        for index in range(count):
            yield index, {"image": images[index][:, :, None], "label": int(labels[index])}


def build(data_dir: str, configs: Sequence[str] = CONFIG_NAMES,
          source_dir: Optional[str] = None) -> list:
    """Builds (downloads nothing, prepares) the dataset's configs into data_dir.

    Args:
      data_dir: the TFDS data directory to write to (``data_dir/tfprod_mnist_sample/...``).
      configs: which builder configs to prepare (``full``, ``small``).
      source_dir: the directory with the four IDX files; defaults to the shipped sample.

    Returns:
      The full names (``tfprod_mnist_sample/<config>:<version>``) of the prepared datasets.

    Raises:
      SourceFilesError: the IDX files are not in source_dir.
      ValueError: an unknown config name.
    """
    source = pathlib.Path(source_dir) if source_dir else SHIPPED_SAMPLE_DIR
    missing = [name for name in idx.IDX_FILES if not (source / name).is_file()]
    if missing:
        raise SourceFilesError(
            f"{source} is missing {', '.join(missing)}; pass --source-dir DIR with the four "
            f"IDX files ({', '.join(idx.IDX_FILES)})")
    unknown = sorted(set(configs) - set(CONFIG_NAMES))
    if unknown:
        raise ValueError(f"unknown config {unknown[0]!r} of {DATASET_NAME}; known configs are "
                         f"{', '.join(CONFIG_NAMES)}")
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(source), try_download_gcs=False)
    names = []
    # Nothing is downloaded; a temporary download dir keeps data_dir free of empty folders.
    with tempfile.TemporaryDirectory(prefix="tfds_downloads_") as download_dir:
        for config in configs:
            builder = TfprodMnistSample(config=config, data_dir=os.path.abspath(data_dir))
            builder.download_and_prepare(download_dir=download_dir,
                                         download_config=download_config)
            names.append(f"{DATASET_NAME}/{config}:{VERSION}")
    return names
