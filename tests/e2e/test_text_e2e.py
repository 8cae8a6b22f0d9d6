"""Both text configs end to end on the shipped SST-2 sample (data/sst2_sample: 600 train /
200 test sentences), 1 epoch, a low accuracy floor. The pushed models answer raw strings
(serving_raw) and tf.Examples (serving_default) alike, and `tfprod serve` answers a REST
body of string instances with the same probabilities."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
SAMPLE_DIR = REPO_ROOT / "data" / "sst2_sample"
SENTENCES = ["a gorgeous , witty , seductive movie .", "", "crème brûlée ÉNORME !",
             "the worst film of the year , dull and lifeless " * 20]
# Small and fast: these runs check the plumbing, the benchmark checks the quality.
SMALL_RUN = ["--set", "trainer.epochs=1", "--set", "eval.accuracy_threshold=0.3",
             "--set", "data.text.max_len=32", "--set", "data.text.vocab_size=2000",
             # TFLite, small: float32 converted, int8 (refused for the LSTM: TF 2.16's
             # converter crashes on its loop) converted for the Transformer.
             "--set", "mobile.modes=[float32, int8]", "--set", "mobile.test_examples=100",
             "--set", "mobile.latency_examples=5", "--set", "mobile.calibration_samples=100"]
MODEL_SETTINGS = {
    "sst2_lstm": ["--set", "model.lstm.embedding_dim=16", "--set", "model.lstm.lstm_units=16"],
    "sst2_transformer": ["--set", "model.transformer.embedding_dim=16",
                         "--set", "model.transformer.feed_forward_dim=32",
                         # The config's int8_strategy auto (its attempts, a QAT fine-tune)
                         # is tests/test_int8_auto's and the benchmark's; here, the plumbing.
                         "--set", "mobile.int8_strategy=ptq",
                         *[argument for key, value in (
                             ("compression", "[prune_qat, cluster]"), ("finetune_max_steps", 6),
                             ("finetune_epochs", 1), ("target_sparsity", 0.5),
                             ("pruning_frequency", 2), ("num_clusters", 8))
                           for argument in ("--set", f"mobile.{key}={value}")]],
}


def run_text_config(name: str, output_dir: pathlib.Path) -> dict:
    result = subprocess.run(
        [TFPROD, "run", "--config", f"configs/{name}.yaml", "--data-dir", str(SAMPLE_DIR),
         "--output-dir", str(output_dir), *SMALL_RUN, *MODEL_SETTINGS[name]],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((output_dir / "run_summary.json").read_text())


@pytest.fixture(scope="session", params=["sst2_lstm", "sst2_transformer"])
def text_run(request, tmp_path_factory):
    """(config name, run summary) of one pipeline run on the sample."""
    return request.param, run_text_config(request.param, tmp_path_factory.mktemp(request.param))


def _examples(texts):
    serialized = []
    for text in texts:
        example = tf.train.Example()
        example.features.feature["text"].bytes_list.value.append(text.encode("utf-8"))
        serialized.append(example.SerializeToString())
    return tf.constant(serialized)


def test_text_pipeline_blesses_pushes_and_serves_strings(text_run):
    name, summary = text_run
    assert summary["status"] == "succeeded" and summary["blessed"] is True
    assert summary["metrics"]["example_count"] == 200
    assert 0.3 <= summary["metrics"]["accuracy"] <= 1.0
    assert summary["training"]["train_examples"] + summary["training"]["eval_examples"] == 600
    pushed = pathlib.Path(summary["pushed_model_dir"])
    assert (pushed / "assets" / "label_vocabulary.txt").read_text() == "0\n1\n"
    assert (pushed / "assets" / "tokens").is_file()  # the token vocabulary travels along
    assert (pushed / "assets.extra" / "tf_serving_warmup_requests").is_file()

    model = tf.saved_model.load(str(pushed))
    raw = model.signatures["serving_raw"](text=tf.constant(SENTENCES))
    default = model.signatures["serving_default"](examples=_examples(SENTENCES))
    probabilities = raw["probabilities"].numpy()
    assert probabilities.shape == (4, 2) and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(default["probabilities"].numpy(), probabilities, atol=1e-6)
    np.testing.assert_array_equal(raw["class_id"].numpy(), np.argmax(probabilities, axis=1))
    assert [c.decode() for c in raw["classes"].numpy()] == [
        str(i) for i in raw["class_id"].numpy()]


def test_tfprod_serve_answers_rest_string_instances(text_run, tmp_path):
    """`tfprod serve` on the pushed model; a REST body {"instances": [strings]}."""
    from tests.test_serving_e2e import ServerProcess

    name, summary = text_run
    pushed = pathlib.Path(summary["pushed_model_dir"])
    server = ServerProcess(["--model_name", name, "--model_base_path", str(pushed.parent)],
                           tmp_path / "server.log")
    try:
        status, body = server.http("POST", f"/v1/models/{name}:predict", {
            "signature_name": "serving_raw", "instances": SENTENCES}, timeout=120)
        assert status == 200, body
        expected = tf.saved_model.load(str(pushed)).signatures["serving_raw"](
            text=tf.constant(SENTENCES))
        served = np.array([row["probabilities"] for row in body["predictions"]])
        np.testing.assert_allclose(served, expected["probabilities"].numpy(), atol=1e-5)
        assert [row["classes"] for row in body["predictions"]] == [
            c.decode() for c in expected["classes"].numpy()]
        status, body = server.http("POST", f"/v1/models/{name}:predict", {
            "signature_name": "serving_raw", "instances": [1, 2]})
        assert status == 400, body
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_report_snippets_run_against_tfprod_serve(text_run, tmp_path):
    """The report's requests, run as written against `tfprod serve`: a test sentence as a
    string over REST and gRPC (request.json is written on the page), the tf.Example over REST
    and the Python gRPC snippet; all give the same class."""
    from tests.report.page_index import PageIndex
    from tests.report.snippets import check_report_snippets

    name, summary = text_run
    report = pathlib.Path(summary["report_path"])
    result = check_report_snippets(report, tmp_path)
    page = PageIndex(report.read_text(encoding="utf-8"))
    body = json.loads(page.pres["rest-request"].split("<<'JSON'\n", 1)[1].split("\nJSON\n")[0])
    assert body["signature_name"] == "serving_raw" and isinstance(body["instances"][0], str)
    class_id = result["rest"][0]["predictions"][0]["class_id"]
    assert result["rest"][2]["outputs"]["class_id"] == [class_id]
    assert result["rest_examples"]["predictions"][0]["class_id"] == class_id
    assert result["grpc"]["class_id"] == [class_id]
    assert "samples" not in page.sections and "forecast" not in page.sections
    assert "Class balance" in page.sections["data"]["text"]


def test_tflite_text_model_takes_token_ids_and_ships_the_vocabulary(text_run):
    """The TFLiteConverter converted the blessed text model: int32 token ids in (computed
    by the SavedModel's own transform_features), verified on both runtimes; vocab.txt and
    labels.txt travel in the model; the LSTM's int8 is listed as refused with a reason."""
    from tfprod.mobile import metadata
    from tfprod.mobile.verify import TfliteClassifier

    name, summary = text_run
    report = json.loads(pathlib.Path(summary["tflite_report"]["json"]).read_text())
    assert report["model_kind"] == "text" and report["metric"] == "accuracy"
    expected = {"float32"} if name == "sst2_lstm" else {"float32", "int8"}
    assert set(summary["tflite_models"]) == expected
    if name == "sst2_lstm":
        assert "WHILE" in report["failed_modes"]["int8"]
    for model in report["models"]:
        for result in model["runtimes"].values():
            assert result["top1_agreement"] >= (0.99 if model["mode"] == "float32" else 0.8)
    model_bytes = pathlib.Path(summary["tflite_models"]["float32"]).read_bytes()
    files = metadata.read_associated_files(model_bytes)
    pushed = pathlib.Path(summary["pushed_model_dir"])
    tokens = (pushed / "assets" / "tokens").read_text(encoding="utf-8").splitlines()
    assert files["vocab.txt"].decode("utf-8").splitlines() == ["[PAD]", *tokens, "[OOV]"]
    assert files["labels.txt"].decode().splitlines() == ["0", "1"]
    # The app's ids for a sentence, from the rules in the metadata, give the served class.
    sentence = "a gorgeous , witty , seductive movie ."
    index = {token: position for position, token in enumerate(
        files["vocab.txt"].decode("utf-8").splitlines())}
    ids = [index.get(token, len(index) - 1) for token in sentence.split()][:32]
    ids = np.array(ids + [0] * (32 - len(ids)), np.int32)
    tflite = TfliteClassifier(model_bytes, "tflite_runtime").predict(ids[np.newaxis])
    served = tf.saved_model.load(str(pushed)).signatures["serving_raw"](
        text=tf.constant([sentence]))["probabilities"].numpy()
    np.testing.assert_allclose(tflite, served, atol=1e-4)


def test_the_transformers_embedding_is_pruned_and_clustered_and_converts(text_run):
    """mobile.compression on the Transformer run (prune_qat and cluster, 6 fine-tune steps
    each): the token-and-position embedding, most of a text model's weights, is pruned and
    clustered (the encoder block, a custom layer, is left alone and named), each variant
    converts to int8 and is verified on both runtimes, and both gzip smaller than the
    post-training int8. The LSTM run has no compression configured and converts none."""
    name, summary = text_run
    if name == "sst2_lstm":
        assert summary["tflite_compressed"] == {} and summary["tflite_compression_failed"] == {}
        return
    assert set(summary["tflite_compressed"]) == {"prune_qat", "cluster"}, summary
    section = json.loads(pathlib.Path(summary["tflite_report"]["json"]).read_text())["compression"]
    assert section["failed"] == {}
    ptq_int8 = next(model for model in section["baseline"]["models"] if model["mode"] == "int8")
    variants = {variant["technique"]: variant for variant in section["variants"]}
    for technique, variant in variants.items():
        assert "embedding" in variant["compressed_layers"], variant
        assert variant["left_alone"] == ["encoder_block0"], variant
        (model,) = variant["models"]
        assert model["mode"] == "int8" and set(model["runtimes"]) == {"litert", "tflite_runtime"}
        assert pathlib.Path(model["path"]).is_file()
        assert model["gzip_bytes"] < ptq_int8["gzip_bytes"], (technique, model, ptq_int8)
    assert abs(variants["prune_qat"]["sparsity"] - 0.5) <= 0.02, variants["prune_qat"]
    assert variants["cluster"]["max_distinct_values"] <= 8, variants["cluster"]

