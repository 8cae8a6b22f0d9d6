"""The report's fixes that need no pipeline run: number formatting, the per-slice axis,
the label and timestamps in the data section, task-specific sections only, the verdict and
headline at the top, the TensorBoard command and the raw request of text and forecasts.
(The snippets themselves run against `tfprod serve` in test_report_builder.py and the text
and forecasting e2e tests.)"""

import base64
import re

import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2

from tfprod.pipeline.report import builder, charts, html, sections
from tfprod.pipeline.report.run_data import ArtifactRef, RunData
from tests.report.page_index import PageIndex

FORECAST_CONFIG = {"name": "etth1", "data": {
    "source": "files", "format": "csv",
    "time_series": {"target_column": "OT", "feature_columns": ["HUFL", "OT"]}},
    "export": {"model_name": "etth1_lstm"}}
IMAGE_CONFIG = {"name": "mnist", "data": {"source": "files", "format": "idx"}}


@pytest.mark.parametrize("value, shown", [
    (50.61, "50.61"), (3.2, "3.2"), (2.0, "2"), (0.95, "0.95"), (0.951234, "0.9512"),
    (2.302585, "2.3026"), (0.000123456, "0.0001235"), (1234.56, "1,234.6"), (-0.25, "-0.25"),
    (1.5e-9, "1.5e-09"), (0.0, "0")])
def test_numbers_have_no_padding_zeros(value, shown):
    assert html.format_number(value) == shown


def test_table_cells_use_the_same_format():
    page = PageIndex(html.table(["a", "b", "c"], [(50.61, 3.2, 7)], table_id="t"))
    assert page.tables["t"][1] == ["50.61", "3.2", "7"]


def _tick_labels(uri: str):
    svg = base64.b64decode(uri.split(",", 1)[1]).decode()
    return [float(text.replace("−", "-")) for text in
            re.findall(r"<text[^>]*>\s*([−\-]?\d+(?:\.\d+)?)\s*</text>", svg)]


def test_per_slice_axis_fits_the_values():
    assert charts.fitted_limits([0.92, 0.99, None]) == pytest.approx((0.9095, 1.0005))
    low, high = charts.fitted_limits([0.5, 0.5])
    assert low < 0.5 < high
    uri = charts.bar_chart(["a", "b", "c"], {"new model": [0.92, 0.95, 0.99]}, "accuracy",
                           "accuracy", fit_range=True)
    ticks = [tick for tick in _tick_labels(uri) if tick < 1.5]  # value ticks, not bar indexes
    assert ticks and min(ticks) >= 0.9 and max(ticks) <= 1.001, ticks


def _statistics():
    dataset = statistics_pb2.DatasetFeatureStatistics(num_examples=10)
    for name, mean in (("OT", 12.5), ("forecast_label", 13.0), ("window_end_timestamp", 1.5e9)):
        feature = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.FLOAT)
        feature.path.step.append(name)
        feature.num_stats.mean = mean
        feature.num_stats.max = 2 * mean
        feature.num_stats.common_stats.num_non_missing = 10
        histogram = feature.num_stats.histograms.add(type=statistics_pb2.Histogram.STANDARD)
        histogram.buckets.add(low_value=0, high_value=mean, sample_count=5)
        histogram.buckets.add(low_value=mean, high_value=2 * mean, sample_count=5)
    return {"train": dataset}


def test_label_and_timestamps_are_not_histogrammed_features():
    run = RunData(output_dir="/nonexistent", config=FORECAST_CONFIG, config_text="",
                  summary={"status": "succeeded", "metrics": {"mae": 0.5}})
    run._cache["statistics"] = _statistics()
    run._cache["class_counts"] = None
    page = PageIndex(sections.data_section(run).body)
    rows = {row["feature"]: row for row in page.table_dicts("feature-statistics")}
    assert set(rows) == {"OT", "window_end_timestamp"}
    assert rows["OT"]["mean"] == "12.5"
    assert rows["window_end_timestamp"]["mean"] == "–"
    assert [row["feature"] for row in page.table_dicts("label-statistics")] == ["forecast_label"]
    captions = [image["alt"] for image in page.images.values()]
    assert len(captions) == 1 and "'OT'" in captions[0]
    assert "Class balance" not in page.sections.get("data", {"text": ""})["text"]
    assert "Class balance" not in sections.data_section(run).body


def test_only_the_runs_task_sections_are_shown():
    forecaster = RunData(output_dir="/nonexistent", config=FORECAST_CONFIG, config_text="",
                         summary={"status": "succeeded", "metrics": {"mae": 0.5}})
    page = PageIndex(builder.render(forecaster))
    assert "forecast" in page.sections
    assert not {"samples", "table"} & set(page.sections)
    image = RunData(output_dir="/nonexistent", config=IMAGE_CONFIG, config_text="",
                    summary={"status": "succeeded", "metrics": {"accuracy": 0.9}})
    page = PageIndex(builder.render(image))
    assert not {"forecast", "table"} & set(page.sections)


def test_a_blessed_run_shows_its_headline_verdict_and_tensorboard_command():
    run = RunData(output_dir="/nonexistent", config=IMAGE_CONFIG, config_text="", summary={
        "status": "succeeded", "blessed": True, "validation_failures": [],
        "metrics": {"accuracy": 0.95061, "example_count": 500},
        "training": {"steady_examples_per_second": 3.2}})
    run.artifacts["model_run"] = ArtifactRef("Trainer", "model_run", "/runs/model_run/7", "")
    text = builder.render(run)
    page = PageIndex(text)
    overview = page.sections["overview"]["text"]
    assert "blessed: accuracy 0.9506" in overview and "every threshold met" in overview
    assert "succeeded · blessed · accuracy 0.9506</div>" in text
    facts = dict(page.tables["run-facts"][1:])
    assert facts["training examples/s (after epoch 1)"] == "3.2"
    assert facts["TensorBoard"] == ".venv/bin/tensorboard --logdir /runs/model_run/7 --port 6006"


def _example(**values):
    import tensorflow as tf

    example = tf.train.Example()
    for name, value in values.items():
        feature = example.features.feature[name]
        if isinstance(value[0], bytes):
            feature.bytes_list.value.extend(value)
        else:
            feature.float_list.value.extend(value)
    return example


def test_raw_requests_of_text_tables_and_forecasts():
    text_run = RunData(output_dir="/x", config={}, config_text="", summary={})
    signature = {"inputs": [{"name": "text"}], "outputs": []}
    assert sections._raw_instance(text_run, _example(text=[b"a fine film"]), signature) \
        == "a fine film"
    table = {"inputs": [{"name": "age"}, {"name": "city"}], "outputs": []}
    assert sections._raw_instance(text_run, _example(age=[31.0], city=[b"Oslo"]), table) == {
        "age": 31.0, "city": "Oslo"}
    forecaster = RunData(output_dir="/x", config=FORECAST_CONFIG, config_text="", summary={})
    window = {"inputs": [{"name": "window"}], "outputs": []}
    example = _example(OT=[1.0, 2.0, 3.0], HUFL=[4.0, 5.0, 6.0])
    # Columns in the model's order: feature_columns (HUFL, OT), one row per step.
    assert sections._raw_instance(forecaster, example, window) == [[4.0, 1.0], [5.0, 2.0],
                                                                  [6.0, 3.0]]
