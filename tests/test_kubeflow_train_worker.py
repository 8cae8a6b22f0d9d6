"""kubeflow.train_worker: the TFJob entry point trains under MultiWorkerMirroredStrategy.

Real tf.Transform (the pipeline's preprocessing_fn on Beam's DirectRunner) makes the
transform graph; 256 real MNIST images are written as transformed examples in the
layout of Transform's output artifact. The worker then runs in a subprocess with a
one-worker TF_CONFIG of the shape the training operator writes (a real gRPC collective
server on 127.0.0.1). No cluster exists here, so more than one pod is not exercised.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfprod.contract import features
from tests.conftest import MNIST_CONFIG, REPO_ROOT

NUM_EXAMPLES = 256


def write_transformed_examples(path, images, labels):
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for image, label in zip(images, labels):
            example = tf.train.Example(features=tf.train.Features(feature={
                features.IMAGE_TRANSFORMED_KEY: tf.train.Feature(float_list=tf.train.FloatList(
                    value=(image.reshape(-1) / 255.0).astype(np.float32))),
                features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[int(label)])),
            }))
            writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def transform_outputs(tmp_path_factory, mnist_sample):
    """(transformed_examples URI, transform_graph URI) as Transform would write them."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import metadata_io

    from tfprod.pipeline.tasks.image import preprocessing

    train_images, train_labels = mnist_sample[0][:NUM_EXAMPLES], mnist_sample[1][:NUM_EXAMPLES]
    root = tmp_path_factory.mktemp("transform")
    graph_dir = str(root / "transform_graph")
    metadata = tft.DatasetMetadata.from_feature_spec({
        features.IMAGE_KEY: tf.io.FixedLenFeature([28 * 28], tf.int64),
        features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64)})
    instances = [{features.IMAGE_KEY: image.reshape(-1).astype(np.int64),
                  features.LABEL_KEY: np.array([label], np.int64)}
                 for image, label in zip(train_images[:8], train_labels[:8])]
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as pipeline:
        with tft_beam.Context(temp_dir=str(root / "tmp"), force_tf_compat_v1=False):
            raw = pipeline | beam.Create(instances)
            _, transform_fn = ((raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
                preprocessing.preprocessing_fn))
            _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
    # Transform also stores the raw schema beside the graph (the serving signatures use it).
    metadata_io.write_metadata(metadata, os.path.join(graph_dir,
                                                      tft.TFTransformOutput.RAW_METADATA_DIR))
    examples_dir = root / "transformed_examples"
    write_transformed_examples(str(examples_dir / "Split-train" / "data.gz"),
                               train_images[:200], train_labels[:200])
    write_transformed_examples(str(examples_dir / "Split-eval" / "data.gz"),
                               train_images[200:], train_labels[200:])
    return str(examples_dir), graph_dir


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
def test_worker_trains_and_the_chief_writes_a_servable_model(transform_outputs, tmp_path,
                                                            mnist_sample):
    import tensorflow as tf

    examples, graph = transform_outputs
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{free_port()}"]},
                 "task": {"type": "worker", "index": 0}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_USE_LEGACY_KERAS="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    output_dir = tmp_path / "multiworker"
    result = subprocess.run(
        [sys.executable, "-m", "tfprod.kubeflow.train_worker", "--config", str(MNIST_CONFIG),
         "--examples", examples, "--transform-output", graph, "--output-dir", str(output_dir),
         "--set", "trainer.epochs=1", "--set", "trainer.max_steps=3",
         "--set", "trainer.batch_size=32", "--set", "model.cnn.filters=[4]",
         "--set", "model.cnn.dense_units=8"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "1 replicas (chief)" in result.stdout
    stats = json.loads((output_dir / "model_run" / "training_stats.json").read_text())
    assert stats["train_examples"] == 200 and stats["epochs_run"] == 1
    model = tf.saved_model.load(str(output_dir / "serving_model"))
    signature = model.signatures[features.SERVING_RAW_SIGNATURE]
    (input_name,) = signature.structured_input_signature[1]
    outputs = signature(**{input_name: tf.constant(mnist_sample[2][:4], tf.float32)})
    probabilities = outputs[features.PROBABILITIES_OUTPUT].numpy()
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_worker_without_tf_config_exits_2(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "tfprod.kubeflow.train_worker", "--config", str(MNIST_CONFIG),
         "--examples", "x", "--transform-output", "y", "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "TF_CONFIG is not set" in result.stderr


def test_worker_exits_with_the_code_of_the_errors_kind(tmp_path, monkeypatch, capsys):
    """main() maps errors as `tfprod` does (tfprod.errors.EXIT_CODES), without the CLI."""
    from tfprod.kubeflow import train_worker

    argv = ["--config", str(tmp_path / "nope.yaml"), "--examples", "x",
            "--transform-output", "y", "--output-dir", str(tmp_path)]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert train_worker.main(argv) == 2  # DistributeError: a ConfigError
    assert capsys.readouterr().err.startswith("error: TF_CONFIG is not set")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert train_worker.main(argv) == 2  # a missing --config: a ConfigError
    assert "error: config file not found" in capsys.readouterr().err
