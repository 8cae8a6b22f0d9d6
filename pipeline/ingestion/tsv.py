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
from typing import Any, Dict, Iterator, List, Optional, Tuple

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

TEXT_KEY = "text"
LABEL_NAME_KEY = "label_name"
TRAIN_FILE = "train.tsv"
TEST_FILE = "test.tsv"

# One parsed row: (file path, 1-based line number, text, label as written).
Row = Tuple[str, int, str, str]


class TsvFormatError(errors.InputDataError):
    """A TSV file does not have the expected layout; the message names the file and line."""


def read_rows(path: str, text_column: str, label_column: str) -> Iterator[Row]:
    """Yields the data rows of a TSV file after checking its header.

    Raises:
      TsvFormatError: a missing file, a wrong header, a row without exactly two
        tab-separated fields, or an empty text or label.
    """
    if not tf.io.gfile.exists(path):
        raise TsvFormatError(f"{path}: file not found (a text directory needs {TRAIN_FILE} "
                             f"and {TEST_FILE})")
    expected_header = [text_column, label_column]
    line_number = 0
    with tf.io.gfile.GFile(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise TsvFormatError(f"{path}:{line_number}: not valid UTF-8 ({error})") from None
            fields = line.split("\t")
            if line_number == 1:
                if fields != expected_header:
                    raise TsvFormatError(
                        f"{path}:1: header is {fields!r}; expected {expected_header!r} "
                        "(set data.text.text_column and data.text.label_column to the "
                        "file's column names)")
                continue
            if len(fields) != 2:
                raise TsvFormatError(f"{path}:{line_number}: expected 2 tab-separated fields "
                                     f"({text_column}, {label_column}), found {len(fields)}")
            text, label = fields[0], fields[1].strip()
            if not text.strip():
                raise TsvFormatError(f"{path}:{line_number}: the {text_column} is empty")
            if not label:
                raise TsvFormatError(f"{path}:{line_number}: the {label_column} is empty")
            yield path, line_number, text, label
    if line_number == 0:
        raise TsvFormatError(f"{path}: the file is empty; expected the header "
                             f"{text_column!r} TAB {label_column!r}")


def sort_labels(labels: List[str]) -> List[str]:
    """The label vocabulary: integers in numeric order if every label is one, else sorted strings."""
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=int)
    except ValueError:
        return unique


def check_label_vocabulary(labels: List[str], num_classes: Optional[int], path: str
                           ) -> List[str]:
    """Sorted label vocabulary of the training file, checked against data.num_classes.

    Args:
      labels: the training labels as written (repeats allowed).
      num_classes: data.num_classes; None takes the count from the labels.
      path: the training file, for the message.
    """
    vocabulary = sort_labels(labels)
    if len(vocabulary) < 2:
        raise TsvFormatError(f"{path}: needs at least 2 distinct labels, found {vocabulary}")
    if num_classes is not None and len(vocabulary) != num_classes:
        raise TsvFormatError(
            f"{path}: has {len(vocabulary)} distinct labels {vocabulary[:20]}, but "
            f"data.num_classes is {num_classes} (pass --set data.num_classes={len(vocabulary)}, "
            "or --set data.num_classes=null to take the count from the labels)")
    return vocabulary


def read_labels(data, path: str) -> List[str]:
    """Every label of a TSV file as written, in file order (the file checked as read_rows does)."""
    return [row[3] for row in read_rows(path, data.text.text_column, data.text.label_column)]


def check_tsv_dir(data) -> List[str]:
    """Reads a text directory as the ExampleGen will (before the run starts); returns the labels.

    Args:
      data: the experiment's DataConfig (data_dir, num_classes, text.*). A null
        num_classes is not checked: the caller takes len(vocabulary).

    Raises:
      TsvFormatError: a missing file, a bad header or row, a label count other than
        data.num_classes, or a test label that train.tsv does not have.
    """
    train_path = os.path.join(data.data_dir, TRAIN_FILE)
    test_path = os.path.join(data.data_dir, TEST_FILE)
    vocabulary = check_label_vocabulary(read_labels(data, train_path), data.num_classes,
                                        train_path)
    known = set(vocabulary)
    for row in read_rows(test_path, data.text.text_column, data.text.label_column):
        if row[3] not in known:
            make_example(row, vocabulary)  # raises, naming the file and line
    return vocabulary


def make_example(row: Row, label_vocabulary: List[str]) -> Tuple[bytes, bytes]:
    """(content key, serialized tf.Example) for a row; unknown labels raise TsvFormatError."""
    path, line_number, text, label = row
    try:
        label_id = label_vocabulary.index(label)
    except ValueError:
        raise TsvFormatError(
            f"{path}:{line_number}: label {label!r} never occurs in {TRAIN_FILE} (its labels "
            f"are {label_vocabulary[:20]})") from None
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
