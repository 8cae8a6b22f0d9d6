"""TsvExampleGen: a TFX ExampleGen that reads a text classification TSV directory on Beam.

The input directory holds `train.tsv` and `test.tsv`, each starting with the header
`<text column><TAB><label column>` (data.text.text_column / label_column, by default
`sentence<TAB>label`). train.tsv is split into `train` and `eval` by a hash of each
row's content (stable across runs and runners); test.tsv becomes `test`.

Labels may be integers or strings. The label vocabulary is built from train.tsv:
integer labels in numeric order, otherwise strings in sorted order; label id i is
the i-th entry. Each tf.Example holds

  text:       the raw text (bytes, UTF-8)
  label:      the label id (int64)
  label_name: the label as written in the file (bytes), so Transform can export the
              label vocabulary with the model.

Bad rows (wrong field count, empty text or label, a test label never seen in
training) and a wrong header stop the run with TsvFormatError naming the file and line.
"""

import os
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from tfprod import errors
from tfprod.contract import features
from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT
from tfprod.pipeline.ingestion import tsv_format

# The reading and checking of the files is TensorFlow-free (tsv_format: the preflight runs
# it before TensorFlow is imported); these names stay importable from here.
TEXT_KEY = tsv_format.TEXT_KEY
LABEL_NAME_KEY = tsv_format.LABEL_NAME_KEY
TRAIN_FILE = tsv_format.TRAIN_FILE
TEST_FILE = tsv_format.TEST_FILE
Row = tsv_format.Row
TsvFormatError = tsv_format.TsvFormatError
read_rows = tsv_format.read_rows
sort_labels = tsv_format.sort_labels
check_label_vocabulary = tsv_format.check_label_vocabulary
read_labels = tsv_format.read_labels
check_tsv_dir = tsv_format.check_tsv_dir


def make_example(row: Row, label_vocabulary: List[str]) -> Tuple[bytes, bytes]:
    """(content key, serialized tf.Example) for a row; unknown labels raise TsvFormatError."""
    _, _, text, label = row
    label_id = tsv_format.label_id(row, label_vocabulary)
    example = tf.train.Example(features=tf.train.Features(feature={
        TEXT_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])),
        features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label_id])),
        LABEL_NAME_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[label.encode("utf-8")])),
    }))
    return (text + "\t" + label).encode("utf-8"), example.SerializeToString()


class TsvExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    """Reads train.tsv and test.tsv and writes the train, eval and test tf.Examples."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("TsvExampleGen writes all splits in GenerateExamplesByBeam")

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
        patterns = ingestion.split_patterns(exec_properties, "TsvExampleGen")
        settings = ingestion.read_custom_config(exec_properties, "TsvExampleGen")
        eval_fraction = float(settings.get("eval_fraction", 0.1))
        text_column = settings.get("text_column", "sentence")
        label_column = settings.get("label_column", "label")
        # None (data.num_classes null, not resolved before the run): not checked here.
        num_classes = settings.get("num_classes")
        num_classes = None if num_classes is None else int(num_classes)
        input_base = exec_properties[ingestion.INPUT_BASE_KEY]
        train_path = os.path.join(input_base, patterns[TRAIN_SPLIT])
        test_path = os.path.join(input_base, patterns[TEST_SPLIT])

        def rows(label: str, path: str) -> beam.PCollection:
            return (pipeline
                    | f"{label}Path" >> beam.Create([path])
                    | f"{label}Rows" >> beam.FlatMap(read_rows, text_column, label_column)
                    | f"{label}Reshuffle" >> beam.Reshuffle())

        train_rows = rows("Train", train_path)
        test_rows = rows("Test", test_path)
        label_vocabulary = beam.pvalue.AsSingleton(
            train_rows
            | "Labels" >> beam.Map(lambda row: row[3])
            | "DistinctLabels" >> beam.Distinct()
            | "LabelList" >> beam.combiners.ToList()
            | "LabelVocabulary" >> beam.Map(check_label_vocabulary, num_classes, train_path))
        train_and_eval = (
            train_rows
            | "TrainExamples" >> beam.Map(make_example, label_vocabulary)
            | "SplitTrainEval" >> beam.Partition(
                lambda keyed, _: int(ingestion.is_eval(keyed[0], eval_fraction)), 2))
        test = (test_rows
                | "TestExamples" >> beam.Map(make_example, label_vocabulary)
                | "TestValues" >> beam.Values())
        return {TRAIN_SPLIT: train_and_eval[0] | "TrainValues" >> beam.Values(),
                EVAL_SPLIT: train_and_eval[1] | "EvalValues" >> beam.Values(),
                TEST_SPLIT: test}


def make_custom_config(eval_fraction: float, text_column: str, label_column: str,
                       num_classes: Optional[int]) -> example_gen_pb2.CustomConfig:
    """Packs the executor's settings into ExampleGen's custom_config (a Struct)."""
    return ingestion.pack_custom_config({
        "eval_fraction": eval_fraction, "text_column": text_column,
        "label_column": label_column, "num_classes": num_classes})


class TsvExampleGen(FileBasedExampleGen):
    """ExampleGen for a text directory: train/eval from train.tsv, test from test.tsv."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TsvExampleGenExecutor)

    def __init__(self, input_base: Any, eval_fraction: float = 0.1,
                 text_column: str = "sentence", label_column: str = "label",
                 num_classes: Optional[int] = 2):
        super().__init__(input_base=input_base,
                         input_config=ingestion.input_config(TRAIN_FILE, TEST_FILE),
                         custom_config=make_custom_config(eval_fraction, text_column,
                                                          label_column, num_classes))
