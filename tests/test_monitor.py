"""`tfprod monitor`: request logs (TF Serving PredictionLogs) against a run's training data.

Real TFDV statistics and comparators, real PredictionLog TFRecord files written here with
the stock protos, a real SavedModel (a nearest-centroid MNIST classifier built in-process
from the sample's training images, with the task's two request shapes). The whole command
against a real `tfprod run` is in tests/e2e/test_pipeline_e2e.py.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_log_pb2

from tfprod import errors
from tfprod.contract import features
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.monitor import check, compare, reader, report
from tfprod.pipeline.monitor import cli as monitor_cli
from tfprod.pipeline.monitor import features as monitor_features
from tests.conftest import REPO_ROOT

REFERENCE_TRAIN = 2000  # training images the reference statistics describe
MODEL_NAME = "mnist_cnn"


class CentroidModel(tf.Module):
    """A real MNIST classifier without training: the nearest class mean image."""

    def __init__(self, images, labels):
        super().__init__()
        flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
        self.centroids = tf.Variable(np.stack([flat[labels == c].mean(0) for c in range(10)]))

    def _outputs(self, pixels):
        x = tf.cast(pixels, tf.float32) / 255.0
        distances = tf.reduce_sum(tf.square(x[:, None, :] - self.centroids[None]), -1)
        probabilities = tf.nn.softmax(-distances * 10.0)
        return {features.PROBABILITIES_OUTPUT: probabilities,
                features.CLASS_ID_OUTPUT: tf.argmax(probabilities, -1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, {
            features.IMAGE_KEY: tf.io.FixedLenFeature([784], tf.int64)})
        return self._outputs(parsed[features.IMAGE_KEY])

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32,
                                                name=features.IMAGE_KEY)])
    def serve_raw(self, image):
        return self._outputs(tf.round(tf.reshape(image, [-1, 784])))


def image_example(image, label=None) -> bytes:
    feature = {features.IMAGE_KEY: tf.train.Feature(
        int64_list=tf.train.Int64List(value=image.ravel().astype(np.int64)))}
    if label is not None:
        feature[features.LABEL_KEY] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def mnist_reference(tmp_path_factory, mnist_sample):
    """A run's reference as `tfprod run` leaves it: statistics and schema of the train split,
    the model, and the test split's examples (GZIP TFRecords, as ExampleGen writes them)."""
    import tensorflow_data_validation as tfdv

    train_images, train_labels, test_images, test_labels = mnist_sample
    root = tmp_path_factory.mktemp("mnist_reference")
    statistics = compare.statistics_of_examples(
        [image_example(i, l) for i, l in zip(train_images[:REFERENCE_TRAIN],
                                             train_labels[:REFERENCE_TRAIN])])
    schema = tfdv.infer_schema(statistics, infer_feature_shape=True)
    model = CentroidModel(train_images, train_labels)
    model_dir = str(root / "model")
    tf.saved_model.save(model, model_dir, signatures={
        features.SERVING_DEFAULT_SIGNATURE: model.serve_examples.get_concrete_function(),
        features.SERVING_RAW_SIGNATURE: model.serve_raw.get_concrete_function()})
    split_dir = root / "examples" / "Split-test"
    split_dir.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split_dir / "data_tfrecord-00000-of-00001.gz"),
                              options="GZIP") as writer:
        for image, label in zip(test_images[:1000], test_labels[:1000]):
            writer.write(image_example(image, label))
    experiment = config_lib.ExperimentConfig()
    return check.Reference(output_dir=str(root), experiment=experiment, statistics=statistics,
                           schema=schema, statistics_path="(in memory)",
                           schema_path="(in memory)", model_dir=model_dir,
                           examples_uri=str(root / "examples"))


def predict_log(signature: str, inputs, outputs, version: int = 1):
    log = prediction_log_pb2.PredictionLog()
    log.log_metadata.model_spec.name = MODEL_NAME
    log.log_metadata.model_spec.version.value = version
    log.log_metadata.model_spec.signature_name = signature
    request, response = log.predict_log.request, log.predict_log.response
    request.model_spec.CopyFrom(log.log_metadata.model_spec)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return log


def write_logs(directory, logs, per_file: int = 4) -> None:
    """Finished log files as the server writes them, and one unfinished .tmp to ignore."""
    os.makedirs(directory, exist_ok=True)
    for number, start in enumerate(range(0, len(logs), per_file)):
        path = os.path.join(directory, f"prediction_log-{number:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for log in logs[start:start + per_file]:
                writer.write(log.SerializeToString())
    with open(os.path.join(directory, "prediction_log-99999.tfrecord.tmp"), "wb") as handle:
        handle.write(b"\x00half-written")


def served_logs(model_dir, images, batch: int = 20):
    """The images as the server logs them: alternating serving_default (tf.Examples),
    serving_raw [N, 28, 28] floats and serving_raw [N, 28, 28, 1] (both accepted by the
    server's reshaping; logged as sent), each with the model's response."""
    model = tf.saved_model.load(model_dir)
    logs = []
    for number, start in enumerate(range(0, len(images), batch)):
        chunk = images[start:start + batch]
        outputs = {k: v.numpy() for k, v in model.signatures[features.SERVING_RAW_SIGNATURE](
            image=tf.constant(chunk, tf.float32)).items()}
        if number % 3 == 0:
            inputs = {"examples": np.array([image_example(i) for i in chunk], dtype=object)}
            signature = features.SERVING_DEFAULT_SIGNATURE
        elif number % 3 == 1:
            inputs = {features.IMAGE_KEY: chunk.astype(np.float32)}
            signature = features.SERVING_RAW_SIGNATURE
        else:
            inputs = {features.IMAGE_KEY: chunk[..., None].astype(np.float32)}
            signature = features.SERVING_RAW_SIGNATURE
        logs.append(predict_log(signature, inputs, outputs))
    return logs


def test_requests_from_the_test_split_show_no_drift(tmp_path, mnist_reference, mnist_sample):
    test_images = mnist_sample[2][1000:1600]
    logs_dir = tmp_path / "logs"
    write_logs(logs_dir, served_logs(mnist_reference.model_dir, test_images))
    lines = []
    record = monitor_cli.monitor(mnist_reference, str(logs_dir), str(tmp_path / "out"),
                                 prometheus_textfile=str(tmp_path / "prom" / "tfprod.prom"),
                                 progress=lines.append)
    assert record["drift_detected"] is False and record["drifted"] == []
    assert record["examples"] == 600 and record["unfinished_files_ignored"] == 1
    # Both request shapes (and both raw tensor ranks) became features.
    assert record["by_signature"] == {"predict:serving_default": 200, "predict:serving_raw": 400}
    assert record["unmapped"] == {}
    (image,) = [f for f in record["features"] if f["feature"] == features.IMAGE_KEY]
    assert image["comparator"] == compare.JENSEN_SHANNON
    assert image["distance"] is not None and image["distance"] < 0.01
    assert record["prediction"]["comparator"] == compare.L_INFINITY
    assert record["prediction"]["distance"] < 0.1 and not record["prediction"]["drifted"]
    assert record["anomalies"] == []
    assert lines[-1] == "No drift."
    saved = json.loads((tmp_path / "out" / report.JSON_FILE).read_text())
    assert saved["features"] == record["features"]
    page = (tmp_path / "out" / report.HTML_FILE).read_text()
    assert "no drift" in page and 'id="feature-distances"' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    metrics = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(
                   (tmp_path / "prom" / "tfprod.prom").read_text())
               for sample in family.samples}
    assert metrics[("tfprod_monitor_drift_detected", (("model", MODEL_NAME),))] == 0
    assert metrics[("tfprod_monitor_feature_distance", (
        ("comparator", compare.JENSEN_SHANNON), ("feature", "image"),
        ("model", MODEL_NAME)))] == pytest.approx(image["distance"])


def test_inverted_fashion_like_pixels_are_drift_and_name_the_features(
        tmp_path, mnist_reference, mnist_sample):
    # Light objects on dark become dark on light, shifted two pixels: not MNIST any more.
    shifted = np.roll(255 - mnist_sample[2][1000:1300], 2, axis=2)
    logs_dir = tmp_path / "logs"
    write_logs(logs_dir, served_logs(mnist_reference.model_dir, shifted))
    with pytest.raises(errors.DriftDetected) as caught:
        monitor_cli.monitor(mnist_reference, str(logs_dir), str(tmp_path / "out"),
                            prometheus_textfile=str(tmp_path / "tfprod.prom"),
                            progress=lambda line: None)
    assert errors.exit_code(caught.value) == 4
    message = errors.describe(caught.value)
    assert message.startswith("drift detected: 2 past its threshold")
    assert "image (Jensen-Shannon divergence" in message and check.PREDICTION_KEY in message
    record = json.loads((tmp_path / "out" / report.JSON_FILE).read_text())
    assert record["drifted"] == [features.IMAGE_KEY, check.PREDICTION_KEY]
    (image,) = record["features"]
    assert image["distance"] > 0.3 and image["drifted"]
    assert record["prediction"]["distance"] > 0.3
    prometheus = (tmp_path / "tfprod.prom").read_text()
    assert f'tfprod_monitor_drift_detected{{model="{MODEL_NAME}"}} 1.0' in prometheus
    assert 'tfprod_monitor_feature_drifted{feature="image",model="mnist_cnn"} 1.0' in prometheus
    assert "drift detected" in (tmp_path / "out" / report.HTML_FILE).read_text()


def test_a_feature_threshold_from_the_config_decides(tmp_path, mnist_reference, mnist_sample):
    """monitor.features[] overrides the kind's default: a threshold of 0 makes even the
    test split's small distance drift, and only that feature is named."""
    experiment = config_lib.load_config(None, ["monitor.features=[{name: image, threshold: 0.0}]",
                                               "monitor.prediction_threshold=1.0"])
    reference = check.Reference(**{**mnist_reference.__dict__, "experiment": experiment})
    write_logs(tmp_path / "logs", served_logs(reference.model_dir, mnist_sample[2][1000:1200]))
    with pytest.raises(errors.DriftDetected, match=r"1 past its threshold.*: image \("):
        monitor_cli.monitor(reference, str(tmp_path / "logs"), str(tmp_path / "out"),
                            progress=lambda line: None)


def test_both_request_shapes_give_the_same_features(mnist_reference, mnist_sample):
    images = mnist_sample[2][:5]
    schema = mnist_reference.schema
    from_examples = [image_example(image) for image in images]
    as_floats, _ = monitor_features.raw_tensors_to_examples(
        {features.IMAGE_KEY: images.astype(np.float32)}, schema, missing_markers=False)
    with_channel, _ = monitor_features.raw_tensors_to_examples(
        {features.IMAGE_KEY: images[..., None].astype(np.float64) + 0.2}, schema, False)
    assert as_floats == from_examples and with_channel == from_examples
    wrong_size, reason = monitor_features.raw_tensors_to_examples(
        {features.IMAGE_KEY: np.zeros([2, 32, 32], np.float32)}, schema, False)
    assert wrong_size == [] and "1024 values per example, the schema's feature 784" in reason
    unknown, reason = monitor_features.raw_tensors_to_examples(
        {"window": np.zeros([2, 3, 4], np.float32)}, schema, False)
    assert unknown == [] and "window" in reason


def test_table_rows_map_with_missing_values_and_drift_per_column(tmp_path):
    """The table task's serving_raw rows (one [N] input per column: float32 with NaN for a
    missing number, "" for a missing string), against statistics of the task's own
    tf.Examples (pipeline.ingestion.table): categorical columns by L-infinity, numeric
    ones by Jensen-Shannon."""
    import tensorflow_data_validation as tfdv
    from tfprod.pipeline.ingestion import table

    data_dir = REPO_ROOT / "data" / "penguins_sample"
    experiment = config_lib.load_config(None, ["data.format=table",
                                               "data.table.label_column=species"])
    spec = table.infer_spec(str(data_dir), experiment.data.table, experiment.data.eval_fraction)
    train_rows = list(table.read_rows(str(data_dir / "train.csv"), spec))
    statistics = compare.statistics_of_examples(
        [table.make_example(row, spec)[1] for row in train_rows])
    schema = tfdv.infer_schema(statistics)

    def rows_request(rows, shift=None):
        """One serving_raw request of rows; shift: a string column's value replaced, and
        every number times 1.5."""
        inputs = {}
        for index, column in enumerate(spec.columns):
            values = [row[1][index] for row in rows]
            if column.kind == table.STRING:
                values = [(shift or {}).get(column.key, value) or "" for value in values]
                inputs[column.key] = np.array([value.encode() for value in values], dtype=object)
            else:
                numbers = np.array([np.nan if v is None else v for v in values], np.float32)
                inputs[column.key] = numbers * (1.5 if shift else 1.0)
        return predict_log(features.SERVING_RAW_SIGNATURE, inputs,
                           {features.CLASS_ID_OUTPUT: np.zeros(len(rows), np.int64)})

    # A row with missing cells maps to an example without those features (as the task's
    # own tf.Example of that CSV row has them), and a full row to the same example.
    empty = next(row for row in train_rows if sum(value is None for value in row[1]) >= 3)
    full = next(row for row in train_rows if all(value is not None for value in row[1]))
    mapped, _ = monitor_features.raw_tensors_to_examples(
        {name: tf.make_ndarray(tensor) for name, tensor in
         rows_request([empty, full]).predict_log.request.inputs.items()}, schema, True)
    without_label = [tf.train.Example.FromString(table.make_example(row, spec)[1])
                     for row in (empty, full)]
    for example in without_label:
        del example.features.feature[features.LABEL_KEY]
    assert [tf.train.Example.FromString(item) for item in mapped] == without_label

    reference = check.Reference(output_dir=str(tmp_path), experiment=experiment,
                                statistics=statistics, schema=schema, statistics_path="-",
                                schema_path="-")
    write_logs(tmp_path / "same", [rows_request(train_rows[i:i + 40]) for i in range(0, 240, 40)])
    record = check.run_check(reader.read_logs(str(tmp_path / "same")), reference)
    assert record["drift_detected"] is False, record["features"]
    assert record["examples"] == 240
    kinds = {f["feature"]: f["comparator"] for f in record["features"]}
    string_columns = [c.key for c in spec.columns if c.kind == table.STRING]
    float_columns = [c.key for c in spec.columns if c.kind == table.FLOAT]
    assert string_columns and float_columns
    assert all(kinds[key] == compare.L_INFINITY for key in string_columns)
    assert all(kinds[key] == compare.JENSEN_SHANNON for key in float_columns)
    assert record["prediction"] == {"skipped": "the run has no trained model"}

    island = next(c.key for c in spec.columns if c.name == "island")
    write_logs(tmp_path / "moved", [rows_request(train_rows[:120], shift={island: "Biscoe"})])
    record = check.run_check(reader.read_logs(str(tmp_path / "moved")), reference)
    drifted = set(record["drifted"])
    assert island in drifted and set(float_columns) <= drifted


def test_a_truncated_log_file_is_bad_input_data_naming_it(tmp_path, mnist_reference,
                                                          mnist_sample):
    write_logs(tmp_path, served_logs(mnist_reference.model_dir, mnist_sample[2][:40]))
    path = tmp_path / "prediction_log-00000.tfrecord"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(reader.RequestLogError) as caught:
        reader.read_logs(str(tmp_path))
    assert errors.exit_code(caught.value) == 3 and str(path) in str(caught.value)


def test_logs_that_map_to_no_feature_are_bad_input_data(tmp_path, mnist_reference):
    write_logs(tmp_path, [predict_log("serving_window", {"window": np.zeros([2, 4], np.float32)},
                                      {})])
    with pytest.raises(errors.InputDataError, match="no logged request could be turned into "
                       "features.*window name no feature"):
        check.run_check(reader.read_logs(str(tmp_path)), mnist_reference)


def test_monitor_thresholds_are_checked_with_the_key_named():
    with pytest.raises(config_lib.ConfigError, match=r"monitor.features\[0\].threshold"):
        config_lib.load_config(None, ["monitor.features=[{name: image, threshold: 3}]"])
    with pytest.raises(config_lib.ConfigError, match="monitor.pipeline_drift"):
        config_lib.load_config(None, ["monitor.pipeline_drift=stop"])


def test_the_pipeline_drift_check_compares_two_runs_statistics(tmp_path, mnist_sample):
    """pipeline/drift_check.check_drift on two StatisticsGen-layout artifacts: the same data
    is no drift; inverted images drift on `image`, named with distance and threshold."""
    import tensorflow_data_validation as tfdv
    from tfprod.pipeline import drift_check

    train_images, train_labels = mnist_sample[0][:1000], mnist_sample[1][:1000]

    def statistics_artifact(name, images):
        uri = tmp_path / name
        (uri / "Split-train").mkdir(parents=True)
        statistics = compare.statistics_of_examples(
            [image_example(i, l) for i, l in zip(images, train_labels)])
        (uri / "Split-train" / "FeatureStats.pb").write_bytes(
            statistics.SerializeToString())
        return str(uri), statistics

    blessed_uri, statistics = statistics_artifact("blessed", train_images)
    same_uri, _ = statistics_artifact("same", train_images[::-1])
    inverted_uri, _ = statistics_artifact("inverted", 255 - train_images)
    schema_dir = tmp_path / "schema"
    schema_dir.mkdir()
    tfdv.write_schema_text(tfdv.infer_schema(statistics), str(schema_dir / "schema.pbtxt"))
    monitor = config_lib.MonitorConfig()

    first = drift_check.check_drift(blessed_uri, str(schema_dir), None, monitor)
    assert first["drifted"] == [] and "No earlier blessed run" in first["note"]
    same = drift_check.check_drift(same_uri, str(schema_dir), blessed_uri, monitor)
    assert same["drifted"] == [] and {f["feature"] for f in same["features"]} == {"image", "label"}
    assert all(f["distance"] < 0.01 for f in same["features"])
    moved = drift_check.check_drift(inverted_uri, str(schema_dir), blessed_uri, monitor)
    assert len(moved["drifted"]) == 1
    assert moved["drifted"][0].startswith("image (Jensen-Shannon divergence 0.")
    assert moved["drifted"][0].endswith("> 0.1)")
