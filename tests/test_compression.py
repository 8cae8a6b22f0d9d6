"""mobile.compression (QAT, pruning, clustering) and int8 auto's QAT step (issue 21).

The pipeline tests read the shared MNIST run (conftest.mnist_mobile_run), which compresses
with all four techniques, 10 fine-tune steps each. The unit tests fine-tune a tiny CNN
and a tiny Transformer (its embedding, a custom layer, is pruned and clustered too).
"""

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import MNIST_CONFIG, MOBILE_RUN_COMPRESSION
from tests.test_int8_auto import (  # noqa: F401  (tiny_model: a fixture)
    HEIGHT, IMPOSSIBLE, WIDTH, _export, tiny_cnn, tiny_model)
from tfprod.mobile import compress, int8_auto
from tfprod.mobile.verify import TfliteClassifier
from tfprod.pipeline import config as config_lib

TECHNIQUES = ("qat", "prune", "cluster", "prune_qat")


def _version_dir(run) -> pathlib.Path:
    (version,) = (pathlib.Path(run["output_dir"]) / "tflite" / "mnist_cnn").iterdir()
    return version


def _compression(run):
    return json.loads((_version_dir(run) / "report.json").read_text())["compression"]


def test_every_technique_is_fine_tuned_converted_and_verified_in_the_run(mnist_mobile_run):
    section = _compression(mnist_mobile_run)
    assert section["failed"] == {}
    assert [variant["technique"] for variant in section["variants"]] == list(TECHNIQUES)
    assert section["settings"]["target_sparsity"] == MOBILE_RUN_COMPRESSION["target_sparsity"]
    float32 = section["baseline"]["float32_size_bytes"]
    assert float32 == (_version_dir(mnist_mobile_run) / "float32.tflite").stat().st_size
    for variant in section["variants"]:
        assert variant["finetune_steps"] == 10 * (2 if variant["technique"] == "prune_qat"
                                                  else 1)
        assert variant["finetune_seconds"] > 0 and variant["left_alone"] == []
        assert set(variant["compressed_layers"]) >= {"block0_conv0", "dense", "probabilities"}
        (model,) = variant["models"]  # int8: compression_modes' default, and QAT's only mode
        path = pathlib.Path(model["path"])
        assert model["mode"] == "int8" and path.parent.name == variant["technique"]
        data = path.read_bytes()
        assert model["size_bytes"] == len(data)
        assert model["gzip_bytes"] == compress.gzip_size(data) < len(data)
        assert set(model["runtimes"]) == {"litert", "tflite_runtime"}
        # Each variant folder has its own full verification report.
        assert json.loads((path.parent / "report.json").read_text())["models"][0]["mode"] == "int8"
    variants = {variant["technique"]: variant for variant in section["variants"]}
    # Clustering: at most num_clusters values per kernel; QAT and clustering keep accuracy
    # (loose: 10 fine-tune steps on 2,000 images; the benchmark measures it properly).
    assert variants["cluster"]["max_distinct_values"] <= MOBILE_RUN_COMPRESSION["num_clusters"]
    for technique in ("qat", "cluster"):
        for figures in variants[technique]["models"][0]["runtimes"].values():
            assert figures["accuracy_drop_points"] < 10.0, (technique, figures)
    # Pruned zeros pay off gzipped: the pruned int8 file compresses far better than PTQ int8.
    ptq_int8 = next(m for m in section["baseline"]["models"] if m["mode"] == "int8")
    for technique in ("prune", "prune_qat"):
        assert variants[technique]["models"][0]["gzip_bytes"] < 0.8 * ptq_int8["gzip_bytes"]
    markdown = (_version_dir(mnist_mobile_run) / "report.md").read_text()
    assert "## Compression (mobile.compression)" in markdown
    for technique in TECHNIQUES:
        assert f"| {technique} | int8 |" in markdown
    # run_summary.json lists the compressed files (from the converter's files.json).
    summary = mnist_mobile_run["summary"]
    assert summary["tflite_compressed"] == {
        technique: {"int8": str(_version_dir(mnist_mobile_run) / technique / "int8.tflite")}
        for technique in TECHNIQUES}
    assert summary["tflite_compression_failed"] == {}
    assert "TFLite compressed: qat (int8), prune (int8)" in mnist_mobile_run["stdout"]


def test_the_pruned_models_measured_sparsity_is_within_two_points_of_the_target(
        mnist_mobile_run):
    variants = {variant["technique"]: variant for variant in
                _compression(mnist_mobile_run)["variants"]}
    target = MOBILE_RUN_COMPRESSION["target_sparsity"]
    for technique in ("prune", "prune_qat"):
        assert abs(variants[technique]["sparsity"] - target) <= 0.02, variants[technique]
        # 10 steps, a mask update every 5: the ramp ends on the update at step 5.
        assert variants[technique]["pruning_schedule"].startswith(
            "polynomial 0 -> 0.5 over steps 0..5 of 10")


def test_the_polynomial_ramp_ends_on_a_mask_update_or_falls_back_to_constant():
    def described(steps, frequency, schedule="polynomial"):
        return compress.pruning_schedule(compress.FinetuneSettings(
            target_sparsity=0.8, pruning_frequency=frequency, pruning_schedule=schedule,
            epochs=1, steps_per_epoch=steps))

    toolkit_schedule, text = described(375, 10)
    assert text.startswith("polynomial 0 -> 0.8 over steps 0..240 of 375")
    # The toolkit's own schedule: no pruning before the ramp ends early, the target at its end.
    should_prune, sparsity = toolkit_schedule(tf.constant(240, tf.int64))
    assert bool(should_prune) and float(sparsity) == pytest.approx(0.8)
    assert not bool(toolkit_schedule(tf.constant(245, tf.int64))[0])
    _, text = described(10, 10)
    assert text.startswith("constant 0.8 from step 0 (too few steps, 10,")
    _, text = described(375, 10, "constant")
    assert text == "constant 0.8 from step 0, mask updated every 10"


def test_the_qat_model_has_int8_weights_and_activations(mnist_mobile_run):
    data = (_version_dir(mnist_mobile_run) / "qat" / "int8.tflite").read_bytes()
    interpreter = tf.lite.Interpreter(model_content=data)
    details = interpreter.get_tensor_details()
    conv_weights = [d for d in details if "block0_conv0" in d["name"] and len(d["shape"]) == 4
                    and d["dtype"] == np.int8]
    assert conv_weights, [(d["name"], d["dtype"]) for d in details][:40]
    # Activations: the convolutions' and dense layers' outputs are int8 tensors with a scale.
    int8_activations = [d for d in details if d["dtype"] == np.int8
                        and d["quantization"][0] > 0 and len(d["shape"]) in (2, 4)
                        and d["shape"][0] == 1]
    assert len(int8_activations) >= 4
    # The convolutions and dense layers run as int8 kernels: their inputs are int8.
    interpreter.allocate_tensors()
    by_index = {d["index"]: d for d in details}
    kernels = [op for op in interpreter._get_ops_details()
               if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(kernels) >= 5
    assert all(by_index[op["inputs"][0]]["dtype"] == np.int8 for op in kernels), kernels


def test_compression_does_not_change_the_served_savedmodel(mnist_mobile_run):
    """The pushed SavedModel's files are byte for byte the Trainer's."""
    output_dir = pathlib.Path(mnist_mobile_run["output_dir"])
    (pushed,) = (output_dir / "serving" / "mnist_cnn").iterdir()
    trainer_models = list(output_dir.glob("pipeline/**/Trainer/model/*/Format-Serving"))
    assert len(trainer_models) == 1

    def digest(root):
        return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(root.rglob("*")) if path.is_file()
                and path.name != "tf_serving_warmup_requests"}

    assert digest(pushed)["saved_model.pb"] == digest(trainer_models[0])["saved_model.pb"]
    assert {k: v for k, v in digest(pushed).items() if k.startswith("variables")} == {
        k: v for k, v in digest(trainer_models[0]).items() if k.startswith("variables")}


# --------------------------------------------------------------------------
# Unit tests on a tiny CNN.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_finetune(tiny_model, mnist_sample):  # noqa: F811
    """make_model, dataset and compile for compress.compress: the tiny CNN's Keras model."""
    train_images, train_labels, _, _ = mnist_sample
    checkpoint = os.path.join(tiny_model["path"], "variables", "variables")

    def make_model():  # as the pipeline does: the architecture, then the SavedModel's weights
        model = tiny_cnn()
        model.load_weights(checkpoint).expect_partial().assert_existing_objects_matched()
        return model

    images = train_images[:512].reshape(-1, HEIGHT * WIDTH).astype(np.float32) / 255.0
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, train_labels[:512].astype(np.int64))).batch(32).repeat()

    def compile_model(model, optimizer):
        model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])

    return make_model, dataset, compile_model


def test_auto_takes_the_qat_step_with_a_real_qat_fine_tune_when_ptq_fails(
        tiny_model, tiny_finetune, tmp_path):  # noqa: F811
    make_model, dataset, compile_model = tiny_finetune
    calls = []

    def qat_model():
        calls.append("qat")
        return compress.compress(make_model, compress.Technique.QAT,
                                 compress.FinetuneSettings(epochs=1, steps_per_epoch=8),
                                 dataset, compile_model).model

    result = _export(tiny_model, tmp_path, int8_strategy="auto", int8_gates=IMPOSSIBLE,
                     int8_max_float_layers=1, qat_model=qat_model)
    assert calls == ["qat"]
    last = result.int8.attempts[-1]
    assert last.step == int8_auto.Step.QAT and last.model_bytes is not None
    assert last.description.startswith("quantization-aware")
    assert set(last.runtimes) == {"litert", "tflite_runtime"}
    # The QAT model is a working classifier (the tiny CNN scores ~0.9 in float).
    assert last.runtimes["litert"]["accuracy"] > 0.5
    assert TfliteClassifier(last.model_bytes, "litert").predict(
        tiny_model["test_images"][:4]).shape == (4, 10)
    report = json.loads((tmp_path / "report.json").read_text())["int8"]
    assert [attempt["step"] for attempt in report["attempts"]] == ["ptq", "float_layers", "qat"]
    assert "trying QAT" in report["attempts"][1]["next"]


def test_prune_under_a_mirrored_strategy_reaches_its_sparsity(tiny_finetune):
    """One CPU replica: this machine has no second device; the strategy's scope, variables
    and fit path are MirroredStrategy's all the same."""
    make_model, dataset, compile_model = tiny_finetune
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    result = compress.compress(
        make_model, compress.Technique.PRUNE,
        compress.FinetuneSettings(target_sparsity=0.6, pruning_frequency=2, epochs=1,
                                  steps_per_epoch=6), dataset, compile_model,
        scope=strategy.scope)
    assert result.compressed_layers == ["conv_a", "conv_b", "logits"]
    assert abs(result.sparsity - 0.6) <= 0.02
    # Stripped: plain Keras layers again, the zeros in the kernels.
    assert not any("prune" in layer.name for layer in result.model.layers)
    assert compress.measured_sparsity(result.model, ["logits"]) == pytest.approx(0.6, abs=0.02)


def test_cluster_leaves_at_most_num_clusters_values_per_kernel(tiny_finetune):
    make_model, dataset, compile_model = tiny_finetune
    result = compress.compress(make_model, compress.Technique.CLUSTER,
                               compress.FinetuneSettings(num_clusters=8, epochs=1,
                                                         steps_per_epoch=4),
                               dataset, compile_model)
    assert 1 < result.max_distinct_values <= 8
    assert all(len(np.unique(layer.get_weights()[0])) <= 8
               for layer in result.model.layers if layer.name in ("conv_a", "logits"))


TEXT_LENGTH, TEXT_VOCABULARY = 8, 50


@pytest.fixture(scope="module")
def tiny_transformer():
    """make_model, padded token ids, dataset and compile for a tiny untrained Transformer
    (registry's `transformer`, 8-wide, with the Dropout layers the configs have, which take
    the padding mask): seeded, so every copy is the same."""
    from tfprod.models import registry

    model_config = config_lib.ModelConfig(name="transformer")
    params = model_config.transformer
    params.embedding_dim, params.num_heads, params.feed_forward_dim = 8, 2, 16
    params.num_blocks, params.dropout = 1, 0.1

    def make_model():
        tf.keras.utils.set_random_seed(0)
        return registry.build_model(model_config, registry.ModelInputs(
            feature_name="tokens_xf", feature_shape=(TEXT_LENGTH,), num_classes=2,
            vocab_size=TEXT_VOCABULARY))

    rng = np.random.default_rng(0)
    ids = rng.integers(1, TEXT_VOCABULARY, (256, TEXT_LENGTH))
    lengths = rng.integers(1, TEXT_LENGTH + 1, 256)
    ids[np.arange(TEXT_LENGTH)[None, :] >= lengths[:, None]] = 0  # right padding
    dataset = tf.data.Dataset.from_tensor_slices(
        (ids, ids[:, 0] % 2)).batch(32).repeat()

    def compile_model(model, optimizer):
        model.compile(optimizer, "sparse_categorical_crossentropy")

    return make_model, ids, dataset, compile_model


def test_a_wrapped_text_embedding_keeps_emitting_the_padding_mask(tiny_transformer):
    """The toolkit's wrappers compute no mask; wrapped as they come, the embedding would drop
    the padding mask and the attention and pooling would read the padding (measured: outputs
    0.37 apart). Before any pruning step the wrapped model is the model, padding and all."""
    make_model, ids, _, _ = tiny_transformer
    reference = make_model()(ids[:32], training=False).numpy()
    wrapped, names, left, _ = compress._prune(
        make_model(), compress.FinetuneSettings(target_sparsity=0.8, steps_per_epoch=10))
    assert names == ["embedding", "probabilities"] and left == ["encoder_block0"]
    np.testing.assert_allclose(wrapped(ids[:32], training=False).numpy(), reference, atol=1e-6)
    clustered, _, _, _ = compress._cluster(make_model(), compress.FinetuneSettings())
    (embedding,) = [layer for layer in clustered.layers if layer.name == "cluster_embedding"]
    assert type(embedding.layer).__name__ == "TokenAndPositionEmbedding"  # the wrapper's own
    np.testing.assert_array_equal(embedding.compute_mask(tf.constant(ids[:4])).numpy(),
                                  ids[:4] != 0)


@pytest.mark.parametrize("technique", ["prune", "cluster", "prune_qat"])
def test_the_text_embedding_is_pruned_or_clustered_and_keeps_it(technique, tiny_transformer):
    """The token-and-position embedding (a custom layer naming its weights) is compressed;
    under prune_qat, which QAT cannot quantize, it is frozen so its zeros stay."""
    make_model, ids, dataset, compile_model = tiny_transformer
    settings = compress.FinetuneSettings(target_sparsity=0.8, pruning_frequency=2,
                                         num_clusters=4, epochs=1, steps_per_epoch=8,
                                         learning_rate=1e-3)
    result = compress.compress(make_model, technique, settings, dataset, compile_model)
    assert result.compressed_layers == ["embedding", "probabilities"]
    assert result.left_alone == ["encoder_block0"]
    tables = compress._named_kernels(result.model, ["embedding"])
    assert [table.shape for table in tables] == [(TEXT_VOCABULARY, 8), (TEXT_LENGTH, 8)]
    if technique == "cluster":
        assert result.max_distinct_values <= 4
        assert all(len(np.unique(table)) <= 4 for table in tables)
    else:
        assert abs(result.sparsity - 0.8) <= 0.02, result.sparsity
        assert all(abs(np.mean(table == 0) - 0.8) <= 0.03 for table in tables)
    probabilities = result.model(ids[:16], training=False).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_model_without_supported_layers_is_refused_with_the_reason():
    def make_model():
        inputs = tf.keras.Input((4,))
        return tf.keras.Model(inputs, tf.keras.layers.Lambda(lambda x: x * 2.0)(inputs),
                              name="no_weights")

    with pytest.raises(compress.CompressionError, match="supports none of the layers"):
        compress.compress(make_model, compress.Technique.PRUNE, compress.FinetuneSettings(),
                          None, lambda model, optimizer: None)


def test_compression_keys_are_validated_and_stay_out_of_the_compact_form():
    config = config_lib.load_config(str(MNIST_CONFIG), [])
    assert config.mobile.compression == [] and not config.mobile.needs_finetune()
    compact = config_lib.to_dict(config.mobile, compact=True)
    assert not {"compression", "target_sparsity", "num_clusters", "finetune_epochs"} & set(compact)
    loaded = config_lib.load_config(str(MNIST_CONFIG), [
        "mobile.compression=[prune, cluster]", "mobile.target_sparsity=0.8"])
    assert loaded.mobile.compression == [compress.Technique.PRUNE, compress.Technique.CLUSTER]
    assert loaded.mobile.needs_finetune()
    for override, pattern in [
            ("mobile.compression=qat", r"mobile.compression: expected list of one of 'qat'"),
            ("mobile.compression=[qat, qat]", r"distinct techniques"),
            ("mobile.target_sparsity=1.0", r"mobile.target_sparsity: expected a fraction"),
            ("mobile.num_clusters=1", r"mobile.num_clusters: expected an integer in 2..256"),
            ("mobile.pruning_frequency=0", r"nothing is pruned"),
            ("mobile.finetune_max_steps=0", r"mobile.finetune_max_steps")]:
        with pytest.raises(config_lib.ConfigError, match=pattern):
            config_lib.load_config(str(MNIST_CONFIG), [override])
    with pytest.raises(config_lib.ConfigError, match=r"runtime.strategy: .*mobile.compression"):
        config_lib.load_config(str(MNIST_CONFIG), [
            "mobile.compression=[qat]", "runtime.strategy=multi_worker_mirrored"])
