"""The table task's pieces on small real data (the penguins sample) and tiny hand-made
tables: type and problem inference, every bad-input error (exit 3, naming file, line and
column), the preprocessing_fn's missing-value handling on a real Beam run, the relaxed
schema, and the JSON rows with a left-out key or a null that the server fills."""

import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_metadata.proto.v0 import schema_pb2

from tests.conftest import REPO_ROOT
from tfprod import errors
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.ingestion import table
from tfprod.serving import json_codec, servable

SAMPLE_DIR = REPO_ROOT / "data" / "penguins_sample"
HEADER = ["species", "island", "bill_length_mm", "sex", "year"]
GOOD_ROWS = [
    ["Adelie", "Torgersen", "39.1", "male", "2007"],
    ["Gentoo", "Biscoe", "46.1", "female", "2008"],
    ["Adelie", "Dream", "NA", "", "2009"],
    ["Gentoo", "Biscoe", "50.0", "male", "2007"],
]


def table_config(**values) -> config_lib.TableDataConfig:
    settings = config_lib.TableDataConfig(label_column="species")
    for key, value in values.items():
        setattr(settings, key, value)
    settings.validate()
    return settings


def write_table(directory: pathlib.Path, train=None, test=None, header=None, raw_train=None):
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows, raw in (("train.csv", train if train is not None else GOOD_ROWS, raw_train),
                            ("test.csv", test if test is not None else GOOD_ROWS[:2], None)):
        path = directory / name
        if raw is not None:
            path.write_text(raw, encoding="utf-8")
            continue
        with open(path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerows([header or HEADER] + rows)
    return directory


def check(directory, **values):
    return table.check_table_dir(str(directory), table_config(**values), 0.1)


# ----- types and problem -------------------------------------------------------------------

def test_penguins_column_types_are_inferred_from_train_csv():
    spec = check(SAMPLE_DIR)
    types = {column.name: (column.type, column.kind) for column in spec.columns}
    assert types == {
        "island": ("categorical", "string"), "sex": ("categorical", "string"),
        "year": ("categorical", "int"),  # 3 distinct integers <= max_integer_categories
        "bill_length_mm": ("numeric", "float"), "bill_depth_mm": ("numeric", "float"),
        "flipper_length_mm": ("numeric", "float"), "body_mass_g": ("numeric", "float")}
    assert spec.problem == "classification" and spec.problem_reason == "the labels are strings"
    assert spec.label_names == ["Adelie", "Chinstrap", "Gentoo"]
    by_name = {column.name: column for column in spec.columns}
    # NA cells of the source are empty cells in the sample: both count as missing.
    assert by_name["sex"].missing_rate == pytest.approx(10 / 276, abs=1e-5)
    assert by_name["bill_length_mm"].missing_rate == pytest.approx(2 / 276, abs=1e-5)
    assert "max_integer_categories=10" in by_name["year"].reason


def test_overrides_and_thresholds_change_types(tmp_path):
    spec = check(SAMPLE_DIR, numeric_columns=["year"], categorical_columns=["flipper_length_mm"],
                 drop_columns=["island"])
    types = {column.name: (column.type, column.kind) for column in spec.columns}
    assert types["year"] == ("numeric", "float")
    assert types["flipper_length_mm"] == ("categorical", "int")
    assert "island" not in types and spec.dropped == {"island": "data.table.drop_columns"}
    spec = check(SAMPLE_DIR, max_integer_categories=2)  # year has 3 values: numeric now
    assert {c.name: c.type for c in spec.columns}["year"] == "numeric"


def test_problem_inference_and_override(tmp_path):
    rows = [["1", "a", "1.5", "m", "2007"], ["2", "b", "2.5", "f", "2008"], ["1", "a", "3", "m", "2009"]]
    directory = write_table(tmp_path / "ints", rows, rows[:1])
    spec = check(directory)
    assert spec.problem == "classification" and spec.label_names == ["1", "2"]
    assert "integer labels with 2 distinct values" in spec.problem_reason
    spec = check(directory, problem=config_lib.TableProblem.REGRESSION)
    assert spec.problem == "regression"
    assert "the labels alone would make it classification" in spec.problem_reason
    floats = [["1.5", "a", "1", "m", "2007"], ["2.25", "b", "2", "f", "2008"], ["7", "a", "3", "m", "2009"]]
    spec = check(write_table(tmp_path / "floats", floats, floats[:1]))
    assert spec.problem == "regression"
    # Mean and std of the train split's labels (no eval.csv: a hash split; all rows here
    # are few, so check against whichever rows went to train).
    assert spec.label_std > 0 and 1.5 <= spec.label_mean <= 7


def test_an_eval_csv_replaces_the_hash_split(tmp_path):
    directory = write_table(tmp_path / "with_eval")
    (directory / "eval.csv").write_text((directory / "test.csv").read_text())
    spec = check(directory)
    assert spec.has_eval_file
    train, evaluation = table.train_split_labels(str(directory), spec)
    assert len(train) == len(GOOD_ROWS) and len(evaluation) == 2


# ----- bad input: exit 3, file, line and column --------------------------------------------

@pytest.mark.parametrize("case, fragment", [
    ("no_label_column", "train.csv:1: no label column 'species'"),
    ("missing_label", "train.csv:3: column 1 ('species'): the label is missing"),
    ("unseen_test_label", "test.csv:2: column 1 ('species'): label 'Chinstrap' never occurs"),
    ("ragged_row", "train.csv:4: ragged row: 4 fields, but the header has 5 columns"),
    ("text_in_numeric_test_column", "test.csv:3: column 3 ('bill_length_mm'): 'long' is not a "
                                    "number"),
    ("missing_label_in_test", "test.csv:2: column 1 ('species'): the label is missing"),
])
def test_bad_input_names_file_line_and_column(tmp_path, case, fragment):
    directory = tmp_path / case
    if case == "no_label_column":
        write_table(directory, header=["kind"] + HEADER[1:])
    elif case == "missing_label":
        write_table(directory, train=[GOOD_ROWS[0], ["", "Dream", "40", "male", "2007"]])
    elif case == "unseen_test_label":
        write_table(directory, test=[["Chinstrap", "Dream", "40", "male", "2007"]])
    elif case == "ragged_row":
        write_table(directory, raw_train="species,island,bill_length_mm,sex,year\n"
                    "Adelie,Torgersen,39.1,male,2007\nGentoo,Biscoe,46.1,female,2008\n"
                    "Adelie,Dream,40,male\n")
    elif case == "text_in_numeric_test_column":
        write_table(directory, test=[GOOD_ROWS[0], ["Adelie", "Dream", "long", "male", "2007"]])
    else:
        write_table(directory, test=[["NA", "Dream", "40", "male", "2007"]])
    with pytest.raises(table.TableFormatError) as raised:
        check(directory)
    assert fragment in str(raised.value)
    assert str(directory) in str(raised.value)
    assert isinstance(raised.value, errors.InputDataError)
    assert errors.exit_code(raised.value) == 3


def test_tfprod_run_exits_3_on_a_bad_table_before_tfx_starts(tmp_path):
    directory = write_table(tmp_path / "bad", test=[["Adelie", "Dream", "n/a?", "male", "2007"]])
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "tfprod"), "run", "--config",
         "configs/penguins_mlp.yaml", "--data-dir", str(directory), "--output-dir",
         str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert ("test.csv:2: column 3 ('bill_length_mm'): 'n/a?' is not a number"
            in result.stderr + result.stdout)
    assert not (tmp_path / "out" / "pipeline").exists()


def test_unknown_override_column_is_a_config_error():
    with pytest.raises(errors.ConfigError) as raised:
        check(SAMPLE_DIR, drop_columns=["nope"])
    assert "data.table.drop_columns" in str(raised.value) and "nope" in str(raised.value)


def test_examples_leave_missing_cells_out(tmp_path):
    spec = check(SAMPLE_DIR)
    rows = list(table.read_rows(str(SAMPLE_DIR / "train.csv"), spec))
    line, values, label, _ = rows[3]  # penguins.csv's 4th penguin: every measurement NA
    assert line == 5 and label == 0
    _, serialized = table.make_example(rows[3], spec)
    example = tf.train.Example.FromString(serialized)
    assert sorted(example.features.feature) == ["island", "label", "year"]
    assert example.features.feature["year"].int64_list.value == [2007]


# ----- preprocessing_fn: imputation, flags, vocabulary, OOV ----------------------------------

def test_preprocessing_imputes_flags_and_buckets_missing_and_unseen_values(tmp_path):
    """A real tf.Transform analyze-and-transform on Beam's DirectRunner, then the same
    transform applied to rows with missing values and values never seen in training."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from tfprod.pipeline.tasks.table import preprocessing

    spec = table.TableSpec(label_column="y", problem="classification", problem_reason="",
                           label_names=["a", "b"], columns=[
                               table.Column("x", "x", table.NUMERIC, table.FLOAT, "", 3, 0.25),
                               table.Column("c", "c", table.CATEGORICAL, table.STRING, "", 2, 0.25),
                               table.Column("n", "n", table.CATEGORICAL, table.INT, "", 2, 0.25)])
    feature_spec = {"x": tf.io.VarLenFeature(tf.float32), "c": tf.io.VarLenFeature(tf.string),
                    "n": tf.io.VarLenFeature(tf.int64),
                    "label": tf.io.FixedLenFeature([], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))
    train = [{"x": [1.0], "c": [b"p"], "n": [7], "label": 0},
             {"x": [3.0], "c": [b"q"], "n": [8], "label": 1},
             {"x": [], "c": [], "n": [7], "label": 0},
             {"x": [5.0], "c": [b"p"], "n": [], "label": 1}]
    new = [{"x": [], "c": [b"never seen"], "n": [9], "label": 0}]
    custom = {"spec": spec.to_dict(), "vocabulary_size": 10, "num_oov_buckets": 1}

    def preprocessing_fn(inputs):
        return preprocessing.preprocessing_fn(inputs, custom)

    with tft_beam.Context(temp_dir=str(tmp_path), force_tf_compat_v1=False):
        (transformed, _), transform_fn = (train, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn)
        transformed_new, _ = ((new, metadata), transform_fn) | tft_beam.TransformDataset()
    numeric = np.array([row["numeric_xf"] for row in transformed])
    std = np.sqrt(8 / 3)  # the present values 1, 3, 5
    np.testing.assert_allclose(numeric[:, 0], [-2 / std, 0.0, 0.0, 2 / std], rtol=1e-5)
    np.testing.assert_array_equal(numeric[:, 1], [0, 0, 1, 0])  # the missing flag
    ids = np.array([row["categorical_xf"] for row in transformed])
    # c: p (2x) -> 1, q -> 2, missing -> 0; n: "7" (2x) -> 1, "8" -> 2, missing -> 0.
    np.testing.assert_array_equal(ids, [[1, 1], [2, 2], [0, 1], [1, 0]])
    assert [row["label"] for row in transformed] == [0, 1, 0, 1]
    # Values never seen in training land in the OOV bucket (id V + 1 = 3), not id 0.
    np.testing.assert_array_equal(transformed_new[0]["categorical_xf"], [3, 3])
    np.testing.assert_allclose(transformed_new[0]["numeric_xf"], [0.0, 1.0])
    assert preprocessing.cardinality(2, 10, 1) == 4  # ids 0..3


# ----- the relaxed schema --------------------------------------------------------------------

def test_relaxed_schema_makes_every_feature_optional_but_keeps_types():
    from tfprod.pipeline.tasks.table import schema

    inferred = schema_pb2.Schema()
    island = inferred.feature.add(name="island", type=schema_pb2.BYTES, domain="island")
    island.presence.min_fraction = 1.0
    island.shape.dim.add(size=1)
    inferred.string_domain.add(name="island", value=["Biscoe", "Dream"])
    label = inferred.feature.add(name="label", type=schema_pb2.INT)
    label.presence.min_fraction = 1.0
    label.shape.dim.add(size=1)
    relaxed = schema.relax(inferred)
    island, label = relaxed.feature
    assert island.type == schema_pb2.BYTES and island.presence.min_fraction == 0.0
    assert not island.HasField("shape") and not island.HasField("domain")
    assert island.value_count.max == 1 and not relaxed.string_domain
    assert label.presence.min_fraction == 1.0 and label.HasField("shape")


# ----- serving: rows with a left-out key or a null -------------------------------------------

def test_json_rows_with_a_left_out_key_or_null_become_missing_values():
    body = (b'{"instances": [{"fare": 12.5, "company": "Flash Cab", "trip_miles": 3.1},'
            b' {"fare": null, "trip_miles": 2}, {"company": null, "fare": 3}]}')
    _, _, inputs = json_codec.decode_predict_request(body)
    np.testing.assert_array_equal(np.isnan(inputs["fare"]), [False, True, False])
    assert list(inputs["company"]) == [b"Flash Cab", b"", b""]
    np.testing.assert_allclose(inputs["trip_miles"], [3.1, 2.0, np.nan])  # row 3 left it out
    # A key every row leaves null: None values, made NaN or "" for the signature's dtype.
    _, _, inputs = json_codec.decode_predict_request(b'{"instances": [{"a": 1, "b": null}]}')
    assert list(inputs["b"]) == [None]
    assert np.isnan(servable.coerce_input("b", inputs["b"], np.float32)).all()
    assert list(servable.coerce_input("b", inputs["b"], object)) == [b""]
    with pytest.raises(Exception, match="no missing value"):
        servable.coerce_input("b", inputs["b"], np.int64)


def test_servable_fills_a_key_no_row_has_for_scalar_float_and_string_inputs():
    definition = meta_graph_pb2.SignatureDef()
    for name, dtype in (("fare", tf.float32), ("company", tf.string), ("image", tf.float32)):
        info = definition.inputs[name]
        info.dtype = dtype.as_datatype_enum
        info.tensor_shape.dim.add(size=-1)
    definition.inputs["image"].tensor_shape.dim.add(size=28)
    signature = servable.SignatureInfo("serving_raw", definition, None)
    inputs = {"fare": np.array([1.0, 2.0])}
    still = servable.fill_missing_inputs(signature, inputs, ["company", "image"])
    assert still == ["image"]  # a [N, 28] input stays required
    assert list(inputs["company"]) == [b"", b""]


# ----- the models ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "wide_deep"])
@pytest.mark.parametrize("num_classes", [3, 0])
def test_table_models_take_numeric_and_categorical_inputs(name, num_classes):
    from tfprod.models import registry

    inputs = registry.ModelInputs(feature_name="numeric_xf", feature_shape=(),
                                  num_classes=num_classes, numeric_width=4,
                                  categorical_cardinalities=(5, 3))
    model = registry.build_model(config_lib.ModelConfig(name=name), inputs)
    batch = {"numeric_xf": np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32),
             "categorical_xf": np.array([[0, 1], [4, 2], [1, 0], [2, 1], [3, 2], [0, 0]])}
    output = model(batch, training=False).numpy()
    assert output.shape == ((6, 3) if num_classes else (6, 1))
    if num_classes:
        np.testing.assert_allclose(output.sum(axis=1), 1.0, rtol=1e-5)
    # Only categorical columns (no numeric input at all) works too.
    only_ids = registry.ModelInputs(feature_name="numeric_xf", feature_shape=(),
                                    num_classes=num_classes, categorical_cardinalities=(5,))
    model = registry.build_model(config_lib.ModelConfig(name=name), only_ids)
    assert model({"categorical_xf": np.array([[1], [4]])}).shape[0] == 2


@pytest.mark.parametrize("gate, mae_threshold, expected", [
    ("absolute", None, 2.0),  # no threshold: the model must still beat the train mean
    ("absolute", 10.0, 2.0),  # a loose threshold: the mean baseline is the tighter bound
    ("absolute", 1.5, 1.5),  # a tight threshold binds
    ("baseline", None, 1.9),  # (1 - margin 0.05) x the mean baseline's MAE
])
def test_the_run_summary_records_the_regression_bound_the_evaluator_applies(
        tmp_path, gate, mae_threshold, expected):
    """run_summary.json's `gate.required` is the bound regression_eval_config gates on."""
    from tfprod.pipeline import summary
    from tfprod.pipeline.tasks.table import evaluation

    rows = [["a", str(value)] for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]
    data_dir = write_table(tmp_path / "t", train=rows, test=rows[:2], header=["kind", "size"])
    experiment = config_lib.load_config(
        str(REPO_ROOT / "configs" / "penguins_mlp.yaml"),
        [f"data.data_dir={data_dir}", "data.table.label_column=size",
         "data.table.problem=regression", f"eval.gate={gate}", "eval.baseline_margin=0.05",
         f"eval.mae_threshold={'null' if mae_threshold is None else mae_threshold}"])
    record = summary.gate_record(experiment, {"mean_baseline_mae": 2.0})
    assert record["metric"] == "mae"
    assert record["required"] == pytest.approx(expected)
    assert record["required"] == pytest.approx(evaluation.allowed_mae(experiment.eval, 2.0))
