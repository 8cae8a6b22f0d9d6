"""Tables end to end: `tfprod run` on the shipped penguins sample (data/penguins_sample:
276 train / 68 test rows, with missing cells), then `tfprod serve` on 127.0.0.1 answering
JSON rows over REST (one row with a left-out key, one with a null) and a gRPC Predict with
one tensor per column; and a regression run on the same table's body mass.

Small and fast (2-3 epochs, a tiny MLP, a low accuracy floor): these runs check the
plumbing and the contract, bench/table_bench.py checks the quality.
"""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT
from tests.serving_models import copy_version
from tests.test_serving_e2e import ServerProcess

pytestmark = pytest.mark.e2e

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
SAMPLE_DIR = REPO_ROOT / "data" / "penguins_sample"
SMALL_RUN = ["--set", "trainer.epochs=3", "--set", "model.mlp.hidden_units=[16]",
             "--set", "trainer.early_stopping_patience=0"]
# Two rows as users write them: a left-out key (sex) and a JSON null (bill_depth_mm).
ROWS = [
    {"island": "Biscoe", "bill_length_mm": 47.5, "bill_depth_mm": 15.0,
     "flipper_length_mm": 218, "body_mass_g": 4950, "year": 2008},
    {"island": "Dream", "bill_length_mm": 39.2, "bill_depth_mm": None,
     "flipper_length_mm": 189, "body_mass_g": 3700, "sex": "male", "year": 2009},
]
FLOAT_COLUMNS = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year")


def run_tfprod(arguments, output_dir: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([TFPROD, "run", "--config", "configs/penguins_mlp.yaml",
                           "--output-dir", str(output_dir), *arguments],
                          cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("penguins")
    result = run_tfprod(["--data-dir", str(SAMPLE_DIR), *SMALL_RUN], output_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((output_dir / "run_summary.json").read_text()), output_dir


def _raw_inputs(rows):
    """serving_raw's tensors for JSON-style rows: NaN / "" where a value is missing."""
    inputs = {}
    for name in FLOAT_COLUMNS:
        inputs[name] = tf.constant([math.nan if row.get(name) is None else float(row[name])
                                    for row in rows], tf.float32)
    for name in ("island", "sex"):
        inputs[name] = tf.constant([row.get(name) or "" for row in rows])
    return inputs


def _examples(rows):
    """The same rows as tf.Examples, missing values as absent features."""
    serialized = []
    for row in rows:
        example = tf.train.Example()
        for name, value in row.items():
            if value is None:
                continue
            feature = example.features.feature[name]
            if name == "year":
                feature.int64_list.value.append(int(value))
            elif isinstance(value, str):
                feature.bytes_list.value.append(value.encode())
            else:
                feature.float_list.value.append(float(value))
        serialized.append(example.SerializeToString())
    return tf.constant(serialized)


def test_table_run_records_types_and_blesses(classification_run):
    summary, output_dir = classification_run
    assert summary["status"] == "succeeded" and summary["blessed"] is True
    assert summary["metrics"]["example_count"] == 68
    # The majority class (Adelie) scores 30/68; the baseline gate asks for 0.05 more.
    assert summary["metrics"]["baseline_accuracy"] == pytest.approx(30 / 68, abs=1e-5)
    assert summary["metrics"]["accuracy"] >= 30 / 68 + 0.05
    # The config's eval.slices: [island]; each island is scored, next to each species.
    assert {"island=Biscoe", "island=Dream", "island=Torgersen", "label=0", "label=1",
            "label=2"} == set(summary["slice_metrics"])
    data = summary["data"]
    assert data["problem"] == "classification" and data["label_column"] == "species"
    assert data["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    types = {column["name"]: (column["type"], column["kind"]) for column in data["columns"]}
    assert types == {"island": ("categorical", "string"), "sex": ("categorical", "string"),
                     "year": ("categorical", "int"), "bill_length_mm": ("numeric", "float"),
                     "bill_depth_mm": ("numeric", "float"),
                     "flipper_length_mm": ("numeric", "float"), "body_mass_g": ("numeric", "float")}
    missing = {column["name"]: column["missing_rate"] for column in data["columns"]}
    assert missing["sex"] == pytest.approx(10 / 276, abs=1e-4)  # the NA cells of train.csv
    assert summary["tflite_skipped"] and "TFLite" in summary["tflite_skipped"]
    assert summary["tflite_models"] == {}
    report = (output_dir / "report.html").read_text()
    assert "missing" in report and "TFLite" in report


def test_pushed_model_treats_missing_values_alike_in_both_signatures(classification_run):
    summary, _ = classification_run
    model = tf.saved_model.load(summary["pushed_model_dir"])
    raw = model.signatures["serving_raw"](**_raw_inputs(ROWS))
    default = model.signatures["serving_default"](examples=_examples(ROWS))
    probabilities = raw["probabilities"].numpy()
    assert probabilities.shape == (2, 3) and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(default["probabilities"].numpy(), probabilities, atol=1e-6)
    names = [name.decode() for name in raw["class_name"].numpy()]
    assert names == [["Adelie", "Chinstrap", "Gentoo"][i] for i in raw["class_id"].numpy()]
    # A row with every value missing still gets an answer (imputed, not an error).
    empty = model.signatures["serving_raw"](**_raw_inputs([{}]))
    assert np.isfinite(empty["probabilities"].numpy()).all()


def test_served_model_answers_json_rows_over_rest_and_grpc(classification_run, tmp_path):
    from tensorflow_serving.apis import predict_pb2

    summary, _ = classification_run
    base = tmp_path / "models" / "penguins"
    copy_version(summary["pushed_model_dir"], str(base), 1)
    server = ServerProcess(["--model_name", "penguins", "--model_base_path", str(base)],
                           tmp_path / "server.log")
    try:
        status, body = server.http("POST", "/v1/models/penguins:predict",
                                   {"signature_name": "serving_raw", "instances": ROWS})
        assert status == 200, body
        expected = tf.saved_model.load(summary["pushed_model_dir"]).signatures["serving_raw"](
            **_raw_inputs(ROWS))
        predictions = body["predictions"]
        assert len(predictions) == 2
        np.testing.assert_allclose([p["probabilities"] for p in predictions],
                                   expected["probabilities"].numpy(), atol=1e-5)
        assert [p["class_name"] for p in predictions] == [
            name.decode() for name in expected["class_name"].numpy()]

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "penguins"
        request.model_spec.signature_name = "serving_raw"
        for name, tensor in _raw_inputs(ROWS).items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        response = server.prediction.Predict(request, timeout=30)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                                   expected["probabilities"].numpy(), atol=1e-5)
        assert list(tf.make_ndarray(response.outputs["class_id"])) == list(
            expected["class_id"].numpy())
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_regression_run_reports_mae_rmse_and_beats_the_mean(tmp_path):
    """The same penguins with body_mass_g as the label. The two rows without a body mass
    are left out here (a missing label stops a run: test_table.py checks that error)."""
    data_dir = tmp_path / "penguins_mass"
    data_dir.mkdir()
    for name in ("train.csv", "test.csv"):
        with open(SAMPLE_DIR / name, newline="") as source:
            rows = list(csv.reader(source))
        mass = rows[0].index("body_mass_g")
        with open(data_dir / name, "w", newline="") as target:
            csv.writer(target).writerows([rows[0]] + [row for row in rows[1:] if row[mass]])
    output_dir = tmp_path / "run"
    result = run_tfprod(["--data-dir", str(data_dir), "--set",
                         "data.table.label_column=body_mass_g", "--set", "eval.slices=[island]",
                         "--set", "eval.max_slice_mae=100000", *SMALL_RUN], output_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output_dir / "run_summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["data"]["problem"] == "regression"
    assert {"mae", "rmse", "mean_baseline_mae"} <= set(metrics)
    assert 0 < metrics["mae"] <= metrics["rmse"]
    # The train mean's MAE on these 68 test penguins is several hundred grams.
    assert 300 < metrics["mean_baseline_mae"] < 1200
    # The config's gate: beat the train mean's MAE by 5%.
    assert summary["gate"]["required"] == pytest.approx(0.95 * metrics["mean_baseline_mae"],
                                                        rel=1e-4)
    assert summary["blessed"] is (metrics["mae"] <= summary["gate"]["required"])
    assert summary["blessed"], summary["validation_failures"]
    # eval.slices: the MAE of each island, whose counts add up to the test rows; the loose
    # per-slice bound (100 kg) passes.
    islands = {name: values for name, values in summary["slice_metrics"].items()
               if name.startswith("island=")}
    assert set(islands) == {"island=Biscoe", "island=Dream", "island=Torgersen"}
    assert sum(values["example_count"] for values in islands.values()) == \
        metrics["example_count"]
    assert all(0 < values["mae"] < 100000 for values in islands.values())
    model = tf.saved_model.load(summary["pushed_model_dir"])
    gentoo = {"species": tf.constant(["Gentoo"]), "island": tf.constant(["Biscoe"]),
              "bill_length_mm": tf.constant([47.5]), "bill_depth_mm": tf.constant([15.0]),
              "flipper_length_mm": tf.constant([218.0]), "sex": tf.constant(["male"]),
              "year": tf.constant([2008.0])}
    prediction = model.signatures["serving_raw"](**gentoo)["prediction"].numpy()
    assert prediction.shape == (1,) and 2000 < prediction[0] < 8000


def _auc(scores, positives):
    """Area under the ROC curve by ranks (ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    pos, neg = scores[positives], scores[~positives]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def test_binary_run_reports_auc_precision_recall_of_class_1(tmp_path):
    """The penguins' sex as a two-class label (rows without one left out): the summary has
    TFMA's auc, precision, recall and calibration of class 1 (`male`, the second sorted
    class), and they match the same figures computed here from the model's serving_raw
    answers on test.csv (threshold 0.5 on class 1's probability). The run slices by island
    (eval.slices) with a per-slice gate no 3-epoch model meets (every island and sex at
    accuracy 1.0): each island's accuracy matches the answers, and each slice below 1.0 is
    named among the validation failures, so the model is not blessed."""
    data_dir = tmp_path / "penguins_sex"
    data_dir.mkdir()
    test_rows = []
    for name in ("train.csv", "test.csv"):
        with open(SAMPLE_DIR / name, newline="") as source:
            rows = list(csv.DictReader(source))
        kept = [row for row in rows if row["sex"]]
        with open(data_dir / name, "w", newline="") as target:
            writer = csv.DictWriter(target, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
        if name == "test.csv":
            test_rows = kept
    output_dir = tmp_path / "run"
    result = run_tfprod(["--data-dir", str(data_dir), "--set", "data.table.label_column=sex",
                         "--set", "eval.slices=[island]", "--set", "eval.min_slice_accuracy=1.0",
                         *SMALL_RUN], output_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output_dir / "run_summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["data"]["problem"] == "classification"
    assert {"accuracy", "auc", "precision", "recall", "calibration"} <= set(metrics), metrics

    # The pushed model when blessed, else the Trainer's (the metrics are the same model's).
    model_dir = summary["pushed_model_dir"] or os.path.join(summary["artifacts"]["model"],
                                                            "Format-Serving")
    model = tf.saved_model.load(model_dir)
    inputs = {}
    for column in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g",
                   "year"):
        inputs[column] = tf.constant([float(row[column]) if row[column] not in ("", "NA")
                                      else math.nan for row in test_rows], tf.float32)
    for column in ("species", "island"):
        inputs[column] = tf.constant([row[column] for row in test_rows])
    outputs = model.signatures["serving_raw"](**inputs)
    assert set(outputs["class_name"].numpy()) <= {b"female", b"male"}
    male = outputs["probabilities"].numpy()[:, 1]
    actual = np.array([row["sex"] == "male" for row in test_rows])
    predicted = male > 0.5
    true_positives = int((predicted & actual).sum())
    if predicted.any():
        assert metrics["precision"] == pytest.approx(true_positives / predicted.sum(), abs=1e-3)
    assert metrics["recall"] == pytest.approx(true_positives / actual.sum(), abs=1e-3)
    # TFMA's AUC is a Riemann sum over 10,000 thresholds: close to the exact rank AUC.
    assert metrics["auc"] == pytest.approx(_auc(male, actual), abs=0.01)
    # Calibration: the mean predicted probability of male over the share of males.
    assert metrics["calibration"] == pytest.approx(male.sum() / actual.sum(), abs=1e-3)
    # Sex from bill, flipper and mass is far from a coin toss even after 3 epochs.
    assert metrics["auc"] > 0.6

    # Per island: TFMA's accuracy is the answers' (argmax) accuracy on that island's rows.
    correct = outputs["probabilities"].numpy().argmax(axis=1) == actual.astype(int)
    islands = np.array([row["island"] for row in test_rows])
    expected_slices = {f"island={island}": float(correct[islands == island].mean())
                       for island in sorted(set(islands))}
    for name, accuracy in expected_slices.items():
        assert summary["slice_metrics"][name]["accuracy"] == pytest.approx(accuracy, abs=1e-4)
        assert summary["slice_metrics"][name]["example_count"] == (
            islands == name.split("=")[1]).sum()
    # The per-slice gate: every slice under 1.0 is a named failure, and none other is.
    below = {name for name, accuracy in expected_slices.items() if accuracy < 1.0}
    for label, name in ((0, "label=0"), (1, "label=1")):
        if correct[actual.astype(int) == label].mean() < 1.0:
            below.add(name)
    assert below, "a 3-epoch model classifies every island and sex perfectly"
    failed = {failure.split("(")[1].split(")")[0] for failure in summary["validation_failures"]
              if failure.startswith("accuracy (") and "required >= 1.0000" in failure}
    assert failed == below, summary["validation_failures"]
    assert summary["blessed"] is False and not summary["pushed_model_dir"]
