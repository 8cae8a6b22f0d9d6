"""The run report's builder on real runs (see conftest.py): what report.html says, checked
against the run's own files, data and model.

The pipeline runs are real (`tfprod run` in a subprocess); `tfprod report` and the
builder run in this process.
"""

import base64
import json
import os
import pathlib
import re
import subprocess

import numpy as np
import pytest

from tfprod.contract import features

from tfprod import cli
from tfprod.pipeline.report import builder, readers, sections
from tfprod.pipeline.report.run_data import RunData, load_run
from tests.conftest import MOBILE_RUN_TEST_IMAGES, MOBILE_RUN_TRAIN_IMAGES, REPO_ROOT, load_sample
from tests.report.conftest import BAD_LABEL
from tests.report.page_index import PageIndex

MAIN_SECTIONS = ["overview", "data", "samples", "training", "evaluation", "mobile", "serving"]


@pytest.fixture(scope="module")
def good(report_runs):
    return report_runs["good"]


@pytest.fixture(scope="module")
def rebuilt(good, tmp_path_factory):
    """`tfprod report` run again on the finished run, to another file."""
    path = tmp_path_factory.mktemp("rebuilt") / "report.html"
    assert cli.main(["report", "--output-dir", str(good.output_dir), "--report", str(path)]) == 0
    return PageIndex(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def page(good):
    """The report the run itself wrote."""
    return PageIndex(good.report_path.read_text(encoding="utf-8"))


def test_run_writes_the_report_and_the_summary_ends_with_its_path(good):
    assert good.report_path.is_file()
    assert good.stdout.rstrip().splitlines()[-1] == f"Report: {good.report_path}"
    summary = good.summary
    assert summary["report_path"] == str(good.report_path)
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert summary["git_commit"].split()[0] == head


def test_report_is_self_contained(good, page):
    # Every src/href is an inline data: URI or an in-page anchor; no scripts, no stylesheets.
    assert page.attribute_urls
    for url in page.attribute_urls:
        assert url.startswith("data:") or url.startswith("#"), url
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "@import" not in good.report_path.read_text(encoding="utf-8")


def test_main_sections_are_present_and_none_failed(page, rebuilt):
    for index in (page, rebuilt):
        for section_id in MAIN_SECTIONS:
            assert index.sections[section_id]["class"] == "present", section_id
        # Sections of other tasks are left out, not shown empty.
        assert "forecast" not in index.sections and "table" not in index.sections
        assert "could not be built" not in " ".join(s["text"] for s in index.sections.values())
    assert set(page.images) == set(rebuilt.images)


def test_header_shows_status_blessing_push_and_component_times(good, page):
    summary = good.summary
    text = page.sections["overview"]["text"]
    assert "run succeeded" in text and "blessed" in text and "not blessed" not in text
    facts = dict(page.tables["run-facts"][1:])
    assert facts["pushed to"] == summary["pushed_model_dir"]
    assert facts["git commit"] == summary["git_commit"]
    times = {row[0]: float(row[1]) for row in page.tables["component-times"][1:]}
    # The table shows four significant digits (133.5 for 133.54).
    assert times == pytest.approx(summary["component_seconds"], rel=1e-3, abs=1e-3)
    assert "mnist_cnn" in page.pres["config-yaml"] and "trainer:" in page.pres["config-yaml"]


def test_class_balance_counts_every_example_of_each_split(good, page):
    train_images, train_labels, test_images, test_labels = load_sample()
    rows = page.table_dicts("class-counts")
    counted = {int(row["class"]): {split: int(row[split].replace(",", ""))
                                   for split in ("train", "eval", "test")} for row in rows}
    expected_train = np.bincount(train_labels[:MOBILE_RUN_TRAIN_IMAGES], minlength=10)
    expected_test = np.bincount(test_labels[:MOBILE_RUN_TEST_IMAGES], minlength=10)
    for label in range(10):
        # ExampleGen splits the train files into train and eval by a hash of each example.
        assert counted[label]["train"] + counted[label]["eval"] == expected_train[label]
        assert counted[label]["test"] == expected_test[label]
    split_counts = dict(page.tables["split-counts"][1:])
    assert int(split_counts["test"]) == MOBILE_RUN_TEST_IMAGES
    assert int(split_counts["train"].replace(",", "")) + int(split_counts["eval"]) == MOBILE_RUN_TRAIN_IMAGES
    assert "found no anomalies" in page.sections["data"]["text"]
    statistics = page.table_dicts("feature-statistics")
    image_train = next(r for r in statistics if r["feature"] == "image" and r["split"] == "train")
    assert image_train["values per example"] == "784" and image_train["max"] == "255"


def test_training_curves_match_the_trainers_stats(good, page):
    run = load_run(str(good.output_dir))
    stats = json.loads((pathlib.Path(run.uri("model_run")) / "training_stats.json").read_text())
    rows = page.table_dicts("training-history")
    assert len(rows) == stats["epochs_run"] == 2
    for name, values in stats["history"].items():
        assert [float(row[name]) for row in rows] == pytest.approx(values, abs=1e-4)
    # The TensorBoard logs (the fallback source) hold the same per-epoch values.
    tensorboard = readers.read_tensorboard_history(run.uri("model_run"))
    for name, values in stats["history"].items():
        assert tensorboard[name] == pytest.approx(values, rel=1e-5)
    assert {"chart-training-loss", "chart-training-accuracy"} <= set(page.images)


def test_evaluation_shows_tfma_metrics_thresholds_and_a_consistent_confusion_matrix(good, page):
    summary = good.summary
    overall = {row["metric"]: row for row in page.table_dicts("metrics-overall")}
    assert float(overall["accuracy"]["new model"]) == pytest.approx(
        summary["metrics"]["accuracy"], abs=1e-4)
    assert overall["accuracy"]["threshold"] == ">= 0.5"
    assert overall["accuracy"]["result"] == "pass"
    assert "No baseline" in page.sections["evaluation"]["text"]
    per_slice = {row["slice"]: row for row in page.table_dicts("metrics-per-slice")}
    assert set(per_slice) == {f"label={digit}" for digit in range(10)}
    for name, metrics in summary["slice_metrics"].items():
        assert float(per_slice[name]["accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-4)

    run = load_run(str(good.output_dir))
    result = readers.confusion_matrix(run)
    matrix = result["matrix"]
    assert matrix.shape == (10, 10) and matrix.sum() == MOBILE_RUN_TEST_IMAGES
    # Computed from the model here, it agrees with TFMA on the same split.
    assert np.trace(matrix) / matrix.sum() == pytest.approx(summary["metrics"]["accuracy"],
                                                            abs=1e-3)
    _, _, _, test_labels = load_sample()
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(test_labels[:MOBILE_RUN_TEST_IMAGES], minlength=10))
    assert "chart-confusion-matrix" in page.images


def test_mobile_table_lists_every_variant_with_its_real_size(good, page):
    summary = good.summary
    rows = page.table_dicts("tflite-models")
    modes = {row["mode"] for row in rows}
    assert modes == set(summary["tflite_models"])
    assert len(rows) == 2 * len(modes)  # LiteRT and tflite-runtime
    for row in rows:
        size = os.path.getsize(summary["tflite_models"][row["mode"]]) / 1024
        assert float(row["size (KB)"].replace(",", "")) == pytest.approx(size, abs=0.06)
        assert 0.0 <= float(row["accuracy"]) <= 1.0
    metadata = dict(page.tables["tflite-metadata"][1:])
    assert metadata["name"] == "mnist_cnn" and "labels" in metadata["associated files"]


def test_serving_signatures_and_copyable_requests_work_on_the_model(good, page):
    import tensorflow as tf

    model = tf.saved_model.load(good.summary["pushed_model_dir"])
    listed = {(row["signature"], row["tensor"]): row for row in page.table_dicts("signatures")}
    for name in model.signatures.keys():
        _, inputs = model.signatures[name].structured_input_signature
        for tensor, spec in inputs.items():
            assert listed[(name, tensor)]["dtype"] == spec.dtype.name
    assert listed[("serving_raw", "image")]["shape"] == "[N, 28, 28]"

    rest = page.pres["rest-request"]
    body = json.loads(rest.split("<<'JSON'\n", 1)[1].split("\nJSON\n", 1)[0])
    assert body["signature_name"] == features.SERVING_RAW_SIGNATURE
    raw_class = model.signatures["serving_raw"](
        image=tf.constant(body["instances"], tf.float32))["class_id"].numpy()
    examples_body = json.loads(re.search(r"-d '(\{.*?\})'", page.pres["rest-request-examples"])
                               .group(1))
    serialized = base64.b64decode(examples_body["instances"][0]["b64"])
    example_class = model.signatures["serving_default"](
        examples=tf.constant([serialized]))["class_id"].numpy()
    # Both requests carry the same test image, and the model gives it the same class.
    assert raw_class.tolist() == example_class.tolist()
    pixels = tf.train.Example.FromString(serialized).features.feature["image"].int64_list.value
    assert np.array(body["instances"][0]).ravel().tolist() == list(pixels)
    assert "serving_default" in page.pres["grpc-request"]
    assert f"--model_base_path={os.path.dirname(good.summary['pushed_model_dir'])}" \
        in page.pres["serve-command"]


def test_run_stopped_by_anomalies_still_has_a_report(report_runs):
    bad = report_runs["bad_data"]
    assert bad.returncode == 3, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert f"Report: {bad.report_path}" in bad.stdout
    page = PageIndex(bad.report_path.read_text(encoding="utf-8"))
    overview = page.sections["overview"]["text"]
    assert "run failed" in overview and "AnomaliesGate" in overview
    anomalies = page.table_dicts("anomalies")
    assert any(row["feature"] == "label" and row["split"] == "train" for row in anomalies)
    assert page.sections["data"]["class"] == "present"
    # Sample images are there (the examples were written); the label 12 is its own row.
    assert page.sections["samples"]["class"] == "present"
    counts = {int(row["class"]): row for row in page.table_dicts("class-counts")}
    assert int(counts[BAD_LABEL]["train"]) + int(counts[BAD_LABEL]["eval"]) == 5
    for section_id in ("training", "evaluation", "mobile", "serving"):
        assert page.sections[section_id]["class"] == "absent", section_id
        assert "Not present" in page.sections[section_id]["text"]
    assert "could not be built" not in " ".join(s["text"] for s in page.sections.values())


def test_report_command_explains_a_directory_without_a_run(tmp_path, capsys):
    assert cli.main(["report", "--output-dir", str(tmp_path)]) == 2
    assert "is it the output directory of a `tfprod run`" in capsys.readouterr().err


def test_forecast_hook_shows_error_metrics_beside_baselines():
    """A forecaster's summary (mae/rmse and baseline MAEs) without any artifacts."""
    run = RunData(output_dir="/nonexistent", config={}, config_text="", summary={
        "status": "succeeded",
        "metrics": {"mae": 0.21, "rmse": 0.3, "baseline_last_value_mae": 0.4, "example_count": 9}})
    section = sections.forecast_section(run)
    assert section.present
    page = PageIndex(section.body)
    assert {row["metric"] for row in page.table_dicts("forecast-metrics")} == {
        "mae", "rmse", "baseline_last_value_mae"}
    assert page.images["chart-forecast-metrics"]["src"].startswith("data:image/svg+xml;base64,")
    assert "predicted against actual" in section.body
    # A run with no artifacts: every other section says what is missing instead of failing;
    # the image and table sections are not shown at all for a forecaster.
    html = builder.render(run)
    assert "could not be built" not in html and html.count("Not present:") >= 5
    assert 'id="samples"' not in html and 'id="table"' not in html


def test_report_snippets_run_against_tfprod_serve(good, tmp_path):
    """The report's requests, run as written against `tfprod serve` on the pushed model: the
    raw pixels over REST and gRPC (request.json written by the page), the tf.Example over
    REST and the Python gRPC snippet: one test image, one class, everywhere."""
    from tests.report.snippets import check_report_snippets

    result = check_report_snippets(good.report_path, tmp_path)
    class_id = result["rest"][0]["predictions"][0]["class_id"]
    assert result["rest"][2]["outputs"]["class_id"] == [class_id]
    assert result["rest_examples"]["predictions"][0]["class_id"] == class_id
    assert result["grpc"]["class_id"] == [class_id]


def test_top_of_the_report_shows_the_verdict_headline_and_tensorboard(good, page):
    from tfprod.pipeline.report.html import number

    summary = good.summary
    headline = f"accuracy {number(summary['metrics']['accuracy'])}"
    overview = page.sections["overview"]["text"]
    assert f"blessed: {headline}" in overview
    assert f"· {headline}</div>" in good.report_path.read_text(encoding="utf-8")
    run = load_run(str(good.output_dir))
    command = f".venv/bin/tensorboard --logdir {run.uri('model_run')} --port 6006"
    assert dict(page.tables["run-facts"][1:])["TensorBoard"] == command
    assert page.pres["tensorboard-command"] == command
    # The label is shown as classes (class balance), not as a numeric feature.
    statistics = page.table_dicts("feature-statistics")
    assert "label" not in {row["feature"] for row in statistics}
    assert "label-statistics" not in page.tables
    captions = " ".join(image.get("alt", "") for image in page.images.values())
    assert "of 'label'" not in captions and "of 'image'" in captions
    facts = dict(page.tables["run-facts"][1:])
    speed = facts.get("training examples/s (after epoch 1)")
    if speed:
        assert not speed.endswith("000"), speed
