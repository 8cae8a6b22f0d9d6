"""TFDS as a pipeline source: the project's builder, dataset checks and TfdsExampleGen.

The dataset is real: tfprod_mnist_sample (a GeneratorBasedBuilder over the shipped
MNIST sample) is built offline by `tfprod tfds-build` into a temp data dir, and read
back with TFDS's own reader on Beam. Only the catalogue test at the end uses
tfds.testing.mock_data (those datasets cannot be downloaded here).
"""

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from tfprod.contract import features

from tfprod import cli

from tfprod.pipeline import config as config_lib, pipeline as pipeline_lib
from tfprod.pipeline.ingestion import idx as idx_ingestion
from tests.conftest import MNIST_CONFIG, REPO_ROOT, write_idx_dataset
from tfprod.pipeline.ingestion.tfds import dataset, example_gen, mnist_sample

SMALL_NAME = "tfprod_mnist_sample/small:1.0.0"
SMALL_TRAIN, SMALL_TEST = 2000, 500
TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
    """A TFDS data dir holding tfprod_mnist_sample/small, built by `tfprod tfds-build`."""
    data_dir = tmp_path_factory.mktemp("tfds_data")
    assert cli.main(["tfds-build", "--data-dir", str(data_dir), "--config", "small"]) == 0
    return data_dir


def tfds_data_config(data_dir, **overrides):
    values = dict(source=config_lib.DataSource.TFDS, tfds_name=SMALL_NAME,
                  tfds_data_dir=str(data_dir))
    values.update(overrides)
    return config_lib.DataConfig(**values)


def read_split(examples_uri, split):
    pattern = os.path.join(examples_uri, f"Split-{split}", "*")
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in records]


def as_pairs(examples):
    """A multiset of (pixels, label), checking each example has exactly the pipeline's features."""
    pairs = collections.Counter()
    for example in examples:
        feature = example.features.feature
        assert set(feature) == {features.IMAGE_KEY, features.LABEL_KEY}
        assert feature[features.IMAGE_KEY].WhichOneof("kind") == "int64_list"
        assert feature[features.LABEL_KEY].WhichOneof("kind") == "int64_list"
        pixels = tuple(feature[features.IMAGE_KEY].int64_list.value)
        labels = tuple(feature[features.LABEL_KEY].int64_list.value)
        assert len(pixels) == 784 and len(labels) == 1
        pairs[(pixels, labels[0])] += 1
    return pairs


def image_pairs(images, labels):
    return collections.Counter(
        (tuple(int(p) for p in image.ravel()), int(label)) for image, label in zip(images, labels))


def run_executor(executor, component, output_dir):
    examples = standard_artifacts.Examples()
    examples.uri = str(output_dir)
    # The component stores its proto properties as JSON, as the launcher passes them.
    exec_properties = dict(component.exec_properties)
    exec_properties[standard_component_specs.OUTPUT_DATA_FORMAT_KEY] = (
        example_gen_pb2.FORMAT_TF_EXAMPLE)
    executor.Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def run_tfds_executor(data_config, output_dir):
    component = example_gen.TfdsExampleGen(dataset.TfdsSource.from_config(data_config))
    return run_executor(example_gen.TfdsExampleGenExecutor(), component, output_dir)


# ---------------------------------------------------------------------------
# The project's own TFDS builder
# ---------------------------------------------------------------------------


def test_tfds_build_prepares_the_idx_sample_as_a_real_tfds_dataset(tfds_data_dir, mnist_sample):
    builder = tfds.builder(SMALL_NAME, data_dir=str(tfds_data_dir))
    assert builder.is_prepared()
    assert {split: info.num_examples for split, info in builder.info.splits.items()} == {
        "train": SMALL_TRAIN, "test": SMALL_TEST}
    assert builder.info.features["image"].shape == (28, 28, 1)
    assert builder.info.features["label"].num_classes == 10
    # In the IDX order (shuffling disabled), pixel for pixel: the first 500 test images.
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    _, _, test_images, test_labels = mnist_sample
    np.testing.assert_array_equal(test["image"][:, :, :, 0], test_images[:SMALL_TEST])
    np.testing.assert_array_equal(test["label"], test_labels[:SMALL_TEST])


def test_build_reports_missing_source_files(tmp_path):
    with pytest.raises(mnist_sample.SourceFilesError, match="missing train-images-idx3-ubyte.gz"):
        mnist_sample.build(str(tmp_path / "out"), configs=["small"], source_dir=str(tmp_path))


# ---------------------------------------------------------------------------
# TfdsExampleGen: the same tf.Examples as the IDX path
# ---------------------------------------------------------------------------


def test_examples_equal_the_idx_paths_on_the_same_sample(tfds_data_dir, tmp_path, mnist_sample):
    train_images, train_labels, test_images, test_labels = mnist_sample
    idx_dir = write_idx_dataset(tmp_path / "idx", train_images[:SMALL_TRAIN],
                                train_labels[:SMALL_TRAIN], test_images[:SMALL_TEST],
                                test_labels[:SMALL_TEST])
    idx_examples = run_executor(
        idx_ingestion.IdxExampleGenExecutor(),
        idx_ingestion.IdxExampleGen(input_base=str(idx_dir), eval_fraction=0.1), tmp_path / "idx_out")
    tfds_examples = run_tfds_executor(tfds_data_config(tfds_data_dir, eval_fraction=0.1),
                                      tmp_path / "tfds_out")
    assert artifact_utils.decode_split_names(tfds_examples.split_names) == [
        "train", "eval", "test"]

    tfds_splits = {split: as_pairs(read_split(tfds_examples.uri, split))
                   for split in ("train", "eval", "test")}
    idx_splits = {split: as_pairs(read_split(idx_examples.uri, split))
                  for split in ("train", "eval", "test")}
    # Same test examples, and the same training examples over train + eval; both equal
    # the sample's images. (Eval is held out by hash in both paths, of different keys.)
    assert tfds_splits["test"] == idx_splits["test"] == image_pairs(
        test_images[:SMALL_TEST], test_labels[:SMALL_TEST])
    assert (tfds_splits["train"] + tfds_splits["eval"]
            == idx_splits["train"] + idx_splits["eval"]
            == image_pairs(train_images[:SMALL_TRAIN], train_labels[:SMALL_TRAIN]))
    assert not set(tfds_splits["train"]) & set(tfds_splits["eval"])
    assert 0.06 < sum(tfds_splits["eval"].values()) / SMALL_TRAIN < 0.14


def test_split_mapping_is_configurable_with_tfds_slices(tfds_data_dir, tmp_path, mnist_sample):
    data = tfds_data_config(tfds_data_dir, tfds_train_split="train[200:]",
                            tfds_eval_split="train[:200]", tfds_test_split="test[:100]")
    assert dataset.check_source(data) == {"train": 1800, "eval": 200, "test": 100}
    examples = run_tfds_executor(data, tmp_path / "out")
    train_images, train_labels, test_images, test_labels = mnist_sample
    assert as_pairs(read_split(examples.uri, "eval")) == image_pairs(train_images[:200],
                                                                     train_labels[:200])
    assert as_pairs(read_split(examples.uri, "train")) == image_pairs(
        train_images[200:SMALL_TRAIN], train_labels[200:SMALL_TRAIN])
    assert as_pairs(read_split(examples.uri, "test")) == image_pairs(test_images[:100],
                                                                     test_labels[:100])


def test_create_pipeline_picks_the_example_gen_by_source(tfds_data_dir):
    idx_config = config_lib.load_config(str(MNIST_CONFIG))
    assert idx_config.data.source == config_lib.DataSource.FILES
    idx_ids = {component.id for component in pipeline_lib.create_pipeline(idx_config).components}
    assert "IdxExampleGen" in idx_ids and "TfdsExampleGen" not in idx_ids
    tfds_config = config_lib.load_config(str(MNIST_CONFIG), [
        "data.source=tfds", f"data.tfds_name={SMALL_NAME}",
        f"data.tfds_data_dir={tfds_data_dir}"])
    components = {component.id: component
                  for component in pipeline_lib.create_pipeline(tfds_config).components}
    assert set(components) == idx_ids - {"IdxExampleGen"} | {"TfdsExampleGen"}
    component = components["TfdsExampleGen"]
    assert component.exec_properties["input_base"] == str(tfds_data_dir)
    # The driver fingerprints the dataset's own files (so caching follows them).
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(component.exec_properties["input_config"], input_config)
    assert {split.pattern for split in input_config.splits} == {
        "tfprod_mnist_sample/small/1.0.0/*"}


# ---------------------------------------------------------------------------
# Helpful errors
# ---------------------------------------------------------------------------


def test_missing_catalogue_dataset_gives_the_tfds_build_command(tmp_path):
    data = tfds_data_config(tmp_path, tfds_name="mnist:3.0.1")
    with pytest.raises(dataset.DatasetNotPreparedError) as raised:
        dataset.check_source(data)
    message = str(raised.value)
    assert f"'mnist:3.0.1' is not prepared in {tmp_path}" in message
    assert f"pip install tensorflow-datasets=={tfds.__version__} mlcroissant" in message
    assert "tfds build mnist:3.0.1 --data_dir=/tmp/tfds" in message
    assert f"copy the folder /tmp/tfds/mnist from that machine to {tmp_path}/mnist" in message
    assert f"{tmp_path}/mnist/3.0.1 holds dataset_info.json" in message


def test_missing_dataset_through_tfprod_run_exits_2_before_tfx_starts(tmp_path, capsys):
    output_dir = tmp_path / "out"
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--output-dir", str(output_dir),
                     "--set", "data.source=tfds", "--set", f"data.tfds_name={SMALL_NAME}",
                     "--set", f"data.tfds_data_dir={tmp_path / 'empty'}"])
    assert code == 2
    error = capsys.readouterr().err
    assert "data.tfds_data_dir: directory not found" in error
    assert f"tfprod tfds-build --data-dir {tmp_path / 'empty'} --config small" in error
    assert not output_dir.exists()


def test_unknown_dataset_name_and_bad_name(tmp_path):
    with pytest.raises(dataset.DatasetNotPreparedError, match="tfds build no_such_dataset:1.0.0"):
        dataset.check_source(tfds_data_config(tmp_path, tfds_name="no_such_dataset:1.0.0"))
    with pytest.raises(dataset.TfdsSourceError, match=r"expected dataset\[/config\]\[:version\]"):
        dataset.check_source(tfds_data_config(tmp_path, tfds_name="not a name!"))


def test_other_version_lists_what_is_prepared(tfds_data_dir):
    data = tfds_data_config(tfds_data_dir, tfds_name="tfprod_mnist_sample/small:9.9.9")
    with pytest.raises(dataset.DatasetNotPreparedError,
                       match="Prepared here: tfprod_mnist_sample/small/1.0.0"):
        dataset.check_source(data)


def test_wrong_split_name_lists_the_available_splits(tfds_data_dir):
    data = tfds_data_config(tfds_data_dir, tfds_test_split="validation")
    with pytest.raises(dataset.UnknownSplitError) as raised:
        dataset.check_source(data)
    message = str(raised.value)
    assert message.startswith("data.tfds_test_split: 'validation' is not a split of "
                              f"{SMALL_NAME}")
    assert "Available splits: train (2000 examples), test (500 examples)" in message
    # An empty slice is refused too.
    with pytest.raises(dataset.UnknownSplitError, match="'train\\[5:5\\]' selects no examples"):
        dataset.check_source(tfds_data_config(tfds_data_dir, tfds_train_split="train[5:5]"))


def test_wrong_split_through_tfprod_run(tfds_data_dir, tmp_path, capsys):
    code = cli.main(["run", "--config", str(MNIST_CONFIG), "--output-dir", str(tmp_path / "out"),
                     "--set", "data.source=tfds", "--set", f"data.tfds_name={SMALL_NAME}",
                     "--set", f"data.tfds_data_dir={tfds_data_dir}",
                     "--set", "data.tfds_eval_split=validation"])
    assert code == 2
    error = capsys.readouterr().err
    assert "data.tfds_eval_split: 'validation' is not a split" in error
    assert "train (2000 examples), test (500 examples)" in error


def test_features_that_do_not_fit_the_image_pipeline(tfds_data_dir):
    with pytest.raises(dataset.FeatureMismatchError, match=r"its features are image, label"):
        dataset.check_source(tfds_data_config(tfds_data_dir, tfds_label_feature="digit"))
    with pytest.raises(dataset.FeatureMismatchError, match=r"shape \(28, 28, 1\).*\(32, 32\)"):
        dataset.check_source(tfds_data_config(tfds_data_dir, image_height=32, image_width=32))
    with pytest.raises(dataset.FeatureMismatchError, match="has 10 classes, the config says 5"):
        dataset.check_source(tfds_data_config(tfds_data_dir, num_classes=5))


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def test_config_tfds_keys_are_validated(tmp_path, monkeypatch):
    assert config_lib.load_config(str(MNIST_CONFIG)).data.source == config_lib.DataSource.FILES
    with pytest.raises(config_lib.ConfigError, match="data.tfds_name: expected a TFDS name"):
        config_lib.load_config(str(MNIST_CONFIG), ["data.source=tfds"])
    with pytest.raises(config_lib.ConfigError, match="data.tfds_data_dir: expected the TFDS"):
        config_lib.load_config(str(MNIST_CONFIG), ["data.source=tfds", "data.tfds_name=mnist"])
    with pytest.raises(config_lib.ConfigError, match="data.source: expected one of 'files', 'tfds'"):
        config_lib.load_config(str(MNIST_CONFIG), ["data.source=hub"])
    monkeypatch.chdir(tmp_path)
    loaded = config_lib.load_config(str(MNIST_CONFIG), [
        "data.source=tfds", "data.tfds_name=mnist:3.0.1", "data.tfds_data_dir=tfds",
        "data.tfds_test_split=test[:50%]"])
    assert loaded.data.tfds_data_dir == str(tmp_path / "tfds")
    assert loaded.data.tfds_test_split == "test[:50%]"
    assert loaded.data.describe_source() == f"TFDS mnist:3.0.1 in {tmp_path / 'tfds'}"


# ---------------------------------------------------------------------------
# Catalogue datasets (mocked: they cannot be downloaded here)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist:3.0.1", "fashion_mnist:3.0.1"])
def test_catalogue_image_datasets_convert_to_the_pipelines_features(name, tmp_path):
    """Catalogue datasets through tfds.testing.mock_data (random values, real feature specs).

    mnist and fashion_mnist cannot be downloaded here, so TFDS's mock stands in for the
    data; the features (and so check_features and the conversion) are the real catalogue
    builders'. The full read path is covered above with the locally built dataset.
    """
    builder = tfds.builder(name, data_dir=str(tmp_path))
    data = tfds_data_config(tmp_path, tfds_name=name)
    dataset.check_features(builder, dataset.TfdsSource.from_config(data), data)
    with tfds.testing.mock_data(num_examples=3):
        elements = list(tfds.as_numpy(tfds.load(name, split="train", data_dir=str(tmp_path))))
    feature_map = {features.IMAGE_KEY: "image", features.LABEL_KEY: "label"}
    for element in elements:
        example = example_gen.to_tf_example(element, feature_map)
        (pairs,) = as_pairs([example]).keys()
        assert list(pairs[0]) == element["image"].ravel().tolist()
        assert pairs[1] == element["label"]


def test_catalogue_text_dataset_converts_to_bytes_and_int64(tmp_path):
    """imdb_reviews through tfds.testing.mock_data (it cannot be downloaded here).

    The text path's configs do not exist yet; this checks that the converter writes a
    text feature as a bytes list and the label as int64, as a text pipeline expects.
    """
    with tfds.testing.mock_data(num_examples=2):
        elements = list(tfds.as_numpy(tfds.load("imdb_reviews/plain_text", split="train",
                                                data_dir=str(tmp_path))))
    for element in elements:
        example = example_gen.to_tf_example(element, {"text": "text", "label": "label"})
        assert list(example.features.feature["text"].bytes_list.value) == [element["text"]]
        assert list(example.features.feature["label"].int64_list.value) == [element["label"]]


# ---------------------------------------------------------------------------
# End to end: `tfprod run` from the locally built TFDS dataset
# ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_tfprod_run_from_tfds_trains_blesses_and_pushes(tfds_data_dir, tmp_path, mnist_sample):
    """The issue's command on tfprod_mnist_sample/small (1,800 train / 200 eval / 500 test).

    Batch 32 for 2 epochs: enough steps for ~0.96 test accuracy when the same model is fit
    in memory on these images; the floor is set well below.
    """
    output_dir = tmp_path / "out"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [TFPROD, "run", "--config", str(MNIST_CONFIG), "--output-dir", str(output_dir),
         "--set", "data.source=tfds", "--set", f"data.tfds_name={SMALL_NAME}",
         "--set", f"data.tfds_data_dir={tfds_data_dir}", "--set", "trainer.epochs=2",
         "--set", "trainer.batch_size=32", "--set", "eval.accuracy_threshold=0.7",
         # The source is under test; the InfraValidator is tested in tests/e2e.
         "--set", "infra.enabled=false"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The run's first lines name its data source.
    assert f"  data:    TFDS {SMALL_NAME} in {tfds_data_dir}\n" in result.stdout
    assert "TfdsExampleGen done in" in result.stdout

    summary = json.loads((output_dir / "run_summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["blessed"] is True
    assert "TfdsExampleGen" in summary["component_seconds"]
    assert summary["metrics"]["example_count"] == SMALL_TEST
    assert summary["metrics"]["accuracy"] >= 0.7
    pushed = pathlib.Path(summary["pushed_model_dir"])
    assert pushed.parent == output_dir / "serving" / "mnist_cnn" and pushed.name.isdigit()
    assert (pushed / "saved_model.pb").is_file()

    # The pushed model on the IDX test images reproduces the Evaluator's accuracy: the
    # TFDS test split was exactly those images, and the model serves IDX-style input.
    _, _, test_images, test_labels = mnist_sample
    model = tf.saved_model.load(str(pushed))
    outputs = model.signatures[features.SERVING_RAW_SIGNATURE](
        image=tf.constant(test_images[:SMALL_TEST], tf.float32))
    accuracy = float(np.mean(outputs[features.CLASS_ID_OUTPUT].numpy()
                             == test_labels[:SMALL_TEST]))
    assert accuracy == pytest.approx(summary["metrics"]["accuracy"], abs=1e-3)
