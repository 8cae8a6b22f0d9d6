"""Image classification: IDX or TFDS images -> scaled pixels -> a classifier (e.g. the CNN).

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
    """Grayscale images of data.image_height x data.image_width, data.num_classes classes."""

    name = TaskName.IMAGE_CLASSIFICATION
    data_formats = (config_lib.DataFormat.IDX.value,)
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
        from tfprod.pipeline.ingestion import idx as idx_ingestion

        return idx_ingestion.IdxExampleGen(input_base=data_dir, eval_fraction=data.eval_fraction)

    def preflight(self, experiment: config_lib.ExperimentConfig) -> None:
        """IDX: all four files there and readable. TFDS: the dataset prepared, its splits and
        features as configured (TfdsSourceError, a ConfigError, says how to fix it)."""
        data = experiment.data
        if data.source == config_lib.DataSource.TFDS:
            from tfprod.pipeline.ingestion.tfds import dataset as tfds_dataset

            tfds_dataset.check_source(data)
            return
        try:
            idx.check_idx_dir(data.data_dir)
        except FileNotFoundError as error:
            raise config_lib.ConfigError(f"data.data_dir: {error}") from None
        for images, labels in ((idx.TRAIN_IMAGES, idx.TRAIN_LABELS),
                               (idx.TEST_IMAGES, idx.TEST_LABELS)):
            idx.read_image_label_pair(os.path.join(data.data_dir, images),
                                      os.path.join(data.data_dir, labels))

    def model_inputs(self, experiment: config_lib.ExperimentConfig):
        from tfprod.models import registry

        data = experiment.data
        return registry.ModelInputs(
            feature_name=features.IMAGE_TRANSFORMED_KEY,
            feature_shape=(data.image_height * data.image_width,),
            num_classes=data.num_classes,
            image_shape=(data.image_height, data.image_width, 1))

    def features_and_label(self, transformed: Dict[str, Any]) -> Tuple[Any, Any]:
        return transformed[features.IMAGE_TRANSFORMED_KEY], transformed[features.LABEL_KEY]

    def augment_dataset(self, dataset, experiment: config_lib.ExperimentConfig):
        from tfprod.pipeline.tasks.image import augmentation

        return augmentation.augment_dataset(dataset, experiment)

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        from tfprod.pipeline.tasks.image import signatures

        return signatures.make_serving_signatures(
            model, tf_transform_output, experiment.data.image_height,
            experiment.data.image_width)

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        from tfprod.serving import warmup

        return warmup.image_warmup_requests(
            experiment.export.model_name, experiment.data.image_height,
            experiment.data.image_width)

    def supports_mobile(self) -> bool:
        return True
