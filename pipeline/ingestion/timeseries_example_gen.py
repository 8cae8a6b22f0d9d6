"""TimeSeriesExampleGen: a TFX ExampleGen that windows a time series CSV into tf.Examples.

The CSV (data.time_series.file, a name or glob matching one file in the input
directory) is read and checked by pipeline.ingestion.timeseries, split chronologically into
train, eval and test, and each split is cut into (lookback -> horizon) windows that
stay inside it. The three splits read the same file, so the driver's fingerprint
(and the cache) follows it.
"""

import dataclasses
from typing import Any, Dict, Iterator, Tuple

import apache_beam as beam
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import timeseries


def make_custom_config(spec: timeseries.SeriesSpec) -> example_gen_pb2.CustomConfig:
    """Packs the series spec into ExampleGen's standard custom_config field (a Struct)."""
    settings = dataclasses.asdict(spec)
    settings["feature_columns"] = list(spec.feature_columns or ())
    return ingestion.pack_custom_config(settings)


def _spec_from_exec_properties(exec_properties: Dict[str, Any]) -> timeseries.SeriesSpec:
    settings = ingestion.read_custom_config(exec_properties, "TimeSeriesExampleGen")
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
        patterns = ingestion.split_patterns(exec_properties, "TimeSeriesExampleGen",
                                            one_pattern=True)
        spec = _spec_from_exec_properties(exec_properties)
        path = timeseries.find_csv(exec_properties[ingestion.INPUT_BASE_KEY],
                                   patterns[ingestion.TRAIN_SPLIT])

        def read_and_window(csv_path: str) -> Iterator[Tuple[int, bytes]]:
            examples = timeseries.split_examples(csv_path, spec)
            for position, name in enumerate(ingestion.SPLITS):
                for example in examples[name]:
                    yield position, example

        partitions = (
            pipeline
            | "CsvPath" >> beam.Create([path])
            | "ReadAndWindow" >> beam.FlatMap(read_and_window)
            # Spread the windows over workers before the (parallel) write.
            | "Reshuffle" >> beam.Reshuffle()
            | "BySplit" >> beam.Partition(lambda keyed, _: keyed[0], len(ingestion.SPLITS)))
        return {name: partitions[position] | f"{name.capitalize()}Examples" >> beam.Values()
                for position, name in enumerate(ingestion.SPLITS)}


class TimeSeriesExampleGen(FileBasedExampleGen):
    """ExampleGen for a timestamped numeric CSV: chronological splits of windows."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TimeSeriesExampleGenExecutor)

    def __init__(self, input_base: Any, file_pattern: str, spec: timeseries.SeriesSpec):
        super().__init__(input_base=input_base,
                         input_config=ingestion.input_config(file_pattern),
                         custom_config=make_custom_config(spec))
