"""Finding a prepared TFDS dataset on local disk and checking it fits the pipeline.

Nothing here downloads: datasets are read from ``data.tfds_data_dir`` as a
connected machine prepared them with ``tfds build``. Every failure is a
:class:`TfdsSourceError` (a ``ConfigError``, so ``tfprod run`` exits with 2)
whose message says what to run or change.
"""

import dataclasses
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming

from tfprod.contract import features
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.ingestion import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT
# Registers the project's own builder (tfprod_mnist_sample) with TFDS.
from tfprod.pipeline.ingestion.tfds import mnist_sample
TFDS_VERSION = tfds.__version__


class TfdsSourceError(config_lib.ConfigError):
    """The TFDS source cannot be used as configured; the message says what to fix."""


class DatasetNotPreparedError(TfdsSourceError):
    """The dataset is not prepared in the data directory (nothing is downloaded here)."""


class UnknownSplitError(TfdsSourceError):
    """A configured split is not in the dataset (the message lists the available ones)."""


class FeatureMismatchError(TfdsSourceError):
    """A dataset feature is missing or does not have the shape/type the pipeline needs."""


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """Everything the ExampleGen needs to read a TFDS dataset into the pipeline's splits.

    Attributes:
      name: the TFDS name, ``dataset[/config][:version]`` (e.g. ``mnist:3.0.1``).
      data_dir: the TFDS data directory that holds the prepared dataset.
      split_specs: pipeline split -> TFDS split spec (``train``, ``train[:2000]``,
        ``train+test``...). Without an ``eval`` entry, ``eval`` is held out of ``train``.
      eval_fraction: the share of the train examples held out as eval (by hash),
        when ``split_specs`` has no eval entry.
      feature_map: pipeline feature name -> TFDS feature name.
    """

    name: str
    data_dir: str
    split_specs: Dict[str, str]
    eval_fraction: float
    feature_map: Dict[str, str]

    @classmethod
    def from_config(cls, data: config_lib.DataConfig) -> "TfdsSource":
        split_specs = {TRAIN_SPLIT: data.tfds_train_split, TEST_SPLIT: data.tfds_test_split}
        if data.tfds_eval_split is not None:
            split_specs[EVAL_SPLIT] = data.tfds_eval_split
        return cls(name=data.tfds_name, data_dir=data.tfds_data_dir, split_specs=split_specs,
                   eval_fraction=data.eval_fraction,
                   feature_map={features.IMAGE_KEY: data.tfds_image_feature,
                                features.LABEL_KEY: data.tfds_label_feature})

    @property
    def holds_out_eval(self) -> bool:
        """True when eval is carved out of the train split by hash."""
        return EVAL_SPLIT not in self.split_specs


# Which config key sets each pipeline split / feature (for error messages).
_SPLIT_KEYS = {TRAIN_SPLIT: "data.tfds_train_split", EVAL_SPLIT: "data.tfds_eval_split",
               TEST_SPLIT: "data.tfds_test_split"}
_FEATURE_KEYS = {features.IMAGE_KEY: "data.tfds_image_feature",
                 features.LABEL_KEY: "data.tfds_label_feature"}


def dataset_relative_dir(name: str) -> str:
    """``dataset[/config]/version`` under the data dir (``*`` for a version not given).

    Raises:
      TfdsSourceError: the name is not of the form dataset[/config][:version].
    """
    try:
        dataset_name, kwargs = naming.parse_builder_name_kwargs(name)
    except ValueError as error:
        raise TfdsSourceError(
            f"data.tfds_name: {name!r} is not a TFDS name; expected dataset[/config][:version], "
            "e.g. mnist:3.0.1 or tfprod_mnist_sample/small:1.0.0") from error
    parts = [dataset_name.name]
    if kwargs.get("config"):
        parts.append(str(kwargs["config"]))
    parts.append(str(kwargs.get("version", "*")))
    return "/".join(parts)


def build_instructions(name: str, data_dir: str, version_dir: Optional[str] = None) -> str:
    """How to prepare the dataset: the exact command and where its output goes."""
    if name.split("/")[0].split(":")[0] == mnist_sample.DATASET_NAME:
        config = naming.parse_builder_name_kwargs(name)[1].get("config") or "full"
        return (f"It is the project's own dataset and builds offline: run\n"
                f"  tfprod tfds-build --data-dir {data_dir} --config {config}")
    relative = version_dir or dataset_relative_dir(name)
    dataset_top = relative.split("/")[0]
    return (
        "Nothing is downloaded at run time. On a machine with internet access run\n"
        f"  pip install tensorflow-datasets=={TFDS_VERSION} mlcroissant  "
        "# the tfds command needs mlcroissant\n"
        f"  tfds build {name} --data_dir=/tmp/tfds\n"
        f"then copy the folder /tmp/tfds/{dataset_top} from that machine to "
        f"{os.path.join(data_dir, dataset_top)} here (so that "
        f"{os.path.join(data_dir, relative)} holds dataset_info.json and the data files).")


def _prepared_versions(data_dir: str, name: str) -> List[str]:
    """The dataset[/config]/version folders with a dataset_info.json under data_dir."""
    top = os.path.join(data_dir, dataset_relative_dir(name).split("/")[0])
    found = []
    for root, _, files in os.walk(top):
        if "dataset_info.json" in files and "incomplete" not in root:
            found.append(os.path.relpath(root, data_dir))
    return sorted(found)


def load_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of a dataset that is prepared in data_dir; never downloads.

    Raises:
      TfdsSourceError: a malformed name.
      DatasetNotPreparedError: the dataset is not prepared in data_dir; the message
        gives the ``tfds build`` command and where to copy its output.
    """
    relative = dataset_relative_dir(name)
    if not os.path.isdir(data_dir):
        raise DatasetNotPreparedError(
            f"data.tfds_data_dir: directory not found: {data_dir}. "
            + build_instructions(name, data_dir))
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        builder = None
    except (ValueError, AssertionError) as error:  # e.g. a version the code does not know.
        raise _not_prepared(name, data_dir, relative, f" ({str(error).splitlines()[0]})") from None
    if builder is None or not builder.is_prepared():
        version_dir = (os.path.relpath(builder.data_dir, data_dir) if builder is not None
                       else relative)
        raise _not_prepared(name, data_dir, version_dir, "")
    return builder


def _not_prepared(name: str, data_dir: str, version_dir: str,
                  detail: str) -> DatasetNotPreparedError:
    prepared = _prepared_versions(data_dir, name)
    found = (f" Prepared here: {', '.join(prepared)}." if prepared else "")
    return DatasetNotPreparedError(
        f"TFDS dataset {name!r} is not prepared in {data_dir}: no "
        f"{os.path.join(data_dir, version_dir, 'dataset_info.json')}{detail}.{found}\n"
        + build_instructions(name, data_dir, version_dir))


def _available_splits(builder: tfds.core.DatasetBuilder) -> str:
    return ", ".join(f"{split} ({info.num_examples} examples)"
                     for split, info in builder.info.splits.items())


def check_splits(builder: tfds.core.DatasetBuilder, source: TfdsSource) -> Dict[str, int]:
    """Checks every configured split spec against the dataset; returns example counts.

    Raises:
      UnknownSplitError: a split is not in the dataset or the spec selects nothing;
        the message lists the dataset's splits.
    """
    counts = {}
    for split, spec in source.split_specs.items():
        key = _SPLIT_KEYS[split]
        try:
            count = builder.info.splits[spec].num_examples
        except (ValueError, KeyError) as error:
            reason = str(error).splitlines()[0]
            raise UnknownSplitError(
                f"{key}: {spec!r} is not a split of {source.name} ({reason}). Available "
                f"splits: {_available_splits(builder)}. Slices such as 'train[:80%]' or "
                "'train[:2000]' also work (https://www.tensorflow.org/datasets/splits)."
            ) from None
        if count == 0:
            raise UnknownSplitError(
                f"{key}: {spec!r} selects no examples of {source.name}. Available splits: "
                f"{_available_splits(builder)}.")
        counts[split] = count
    return counts


def check_features(builder: tfds.core.DatasetBuilder, source: TfdsSource,
                   data: config_lib.DataConfig) -> None:
    """Checks the mapped features exist and fit the image pipeline's expectations.

    The image must be integer pixels of shape [height, width] or [height, width, 1]
    (data.image_height x data.image_width); the label a ClassLabel (or integer) with
    data.num_classes classes.

    Raises:
      FeatureMismatchError: naming the config key and what the dataset holds.
    """
    dataset_features = builder.info.features
    for pipeline_key, tfds_key in source.feature_map.items():
        if tfds_key not in dataset_features:
            raise FeatureMismatchError(
                f"{_FEATURE_KEYS.get(pipeline_key, pipeline_key)}: {source.name} has no feature "
                f"{tfds_key!r}; its features are {', '.join(sorted(dataset_features.keys()))}")
    image = dataset_features[source.feature_map[features.IMAGE_KEY]]
    shape = tuple(image.shape)
    expected = (data.image_height, data.image_width)
    if shape not in (expected, expected + (1,)) or not np.issubdtype(image.np_dtype, np.integer):
        raise FeatureMismatchError(
            f"data.tfds_image_feature: {source.name} feature "
            f"{source.feature_map[features.IMAGE_KEY]!r} is {np.dtype(image.np_dtype).name} of shape "
            f"{shape}; this pipeline needs integer images of shape {expected} or {expected + (1,)} "
            "(set data.image_height/image_width to match, or pick another feature)")
    label = dataset_features[source.feature_map[features.LABEL_KEY]]
    if isinstance(label, tfds.features.ClassLabel):
        if label.num_classes != data.num_classes:
            raise FeatureMismatchError(
                f"data.num_classes: {source.name} feature "
                f"{source.feature_map[features.LABEL_KEY]!r} has {label.num_classes} classes, "
                f"the config says {data.num_classes}")
    elif tuple(label.shape) != () or not np.issubdtype(label.np_dtype, np.integer):
        raise FeatureMismatchError(
            f"data.tfds_label_feature: {source.name} feature "
            f"{source.feature_map[features.LABEL_KEY]!r} must be a ClassLabel or a scalar "
            f"integer, got {label!r}")


def check_source(data: config_lib.DataConfig) -> Dict[str, int]:
    """The preflight check for ``data.source: tfds``: dataset, splits and features.

    Returns:
      The number of examples each configured TFDS split selects.
    """
    source = TfdsSource.from_config(data)
    builder = load_builder(source.name, source.data_dir)
    counts = check_splits(builder, source)
    check_features(builder, source, data)
    return counts
