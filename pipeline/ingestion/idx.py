"""IdxExampleGen: a TFX ExampleGen that turns an IDX image dataset into tf.Examples on Beam.

The input directory holds the four standard files (train-/t10k- images and
labels). The train files are split into `train` and `eval` by a hash of each
example's content (stable across runs and runners); the t10k files become the
`test` split.
"""

import os
from typing import Any, Dict, Iterator, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from tfprod.contract import features, idx
from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT

# Split patterns, relative to input_base. Each matches an images file and its
# labels file, so the driver's fingerprint (and so the cache) covers both.
TRAIN_PATTERN = "train-*-ubyte.gz"
TEST_PATTERN = "t10k-*-ubyte.gz"


def _images_and_labels(pattern_path: str) -> Tuple[str, str]:
    """The images and labels files matched by an IDX split pattern."""
    matched = tf.io.gfile.glob(pattern_path)
    images = [path for path in matched if "-images-" in os.path.basename(path)]
    labels = [path for path in matched if "-labels-" in os.path.basename(path)]
    if len(images) != 1 or len(labels) != 1:
        raise idx.IdxFormatError(
            f"{pattern_path} must match exactly one images file and one labels file; "
            f"matched {sorted(matched)}")
    return images[0], labels[0]


def _read_examples(pattern_path: str) -> Iterator[Tuple[bytes, bytes]]:
    """Yields (content key, serialized tf.Example) for every image in an IDX pair."""
    images, labels = idx.read_image_label_pair(*_images_and_labels(pattern_path))
    flat = images.reshape(images.shape[0], -1)
    for pixels, label in zip(flat, labels):
        example = tf.train.Example(features=tf.train.Features(feature={
            features.IMAGE_KEY: tf.train.Feature(
                int64_list=tf.train.Int64List(value=pixels.astype(np.int64))),
            features.LABEL_KEY: tf.train.Feature(
                int64_list=tf.train.Int64List(value=[int(label)])),
        }))
        yield pixels.tobytes() + bytes([label]), example.SerializeToString()


def make_custom_config(eval_fraction: float) -> example_gen_pb2.CustomConfig:
    """Packs the executor's settings into ExampleGen's standard custom_config field."""
    return ingestion.pack_custom_config({"eval_fraction": eval_fraction})


class IdxExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    """Reads the IDX pairs named by the input split patterns and writes tf.Examples."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _IdxToExample

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
        patterns = ingestion.split_patterns(exec_properties, "IdxExampleGen")
        settings = ingestion.read_custom_config(exec_properties, "IdxExampleGen")
        eval_fraction = float(settings.get("eval_fraction", 0.1))
        train_and_eval = (
            pipeline
            | "ReadTrainFiles" >> _IdxToKeyedExample(exec_properties, patterns[TRAIN_SPLIT])
            | "SplitTrainEval" >> beam.Partition(
                lambda keyed, _: int(ingestion.is_eval(keyed[0], eval_fraction)), 2))
        test = pipeline | "ReadTestFiles" >> _IdxToExample(exec_properties, patterns[TEST_SPLIT])
        return {TRAIN_SPLIT: train_and_eval[0] | "TrainExamples" >> beam.Values(),
                EVAL_SPLIT: train_and_eval[1] | "EvalExamples" >> beam.Values(),
                TEST_SPLIT: test}


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _IdxToKeyedExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                       split_pattern: str) -> beam.PCollection:
    """An IDX split pattern (relative to input_base) -> (content key, serialized tf.Example)."""
    pattern_path = os.path.join(exec_properties[ingestion.INPUT_BASE_KEY],
                                split_pattern)
    return (pipeline
            | "SplitPattern" >> beam.Create([pattern_path])
            | "ParseIdx" >> beam.FlatMap(_read_examples)
            # Spread the examples over workers before the (parallel) write.
            | "Reshuffle" >> beam.Reshuffle())


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _IdxToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                  split_pattern: str) -> beam.PCollection:
    """An IDX split pattern (relative to input_base) -> serialized tf.Examples."""
    return (pipeline
            | "ReadKeyed" >> _IdxToKeyedExample(exec_properties, split_pattern)
            | "DropKeys" >> beam.Values())


class IdxExampleGen(FileBasedExampleGen):
    """ExampleGen for IDX image datasets: train/eval from the train files, test from t10k."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(IdxExampleGenExecutor)

    def __init__(self, input_base: str, eval_fraction: float = 0.1):
        super().__init__(input_base=input_base,
                         input_config=ingestion.input_config(TRAIN_PATTERN, TEST_PATTERN),
                         custom_config=make_custom_config(eval_fraction))
