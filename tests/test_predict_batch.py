"""`tfprod predict-batch`: a whole IDX data directory scored on Beam agrees with `tfprod serve`, row by row.

The model is a tiny one built here with the project's serving_default contract (serialized
tf.Examples in, `probabilities` [N, 10] and `class_id` out, as the IDX task exports), pushed as
version 1 under a model base. The server is the real ModelServer (gRPC on 127.0.0.1).
"""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from tfprod import cli
from tfprod.contract import features
from tfprod.pipeline import batch_predict
from tfprod.serving.grpc_client import GrpcClient
from tfprod.serving.server import ModelServer, ServerOptions
from tests.conftest import MNIST_CONFIG, write_idx_dataset

TRAIN, TEST = 60, 40


class _TinyImageModel(tf.Module):
    """A linear softmax over the 784 pixels, with tfprod's serving_default signature."""

    def __init__(self):
        super().__init__()
        generator = tf.random.Generator.from_seed(7)
        self.weights = tf.Variable(generator.normal([28 * 28, 10]) * 0.05)
        self.bias = tf.Variable(generator.normal([10]) * 0.1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        parsed = tf.io.parse_example(examples, {features.IMAGE_KEY: tf.io.FixedLenFeature([784], tf.int64)})
        probabilities = tf.nn.softmax(tf.cast(parsed[features.IMAGE_KEY], tf.float32) / 255.0 @ self.weights
                                      + self.bias)
        return {features.PROBABILITIES_OUTPUT: probabilities,
                features.CLASS_ID_OUTPUT: tf.argmax(probabilities, axis=-1)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mnist_sample):
    root = tmp_path_factory.mktemp("predict_batch")
    train_images, train_labels, test_images, test_labels = mnist_sample
    data_dir = write_idx_dataset(root / "data", train_images[:TRAIN], train_labels[:TRAIN],
                                 test_images[:TEST], test_labels[:TEST])
    module = _TinyImageModel()
    tf.saved_model.save(module, str(root / "model" / "1"), signatures={"serving_default": module.serve})
    images = np.concatenate([train_images[:TRAIN], test_images[:TEST]]).reshape(TRAIN + TEST, -1)
    labels = np.concatenate([train_labels[:TRAIN], test_labels[:TEST]])
    return root, data_dir, images, labels


def _examples(images, labels):
    """The tf.Examples IdxExampleGen writes for these images."""
    serialized = []
    for pixels, label in zip(images, labels):
        serialized.append(tf.train.Example(features=tf.train.Features(feature={
            features.IMAGE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=pixels.astype(np.int64))),
            features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        })).SerializeToString())
    return serialized


def _served(root, serialized):
    """{key: (class_id, probabilities)} from a real server's serving_default over gRPC, in batches of 16."""
    options = ServerOptions(port=0, rest_api_port=-1, model_name="mnist", model_base_path=str(root / "model"),
                            file_system_poll_wait_seconds=0, enable_model_warmup=False)
    server = ModelServer(options)
    server.start()
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
    try:
        answers = {}
        for start in range(0, len(serialized), 16):
            chunk = serialized[start:start + 16]
            outputs = client.predict("mnist", {"examples": np.array(chunk, dtype=object)})
            for index, example in enumerate(chunk):
                answers[batch_predict.example_key(example)] = (
                    int(outputs[features.CLASS_ID_OUTPUT][index]),
                    outputs[features.PROBABILITIES_OUTPUT][index])
        return answers
    finally:
        client.close()
        server.stop()


def test_predict_batch_agrees_with_the_server_on_every_row(setup, capsys):
    root, data_dir, images, labels = setup
    out_jsonl = root / "scores.jsonl"
    common = ["predict-batch", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir),
              "--model-dir", str(root / "model"), "--batch-size", "32"]
    assert cli.main(common + ["--output", str(out_jsonl)]) == 0
    assert f"{TRAIN + TEST} rows from train, eval, test" in capsys.readouterr().out
    rows = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(rows) == TRAIN + TEST
    assert {row["split"] for row in rows} <= {"train", "eval", "test"}
    assert sum(row["split"] == "test" for row in rows) == TEST

    served = _served(root, _examples(images, labels))
    expected_labels = {batch_predict.example_key(example): int(label)
                       for example, label in zip(_examples(images, labels), labels)}
    for row in rows:
        class_id, probabilities = served[row["key"]]
        assert row["class_id"] == class_id
        np.testing.assert_allclose(row["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
        assert row["label"] == expected_labels[row["key"]]
    assert {row["key"] for row in rows} == set(served)



def test_csv_rows_spread_vector_outputs_over_columns(setup, tmp_path):
    """The .csv writer's header and rows for the real signature (cheap: no second Beam run; the Beam
    path is the same as .jsonl's but for format_row and the header, both used here)."""
    import io

    root = setup[0]
    signature = batch_predict.serving_signature(batch_predict.resolve_model_dir(str(root / "model")))
    columns = batch_predict.csv_columns(signature)
    assert columns == [(features.CLASS_ID_OUTPUT, None), (features.PROBABILITIES_OUTPUT, 10)]
    header = batch_predict.csv_header(columns)
    row = {"split": "test", "key": "00ff", "label": 7, "class_id": 3, "probabilities": [0.1] * 9 + [0.1 + 1e-9]}
    line = batch_predict.format_row(row, ".csv", columns)
    parsed = list(csv.DictReader(io.StringIO(",".join(header) + "\n" + line + "\n")))
    assert parsed == [{"split": "test", "key": "00ff", "label": "7", "class_id": "3",
                       **{f"probabilities_{index}": str(row["probabilities"][index]) for index in range(10)}}]
    assert float(parsed[0]["probabilities_9"]) == row["probabilities"][9]  # full precision
    assert json.loads(batch_predict.format_row(row, ".jsonl", columns)) == row


def test_clear_errors_for_a_missing_model_a_wrong_output_and_data_of_the_wrong_format(setup, tmp_path, capsys):
    root, data_dir, _, _ = setup
    base = ["predict-batch", "--config", str(MNIST_CONFIG), "--data-dir", str(data_dir)]
    assert cli.main(base + ["--model-dir", str(tmp_path / "none"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "--model-dir" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(base + ["--model-dir", str(tmp_path / "empty"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "no SavedModel" in capsys.readouterr().err
    assert cli.main(base + ["--model-dir", str(root / "model"), "--output", str(tmp_path / "o.parquet")]) == 2
    assert ".jsonl or .csv" in capsys.readouterr().err
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "train.tsv").write_text("sentence\tlabel\nfine\t1\n")
    code = cli.main(["predict-batch", "--config", str(MNIST_CONFIG), "--data-dir", str(tmp_path / "text"),
                     "--model-dir", str(root / "model"), "--output", str(tmp_path / "o.jsonl")])
    assert code in (2, 3) and "error:" in capsys.readouterr().err
    assert cli.main(["predict-batch", "--run", str(tmp_path), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "config.yaml" in capsys.readouterr().err
