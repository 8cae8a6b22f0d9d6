"""Image classification: IDX or TFDS digits, or folders of photos -> a classifier.

Three sources, one task: IDX files and TFDS datasets (grayscale pixels, `image`), and
folders of photos (data.format image_folder: train/<class>/*.jpg, test/<class>/*.jpg; the
encoded files, `image_bytes`, decoded and resized in the Transform graph). The models (cnn,
resnet) see image_height x image_width x image_channels either way.

This folder holds the task: its preprocessing_fn (preprocessing.py), its signatures
(signatures.py) and its training-time augmentation (augmentation.py).
"""

import os
from typing import Any, Callable, Dict, List, Tuple

from tfprod.contract import features, idx
from tfprod.contract.tasks import TaskName
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.tasks import SAMPLES_SECTION, register
from tfprod.pipeline.tasks.classification import ClassificationTask


@register
class ImageClassificationTask(ClassificationTask):
    """Images of data.image_height x data.image_width x data.image_channels, data.num_classes
    classes."""

    name = TaskName.IMAGE_CLASSIFICATION
    data_formats = (config_lib.DataFormat.IDX.value, config_lib.DataFormat.IMAGE_FOLDER.value)
    data_sources = (config_lib.DataSource.TFDS.value,)
    takes_images = True
    report_sections = ClassificationTask.report_sections | {SAMPLES_SECTION}

    def preprocessing_function(self) -> Callable:
        from tfprod.pipeline.tasks.image import preprocessing

        return preprocessing.preprocessing_fn

    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        data = experiment.data
        if data.source == config_lib.DataSource.TFDS:
            from tfprod.pipeline.ingestion.tfds import dataset as tfds_dataset
            from tfprod.pipeline.ingestion.tfds import example_gen as tfds_example_gen

            return tfds_example_gen.TfdsExampleGen(tfds_dataset.TfdsSource.from_config(data))
        if _is_photo_folder(data):
            from tfprod.pipeline.ingestion import image_folder

            return image_folder.ImageFolderExampleGen(
                input_base=data_dir, eval_fraction=data.eval_fraction,
                channels=data.image_channels,
                skip_bad=data.bad_images == config_lib.BadImages.SKIP)
        from tfprod.pipeline.ingestion import idx as idx_ingestion

        return idx_ingestion.IdxExampleGen(input_base=data_dir, eval_fraction=data.eval_fraction)

    def preflight(self, experiment: config_lib.ExperimentConfig) -> None:
        """IDX: all four files there and readable, their images data.image_height x
        data.image_width (else IdxFormatError, exit 3, naming the file). TFDS: the dataset
        prepared, its splits and features as configured (TfdsSourceError, a ConfigError,
        says how to fix it).

        Photo folders: train/ and test/ hold the same class folders, and every file decodes
        (else ImageFolderError, exit 3, naming the files, unless data.bad_images is skip).
        With data.num_classes null, the number of class folders sets it, here, before the
        pipeline (and the config it saves) is built; a number set in the config is checked
        against the folders instead.
        """
        data = experiment.data
        if _is_photo_folder(data):
            from tfprod.pipeline.ingestion import image_folder

            listing = image_folder.scan(data.data_dir, data.image_channels)
            image_folder.check_bad_files(listing, data.bad_images == config_lib.BadImages.SKIP)
            found = len(listing.class_names)
            if data.num_classes is None:
                data.num_classes = found
            elif data.num_classes != found:
                raise image_folder.ImageFolderError(
                    f"{data.data_dir}: {found} class folders {listing.class_names}, but "
                    f"data.num_classes is {data.num_classes}; run with --set "
                    f"data.num_classes={found} (or null: from the folders)")
            return
        if data.source == config_lib.DataSource.TFDS:
            from tfprod.pipeline.ingestion.tfds import dataset as tfds_dataset

            if data.num_classes is None:
                raise config_lib.ConfigError(
                    "data.num_classes: a TFDS source needs the number of classes; pass "
                    "--set data.num_classes=K")
            tfds_dataset.check_source(data)
            return
        try:
            idx.check_idx_dir(data.data_dir)
        except FileNotFoundError as error:
            raise config_lib.ConfigError(f"data.data_dir: {error}") from None
        # The headers first: images of another size stop here, before anything is read
        # in full (else only the ExampleValidator, five components later, would say so).
        for images in (idx.TRAIN_IMAGES, idx.TEST_IMAGES):
            idx.check_image_size(os.path.join(data.data_dir, images), data.image_height,
                                 data.image_width)
        train_labels = None
        for images, labels in ((idx.TRAIN_IMAGES, idx.TRAIN_LABELS),
                               (idx.TEST_IMAGES, idx.TEST_LABELS)):
            _, read = idx.read_image_label_pair(os.path.join(data.data_dir, images),
                                                os.path.join(data.data_dir, labels))
            train_labels = read if train_labels is None else train_labels
        if data.num_classes is None:  # IDX labels are class ids 0..K-1
            data.num_classes = int(train_labels.max()) + 1

    def label_counts(self, experiment: config_lib.ExperimentConfig):
        """IDX: the train and t10k label files (TFDS: ClassificationTask's ConfigError).

        Photo folders: the files in each class folder (listed, not decoded: a file that
        data.bad_images: skip leaves out still counts here)."""
        data = experiment.data
        if _is_photo_folder(data):
            from tfprod.pipeline.ingestion import image_folder
            from tfprod.pipeline.tasks.classification import counts_for_eval_split

            counts = image_folder.scan(data.data_dir, data.image_channels, decode=False).counts()
            return counts_for_eval_split(counts[image_folder.TRAIN_DIR],
                                         counts[image_folder.TEST_DIR], experiment.eval)
        if data.source != config_lib.DataSource.FILES or data.format != config_lib.DataFormat.IDX:
            return super().label_counts(experiment)
        from tfprod.pipeline.tasks import baselines
        from tfprod.pipeline.tasks.classification import counts_for_eval_split

        train, test = (baselines.count_labels(idx.read_idx(os.path.join(data.data_dir, name)))
                       for name in (idx.TRAIN_LABELS, idx.TEST_LABELS))
        return counts_for_eval_split(train, test, experiment.eval)

    def transform_custom_config(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        """Photo folders: the size and channels the Transform graph fits each photo to."""
        data = experiment.data
        if not _is_photo_folder(data):
            return {}
        from tfprod.pipeline.tasks.image import preprocessing

        return {preprocessing.HEIGHT_SETTING: data.image_height,
                preprocessing.WIDTH_SETTING: data.image_width,
                preprocessing.CHANNELS_SETTING: data.image_channels}

    def model_inputs(self, experiment: config_lib.ExperimentConfig):
        from tfprod.models import registry

        data = experiment.data
        return registry.ModelInputs(
            feature_name=features.IMAGE_TRANSFORMED_KEY,
            feature_shape=(data.image_height * data.image_width * data.image_channels,),
            num_classes=data.num_classes,
            image_shape=(data.image_height, data.image_width, data.image_channels))

    def features_and_label(self, transformed: Dict[str, Any]) -> Tuple[Any, Any]:
        return transformed[features.IMAGE_TRANSFORMED_KEY], transformed[features.LABEL_KEY]

    def augment_dataset(self, dataset, experiment: config_lib.ExperimentConfig):
        from tfprod.pipeline.tasks.image import augmentation

        return augmentation.augment_dataset(dataset, experiment)

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        from tfprod.pipeline.tasks.image import signatures

        data = experiment.data
        if _is_photo_folder(data):
            return signatures.make_photo_signatures(
                model, tf_transform_output, data.image_height, data.image_width,
                data.image_channels, data.num_classes)
        return signatures.make_serving_signatures(
            model, tf_transform_output, experiment.data.image_height,
            experiment.data.image_width)

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        from tfprod.serving import warmup

        data = experiment.data
        if _is_photo_folder(data):
            from tfprod.pipeline.tasks.image import signatures

            return signatures.photo_warmup_requests(
                experiment.export.model_name, data.image_height, data.image_width,
                data.image_channels)
        return warmup.image_warmup_requests(
            experiment.export.model_name, experiment.data.image_height,
            experiment.data.image_width)

    def supports_mobile(self) -> bool:
        return True


def _is_photo_folder(data: config_lib.DataConfig) -> bool:
    return (data.source == config_lib.DataSource.FILES
            and data.format == config_lib.DataFormat.IMAGE_FOLDER)
