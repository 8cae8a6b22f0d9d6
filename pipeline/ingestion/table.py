"""Tables: a CSV directory -> a table spec (column types, labels) -> tf.Examples on Beam.

The input directory holds `train.csv` and `test.csv`, and optionally `eval.csv`: UTF-8,
comma-separated, with a header row; quoted fields may hold commas. Without eval.csv the
`eval` split is a stable hash sample (data.eval_fraction) of train.csv's rows.

Missing values. A cell is missing when, after stripping spaces, it is one of
MISSING_TOKENS: empty, `NA`, `N/A`, `n/a`, `NaN`, `nan`, `null`, `NULL`. A missing cell is
written as an absent feature (the tf.Example has no value for it), so TFDV counts it as
missing and Transform imputes it (pipeline/tasks/table/preprocessing.py).

Column types are decided once, before the run, by one pass over train.csv
(`infer_spec`), and carried to the ExampleGen, Transform and the Trainer in a TableSpec:

- a column listed in data.table.numeric_columns / categorical_columns has that type;
- a column whose every present value is a number is numeric, unless every value is an
  integer and it has at most data.table.max_integer_categories distinct values: then it
  is categorical (a year, a code, a rating);
- any other column is categorical (strings);
- a column with no value at all in train.csv is left out (it cannot teach anything).

Categorical columns are written as int64 (integer values) or bytes (strings); numeric ones
as float. The label is the class id (int64; classes are the training labels, integers in
numeric order, else strings in sorted order) or, for regression, the value (float).
The problem is data.table.problem, or inferred: strings, or integers with at most
data.table.max_integer_classes distinct values -> classification; other numbers ->
regression.

Bad data stops the run (TableFormatError, exit 3) with the file, line and column: a
missing label column, an empty label, a test/eval label never seen in training, a row
with the wrong number of fields, a value that is not a number in a numeric column.
"""

import os
from typing import Any, Dict, List, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec

from tfprod.contract import features
from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT

# The reading, the inference of the spec and the checks are TensorFlow-free (table_format:
# the preflight runs them before TensorFlow is imported); their names stay importable here.
from tfprod.pipeline.ingestion.table_format import *  # noqa: E402,F401,F403
from tfprod.pipeline.ingestion.table_format import TableSpec  # noqa: E402  (used below)


def make_example(row: Tuple[int, List[Any], Any, bytes], spec: TableSpec) -> Tuple[bytes, bytes]:
    """(content key, serialized tf.Example); missing values are absent features."""
    _, values, label, key = row
    feature = {}
    for column, value in zip(spec.columns, values):
        if value is None:
            continue
        if column.kind == FLOAT:
            feature[column.key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        elif column.kind == INT:
            feature[column.key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[column.key] = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
    if spec.problem == CLASSIFICATION:
        feature[features.LABEL_KEY] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    else:
        feature[features.LABEL_KEY] = tf.train.Feature(float_list=tf.train.FloatList(value=[label]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return key, example.SerializeToString()


# --------------------------------------------------------------------------
# The ExampleGen.
# --------------------------------------------------------------------------

SPEC_KEY = "table_spec"


class TableExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    """Reads train.csv (and eval.csv) and test.csv; writes train, eval and test."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("TableExampleGen writes all splits in GenerateExamplesByBeam")

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
        patterns = ingestion.split_patterns(exec_properties, "TableExampleGen")
        settings = ingestion.read_custom_config(exec_properties, "TableExampleGen")
        spec = TableSpec.from_dict(settings[SPEC_KEY])
        input_base = exec_properties[ingestion.INPUT_BASE_KEY]

        def examples(label: str, path: str) -> beam.PCollection:
            return (pipeline
                    | f"{label}Path" >> beam.Create([path])
                    | f"{label}Rows" >> beam.FlatMap(read_rows, spec)
                    | f"{label}Reshuffle" >> beam.Reshuffle()
                    | f"{label}Examples" >> beam.Map(make_example, spec))

        train = examples("Train", os.path.join(input_base, patterns[TRAIN_SPLIT]))
        test = examples("Test", os.path.join(input_base, patterns[TEST_SPLIT]))
        result = {TEST_SPLIT: test | "TestValues" >> beam.Values()}
        if spec.has_eval_file:
            evaluation = examples("Eval", os.path.join(input_base, EVAL_FILE))
            result[TRAIN_SPLIT] = train | "TrainValues" >> beam.Values()
            result[EVAL_SPLIT] = evaluation | "EvalValues" >> beam.Values()
        else:
            parts = train | "SplitTrainEval" >> beam.Partition(
                lambda keyed, _: int(ingestion.is_eval(keyed[0], spec.eval_fraction)), 2)
            result[TRAIN_SPLIT] = parts[0] | "TrainValues" >> beam.Values()
            result[EVAL_SPLIT] = parts[1] | "EvalValues" >> beam.Values()
        return result


class TableExampleGen(FileBasedExampleGen):
    """ExampleGen for a table directory (train.csv, test.csv, optional eval.csv)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TableExampleGenExecutor)

    def __init__(self, input_base: Any, spec: TableSpec):
        super().__init__(
            input_base=input_base,
            input_config=ingestion.input_config(TRAIN_FILE, TEST_FILE),
            custom_config=ingestion.pack_custom_config({SPEC_KEY: spec.to_dict()}))
