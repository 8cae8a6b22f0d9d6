"""TfdsExampleGen: a TFX ExampleGen that reads a prepared TFDS dataset on Beam.

Each pipeline split (train, eval, test) reads one TFDS split spec with
``tfds.beam.ReadFromTFDS``; unless an eval spec is configured, eval is held out
of the train spec by a hash of each example (stable across runs and runners).
Each TFDS example becomes a tf.Example with the pipeline's feature names: the
image as a flat int64 list of pixels (row-major, as IdxExampleGen writes it),
the label as one int64 — so the same configs train on TFDS and IDX input.

The component is a FileBasedExampleGen whose input_base is the TFDS data dir and
whose split patterns match the dataset's folder, so TFX's driver fingerprints
the prepared files and the cache is invalidated when they change.
"""

from typing import Any, Dict, Mapping

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT
from tfprod.pipeline.ingestion.tfds import dataset


def to_tf_example(element: Mapping[str, Any], feature_map: Mapping[str, str]) -> tf.train.Example:
    """One decoded TFDS example (NumPy values) -> a tf.Example with the pipeline's names.

    Integer and boolean values become a flat int64 list (an image [H, W, 1] becomes
    H*W pixels, row-major), floats a float list, strings and bytes a bytes list.

    Args:
      element: the example as ``tfds.as_numpy`` yields it.
      feature_map: pipeline feature name -> TFDS feature name.

    Raises:
      TypeError: a feature of a type a tf.Example cannot hold (e.g. a nested dict).
    """
    example = tf.train.Example()
    for pipeline_key, tfds_key in feature_map.items():
        value = np.asarray(element[tfds_key])
        feature = example.features.feature[pipeline_key]
        if np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_:
            feature.int64_list.value.extend(value.ravel().astype(np.int64).tolist())
        elif np.issubdtype(value.dtype, np.floating):
            feature.float_list.value.extend(value.ravel().astype(np.float32).tolist())
        elif value.dtype.kind in ("S", "O", "U"):
            feature.bytes_list.value.extend(
                item if isinstance(item, bytes) else str(item).encode("utf-8")
                for item in value.ravel().tolist())
        else:
            raise TypeError(f"TFDS feature {tfds_key!r} of dtype {value.dtype} cannot be written "
                            f"to the tf.Example feature {pipeline_key!r}")
    return example


def _serialize(element: Mapping[str, Any], feature_map: Mapping[str, str]) -> bytes:
    # Deterministic, so the hash that splits train/eval is the same on every run.
    return to_tf_example(tfds.as_numpy(element), feature_map).SerializeToString(
        deterministic=True)


def make_custom_config(source: dataset.TfdsSource) -> example_gen_pb2.CustomConfig:
    """Packs the source's settings (not its data dir: that is input_base) into custom_config."""
    return ingestion.pack_custom_config({
        "tfds_name": source.name, "split_specs": dict(source.split_specs),
        "eval_fraction": source.eval_fraction, "feature_map": dict(source.feature_map)})


def source_from_exec_properties(exec_properties: Dict[str, Any]) -> dataset.TfdsSource:
    """Rebuilds the TfdsSource from the component's input_base and custom_config."""
    settings = ingestion.read_custom_config(exec_properties, "TfdsExampleGen")
    return dataset.TfdsSource(
        name=settings["tfds_name"],
        data_dir=exec_properties[ingestion.INPUT_BASE_KEY],
        split_specs=dict(settings["split_specs"]),
        eval_fraction=float(settings["eval_fraction"]),
        feature_map=dict(settings["feature_map"]))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _ReadTfdsSplit(pipeline: beam.Pipeline, builder: tfds.core.DatasetBuilder, split_spec: str,
                   feature_map: Mapping[str, str]) -> beam.PCollection:
    """A TFDS split spec -> serialized tf.Examples (one Beam task per shard)."""
    return (pipeline
            | "ReadFromTFDS" >> tfds.beam.ReadFromTFDS(builder, split=split_spec)
            | "ToTfExample" >> beam.Map(_serialize, dict(feature_map))
            # Spread the examples over workers before the (parallel) write.
            | "Reshuffle" >> beam.Reshuffle())


class TfdsExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    """Reads the configured TFDS splits and writes tf.Examples into train/eval/test."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        """Reads one TFDS split spec (the base class's per-split hook).

        GenerateExamplesByBeam below does not use it, because eval may be held out of
        train; it is here for callers that read a single spec.
        """
        return _ReadTfdsSpec

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
        source = source_from_exec_properties(exec_properties)
        builder = dataset.load_builder(source.name, source.data_dir)
        dataset.check_splits(builder, source)
        feature_map = source.feature_map
        train = pipeline | "ReadTrain" >> _ReadTfdsSplit(
            builder, source.split_specs[TRAIN_SPLIT], feature_map)
        test = pipeline | "ReadTest" >> _ReadTfdsSplit(
            builder, source.split_specs[TEST_SPLIT], feature_map)
        if not source.holds_out_eval:
            evaluation = pipeline | "ReadEval" >> _ReadTfdsSplit(
                builder, source.split_specs[EVAL_SPLIT], feature_map)
            return {TRAIN_SPLIT: train, EVAL_SPLIT: evaluation, TEST_SPLIT: test}
        eval_fraction = source.eval_fraction
        train_and_eval = train | "SplitTrainEval" >> beam.Partition(
            lambda serialized, _: int(ingestion.is_eval(serialized, eval_fraction)), 2)
        return {TRAIN_SPLIT: train_and_eval[0], EVAL_SPLIT: train_and_eval[1], TEST_SPLIT: test}


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _ReadTfdsSpec(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                  split_spec: str) -> beam.PCollection:
    """A TFDS split spec of the component's dataset -> serialized tf.Examples."""
    source = source_from_exec_properties(exec_properties)
    builder = dataset.load_builder(source.name, source.data_dir)
    return pipeline | "ReadSpec" >> _ReadTfdsSplit(builder, split_spec, source.feature_map)


class TfdsExampleGen(FileBasedExampleGen):
    """ExampleGen for a TFDS dataset prepared in a local data dir (nothing is downloaded)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TfdsExampleGenExecutor)

    def __init__(self, source: dataset.TfdsSource):
        # Every split's pattern matches the dataset's prepared files, so the driver's
        # fingerprint (and so the cache) follows them; the split specs are in custom_config.
        pattern = dataset.dataset_relative_dir(source.name) + "/*"
        super().__init__(input_base=source.data_dir,
                         input_config=ingestion.input_config(pattern),
                         custom_config=make_custom_config(source))
