"""The whole pipeline through `tfprod run`, on real MNIST data in temp dirs.

Real TFX components, ML Metadata (SQLite), Beam DirectRunner and TFMA; the
CLI runs in a subprocess exactly as a user would run it.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfprod.contract import features
from tests.conftest import MNIST_CONFIG, REPO_ROOT, SAMPLE_DIR, write_idx_dataset

pytestmark = pytest.mark.e2e

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
RUN_TIMEOUT_SECONDS = 1200


def run_tfprod(*args):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([TFPROD, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_SECONDS)


def read_summary(output_dir):
    return json.loads((pathlib.Path(output_dir) / "run_summary.json").read_text())


def tree_digest(directory):
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(directory).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(directory)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("mnist_run")
    result = run_tfprod("run", "--config", str(MNIST_CONFIG), "--data-dir", str(SAMPLE_DIR),
                        "--output-dir", str(output_dir), "--set", "trainer.epochs=3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir, result


@pytest.fixture(scope="module")
def pushed_model(first_run):
    summary = read_summary(first_run[0])
    return tf.saved_model.load(summary["pushed_model_dir"])


def test_first_run_is_blessed_and_pushed_in_tf_serving_layout(first_run):
    output_dir, result = first_run
    summary = read_summary(output_dir)
    assert summary["status"] == "succeeded"
    assert summary["blessed"] is True
    serving_base = pathlib.Path(output_dir) / "serving" / "mnist_cnn"
    versions = [p for p in serving_base.iterdir() if p.is_dir()]
    assert len(versions) == 1 and versions[0].name.isdigit()
    assert summary["pushed_model_dir"] == str(versions[0])
    assert (versions[0] / "saved_model.pb").is_file()
    assert (versions[0] / "variables" / "variables.index").is_file()
    assert set(summary["component_seconds"]) == {
        "IdxExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
        "AnomaliesGate", "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator",
        "InfraValidator", "Pusher", "TFLiteConverter", "blessed_statistics_resolver",
        "DataDriftCheck"}
    assert (pathlib.Path(output_dir) / "config.yaml").is_file()
    assert (pathlib.Path(output_dir) / "metadata.sqlite").is_file()
    # Progress per component while running, then the summary.
    assert "[1/14] IdxExampleGen ..." in result.stdout
    assert "Trainer done in" in result.stdout
    assert f"Blessed: yes. Pushed to {versions[0]}" in result.stdout
    # The InfraValidator served the candidate with `tfprod serve` before the push.
    infra = summary["infra"]
    assert infra["blessed"] is True and infra["skipped"] is None and infra["failures"] == []
    assert infra["server"] == "tfprod" and infra["checks"] >= 4 and infra["errors"] == 0
    assert infra["requests"] >= 1 and 0 < infra["p50_ms"] <= infra["p99_ms"] <= 1000
    assert "Infra validation: passed (tfprod;" in result.stdout
    blessing_dir = pathlib.Path(infra["artifact"])
    assert (blessing_dir / "INFRA_BLESSED").is_file()
    assert json.loads((blessing_dir / "infra_validation.json").read_text())["blessed"] is True


def test_a_model_the_infra_validator_did_not_bless_is_not_pushed(first_run, tmp_path):
    """The run's own model and Evaluator blessing, pushed by the pipeline's Pusher executor:
    with an InfraBlessing marked as TFX marks a failed validation, nothing is pushed; with
    the run's InfraBlessing, it is."""
    from tfx import v1 as tfx
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    from tfprod.pipeline import pusher

    summary = read_summary(first_run[0])
    model = standard_artifacts.Model()
    model.uri = summary["artifacts"]["model"]
    model_blessing = standard_artifacts.ModelBlessing()
    model_blessing.uri = str(tmp_path / "model_blessing")
    model_blessing.set_int_custom_property("blessed", 1)
    run_infra_blessing = standard_artifacts.InfraBlessing()
    run_infra_blessing.uri = summary["infra"]["artifact"]
    run_infra_blessing.set_int_custom_property("blessed", 1)
    failed_infra_blessing = standard_artifacts.InfraBlessing()
    failed_infra_blessing.uri = str(tmp_path / "infra_blessing")
    failed_infra_blessing.set_int_custom_property("blessed", 0)

    def push(infra_blessing, name):
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / name)
        destination = tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=str(tmp_path / "serving" / name)))
        pusher.AtomicPusherExecutor().Do(
            {standard_component_specs.MODEL_KEY: [model],
             standard_component_specs.MODEL_BLESSING_KEY: [model_blessing],
             standard_component_specs.INFRA_BLESSING_KEY: [infra_blessing]},
            {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
            {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)})
        return pushed

    assert push(failed_infra_blessing, "failed").get_int_custom_property("pushed") == 0
    assert not (tmp_path / "serving" / "failed").exists()
    assert push(run_infra_blessing, "passed").get_int_custom_property("pushed") == 1
    assert len(list((tmp_path / "serving" / "passed").iterdir())) == 1


def test_the_console_is_quiet_and_shows_progress_and_run_log_keeps_everything(first_run):
    """No line of console.HARMLESS on the console (stdout or stderr, TF_CPP_MIN_LOG_LEVEL=2
    as `make demo` sets it), no TensorFlow warning twice; the first line before the heavy
    imports, progress inside each epoch (plain lines: stdout is a pipe, no carriage
    returns) and the export timed; run.log keeps the filtered lines."""
    from tfprod import console

    output_dir, result = first_run
    shown = result.stdout.splitlines() + result.stderr.splitlines()
    assert [line for line in shown if console.is_harmless(line)] == []
    warnings = [line for line in shown if line.startswith("WARNING:tensorflow:")]
    assert len(warnings) == len(set(warnings))
    assert result.stdout.startswith(f"tfprod run: mnist_cnn ({MNIST_CONFIG}): model cnn")
    assert "\r" not in result.stdout
    for epoch in (1, 2, 3):
        assert f"  epoch {epoch}/3 done in " in result.stdout
    assert "  exported in " in result.stdout
    log = (pathlib.Path(output_dir) / "run.log").read_text()
    assert any(console.is_harmless(line) for line in log.splitlines())


def test_test_split_accuracy_is_high_and_matches_the_model(first_run, pushed_model, mnist_sample):
    summary = read_summary(first_run[0])
    assert summary["metrics"]["example_count"] == 2000
    assert summary["metrics"]["accuracy"] >= 0.95
    # Recompute accuracy from the pushed model itself on the same test images.
    _, _, test_images, test_labels = mnist_sample
    outputs = pushed_model.signatures[features.SERVING_RAW_SIGNATURE](
        image=tf.constant(test_images, tf.float32))
    predicted = outputs[features.CLASS_ID_OUTPUT].numpy()
    accuracy = float(np.mean(predicted == test_labels))
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(summary["metrics"]["accuracy"], abs=1e-3)
    # Per-class slices are reported too.
    assert set(summary["slice_metrics"]) == {f"label={digit}" for digit in range(10)}


def test_both_prediction_signatures_agree(pushed_model, mnist_sample):
    _, _, test_images, _ = mnist_sample
    images = test_images[:64]
    serialized = [tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_KEY: tf.train.Feature(
            int64_list=tf.train.Int64List(value=image.ravel().astype(np.int64)))
    })).SerializeToString() for image in images]
    from_examples = pushed_model.signatures[features.SERVING_DEFAULT_SIGNATURE](
        examples=tf.constant(serialized))
    from_raw = pushed_model.signatures[features.SERVING_RAW_SIGNATURE](
        image=tf.constant(images, tf.float32))
    np.testing.assert_allclose(from_examples[features.PROBABILITIES_OUTPUT].numpy(),
                               from_raw[features.PROBABILITIES_OUTPUT].numpy(), atol=1e-6)
    np.testing.assert_array_equal(from_examples[features.CLASS_ID_OUTPUT].numpy(),
                                  from_raw[features.CLASS_ID_OUTPUT].numpy())
    # The transform signature exposes the shared preprocessing graph.
    labelled = [tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_KEY: tf.train.Feature(
            int64_list=tf.train.Int64List(value=images[0].ravel().astype(np.int64))),
        features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
    })).SerializeToString()]
    transformed = pushed_model.signatures[features.TRANSFORM_SIGNATURE](
        examples=tf.constant(labelled))
    np.testing.assert_allclose(transformed[features.IMAGE_TRANSFORMED_KEY].numpy()[0],
                               images[0].ravel() / 255.0, rtol=1e-6)


def _served_request_logs(directory, model, images):
    """Request logs as `tfprod serve --request_log_dir` writes them (PredictionLog TFRecords):
    the images sent as serving_default tf.Examples and as serving_raw [N, 28, 28] and
    [N, 28, 28, 1] tensors, each with the pushed model's real response."""
    from tensorflow_serving.apis import prediction_log_pb2

    directory.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(directory / "prediction_log-00000.tfrecord")) as writer:
        for number, start in enumerate(range(0, len(images), 25)):
            chunk = images[start:start + 25]
            log = prediction_log_pb2.PredictionLog()
            spec = log.log_metadata.model_spec
            spec.name, spec.version.value = "mnist_cnn", 1
            request = log.predict_log.request
            if number % 3 == 0:
                spec.signature_name = features.SERVING_DEFAULT_SIGNATURE
                request.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array([
                    tf.train.Example(features=tf.train.Features(feature={
                        features.IMAGE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(
                            value=image.ravel().astype(np.int64)))})).SerializeToString()
                    for image in chunk], dtype=object)))
            else:
                spec.signature_name = features.SERVING_RAW_SIGNATURE
                sent = chunk if number % 3 == 1 else chunk[..., None]
                request.inputs[features.IMAGE_KEY].CopyFrom(
                    tf.make_tensor_proto(sent.astype(np.float32)))
            request.model_spec.CopyFrom(spec)
            outputs = model.signatures[features.SERVING_RAW_SIGNATURE](
                image=tf.constant(chunk, tf.float32))
            for name, value in outputs.items():
                log.predict_log.response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            writer.write(log.SerializeToString())


def test_monitor_finds_no_drift_in_test_requests_and_drift_in_inverted_ones(
        first_run, pushed_model, mnist_sample, tmp_path, capsys):
    """`tfprod monitor` against the real run: its statistics, schema and pushed model found
    through its ML Metadata. In-process (tfprod.cli.main, the same code as the command)
    to spare two more TensorFlow start-ups."""
    from tfprod import cli

    output_dir, _ = first_run
    test_images = mnist_sample[2][:400]
    _served_request_logs(tmp_path / "test_logs", pushed_model, test_images)
    code = cli.main(["monitor", "--request-logs", str(tmp_path / "test_logs"),
                     "--run", str(output_dir), "--output", str(tmp_path / "same"),
                     "--prometheus-textfile", str(tmp_path / "tfprod.prom")])
    shown = capsys.readouterr()
    assert code == 0, shown.out[-3000:] + shown.err[-3000:]
    assert "No drift." in shown.out
    record = json.loads((tmp_path / "same" / "monitor.json").read_text())
    assert record["examples"] == 400 and record["drifted"] == []
    assert record["by_signature"] == {"predict:serving_default": 150, "predict:serving_raw": 250}
    assert record["reference"]["statistics"].startswith(str(output_dir))
    assert record["prediction"]["reference"]["model_dir"] == read_summary(
        output_dir)["pushed_model_dir"]
    assert 'tfprod_monitor_drift_detected{model="mnist_cnn"} 0.0' in (
        tmp_path / "tfprod.prom").read_text()

    _served_request_logs(tmp_path / "inverted_logs", pushed_model, 255 - test_images)
    code = cli.main(["monitor", "--request-logs", str(tmp_path / "inverted_logs"),
                     "--run", str(output_dir)])
    shown = capsys.readouterr()
    assert code == 4, shown.out[-3000:] + shown.err[-3000:]
    assert "error: drift detected: " in shown.err
    assert "image (Jensen-Shannon divergence" in shown.err
    assert (pathlib.Path(output_dir) / "monitor" / "monitor.html").is_file()


def test_worse_model_is_not_blessed_and_the_served_version_stays(first_run):
    output_dir, _ = first_run
    serving_base = pathlib.Path(output_dir) / "serving" / "mnist_cnn"
    before = tree_digest(serving_base)
    result = run_tfprod("run", "--config", str(MNIST_CONFIG), "--data-dir", str(SAMPLE_DIR),
                        "--output-dir", str(output_dir), "--set", "trainer.max_steps=1",
                        "--set", "eval.accuracy_threshold=0.0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = read_summary(output_dir)
    # Even with no absolute floor, it is clearly worse than the last blessed model.
    assert summary["blessed"] is False
    assert summary["pushed_model_dir"] is None
    assert summary["metrics"]["accuracy"] < 0.9
    assert "Blessed: NO" in result.stdout
    assert "Pusher skipped (not blessed)" in result.stdout
    assert "TFLiteConverter skipped (not blessed)" in result.stdout
    # Not blessed by the Evaluator: no server is started for it.
    assert "InfraValidator skipped (not blessed)" in result.stdout
    assert summary["infra"]["blessed"] is False
    assert summary["infra"]["skipped"] == "the Evaluator did not bless the model"
    assert tree_digest(serving_base) == before
    assert len([p for p in serving_base.iterdir() if p.is_dir()]) == 1


def test_the_second_run_compared_its_data_with_the_blessed_run(first_run):
    """The pipeline's drift check (monitor.pipeline_drift: warn): the second run (above) read
    the same data as the blessed first run, so every distance is near zero."""
    drift = read_summary(first_run[0])["data_drift"]
    assert drift["mode"] == "warn" and drift["split"] == "train" and "note" not in drift
    assert drift["previous_statistics"].startswith(str(first_run[0]))
    distances = {f["feature"]: f for f in drift["features"]}
    assert distances["image"]["comparator"] == "Jensen-Shannon divergence"
    assert distances["image"]["distance"] < 0.01 and drift["drifted"] == []
    assert "label" in distances
    report = (pathlib.Path(first_run[0]) / "report.html").read_text()
    assert 'id="data-drift"' in report


def _corrupt_run(tmp_path, mnist_sample, train_images, test_images, test_labels):
    train_labels = mnist_sample[1][:len(train_images)]
    data_dir = write_idx_dataset(tmp_path / "data", train_images, train_labels, test_images,
                                 test_labels)
    output_dir = tmp_path / "out"
    result = run_tfprod("run", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
                        "--output-dir", str(output_dir))
    return output_dir, result


def _assert_stopped_at_validation(output_dir, result, feature_name):
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "anomalies" in result.stderr and f"feature '{feature_name}'" in result.stderr
    assert not (output_dir / "serving").exists()
    assert not (output_dir / "pipeline" / "Trainer").exists()
    summary = read_summary(output_dir)
    assert summary["status"] == "failed"
    assert summary["failed_component"] == "AnomaliesGate"
    assert summary["blessed"] is False and summary["pushed_model_dir"] is None


def test_labels_out_of_range_stop_the_run_at_validation(tmp_path, mnist_sample):
    train_images, _, test_images, test_labels = mnist_sample
    bad_labels = test_labels[:100].copy()
    bad_labels[::10] = 11
    output_dir, result = _corrupt_run(tmp_path, mnist_sample, train_images[:500],
                                      test_images[:100], bad_labels)
    _assert_stopped_at_validation(output_dir, result, "label")
    assert "split 'test'" in result.stderr


def test_images_of_another_size_stop_the_run_before_it_starts(tmp_path, mnist_sample):
    """32x32 IDX images under a 28x28 config: the preflight reads the IDX header and stops at once
    (exit 3) naming the file and the --set values that would match, before any component runs
    (ExampleValidator caught this only after five components)."""
    train_images, _, _, test_labels = mnist_sample
    padded = np.pad(train_images[:500], ((0, 0), (2, 2), (2, 2)))  # 32x32 images
    output_dir, result = _corrupt_run(tmp_path, mnist_sample, padded, padded[:100],
                                      test_labels[:100])
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("train-images-idx3-ubyte.gz: images are 32x32 (rows x cols) but data.image_height x "
            "data.image_width is 28x28") in result.stderr
    assert "--set data.image_height=32 --set data.image_width=32" in result.stderr
    assert not (output_dir / "pipeline").exists() and not (output_dir / "serving").exists()
