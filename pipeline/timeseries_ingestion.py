"""TimeSeriesExampleGen: a TFX ExampleGen that windows a time series CSV into tf.Examples.

The CSV (data.time_series.file, a name or glob matching one file in the input
directory) is read and checked by pipeline.timeseries, split chronologically into
train, eval and test, and each split is cut into (lookback -> horizon) windows that
stay inside it. The three splits read the same file, so the driver's fingerprint
(and the cache) follows it.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Iterator, Tuple

import apache_beam as beam
import tensorflow as tf
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from tfprod.pipeline import ingestion, timeseries


def find_csv(input_base: str, pattern: str) -> str:
    """The one file that pattern (relative to input_base) matches.

    Raises:
      TimeSeriesFormatError: no file or several files match.
    """
    matched = sorted(tf.io.gfile.glob(os.path.join(input_base, pattern)))
    if len(matched) != 1:
        raise timeseries.TimeSeriesFormatError(
            f"data.time_series.file {pattern!r} must match exactly one CSV in {input_base}; "
            f"matched {matched or 'nothing'}")
    return matched[0]


def make_custom_config(spec: timeseries.SeriesSpec) -> example_gen_pb2.CustomConfig:
    """Packs the series spec into ExampleGen's standard custom_config field (a Struct)."""
    settings = dataclasses.asdict(spec)
    settings["feature_columns"] = list(spec.feature_columns or ())
    struct = struct_pb2.Struct()
    struct.update(settings)
    packed = any_pb2.Any()
    packed.Pack(struct)
    return example_gen_pb2.CustomConfig(custom_config=packed)


def _spec_from_exec_properties(exec_properties: Dict[str, Any]) -> timeseries.SeriesSpec:
    custom_config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY],
                              custom_config)
    struct = struct_pb2.Struct()
    if not custom_config.custom_config.Unpack(struct):
        raise ValueError("TimeSeriesExampleGen custom_config must hold a google.protobuf.Struct")
    settings = json.loads(proto_utils.proto_to_json(struct))
    if "feature_columns" in settings:
        settings["feature_columns"] = tuple(settings["feature_columns"]) or None
    for key in ("lookback", "horizon", "window_stride"):
        settings[key] = int(settings[key])
    return timeseries.SeriesSpec(**settings)


class TimeSeriesExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    """Reads the CSV once and writes the windows of each chronological split."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("TimeSeriesExampleGen writes all splits in "
                                  "GenerateExamplesByBeam")

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
        patterns = ingestion.split_patterns(exec_properties)
        if set(patterns) != set(timeseries.SPLITS) or len(set(patterns.values())) != 1:
            raise ValueError(f"TimeSeriesExampleGen needs splits train, eval and test over one "
                             f"CSV pattern; got {patterns}")
        spec = _spec_from_exec_properties(exec_properties)
        path = find_csv(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                        patterns[timeseries.TRAIN_SPLIT])

        def read_and_window(csv_path: str) -> Iterator[Tuple[int, bytes]]:
            examples = timeseries.split_examples(csv_path, spec)
            for position, name in enumerate(timeseries.SPLITS):
                for example in examples[name]:
                    yield position, example

        partitions = (
            pipeline
            | "CsvPath" >> beam.Create([path])
            | "ReadAndWindow" >> beam.FlatMap(read_and_window)
            # Spread the windows over workers before the (parallel) write.
            | "Reshuffle" >> beam.Reshuffle()
            | "BySplit" >> beam.Partition(lambda keyed, _: keyed[0], len(timeseries.SPLITS)))
        return {name: partitions[position] | f"{name.capitalize()}Examples" >> beam.Values()
                for position, name in enumerate(timeseries.SPLITS)}


class TimeSeriesExampleGen(FileBasedExampleGen):
    """ExampleGen for a timestamped numeric CSV: chronological splits of windows."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TimeSeriesExampleGenExecutor)

    def __init__(self, input_base: Any, file_pattern: str, spec: timeseries.SeriesSpec):
        input_config = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=name, pattern=file_pattern)
            for name in timeseries.SPLITS])
        super().__init__(input_base=input_base, input_config=input_config,
                         custom_config=make_custom_config(spec))
