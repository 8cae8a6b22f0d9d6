"""configs/etth1_lstm.yaml end to end through `tfprod run`, on the first 2,000 hours of ETTh1.

Real TFX components (TimeSeriesExampleGen, StatisticsGen, SchemaGen, ExampleValidator,
Transform, Trainer, Evaluator with TFMA, Pusher), Beam's DirectRunner and ML Metadata
(SQLite), in a temp dir. One epoch and a lax MAE threshold: this checks the plumbing;
the quality bar is measured on the full data by bench/forecast_bench.py.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfprod.pipeline.ingestion import timeseries
from tfprod.pipeline.tasks import forecasting
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.e2e

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "configs" / "etth1_lstm.yaml"
ETTH1_CSV = SHARED_DATA / "time_series" / "ETTh1.csv"
TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
SLICE_ROWS = 2000
LOOKBACK, HORIZON = 96, 24


def run_tfprod(*args):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([TFPROD, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.fixture(scope="module")
def etth1_slice_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("etth1_slice")
    with open(ETTH1_CSV, encoding="utf-8") as source:
        lines = [next(source) for _ in range(SLICE_ROWS + 1)]
    (directory / "ETTh1.csv").write_text("".join(lines), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory, etth1_slice_dir):
    output_dir = tmp_path_factory.mktemp("etth1_run")
    result = run_tfprod("run", "--config", str(CONFIG), "--data-dir", str(etth1_slice_dir),
                        "--output-dir", str(output_dir), "--set", "trainer.epochs=1",
                        "--set", "eval.mae_threshold=20",
                        "--set", "data.time_series.feature_columns=[OT, HUFL]",
                        # TFLite, small: one mode converted, one refused (float16 crashes
                        # TF 2.16's converter on the fused LSTM), few latency invokes.
                        "--set", "mobile.modes=[float32, float16]",
                        "--set", "mobile.test_examples=100",
                        "--set", "mobile.latency_examples=5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output_dir / "run_summary.json").read_text())
    return output_dir, summary


def test_run_is_blessed_pushed_and_reports_model_and_baseline_errors(forecast_run):
    output_dir, summary = forecast_run
    assert summary["status"] == "succeeded" and summary["blessed"] is True
    assert summary["pushed_model_dir"].startswith(str(output_dir / "serving" / "etth1_lstm"))
    metrics = summary["metrics"]
    for prefix in ("", "persistence_", "seasonal_naive_"):
        mae, rmse = metrics[f"{prefix}mae"], metrics[f"{prefix}rmse"]
        assert 0.0 < mae <= rmse < 20.0, (prefix, metrics)
    # 2,000 rows: 1,200 train, 400 eval, 400 test -> 400 - 96 - 24 + 1 test windows.
    assert metrics["example_count"] == 400 - LOOKBACK - HORIZON + 1
    assert summary["training"]["train_examples"] == 1200 - LOOKBACK - HORIZON + 1
    assert "TimeSeriesExampleGen" in summary["component_seconds"]


def _test_examples(output_dir, count):
    pattern = str(output_dir / "pipeline" / "TimeSeriesExampleGen" / "examples" / "*"
                  / "Split-test" / "*.gz")
    files = tf.io.gfile.glob(pattern)
    assert files, pattern
    records = [record.numpy() for record in
               tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)]
    return records


def test_served_forecast_is_in_target_units_and_both_signatures_agree(forecast_run):
    output_dir, summary = forecast_run
    model = tf.saved_model.load(summary["pushed_model_dir"])
    assert {"serving_default", "serving_raw", "transform_features",
            forecasting.EVALUATION_SIGNATURE} <= set(model.signatures)
    records = _test_examples(output_dir, 16)
    by_examples = model.signatures["serving_default"](examples=tf.constant(records))
    assert set(by_examples) == {forecasting.FORECAST_OUTPUT}
    forecast = by_examples[forecasting.FORECAST_OUTPUT].numpy()
    assert forecast.shape == (16, HORIZON)

    # The config's columns: OT, then HUFL (added by --set, so the window has two columns).
    columns = ["OT", "HUFL"]
    parsed = [tf.train.Example.FromString(record).features.feature for record in records]
    window = np.stack([np.stack([np.array(feature[c].float_list.value) for c in columns], 1)
                       for feature in parsed]).astype(np.float32)
    labels = np.array([feature[timeseries.LABEL_KEY].float_list.value for feature in parsed])
    raw = model.signatures["serving_raw"](window=tf.constant(window))
    np.testing.assert_allclose(raw[forecasting.FORECAST_OUTPUT].numpy(), forecast,
                               rtol=1e-5, atol=1e-4)
    # Raw units: the forecast is near the oil temperature (degrees), not standardised values.
    assert np.abs(forecast - labels).mean() < 0.5 * np.abs(labels).mean()

    evaluation = model.signatures[forecasting.EVALUATION_SIGNATURE](examples=tf.constant(records))
    np.testing.assert_allclose(evaluation[forecasting.PERSISTENCE_OUTPUT].numpy(),
                               np.repeat(window[:, -1:, 0], HORIZON, axis=1))
    np.testing.assert_allclose(evaluation[forecasting.SEASONAL_NAIVE_OUTPUT].numpy(),
                               window[:, -24:, 0])
    warmup = pathlib.Path(summary["pushed_model_dir"]) / "assets.extra" / "tf_serving_warmup_requests"
    assert warmup.is_file()


def test_rest_json_window_through_the_serving_stack(forecast_run):
    """A TF Serving REST body, decoded by tfprod's JSON codec and run by its Servable
    (in-process: the HTTP server itself is covered by tests/test_serving_e2e.py)."""
    from tfprod.serving import json_codec, servable

    output_dir, summary = forecast_run
    model = servable.Servable("etth1_lstm", 1, summary["pushed_model_dir"])
    assert model.warm_up() == 4  # serving_raw and serving_default, batch sizes 1 and 8
    records = _test_examples(output_dir, 3)
    parsed = [tf.train.Example.FromString(record).features.feature for record in records]
    windows = [[[feature[c].float_list.value[step] for c in ("OT", "HUFL")]
                for step in range(LOOKBACK)] for feature in parsed]
    body = json.dumps({"signature_name": "serving_raw", "instances": windows}).encode("utf-8")
    signature_name, request_format, inputs = json_codec.decode_predict_request(body)
    _, outputs = model.predict(signature_name, inputs)
    answer = json_codec.encode_predict_response(outputs, request_format)
    forecast = np.array(answer["predictions"])
    assert forecast.shape == (3, HORIZON)
    expected = tf.saved_model.load(summary["pushed_model_dir"]).signatures["serving_default"](
        examples=tf.constant(records))[forecasting.FORECAST_OUTPUT].numpy()
    np.testing.assert_allclose(forecast, expected, rtol=1e-5, atol=1e-4)


def test_a_gap_in_the_csv_stops_the_run_naming_the_line(tmp_path, etth1_slice_dir, capsys):
    """`tfprod run` in-process (the CLI's main): the check runs before TFX starts."""
    from tfprod import cli

    lines = (etth1_slice_dir / "ETTh1.csv").read_text().splitlines(keepends=True)
    del lines[500]  # the data row on CSV line 501: line 501 now comes two hours after line 500
    bad_dir = tmp_path / "gap"
    bad_dir.mkdir()
    (bad_dir / "ETTh1.csv").write_text("".join(lines))
    exit_code = cli.main(["run", "--config", str(CONFIG), "--data-dir", str(bad_dir),
                          "--output-dir", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert exit_code == 3, stderr
    assert "1 step(s) differ from the expected step 'h'" in stderr
    assert "at line 501" in stderr
    assert not (tmp_path / "out" / "pipeline").exists()


def test_report_plots_a_test_window_against_the_actual_values(forecast_run):
    """report.html's forecast section: the first test window's actuals and the model's forecast."""
    from tests.report.page_index import PageIndex

    output_dir, summary = forecast_run
    page = PageIndex((output_dir / "report.html").read_text(encoding="utf-8"))
    assert page.sections["forecast"]["class"] != "absent"
    assert page.images["chart-forecast"]["src"].startswith("data:image/svg+xml;base64,")
    rows = page.tables["forecast-window"]
    assert rows[0] == ["step ahead", "actual", "forecast", "persistence", "seasonal naive"]
    assert len(rows) == 1 + HORIZON
    # The same window, read back: its label is the actual column, the model's forecast the next.
    files = sorted(tf.io.gfile.glob(str(output_dir / "pipeline" / "TimeSeriesExampleGen"
                                        / "examples" / "*" / "Split-test" / "*.gz")))
    first = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP"))).numpy()
    label = tf.train.Example.FromString(first).features.feature[timeseries.LABEL_KEY]
    np.testing.assert_allclose([float(row[1]) for row in rows[1:]], label.float_list.value,
                               atol=1e-3)
    model = tf.saved_model.load(summary["pushed_model_dir"])
    forecast = model.signatures["serving_default"](examples=tf.constant([first]))
    np.testing.assert_allclose([float(row[2]) for row in rows[1:]],
                               forecast[forecasting.FORECAST_OUTPUT].numpy()[0], atol=1e-3)


def test_report_snippets_run_against_tfprod_serve(forecast_run, tmp_path):
    """Every request the report's Serving section shows, run as written against `tfprod
    serve` on the pushed model: the window over REST and gRPC, the tf.Example over REST and
    the Python gRPC snippet, which prints the forecaster's own output (not class_id)."""
    from tests.report.page_index import PageIndex
    from tests.report.snippets import check_report_snippets

    output_dir, summary = forecast_run
    report = output_dir / "report.html"
    result = check_report_snippets(report, tmp_path)
    raw = np.array(result["rest"][0]["predictions"])
    assert raw.shape == (1, HORIZON)
    np.testing.assert_allclose(result["rest"][2]["outputs"][forecasting.FORECAST_OUTPUT], raw,
                               rtol=1e-5, atol=1e-4)
    # The tf.Example request and the gRPC snippet carry the same test window.
    np.testing.assert_allclose(result["rest_examples"]["predictions"], raw, rtol=1e-5, atol=1e-4)
    assert set(result["grpc"]) == {forecasting.FORECAST_OUTPUT}
    np.testing.assert_allclose(result["grpc"][forecasting.FORECAST_OUTPUT], raw, rtol=1e-5,
                               atol=1e-4)
    page = PageIndex(report.read_text(encoding="utf-8"))
    assert "class_id" not in page.pres["grpc-request"]


def test_report_shows_only_a_forecasters_sections_and_its_headline(forecast_run):
    from tests.report.page_index import PageIndex

    output_dir, summary = forecast_run
    text = (output_dir / "report.html").read_text(encoding="utf-8")
    page = PageIndex(text)
    # Task-specific sections of other tasks are left out, not shown empty.
    assert "samples" not in page.sections and "table" not in page.sections
    assert "Class balance" not in text and "Confusion matrix" not in text
    # The headline metric and the verdict at the top, in the header and the Run box.
    from tfprod.pipeline.report.html import number

    headline = f"mae {number(summary['metrics']['mae'])}"
    assert f"blessed: {headline}" in page.sections["overview"]["text"]
    assert f"· {headline}</div>" in text
    # The label is the target's next values, not an input; the timestamp gets no histogram.
    statistics = page.table_dicts("feature-statistics")
    assert {row["feature"] for row in statistics} >= {"OT", "HUFL", "window_end_timestamp"}
    assert timeseries.LABEL_KEY not in {row["feature"] for row in statistics}
    assert timeseries.LABEL_KEY in {row["feature"] for row in page.table_dicts("label-statistics")}
    stamp = next(row for row in statistics if row["feature"] == "window_end_timestamp")
    assert stamp["mean"] == "–"
    captions = " ".join(image.get("alt", "") for image in page.images.values())
    assert "'window_end_timestamp'" not in captions and f"'{timeseries.LABEL_KEY}'" not in captions
    assert "'OT'" in captions
    assert page.pres["tensorboard-command"].startswith(".venv/bin/tensorboard --logdir ")
    assert not re.search(r"\d\.\d*0\b(?![.\d])", " ".join(
        cell for rows in page.tables.values() for row in rows[1:] for cell in row
        if re.fullmatch(r"-?[\d,]*\.\d+", cell)))  # no trailing zeros: 50.61, not 50.6100


def test_tflite_forecaster_takes_the_raw_window_and_matches_the_savedmodel(forecast_run):
    """The TFLiteConverter converted the blessed forecaster: raw window in, forecast in the
    target's units out, verified by MAE on both runtimes; float16 is listed as refused."""
    output_dir, summary = forecast_run
    assert set(summary["tflite_models"]) == {"float32"}
    report = json.loads(pathlib.Path(summary["tflite_report"]["json"]).read_text())
    assert report["metric"] == "mae" and report["model_kind"] == "forecast"
    assert "float16" in report["failed_modes"]
    (model,) = report["models"]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in model["operators"]
    for runtime in ("litert", "tflite_runtime"):
        result = model["runtimes"][runtime]
        assert result["max_abs_difference"] < 1e-3
        assert abs(result["mae_increase"]) < 1e-4
    assert report["input_scaling"]["columns"] == ["OT", "HUFL"]
    from tfprod.mobile.verify import TfliteClassifier

    model_bytes = pathlib.Path(summary["tflite_models"]["float32"]).read_bytes()
    interpreter = TfliteClassifier(model_bytes, "litert")
    assert list(interpreter.input["shape"]) == [1, LOOKBACK, 2]
    assert list(interpreter.output["shape"]) == [1, HORIZON]
    android = pathlib.Path(summary["tflite_report"]["json"]).parent / "android"
    assert (android / "assets" / "float32.tflite").is_file()
    assert "float16" in (android / "README.md").read_text()
