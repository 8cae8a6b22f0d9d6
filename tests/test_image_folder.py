"""Photo folders (data.format image_folder): listing and checking the folders, the
aspect-preserving resize and center crop, the channel conversion, the preprocessing_fn,
the ExampleGen on a real DirectRunner, augmentation on RGB and the ResNet.

Images are the shipped Caltech-101 sample (data/caltech101_sample) or made here with known
pixels, so the crop and the conversions can be checked value by value.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT
from tfprod import errors
from tfprod.contract import features, layout
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.ingestion import image_folder
from tfprod.pipeline.tasks.image import preprocessing

SAMPLE_DIR = REPO_ROOT / "data" / "caltech101_sample"
SAMPLE_CLASSES = ["Faces_easy", "Leopards", "Motorbikes", "airplanes"]
CONFIG = REPO_ROOT / "configs" / "caltech101_5_resnet.yaml"


def _png(array: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(array, tf.uint8)).numpy()


def _jpeg(array: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(tf.constant(array, tf.uint8), quality=100).numpy()


def _fit(encoded: bytes, height: int, width: int, channels: int) -> np.ndarray:
    return preprocessing.decode_and_fit(tf.constant(encoded), height, width, channels).numpy()


def _copy_sample(tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "photos"
    shutil.copytree(SAMPLE_DIR, target)
    return target


# --- resize, crop and channels ----------------------------------------------------------

def test_wide_image_keeps_its_centre_and_drops_the_sides():
    """A 40x80 image: left quarter red, middle half green, right quarter blue. Fitted to
    20x20 it is scaled by 1/2 (to 20x40) and the middle 20 columns kept: all green."""
    image = np.zeros([40, 80, 3], np.uint8)
    image[:, :20] = [255, 0, 0]
    image[:, 20:60] = [0, 255, 0]
    image[:, 60:] = [0, 0, 255]
    fitted = _fit(_png(image), 20, 20, 3)
    assert fitted.shape == (20, 20, 3)
    np.testing.assert_allclose(fitted[:, 2:-2], np.broadcast_to([0, 255, 0], (20, 16, 3)),
                               atol=1.0)
    assert fitted[..., 0].max() < 128 and fitted[..., 2].max() < 128  # red, blue cropped off


def test_tall_image_is_cropped_top_and_bottom_not_padded():
    image = np.full([90, 30, 3], 200, np.uint8)
    image[:30] = 0  # top third black
    image[60:] = 0  # bottom third black
    fitted = _fit(_png(image), 10, 10, 3)
    # Scaled to 30x10 and the middle 10 rows kept: no black (a pad would add borders).
    assert fitted.shape == (10, 10, 3)
    assert fitted[1:-1].min() > 150


def test_small_image_is_upscaled_to_the_target():
    image = np.full([5, 7, 3], 77, np.uint8)
    fitted = _fit(_png(image), 32, 32, 3)
    assert fitted.shape == (32, 32, 3)
    np.testing.assert_allclose(fitted, 77.0, atol=0.5)


def test_same_size_image_passes_unchanged():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, [16, 12, 3], dtype=np.uint8)
    np.testing.assert_allclose(_fit(_png(image), 16, 12, 3), image, atol=1e-3)


def test_grayscale_jpeg_becomes_rgb_and_rgba_png_drops_alpha():
    gray = np.full([20, 20, 1], 90, np.uint8)
    as_rgb = _fit(_jpeg(gray), 8, 8, 3)
    assert as_rgb.shape == (8, 8, 3)
    np.testing.assert_allclose(as_rgb, 90.0, atol=2.0)  # the gray repeated in R, G and B
    rgba = np.zeros([10, 10, 4], np.uint8)
    rgba[..., :3] = [10, 120, 250]
    rgba[..., 3] = 0  # fully transparent: the colour stays, the alpha is dropped
    np.testing.assert_allclose(_fit(_png(rgba), 10, 10, 3),
                               np.broadcast_to([10, 120, 250], (10, 10, 3)), atol=1e-3)


def test_rgb_to_one_channel_is_the_luma():
    rgb = np.zeros([12, 12, 3], np.uint8)
    rgb[...] = [255, 0, 0]
    gray = _fit(_png(rgb), 12, 12, 1)
    assert gray.shape == (12, 12, 1)
    # ITU-R 601 luma of pure red is about 0.299 * 255 = 76.
    assert 70 <= float(gray.mean()) <= 82


def test_preprocessing_fn_decodes_a_batch_of_mixed_sizes():
    photos = sorted((SAMPLE_DIR / "train" / "Motorbikes").glob("*.jpg"))[:3]
    encoded = tf.constant([[path.read_bytes()] for path in photos])
    outputs = preprocessing.preprocessing_fn(
        {features.IMAGE_BYTES_KEY: encoded},
        {preprocessing.HEIGHT_SETTING: 24, preprocessing.WIDTH_SETTING: 32,
         preprocessing.CHANNELS_SETTING: 3})
    image = outputs[features.IMAGE_TRANSFORMED_KEY].numpy()
    assert image.shape == (3, 24 * 32 * 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    with pytest.raises(ValueError, match="image_height"):
        preprocessing.preprocessing_fn({features.IMAGE_BYTES_KEY: encoded}, {})


def test_preprocessing_fn_idx_pixels_unchanged():
    pixels = tf.constant([[0, 255, 51]], tf.int64)
    outputs = preprocessing.preprocessing_fn({features.IMAGE_KEY: pixels,
                                              features.LABEL_KEY: tf.constant([[4]], tf.int64)})
    np.testing.assert_allclose(outputs[features.IMAGE_TRANSFORMED_KEY].numpy(),
                               [[0.0, 1.0, 0.2]], atol=1e-6)
    assert outputs[features.LABEL_KEY].numpy().tolist() == [4]


def test_class_names_from_vocabulary_orders_by_id():
    assert preprocessing.class_names_from_vocabulary(
        [b"000002:watch", b"000000:Faces_easy", "000001:Leopards"]) == [
            "Faces_easy", "Leopards", "watch"]
    with pytest.raises(ValueError, match="0..1"):
        preprocessing.class_names_from_vocabulary([b"000000:a", b"000002:c"])


# --- listing and checking the folders ---------------------------------------------------

def test_scan_lists_sorted_classes_and_every_file():
    listing = image_folder.scan(str(SAMPLE_DIR), channels=3)
    assert listing.class_names == SAMPLE_CLASSES
    assert listing.bad == []
    on_disk = {split: sum(1 for path in (SAMPLE_DIR / split).glob("*/*")) for split in
               ("train", "test")}
    assert {split: len(items) for split, items in listing.files.items()} == on_disk
    assert listing.counts()["test"] == {name: 4 for name in SAMPLE_CLASSES}


def test_corrupt_file_is_named_and_skippable(tmp_path):
    data_dir = _copy_sample(tmp_path)
    corrupt = data_dir / "train" / "Leopards" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    notes = data_dir / "test" / "airplanes" / "notes.txt"
    notes.write_text("not a photo")
    (data_dir / "train" / "Leopards" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored
    listing = image_folder.scan(str(data_dir), channels=3)
    assert sorted(bad.path for bad in listing.bad) == sorted([str(corrupt), str(notes)])
    with pytest.raises(image_folder.ImageFolderError) as raised:
        image_folder.check_bad_files(listing, skip=False)
    message = str(raised.value)
    assert str(corrupt) in message and str(notes) in message
    assert "--set data.bad_images=skip" in message
    assert errors.exit_code(raised.value) == 3
    image_folder.check_bad_files(listing, skip=True)  # no error: they are left out
    assert str(corrupt) not in [path for path, _ in listing.files["train"]]


def test_class_mismatch_and_stray_files_are_input_errors(tmp_path):
    data_dir = _copy_sample(tmp_path)
    shutil.rmtree(data_dir / "test" / "Leopards")
    with pytest.raises(image_folder.ImageFolderError, match=r"only in train: \['Leopards'\]"):
        image_folder.scan(str(data_dir))
    (data_dir / "test" / "Leopards").mkdir()
    with pytest.raises(image_folder.ImageFolderError, match="empty class folder"):
        image_folder.scan(str(data_dir))
    shutil.copytree(SAMPLE_DIR / "test" / "Leopards", data_dir / "test" / "Leopards",
                    dirs_exist_ok=True)
    (data_dir / "train" / "loose.jpg").write_bytes(b"x")
    with pytest.raises(image_folder.ImageFolderError, match="outside a class folder"):
        image_folder.scan(str(data_dir))
    with pytest.raises(image_folder.ImageFolderError, match="no such directory"):
        image_folder.scan(str(tmp_path / "nowhere"))


def test_task_preflight_sets_num_classes_from_the_folders():
    from tfprod.pipeline import tasks

    experiment = config_lib.load_config(str(CONFIG), overrides=[
        f"data.data_dir={SAMPLE_DIR}"])
    assert experiment.data.num_classes is None
    task = tasks.get_task(experiment)
    assert task.name.value == "image_classification"
    task.preflight(experiment)
    assert experiment.data.num_classes == 4
    assert task.model_inputs(experiment).image_shape == (128, 128, 3)
    train, test = task.label_counts(experiment)
    assert test == {name: 4 for name in SAMPLE_CLASSES}
    assert sum(train.values()) == 31


def test_num_classes_set_in_the_config_is_checked_against_the_folders():
    from tfprod.pipeline import tasks

    experiment = config_lib.load_config(str(CONFIG), overrides=[
        f"data.data_dir={SAMPLE_DIR}", "data.num_classes=5"])
    with pytest.raises(image_folder.ImageFolderError, match="--set data.num_classes=4"):
        tasks.get_task(experiment).preflight(experiment)


def test_image_channels_3_needs_image_folder():
    with pytest.raises(config_lib.ConfigError, match="data.image_channels"):
        config_lib.load_config(str(REPO_ROOT / "configs" / "mnist_cnn.yaml"),
                               overrides=["data.image_channels=3"])


# --- the ExampleGen on Beam -------------------------------------------------------------

def test_example_gen_writes_encoded_bytes_and_lists_skipped(tmp_path):
    """The executor on a real DirectRunner, as TFX's component would run it."""
    from tfx.types import standard_artifacts

    data_dir = _copy_sample(tmp_path)
    corrupt = data_dir / "train" / "airplanes" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    component = image_folder.ImageFolderExampleGen(str(data_dir), eval_fraction=0.25,
                                                   channels=3, skip_bad=True)
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    exec_properties = dict(component.exec_properties)
    exec_properties["output_data_format"] = 6  # FORMAT_TF_EXAMPLE
    exec_properties["output_file_format"] = 5  # FILE_FORMAT_TFRECORDS_GZIP
    image_folder.ImageFolderExampleGenExecutor().Do({}, {"examples": [examples]},
                                                    exec_properties)
    skipped = json.loads((tmp_path / "examples" / layout.SKIPPED_INPUTS_FILE).read_text())
    assert skipped["count"] == 1 and skipped["files"][0]["file"] == str(corrupt)

    def read(split):
        files = tf.io.gfile.glob(str(tmp_path / "examples" / f"Split-{split}" / "*"))
        return [tf.train.Example.FromString(record.numpy()) for record in
                tf.data.TFRecordDataset(files, compression_type="GZIP")]

    train, evaluation, test = read("train"), read("eval"), read("test")
    assert len(train) + len(evaluation) == 31 and len(test) == 16 and evaluation
    originals = {path.read_bytes() for path in SAMPLE_DIR.glob("*/*/*")}
    for example in train + evaluation + test:
        feature = example.features.feature
        encoded = feature[features.IMAGE_BYTES_KEY].bytes_list.value[0]
        assert encoded in originals  # the file's bytes, not decoded pixels
        label = feature[features.LABEL_KEY].int64_list.value[0]
        assert feature[features.CLASS_NAME_KEY].bytes_list.value[0].decode() == \
            SAMPLE_CLASSES[label]
    total = sum(len(ex.SerializeToString()) for ex in train + evaluation + test)
    assert total < 1.1 * sum(len(data) for data in originals)


# --- augmentation on RGB and the models ------------------------------------------------

def test_augmentation_flip_crop_contrast_on_rgb():
    from tfprod.pipeline.tasks.image import augmentation

    experiment = config_lib.load_config(str(CONFIG), overrides=[
        "data.image_height=16", "data.image_width=16", "data.augmentation.seed=1"])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, [8, 16 * 16 * 3]).astype(np.float32)
    labels = np.arange(8) % 5
    dataset = tf.data.Dataset.from_tensors((images, labels))
    augmented, same_labels = next(iter(augmentation.augment_dataset(dataset, experiment)))
    assert augmented.shape == images.shape
    np.testing.assert_array_equal(same_labels.numpy(), labels)
    assert not np.allclose(augmented.numpy(), images)
    assert augmented.numpy().min() >= 0.0 and augmented.numpy().max() <= 1.0


@pytest.mark.parametrize("name", ["resnet", "cnn"])
def test_models_build_for_rgb(name):
    from tfprod.models import registry

    experiment = config_lib.load_config(str(CONFIG), overrides=[f"model.name={name}"])
    inputs = registry.ModelInputs(feature_name=features.IMAGE_TRANSFORMED_KEY,
                                  feature_shape=(40 * 48 * 3,), num_classes=5,
                                  image_shape=(40, 48, 3))
    model = registry.build_model(experiment.model, inputs)
    out = model(np.zeros([2, 40 * 48 * 3], np.float32), training=False)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out.numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert "image_classification" in [t.value for t in registry.model_tasks(name)]
    if name == "resnet":
        assert any(isinstance(layer, tf.keras.layers.Add) for layer in model.layers)
        assert model.count_params() < 500_000
