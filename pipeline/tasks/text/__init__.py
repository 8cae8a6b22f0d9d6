"""Text classification: a TSV directory -> padded token ids -> a sequence classifier.

Models: `lstm` and `transformer` (models/). The exported model answers serialized
tf.Examples (serving_default) and raw strings (serving_raw, so a REST body
`{"instances": ["a sentence", ...]}` works); both return the class probabilities,
the class id and the class name (`classes`, from the label vocabulary).

This folder holds the task: its preprocessing_fn (preprocessing.py) and its signatures
and warm-up requests (signatures.py). The TSV files are read by pipeline.ingestion.tsv.
"""

from typing import Any, Callable, Dict, List, Tuple

from tfprod.contract import features
from tfprod.contract.tasks import TaskName
from tfprod.pipeline import config as config_lib
from tfprod.pipeline.tasks import register
from tfprod.pipeline.tasks.classification import ClassificationTask

# The transformed feature the model reads (tasks/text/preprocessing.py writes it).
TOKENS_TRANSFORMED_KEY = "tokens_xf"  # int64 [N, max_len], 0 = padding


@register
class TextClassificationTask(ClassificationTask):
    """Texts with one label each; data.num_classes classes (labels of train.tsv; null in the
    config = counted from train.tsv by preflight)."""

    name = TaskName.TEXT_CLASSIFICATION
    data_formats = (config_lib.DataFormat.TSV.value,)

    def preprocessing_function(self) -> Callable:
        from tfprod.pipeline.tasks.text import preprocessing

        return preprocessing.preprocessing_fn

    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        from tfprod.pipeline.ingestion import tsv

        data = experiment.data
        return tsv.TsvExampleGen(
            input_base=data_dir, eval_fraction=data.eval_fraction,
            text_column=data.text.text_column, label_column=data.text.label_column,
            num_classes=data.num_classes)

    def preflight(self, experiment: config_lib.ExperimentConfig) -> None:
        """Reads train.tsv and test.tsv as the ExampleGen will (TsvFormatError on a bad row).

        With data.num_classes null, sets it to the number of distinct training labels, so
        the ExampleGen, the model, the signatures and the saved config.yaml agree; a number
        set in the config is checked against the labels instead.
        """
        from tfprod.pipeline.ingestion import tsv_format

        vocabulary = tsv_format.check_tsv_dir(experiment.data)
        if experiment.data.num_classes is None:
            experiment.data.num_classes = len(vocabulary)

    def label_counts(self, experiment: config_lib.ExperimentConfig):
        """The label column of train.tsv and test.tsv, counted by label as written."""
        import os

        from tfprod.pipeline.ingestion import tsv_format as tsv
        from tfprod.pipeline.tasks import baselines
        from tfprod.pipeline.tasks.classification import counts_for_eval_split

        data = experiment.data
        train, test = (baselines.count_labels(tsv.read_labels(data, os.path.join(
            data.data_dir, name))) for name in (tsv.TRAIN_FILE, tsv.TEST_FILE))
        return counts_for_eval_split(train, test, experiment.eval)

    def transform_custom_config(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        text = experiment.data.text
        return {"vocab_size": text.vocab_size, "num_oov_buckets": text.num_oov_buckets,
                "max_len": text.max_len}

    def model_inputs(self, experiment: config_lib.ExperimentConfig):
        from tfprod.models import registry

        text = experiment.data.text
        return registry.ModelInputs(
            feature_name=TOKENS_TRANSFORMED_KEY,
            feature_shape=(text.max_len,),
            num_classes=experiment.data.num_classes,
            # Padding, the vocabulary and the OOV buckets.
            vocab_size=text.vocab_size + text.num_oov_buckets + 1)

    def features_and_label(self, transformed: Dict[str, Any]) -> Tuple[Any, Any]:
        return transformed[TOKENS_TRANSFORMED_KEY], transformed[features.LABEL_KEY]

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        from tfprod.pipeline.tasks.text import signatures

        return signatures.make_text_signatures(model, tf_transform_output,
                                               experiment.data.num_classes)

    def supports_mobile(self) -> bool:
        """TFLite: int32 token ids in, probabilities out (mobile.sequence)."""
        return True

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        from tfprod.pipeline.tasks.text import signatures

        return signatures.text_warmup_requests(experiment.export.model_name)
