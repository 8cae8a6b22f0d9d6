"""Ingestion: the ExampleGens that turn raw data into the train, eval and test tf.Examples.

One module per data format, each with its ExampleGen component and executor:

- ``idx``: an IDX image directory (MNIST layout); the reader is tfprod.contract.idx.
- ``tsv``: a text classification directory (train.tsv, test.tsv).
- ``table``: a CSV table directory (train.csv, test.csv, optional eval.csv); column types
  decided before the run.
- ``timeseries`` (reading, checking and windowing a time series CSV, no Beam) and
  ``timeseries_example_gen`` (its ExampleGen).
- ``tfds``: a TensorFlow Datasets dataset prepared in a local data dir.

This module holds what they share, once: the split names (tfprod.contract.splits), the
input config and split patterns, the stable hash that sends an example to train or eval,
and the packing of an executor's settings into ExampleGen's custom_config. It imports
neither TensorFlow nor Beam.
"""

import hashlib
import json
from typing import Any, Dict, Mapping, Optional

from google.protobuf import any_pb2, struct_pb2
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from tfprod.contract import splits

TRAIN_SPLIT = splits.TRAIN
EVAL_SPLIT = splits.EVAL
TEST_SPLIT = splits.TEST
SPLITS = splits.SPLITS

# The executor-property keys of a FileBasedExampleGen (tfx.types.standard_component_specs,
# whose import loads TensorFlow).
INPUT_BASE_KEY = "input_base"
INPUT_CONFIG_KEY = "input_config"
CUSTOM_CONFIG_KEY = "custom_config"

# The hash-split rule: an example goes to eval when its content hash falls into the first
# eval_fraction of this many buckets.
HASH_BUCKETS = 10000


def is_eval(content_key: bytes, eval_fraction: float) -> bool:
    """Whether an example of the training data goes to `eval` rather than `train`.

    The choice is a hash of the example's content (e.g. its pixels and label, or its text
    and label), so the same example lands in the same split on every run and runner.

    Args:
      content_key: bytes that identify the example by its content.
      eval_fraction: the share of examples that go to eval, in [0, 1).
    """
    digest = hashlib.blake2b(content_key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % HASH_BUCKETS < eval_fraction * HASH_BUCKETS


def input_config(train_pattern: str, test_pattern: Optional[str] = None
                 ) -> example_gen_pb2.Input:
    """The ExampleGen input config: train and eval read train_pattern, test test_pattern.

    Patterns are relative to input_base. Train and eval read the same files (the executor
    splits them with is_eval, or chronologically); test_pattern defaults to train_pattern
    (one source for all three splits).
    """
    patterns = {TRAIN_SPLIT: train_pattern, EVAL_SPLIT: train_pattern,
                TEST_SPLIT: test_pattern if test_pattern is not None else train_pattern}
    return example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=name, pattern=patterns[name]) for name in SPLITS])


def split_patterns(exec_properties: Dict[str, Any], component: str = "ExampleGen",
                   one_pattern: bool = False) -> Dict[str, str]:
    """The ExampleGen's input splits, {split name: file pattern}, checked.

    Args:
      exec_properties: the executor's properties.
      component: the component's name, for the error message.
      one_pattern: all three splits must read the same pattern (else only train and eval).

    Raises:
      ValueError: the splits are not train, eval and test, or read other patterns than
        input_config() writes.
    """
    config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[INPUT_CONFIG_KEY], config)
    patterns = {split.name: split.pattern for split in config.splits}
    same = set(patterns.values()) if one_pattern else {
        patterns.get(TRAIN_SPLIT), patterns.get(EVAL_SPLIT)}
    if set(patterns) != set(SPLITS) or len(same) != 1:
        what = "one pattern for all three" if one_pattern else "train and eval the same pattern"
        raise ValueError(f"{component} needs input splits train, eval and test ({what}); "
                         f"got {patterns}. Build its input config with "
                         "tfprod.pipeline.ingestion.input_config")
    return patterns


def pack_custom_config(settings: Mapping[str, Any]) -> example_gen_pb2.CustomConfig:
    """Packs an executor's settings (JSON values) into ExampleGen's custom_config field."""
    struct = struct_pb2.Struct()
    struct.update(dict(settings))
    packed = any_pb2.Any()
    packed.Pack(struct)
    return example_gen_pb2.CustomConfig(custom_config=packed)


def read_custom_config(exec_properties: Dict[str, Any], component: str = "ExampleGen"
                       ) -> Dict[str, Any]:
    """The settings pack_custom_config packed, from the executor's properties ({} if none).

    Struct numbers come back as floats: convert integer settings with int().

    Raises:
      ValueError: custom_config holds something other than a google.protobuf.Struct.
    """
    text = exec_properties.get(CUSTOM_CONFIG_KEY)
    if not text:
        return {}
    custom_config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(text, custom_config)
    struct = struct_pb2.Struct()
    if not custom_config.custom_config.Unpack(struct):
        raise ValueError(f"{component} custom_config must hold a google.protobuf.Struct; build "
                         "it with tfprod.pipeline.ingestion.pack_custom_config")
    return json.loads(proto_utils.proto_to_json(struct))
