"""What every classifier shares: its loss and metrics, its TFMA config and its report.

ClassificationTask is the base of the image and text classification tasks. No
TensorFlow import at module level.
"""

from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

from tfprod.contract import features, splits
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.tasks import CONFUSION_MATRIX_SECTION, Task, baselines

ACCURACY_METRIC = "accuracy"

# (train label counts, counts on the split the Evaluator scores).
LabelCounts = Tuple[Mapping[Hashable, int], Mapping[Hashable, int]]


class ClassificationTask(Task):
    """A task with a softmax head over data.num_classes classes and integer labels."""

    is_classification = True
    metrics = ("loss", ACCURACY_METRIC)
    summary_metrics = (ACCURACY_METRIC,)
    report_sections = frozenset({CONFUSION_MATRIX_SECTION})

    def compile_model(self, model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
        compile_classifier(model, experiment, optimizer)

    def label_counts(self, experiment: config_lib.ExperimentConfig) -> LabelCounts:
        """(label -> count in the training data, label -> count in eval.split's data).

        Reads the raw labels only (IDX label files, a TSV's label column, ...). The
        training data is the file(s) ExampleGen splits into train and eval; when
        eval.split is not test, its counts are the training data's too (the eval split is a
        hash sample of it). Subclasses that can read their labels implement it.

        Raises:
          ConfigError: this task's data source has no label counts (use the absolute gate).
        """
        raise config_lib.ConfigError(
            f"eval.gate baseline: the {self.name.value} task cannot count the labels of "
            f"data.source {experiment.data.source.value}; use --set eval.gate=absolute")

    def baseline_metrics(self, experiment: config_lib.ExperimentConfig) -> Dict[str, float]:
        """{"baseline_accuracy": the majority class's accuracy on eval.split}."""
        try:
            train_counts, test_counts = self.label_counts(experiment)
        except (OSError, FileNotFoundError) as error:
            raise config_lib.ConfigError(
                f"eval.gate baseline reads the labels in {experiment.data.data_dir} before "
                f"the run, and could not ({error}); use --set eval.gate=absolute "
                "(with eval.accuracy_threshold)") from None
        return {baselines.BASELINE_ACCURACY: baselines.majority_class_accuracy(
            train_counts, test_counts)}

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        baseline = None
        if experiment.eval.gate == config_lib.Gate.BASELINE:
            baseline = self.baseline_metrics(experiment)[baselines.BASELINE_ACCURACY]
        return classification_eval_config(experiment.eval, baseline,
                                          self.slice_feature_keys(experiment))


def counts_for_eval_split(train_counts: Mapping[Hashable, int],
                          test_counts: Mapping[Hashable, int],
                          eval_config: config_lib.EvalConfig) -> LabelCounts:
    """label_counts' answer from the training and test files' counts, for eval.split."""
    scored = test_counts if eval_config.split == splits.TEST else train_counts
    return train_counts, scored


def required_accuracy(eval_config: config_lib.EvalConfig,
                      baseline_accuracy: Optional[float]) -> float:
    """The accuracy the gate requires: eval.accuracy_threshold (absolute), or the
    majority class's plus eval.baseline_margin (baseline)."""
    if eval_config.gate == config_lib.Gate.BASELINE:
        if baseline_accuracy is None:
            raise ValueError("eval.gate baseline needs the baseline accuracy")
        return baselines.required_accuracy(baseline_accuracy, eval_config.baseline_margin)
    return eval_config.accuracy_threshold


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


def classification_eval_config(eval_config: config_lib.EvalConfig,
                               baseline_accuracy: Optional[float] = None,
                               slice_keys: Sequence[str] = ()):
    """TFMA config: accuracy overall, per class and per value of each eval.slices feature,
    gated on the overall slice (and on every other slice with eval.min_slice_accuracy).

    The model must reach required_accuracy (eval.accuracy_threshold, or under
    eval.gate baseline the majority class's accuracy plus eval.baseline_margin) and may
    not fall more than eval.max_accuracy_drop below the last blessed model. With
    eval.min_slice_accuracy, every class and every value of the slice features must reach
    it too. Shared by every classifier.

    Args:
      eval_config: the experiment's eval section.
      baseline_accuracy: the majority class's accuracy (Task.baseline_metrics); needed
        when eval.gate is baseline.
      slice_keys: the raw feature keys of eval.slices (Task.slice_feature_keys).
    """
    import tensorflow_model_analysis as tfma

    accuracy_threshold = baselines.accuracy_threshold(
        required_accuracy(eval_config, baseline_accuracy), eval_config.max_accuracy_drop)
    sliced = [tfma.SlicingSpec(feature_keys=[key])
              for key in (features.LABEL_KEY, *slice_keys)]
    thresholds = [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()],
                                               threshold=accuracy_threshold)]
    if eval_config.min_slice_accuracy is not None:
        thresholds.append(tfma.PerSliceMetricThreshold(
            slicing_specs=sliced, threshold=baselines.slice_accuracy_threshold(
                eval_config.min_slice_accuracy)))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=features.SERVING_DEFAULT_SIGNATURE,
            label_key=features.LABEL_KEY,
            prediction_key=features.PROBABILITIES_OUTPUT)],
        slicing_specs=[tfma.SlicingSpec(), *sliced],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # The overall slice is gated; the others only with eval.min_slice_accuracy.
            tfma.MetricConfig(class_name="SparseCategoricalAccuracy",
                              config=f'{{"name": "{ACCURACY_METRIC}"}}',
                              per_slice_thresholds=thresholds),
        ])])
