"""Image classification: IDX or TFDS images -> scaled pixels -> a classifier (e.g. the CNN)."""

from typing import Any, Dict, List, Tuple

from tfprod.pipeline import config as config_lib
from tfprod.contract import features
from tfprod.pipeline.tasks import Task

IMAGE_CLASSIFICATION = "image_classification"


class ImageClassificationTask(Task):
    """Grayscale images of data.image_height x data.image_width, data.num_classes classes."""

    name = IMAGE_CLASSIFICATION
    preprocessing_fn = "tfprod.pipeline.preprocessing.preprocessing_fn"

    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        data = experiment.data
        if data.source == config_lib.DataSource.TFDS:
            from tfprod.pipeline.tfds_source import dataset as tfds_dataset
            from tfprod.pipeline.tfds_source import example_gen as tfds_example_gen

            return tfds_example_gen.TfdsExampleGen(tfds_dataset.TfdsSource.from_config(data))
        from tfprod.pipeline import ingestion

        return ingestion.IdxExampleGen(input_base=data_dir, eval_fraction=data.eval_fraction)

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

    def compile_model(self, model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
        compile_classifier(model, experiment, optimizer)

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        from tfprod.pipeline import signatures

        return signatures.make_serving_signatures(
            model, tf_transform_output, experiment.data.image_height,
            experiment.data.image_width)

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        from tfprod.serving import warmup

        return warmup.image_warmup_requests(
            experiment.export.model_name, experiment.data.image_height,
            experiment.data.image_width)

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        return classification_eval_config(experiment.eval)

    def supports_mobile(self) -> bool:
        return True


def compile_classifier(model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
    """Cross-entropy and accuracy for any classifier, with the trainer's recipes.

    Label smoothing, and soft labels when mixup/cutmix mix them (pipeline.recipes).
    """
    from tfprod.pipeline import recipes

    num_classes = experiment.data.num_classes
    mixed = experiment.data.augmentation.mixes_labels
    model.compile(
        optimizer=optimizer,
        loss=recipes.classification_loss(experiment.trainer, num_classes, mixed),
        metrics=[recipes.classification_accuracy(num_classes, mixed)])


def classification_eval_config(eval_config: config_lib.EvalConfig):
    """TFMA config: accuracy overall and per class, gated on the overall slice.

    The model must reach eval.accuracy_threshold and may not fall more than
    eval.max_accuracy_drop below the last blessed model. Shared by every classifier.
    """
    import tensorflow_model_analysis as tfma

    accuracy_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(
            lower_bound={"value": eval_config.accuracy_threshold}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -eval_config.max_accuracy_drop}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=features.SERVING_DEFAULT_SIGNATURE,
            label_key=features.LABEL_KEY,
            prediction_key=features.PROBABILITIES_OUTPUT)],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[features.LABEL_KEY])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # Thresholds gate the overall slice; per-class slices are reported only.
            tfma.MetricConfig(class_name="SparseCategoricalAccuracy",
                              config='{"name": "accuracy"}',
                              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                                  slicing_specs=[tfma.SlicingSpec()],
                                  threshold=accuracy_threshold)]),
        ])])
