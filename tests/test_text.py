"""Text classification: TSV ingestion errors, tokenization and vocabulary edge cases,
the text layers' serialization, the text config section and JSON string inputs."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfprod.models import registry, text_layers
from tfprod.pipeline import config as config_lib
from tfprod.contract import features
from tfprod.pipeline import checks, ingestion, tasks
from tfprod.pipeline.ingestion import tsv as text_ingestion
from tfprod.pipeline.tasks.text import preprocessing as text_preprocessing
from tfprod.serving import json_codec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs")


def write_tsv(directory, train_rows, test_rows, header="sentence\tlabel"):
    os.makedirs(directory, exist_ok=True)
    for name, rows in (("train.tsv", train_rows), ("test.tsv", test_rows)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write(header + "\n" + "".join(row + "\n" for row in rows))
    return str(directory)


def text_data_config(data_dir, num_classes=2):
    return config_lib.DataConfig(format=config_lib.DataFormat.TSV, data_dir=str(data_dir),
                                 num_classes=num_classes)


# ----- ingestion ---------------------------------------------------------------------------
@pytest.mark.parametrize("rows, message", [
    (["good film\t1", "\t0"], r"train\.tsv:3: the sentence is empty"),
    (["good film\t1", "bad film\t"], r"train\.tsv:3: the label is empty"),
    (["good film\t1", "no label here"], r"train\.tsv:3: expected 2 tab-separated fields"),
    (["good film\t1", "a\tb\tc"], r"train\.tsv:3: expected 2 tab-separated fields .* found 3"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, rows, message):
    path = write_tsv(tmp_path, rows, ["x\t1"])
    with pytest.raises(text_ingestion.TsvFormatError, match=message):
        list(text_ingestion.read_rows(os.path.join(path, "train.tsv"), "sentence", "label"))


def test_a_wrong_header_says_which_columns_to_set(tmp_path):
    path = write_tsv(tmp_path, ["good\t1", "bad\t0"], ["fine\t1"], header="text\tsentiment")
    with pytest.raises(text_ingestion.TsvFormatError,
                       match=r"train\.tsv:1: header is \['text', 'sentiment'\].*text_column"):
        text_ingestion.check_tsv_dir(text_data_config(path))
    data = text_data_config(path)
    data.text.text_column, data.text.label_column = "text", "sentiment"
    assert text_ingestion.check_tsv_dir(data) == ["0", "1"]


def test_empty_and_missing_files_are_errors(tmp_path):
    (tmp_path / "train.tsv").write_text("")
    with pytest.raises(text_ingestion.TsvFormatError, match="the file is empty"):
        list(text_ingestion.read_rows(str(tmp_path / "train.tsv"), "sentence", "label"))
    with pytest.raises(text_ingestion.TsvFormatError, match="test.tsv: file not found"):
        list(text_ingestion.read_rows(str(tmp_path / "test.tsv"), "sentence", "label"))


def test_label_vocabulary_orders_integers_numerically_and_strings_alphabetically():
    assert text_ingestion.sort_labels(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert text_ingestion.sort_labels(["pos", "neg", "neutral"]) == ["neg", "neutral", "pos"]
    assert text_ingestion.sort_labels(["1", "b", "a"]) == ["1", "a", "b"]


def test_string_labels_map_to_ids_and_unseen_test_labels_are_errors(tmp_path):
    path = write_tsv(tmp_path, ["nice\tpositive", "awful\tnegative", "fine\tneutral"],
                     ["ok\tneutral", "meh\tmixed"])
    with pytest.raises(text_ingestion.TsvFormatError,
                       match=r"test\.tsv:3: label 'mixed' never occurs in train\.tsv"):
        text_ingestion.check_tsv_dir(text_data_config(path, num_classes=3))
    vocabulary = ["negative", "neutral", "positive"]
    key, serialized = text_ingestion.make_example(("f", 2, "fine", "neutral"), vocabulary)
    example = tf.train.Example.FromString(serialized)
    assert example.features.feature[features.LABEL_KEY].int64_list.value == [1]
    assert example.features.feature["label_name"].bytes_list.value == [b"neutral"]
    assert example.features.feature["text"].bytes_list.value == [b"fine"]
    assert key == b"fine\tneutral"


def test_a_label_count_other_than_num_classes_says_what_to_set(tmp_path):
    path = write_tsv(tmp_path, ["a\t0", "b\t1", "c\t2"], ["d\t0"])
    with pytest.raises(text_ingestion.TsvFormatError, match=r"--set data.num_classes=3"):
        text_ingestion.check_tsv_dir(text_data_config(path, num_classes=2))
    assert text_ingestion.check_tsv_dir(text_data_config(path, num_classes=3)) == ["0", "1", "2"]
    single = write_tsv(tmp_path / "single", ["a\tx", "b\tx"], ["c\tx"])
    with pytest.raises(text_ingestion.TsvFormatError, match="at least 2 distinct labels"):
        text_ingestion.check_tsv_dir(text_data_config(single, num_classes=1 + 1))


def test_three_labels_and_no_num_classes_takes_three_from_the_training_labels(tmp_path):
    """data.num_classes null: preflight counts train.tsv's labels, and every consumer of
    the count (ExampleGen's custom config, the model inputs, the saved config) gets 3."""
    path = write_tsv(tmp_path, ["great\tpos", "awful\tneg", "fine\tneutral", "good\tpos"],
                     ["ok\tneutral", "bad\tneg"])
    experiment = config_lib.load_config(
        os.path.join(REPO_CONFIGS, "sst2_lstm.yaml"),
        [f"data.data_dir={path}", f"runtime.output_dir={tmp_path / 'out'}"])
    assert experiment.data.num_classes is None  # the shipped text configs leave it to the data
    task = tasks.get_task(experiment)
    task.preflight(experiment)
    assert experiment.data.num_classes == 3
    assert task.model_inputs(experiment).num_classes == 3
    example_gen = task.example_gen(experiment, path)
    settings = ingestion.read_custom_config(example_gen.exec_properties, "TsvExampleGen")
    assert int(settings["num_classes"]) == 3
    saved = tmp_path / "config.yaml"
    config_lib.save_config(experiment, str(saved))
    assert config_lib.load_config(str(saved)).data.num_classes == 3
    # A number in the config stays a check, with the message that says what to pass.
    experiment.data.num_classes = 2
    with pytest.raises(text_ingestion.TsvFormatError, match=r"--set data.num_classes=3"):
        task.preflight(experiment)


def test_label_counts_and_the_majority_class_baseline_of_a_text_directory(tmp_path):
    path = write_tsv(tmp_path, ["a\tpos", "b\tpos", "c\tneg", "d\tneutral"],
                     ["e\tneg", "f\tpos", "g\tneg", "h\tneg"])
    experiment = config_lib.ExperimentConfig()
    experiment.data = text_data_config(path, num_classes=None)
    task = tasks.get_task(experiment)
    train, test = task.label_counts(experiment)
    assert dict(train) == {"pos": 2, "neg": 1, "neutral": 1}
    assert dict(test) == {"neg": 3, "pos": 1}
    # The majority class of train (pos) scores 1 of 4 on test.
    assert task.baseline_metrics(experiment) == {"baseline_accuracy": 0.25}


def test_eval_split_is_stable_and_near_the_fraction():
    keys = [f"sentence {index}\t{index % 2}".encode() for index in range(4000)]
    first = [ingestion.is_eval(key, 0.1) for key in keys]
    assert first == [ingestion.is_eval(key, 0.1) for key in keys]
    assert 0.08 < sum(first) / len(keys) < 0.12


# ----- tokenization and vocabulary ---------------------------------------------------------
def test_tokenize_lowercases_unicode_and_splits_punctuation():
    tokens = text_preprocessing.tokenize(tf.constant([
        "A GREAT film, truly!", "", "CRÈME Brûlée ÉNORME", "Ελληνικά «κείμενο»", "  \t "]))
    assert tokens.to_list() == [
        [b"a", b"great", b"film", b",", b"truly", b"!"],
        [],
        ["crème".encode(), "brûlée".encode(), "énorme".encode()],
        ["ελληνικά".encode(), "«".encode(), "κείμενο".encode(), "»".encode()],
        [],
    ]
    assert text_preprocessing.tokenize(tf.constant(["w " * 500]), max_len=7).to_list() == [
        [b"w"] * 7]


def _analyze_and_transform(train_texts, apply_texts, settings, tmp_path):
    """Runs preprocessing_fn with tf.Transform's Beam implementation (analyze on train)."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    spec = {"text": tf.io.FixedLenFeature([1], tf.string),
            features.LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64),
            "label_name": tf.io.FixedLenFeature([1], tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    names = ["neg", "pos"]
    train = [{"text": [text], features.LABEL_KEY: [index % 2],
              "label_name": [names[index % 2]]} for index, text in enumerate(train_texts)]
    apply = [{"text": [text], features.LABEL_KEY: [0], "label_name": ["neg"]}
             for text in apply_texts]

    def preprocessing_fn(inputs):
        return text_preprocessing.preprocessing_fn(inputs, settings)

    with tft_beam.Context(temp_dir=str(tmp_path / "tft_tmp"), force_tf_compat_v1=False):
        transform_fn = (train, metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
        transformed, _ = ((apply, metadata), transform_fn) | tft_beam.TransformDataset()
        transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "transform_output"))
    return transformed


def test_vocabulary_padding_oov_and_truncation(tmp_path):
    import tensorflow_transform as tft

    train = ["good good good film", "bad bad film", "Émouvant film", "good movie"]
    settings = {"vocab_size": 3, "num_oov_buckets": 2, "max_len": 5}
    transformed = _analyze_and_transform(
        train, ["good film", "", "ÉMOUVANT unseenword", "film " * 40, "bad movie émouvant"],
        settings, tmp_path)
    ids = np.array([row[text_preprocessing.TOKENS_TRANSFORMED_KEY] for row in transformed])
    assert ids.shape == (5, 5)
    output = tft.TFTransformOutput(str(tmp_path / "transform_output"))
    vocabulary = [token.decode() for token in output.vocabulary_by_name("tokens")]
    # top_k=3 by frequency: film (4), good (4), bad (2); the rest are out of vocabulary.
    assert sorted(vocabulary) == ["bad", "film", "good"]
    token_id = {token: index + 1 for index, token in enumerate(vocabulary)}
    oov_ids = {4, 5}  # vocab_size + 1 .. vocab_size + num_oov_buckets
    assert ids[0].tolist() == [token_id["good"], token_id["film"], 0, 0, 0]
    assert ids[1].tolist() == [0, 0, 0, 0, 0]  # empty text: padding only
    assert ids[2, 0] in oov_ids and ids[2, 1] in oov_ids and ids[2, 2:].tolist() == [0, 0, 0]
    assert ids[3].tolist() == [token_id["film"]] * 5  # truncated to max_len
    assert ids[4, 0] == token_id["bad"] and ids[4, 1] in oov_ids and ids[4, 2] in oov_ids
    # Every real token has an id >= 1, so `ids != 0` is exactly the non-padding mask.
    assert (ids[ids != 0] >= 1).all() and ids.max() <= 5
    # Non-ASCII lower-casing: "ÉMOUVANT" and "émouvant" map to the same bucket.
    assert ids[2, 0] == ids[4, 2]
    assert [row[features.LABEL_KEY] for row in transformed] == [0] * 5
    names = text_preprocessing.label_names_from_vocabulary(output.vocabulary_by_name("label_names"))
    assert names == ["neg", "pos"]


# ----- layers and models -------------------------------------------------------------------
def _text_inputs(vocab_size=50, max_len=12, num_classes=3):
    return registry.ModelInputs(feature_name="tokens_xf", feature_shape=(max_len,),
                                num_classes=num_classes, vocab_size=vocab_size)


def _token_ids(rows=4, max_len=12, seed=0):
    random = np.random.RandomState(seed)
    ids = random.randint(1, 50, size=(rows, max_len)).astype(np.int64)
    for row in range(rows):
        ids[row, random.randint(1, max_len):] = 0
    ids[-1] = 0  # an empty text
    return ids


@pytest.mark.parametrize("layer", [
    text_layers.TokenAndPositionEmbedding(vocab_size=30, max_len=9, embedding_dim=8, name="e"),
    text_layers.TransformerEncoderBlock(embedding_dim=8, num_heads=2, feed_forward_dim=16,
                                        dropout=0.2, name="b"),
    text_layers.MaskedMeanPooling(name="p"),
])
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    # Registered: Keras finds the class by its serialized name alone.
    serialized = tf.keras.utils.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("tfprod>")
    assert type(tf.keras.utils.deserialize_keras_object(serialized)) is type(layer)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_text_models_save_and_load_with_identical_outputs(name, tmp_path):
    model_config = config_lib.ModelConfig(name=name)
    model = registry.build_model(model_config, _text_inputs())
    ids = _token_ids()
    expected = model(ids, training=False).numpy()
    assert expected.shape == (4, 3) and np.isfinite(expected).all()
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)
    path = str(tmp_path / "model.keras")
    model.save(path)
    # No custom_objects: the layers are registered as serializable.
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(ids, training=False).numpy(), expected)
    clone = tf.keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(ids, training=False).numpy(), expected)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_text_models_ignore_padding(name):
    """A padded text gives the same output alone and in a batch with a longer text (the
    padding is masked), while a real token in place of padding changes the output."""
    model = registry.build_model(config_lib.ModelConfig(name=name), _text_inputs(max_len=12))
    ids = np.array([[5, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int64)
    reference = model(ids, training=False).numpy()
    short = registry.build_model(config_lib.ModelConfig(name=name), _text_inputs(max_len=12))
    short.set_weights(model.get_weights())
    # A second model with the same weights, fed the padded row beside a full-length text.
    batch = np.array([[5, 9, 3] + [0] * 9, [7] * 12], np.int64)
    np.testing.assert_allclose(short(batch, training=False).numpy()[:1], reference, atol=1e-6)
    altered = ids.copy()
    altered[0, 3] = 8
    assert not np.allclose(model(altered, training=False).numpy(), reference, atol=1e-6)


def test_masked_mean_pooling_skips_padding_and_handles_empty_rows():
    values = tf.constant([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0]] * 3])
    mask = tf.constant([[True, True, False], [False, False, False]])
    pooled = text_layers.MaskedMeanPooling()(values, mask=mask).numpy()
    np.testing.assert_allclose(pooled, [[2.0, 3.0], [0.0, 0.0]])


# ----- config, task and serving input ------------------------------------------------------
def test_tsv_format_picks_the_text_task_and_text_models_only():
    experiment = config_lib.ExperimentConfig(
        data=text_data_config("unused"), model=config_lib.ModelConfig(name="lstm"))
    experiment.validate()
    checks.check_experiment(experiment)
    assert tasks.get_task(experiment).name == "text_classification"
    assert tasks.get_task(experiment).supports_mobile() is True  # mobile.sequence
    assert registry.registered_for_task("text_classification") == ["lstm", "transformer"]
    experiment.model.name = "cnn"
    with pytest.raises(config_lib.ConfigError, match="fits image_classification, not "
                                                     "text_classification.*lstm, transformer"):
        checks.check_experiment(experiment)


@pytest.mark.parametrize("override, message", [
    ("data.text.max_len=0", "data.text.max_len: expected an integer >= 1"),
    ("data.text.num_oov_buckets=0", "data.text.num_oov_buckets"),
    ("data.text.label_column=sentence", "two different non-empty column names"),
    ("model.transformer.num_heads=3", "a multiple of model.transformer.num_heads"),
    ("model.lstm.dropout=1.5", r"model.lstm.dropout: expected a number in \[0, 1\)"),
])
def test_text_config_errors_name_the_key(override, message):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(os.path.join(repo, "configs", "sst2_transformer.yaml"), [override])


def test_both_text_configs_load():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, model in (("sst2_lstm", "lstm"), ("sst2_transformer", "transformer")):
        experiment = config_lib.load_config(os.path.join(repo, "configs", f"{name}.yaml"))
        assert experiment.model.name == model
        assert experiment.data.format == config_lib.DataFormat.TSV
        assert experiment.mobile.enabled is True


def test_json_string_instances_decode_to_a_string_tensor():
    signature, _, inputs = json_codec.decode_predict_request(
        b'{"signature_name": "serving_raw", "instances": ["a fine film", "cr\\u00e8me", ""]}')
    assert signature == "serving_raw"
    (array,) = inputs.values()
    assert array.dtype == object and array.tolist() == [b"a fine film", "crème".encode(), b""]


def test_tfprod_run_reports_bad_text_data_before_the_pipeline_starts(tmp_path, capsys):
    from tfprod import cli

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data_dir = write_tsv(tmp_path / "data", ["good\t1", "bad\t0"], ["fine\t1", "odd\t7"])
    code = cli.main(["run", "--config", os.path.join(repo, "configs", "sst2_lstm.yaml"),
                     "--data-dir", data_dir, "--output-dir", str(tmp_path / "out")])
    assert code == 3  # bad input data (tfprod.errors.EXIT_CODES)
    assert "test.tsv:3: label '7' never occurs in train.tsv" in capsys.readouterr().err
    assert not (tmp_path / "out" / "pipeline").exists()
