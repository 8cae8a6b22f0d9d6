"""What every classifier shares: its loss and metrics, its TFMA config and its report.

ClassificationTask is the base of the image and text classification tasks. No
TensorFlow import at module level.
"""

from tfprod.contract import features
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.tasks import CONFUSION_MATRIX_SECTION, Task

ACCURACY_METRIC = "accuracy"


class ClassificationTask(Task):
    """A task with a softmax head over data.num_classes classes and integer labels."""

    is_classification = True
    metrics = ("loss", ACCURACY_METRIC)
    summary_metrics = (ACCURACY_METRIC,)
    report_sections = frozenset({CONFUSION_MATRIX_SECTION})

    def compile_model(self, model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
        compile_classifier(model, experiment, optimizer)

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        return classification_eval_config(experiment.eval)


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
                              config=f'{{"name": "{ACCURACY_METRIC}"}}',
                              per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                                  slicing_specs=[tfma.SlicingSpec()],
                                  threshold=accuracy_threshold)]),
        ])])
