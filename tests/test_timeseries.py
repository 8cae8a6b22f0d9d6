"""Time series ingestion: CSV checks, chronological splits, windowing, baselines, the
forecaster's custom layer, and the forecasting config. Small synthetic and real CSVs."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tfprod.models import forecasting as forecasting_models
from tfprod.models import registry
from tfprod.pipeline import checks
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.ingestion import timeseries
from tfprod.pipeline.tasks.forecasting import signatures as forecasting_signatures
from tests.conftest import SHARED_DATA

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ETTH1_CONFIG = REPO_ROOT / "configs" / "etth1_lstm.yaml"
AIRLINE_CSV = SHARED_DATA / "time_series" / "airline_passengers.csv"


def spec(**overrides):
    values = dict(timestamp_column="time", target_column="y", feature_columns=None,
                  lookback=4, horizon=2, frequency="h", train_fraction=0.6,
                  eval_fraction=0.2, window_stride=1)
    values.update(overrides)
    return timeseries.SeriesSpec(**values)


def write_csv(directory, rows, header="time,x,y", name="series.csv"):
    path = pathlib.Path(directory) / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def hourly_rows(count, start_hour=0):
    """Row i: timestamp i hours after 2020-01-01, x = 1000 + i, y = i (the row index)."""
    base = np.datetime64("2020-01-01T00:00")
    return [f"{base + np.timedelta64(start_hour + i, 'h')},{1000 + i},{i}" for i in range(count)]


def randomise_weights(model):
    """Random weights everywhere, so the zero-initialised outputs do not hide the network."""
    rng = np.random.RandomState(1)
    model.set_weights([rng.normal(0.0, 0.3, w.shape).astype(np.float32)
                       for w in model.get_weights()])


def test_windows_stay_inside_their_split_and_cover_it(tmp_path):
    path = write_csv(tmp_path, hourly_rows(50))
    series_spec = spec()
    series = timeseries.read_series(path, series_spec)
    bounds = timeseries.split_bounds(len(series), series_spec)
    assert [(r.start, r.stop) for r in bounds.values()] == [(0, 30), (30, 40), (40, 50)]
    for name, rows in bounds.items():
        split_windows = list(timeseries.windows(series, rows, series_spec))
        # Every window that fits: len - lookback - horizon + 1, none more.
        assert len(split_windows) == len(rows) - 4 - 2 + 1
        for window in split_windows:
            used = window.inputs[:, 1].tolist() + window.label.tolist()  # y = row index
            assert used == list(range(window.start, window.start + 6))
            assert rows.start <= min(used) and max(used) < rows.stop
        assert split_windows[0].start == rows.start
        assert split_windows[-1].start + 6 == rows.stop
        np.testing.assert_array_equal(split_windows[0].inputs[:, 0],
                                      1000 + np.arange(rows.start, rows.start + 4))


def test_no_leakage_between_split_examples(tmp_path):
    """Every row's value appears in the examples of at most one split (y is the row index)."""
    path = write_csv(tmp_path, hourly_rows(60))
    examples = timeseries.split_examples(path, spec(window_stride=2))
    rows_per_split = {}
    for name, serialized in examples.items():
        assert serialized, name
        rows = set()
        ends = []
        for record in serialized:
            example = tf.train.Example.FromString(record)
            feature = example.features.feature
            rows |= set(feature["y"].float_list.value) | set(
                feature[timeseries.LABEL_KEY].float_list.value)
            ends.append(feature[timeseries.WINDOW_END_KEY].int64_list.value[0])
            assert len(feature["x"].float_list.value) == 4
            assert len(feature[timeseries.LABEL_KEY].float_list.value) == 2
        rows_per_split[name] = rows
        assert ends == sorted(ends)
    assert max(rows_per_split["train"]) < min(rows_per_split["eval"])
    assert max(rows_per_split["eval"]) < min(rows_per_split["test"])


@pytest.mark.parametrize("rows, message", [
    (hourly_rows(10) + hourly_rows(1, start_hour=9)[:1] + hourly_rows(10, start_hour=10),
     r"1 duplicate timestamp\(s\) at line 12"),
    (hourly_rows(10) + hourly_rows(10, start_hour=12), r"1 step\(s\) differ .* at line 12 \(first: 2020-01-01T09:00:00.* -> 2020-01-01T12:00"),
    (hourly_rows(5) + hourly_rows(1, start_hour=2) + hourly_rows(10, start_hour=6),
     r"backwards at line 7"),
    (hourly_rows(5) + ["not a date,1,2"] + hourly_rows(10, start_hour=6),
     r"cannot be parsed, at line 7"),
])
def test_bad_timestamps_name_the_lines(tmp_path, rows, message):
    path = write_csv(tmp_path, rows)
    with pytest.raises(timeseries.TimeSeriesFormatError, match=message):
        timeseries.read_series(path, spec())


def test_gaps_are_found_when_the_step_is_inferred(tmp_path):
    path = write_csv(tmp_path, hourly_rows(20) + hourly_rows(20, start_hour=25))
    with pytest.raises(timeseries.TimeSeriesFormatError,
                       match=r"not evenly spaced.*0 days 01:00:00.*line 22"):
        timeseries.read_series(path, spec(frequency="infer"))


def test_non_numeric_and_missing_values_name_line_and_column(tmp_path):
    rows = hourly_rows(20)
    rows[7] = rows[7].rsplit(",", 1)[0] + ",n/a"
    with pytest.raises(timeseries.TimeSeriesFormatError,
                       match=r"column 'y' has 1 non-numeric value\(s\) at line 9 \(first: 'n/a'\)"):
        timeseries.read_series(write_csv(tmp_path, rows), spec())
    rows = hourly_rows(20)
    rows[3] = rows[3].split(",")[0] + ",," + rows[3].split(",")[2]
    with pytest.raises(timeseries.TimeSeriesFormatError,
                       match=r"column 'x' has 1 missing value\(s\) at line 5"):
        timeseries.read_series(write_csv(tmp_path, rows, name="missing.csv"), spec())


def test_missing_columns_and_short_splits_are_explained(tmp_path):
    path = write_csv(tmp_path, hourly_rows(20))
    with pytest.raises(timeseries.TimeSeriesFormatError, match=r"no target column 'OT'"):
        timeseries.read_series(path, spec(target_column="OT"))
    with pytest.raises(timeseries.TimeSeriesFormatError, match=r"no timestamp column 'date'"):
        timeseries.read_series(path, spec(timestamp_column="date"))
    with pytest.raises(timeseries.TimeSeriesFormatError, match=r"the eval split has 4 rows"):
        timeseries.split_bounds(20, spec())


def test_a_directory_with_one_differently_named_csv_uses_it(tmp_path, caplog):
    """Another station's file: the config names ETTh1.csv, the directory holds one CSV."""
    station = write_csv(tmp_path, hourly_rows(60), name="station_7.csv")
    (tmp_path / "notes.txt").write_text("not a series")
    with caplog.at_level("WARNING", logger=timeseries.__name__):
        assert timeseries.find_csv(str(tmp_path), "ETTh1.csv") == station
    assert "'ETTh1.csv' matched nothing" in caplog.text and "station_7.csv" in caplog.text
    assert timeseries.find_csv(str(tmp_path), None) == station  # file: null
    assert timeseries.find_csv(str(tmp_path), "station_*.csv") == station
    # The forecasting task's preflight records the file it read, so the ExampleGen reads it
    # and config.yaml says which file it was.
    experiment = config_lib.load_config(str(ETTH1_CONFIG), [
        f"data.data_dir={tmp_path}", "data.time_series.timestamp_column=time",
        "data.time_series.target_column=y", "data.time_series.feature_columns=[y]",
        "data.time_series.lookback=4", "data.time_series.horizon=2",
        "data.time_series.seasonal_period=2"])
    from tfprod.pipeline import tasks

    tasks.get_task(experiment).preflight(experiment)
    assert experiment.data.time_series.file == "station_7.csv"


def test_two_csvs_stop_with_their_names_and_the_set_to_pass(tmp_path):
    write_csv(tmp_path, hourly_rows(20), name="a.csv")
    write_csv(tmp_path, hourly_rows(20), name="b.csv")
    with pytest.raises(timeseries.TimeSeriesFormatError,
                       match=r"'ETTh1.csv' matched nothing .* holds 2 CSVs \(a.csv, b.csv\); "
                             r"pick one with --set data.time_series.file=a.csv"):
        timeseries.find_csv(str(tmp_path), "ETTh1.csv")
    with pytest.raises(timeseries.TimeSeriesFormatError, match=r"holds 2 CSVs"):
        timeseries.find_csv(str(tmp_path), None)
    with pytest.raises(timeseries.TimeSeriesFormatError,
                       match=r"'\*.csv' matches 2 files .*a.csv, b.csv; name one with "
                             r"--set data.time_series.file="):
        timeseries.find_csv(str(tmp_path), "*.csv")
    assert timeseries.find_csv(str(tmp_path), "b.csv").endswith("b.csv")
    with pytest.raises(timeseries.TimeSeriesFormatError, match=r"holds no .csv file"):
        timeseries.find_csv(str(tmp_path / "empty_dir_that_is_missing"), "x.csv")


def test_the_mean_predictor_baseline_of_a_series_scores_the_test_windows(tmp_path):
    """y = row index: train rows 0..35 (mean 17.5); test rows 48..59, windows of 4 -> 2."""
    write_csv(tmp_path, hourly_rows(60), name="series.csv")
    experiment = config_lib.load_config(str(ETTH1_CONFIG), [
        f"data.data_dir={tmp_path}", "data.time_series.file=series.csv",
        "data.time_series.timestamp_column=time", "data.time_series.target_column=y",
        "data.time_series.feature_columns=[y]", "data.time_series.lookback=4",
        "data.time_series.horizon=2", "data.time_series.seasonal_period=2",
        "data.time_series.train_fraction=0.6", "data.time_series.eval_fraction=0.2",
        "eval.gate=baseline", "eval.mae_threshold=null", "eval.baseline_margin=0.1"])
    from tfprod.pipeline import tasks
    from tfprod.pipeline.tasks import forecasting

    # The labels of the test windows: rows start+4, start+5 for start in 48..54.
    labels = np.array([[start + 4, start + 5] for start in range(48, 55)], np.float64)
    expected = float(np.mean(np.abs(labels - 17.5)))
    task = tasks.get_task(experiment)
    baseline = task.baseline_metrics(experiment)["mean_baseline_mae"]
    assert baseline == pytest.approx(expected)
    eval_config = task.eval_config(experiment)
    forecast_mae = next(metric for spec_ in eval_config.metrics_specs
                        if list(spec_.output_names) == [forecasting.FORECAST_OUTPUT]
                        for metric in spec_.metrics if metric.class_name == "MeanAbsoluteError")
    assert forecast_mae.threshold.value_threshold.upper_bound.value == pytest.approx(
        0.9 * expected)


def test_monthly_airline_csv_infers_its_calendar_step():
    series_spec = spec(timestamp_column="Month", target_column="Passengers", frequency="infer",
                       lookback=12, horizon=6, train_fraction=0.6, eval_fraction=0.2)
    series = timeseries.read_series(str(AIRLINE_CSV), series_spec)
    assert series.step == "MS" and series.columns == ["Passengers"] and len(series) == 144
    # 144 months: 86 train, 29 eval, 29 test rows; windows of 12 + 6 rows.
    examples = timeseries.split_examples(str(AIRLINE_CSV), series_spec)
    assert {name: len(value) for name, value in examples.items()} == {
        "train": 86 - 18 + 1, "eval": 29 - 18 + 1, "test": 29 - 18 + 1}


def test_baselines_repeat_the_last_value_and_the_value_a_period_earlier():
    history = tf.constant([np.arange(10, dtype=np.float32)])  # t = 9 is the last step
    persistence, seasonal = forecasting_signatures.baseline_forecasts(history, horizon=5, seasonal_period=3)
    np.testing.assert_array_equal(persistence.numpy(), [[9, 9, 9, 9, 9]])
    # Step h forecasts t + h - 3 * ceil(h / 3): 7, 8, 9, then 7, 8 again.
    np.testing.assert_array_equal(seasonal.numpy(), [[7, 8, 9, 7, 8]])


def test_last_value_residual_round_trips_and_saves(tmp_path):
    layer = forecasting_models.LastValueResidual(target_index=1, name="forecast")
    clone = forecasting_models.LastValueResidual.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    window = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    change = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(layer([window, change]).numpy(), [[11, 11], [23, 23]])

    inputs = registry.ModelInputs(feature_name="window_xf", feature_shape=(12,), num_classes=0,
                                  window_shape=(4, 3), horizon=2, target_index=1)
    model_config = config_lib.ModelConfig(
        name="lstm_forecaster",
        lstm_forecaster=config_lib.LstmForecasterConfig(lstm_units=[4, 3], dropout=0.0))
    model = registry.build_model(model_config, inputs)
    batch = np.random.RandomState(0).randn(5, 12).astype(np.float32)
    randomise_weights(model)
    expected = model(batch, training=False).numpy()
    assert expected.shape == (5, 2)
    assert not np.allclose(expected, np.repeat(batch.reshape(5, 4, 3)[:, -1:, 1], 2, axis=1))
    path = str(tmp_path / "forecaster.keras")
    model.save(path)
    reloaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(batch, training=False).numpy(), expected, rtol=1e-6)


def test_position_embedding_round_trips_and_the_transformer_forecaster_saves(tmp_path):
    layer = forecasting_models.PositionEmbedding(sequence_length=4, name="positions")
    clone = forecasting_models.PositionEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    sequence = np.zeros((2, 4, 3), np.float32)
    embedded = layer(sequence).numpy()
    np.testing.assert_allclose(embedded[0], layer.position_embeddings.numpy())

    inputs = registry.ModelInputs(feature_name="window_xf", feature_shape=(12,), num_classes=0,
                                  window_shape=(4, 3), horizon=2, target_index=0)
    model_config = config_lib.ModelConfig(
        name="transformer_forecaster",
        transformer_forecaster=config_lib.TransformerForecasterConfig(
            model_width=4, num_heads=2, num_blocks=1, feed_forward_width=4, dropout=0.0))
    model = registry.build_model(model_config, inputs)
    batch = np.random.RandomState(0).randn(5, 12).astype(np.float32)
    randomise_weights(model)
    expected = model(batch, training=False).numpy()
    assert expected.shape == (5, 2)
    path = str(tmp_path / "transformer_forecaster.keras")
    model.save(path)
    reloaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(batch, training=False).numpy(), expected, rtol=1e-5)


def test_etth1_config_is_valid_and_needs_an_mae_threshold():
    experiment = config_lib.load_config(str(ETTH1_CONFIG),
                                        [f"data.data_dir={AIRLINE_CSV.parent}"])
    assert experiment.data.format == config_lib.DataFormat.CSV
    assert experiment.data.time_series.lookback == 96
    # Forecasters convert to TFLite (issue 21); float16 stays out: TF 2.16's converter crashes on the fused LSTM op.
    assert experiment.mobile.enabled is True
    assert "float16" not in experiment.mobile.modes
    with pytest.raises(config_lib.ConfigError, match=r"eval.mae_threshold.*eval.gate=baseline"):
        config_lib.load_config(str(ETTH1_CONFIG), ["eval.mae_threshold=null"])
    # The baseline gate needs no absolute MAE.
    assert config_lib.load_config(str(ETTH1_CONFIG), [
        "eval.mae_threshold=null", "eval.gate=baseline"]).eval.gate == config_lib.Gate.BASELINE
    with pytest.raises(config_lib.ConfigError, match=r"seasonal_period"):
        config_lib.load_config(str(ETTH1_CONFIG), ["data.time_series.seasonal_period=200"])
    with pytest.raises(config_lib.ConfigError, match=r"fits forecasting, not image"):
        checks.load_experiment(None, ["model.name=lstm_forecaster"])


def test_the_shipped_airline_sample_runs_the_forecasting_config_without_shared_data():
    """configs/airline_lstm.yaml reads data/airline_passengers (no ../shared): the config
    loads, the task's preflight reads the CSV, and the series makes windows in every split."""
    from tfprod.pipeline import tasks
    from tfprod.pipeline.tasks import forecasting

    experiment = config_lib.load_config(str(REPO_ROOT / "configs" / "airline_lstm.yaml"))
    sample = REPO_ROOT / "data" / "airline_passengers"
    assert pathlib.Path(experiment.data.data_dir).resolve() == sample.resolve()
    task = tasks.get_task(experiment)
    task.preflight(experiment)
    path = timeseries.find_csv(experiment.data.data_dir, experiment.data.time_series.file)
    series_spec = forecasting.series_spec(experiment)
    series = timeseries.read_series(path, series_spec)
    assert len(series) == 144 and series.step == "MS"
    examples = timeseries.split_examples(path, series_spec)
    assert {name: len(value) for name, value in examples.items()} == {
        "train": 86 - 18 + 1, "eval": 29 - 18 + 1, "test": 29 - 18 + 1}
