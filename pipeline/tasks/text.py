"""Text classification: a TSV directory -> padded token ids -> a sequence classifier.

Models: `lstm` and `transformer` (models/). The exported model answers serialized
tf.Examples (serving_default) and raw strings (serving_raw, so a REST body
`{"instances": ["a sentence", ...]}` works); both return the class probabilities,
the class id and the class name (`classes`, from the label vocabulary).
"""

import os
import tempfile
from typing import Any, Dict, List, Tuple

from tfprod.pipeline import config as config_lib
from tfprod.contract import features
from tfprod.pipeline.tasks import Task
from tfprod.pipeline.tasks.image import classification_eval_config, compile_classifier

TEXT_CLASSIFICATION = "text_classification"
CLASSES_OUTPUT = "classes"
# Written into the SavedModel's assets/: one label name per line, line i = class id i.
LABEL_VOCABULARY_FILE = "label_vocabulary.txt"
WARMUP_TEXTS = ("a warm-up sentence .", "")


class TextClassificationTask(Task):
    """Texts with one label each; data.num_classes classes (labels of train.tsv)."""

    name = TEXT_CLASSIFICATION
    preprocessing_fn = "tfprod.pipeline.text_preprocessing.preprocessing_fn"

    def example_gen(self, experiment: config_lib.ExperimentConfig, data_dir: Any):
        from tfprod.pipeline import text_ingestion

        data = experiment.data
        return text_ingestion.TsvExampleGen(
            input_base=data_dir, eval_fraction=data.eval_fraction,
            text_column=data.text.text_column, label_column=data.text.label_column,
            num_classes=data.num_classes)

    def transform_custom_config(self, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        text = experiment.data.text
        return {"vocab_size": text.vocab_size, "num_oov_buckets": text.num_oov_buckets,
                "max_len": text.max_len}

    def model_inputs(self, experiment: config_lib.ExperimentConfig):
        from tfprod.models import registry
        from tfprod.pipeline import text_preprocessing

        text = experiment.data.text
        return registry.ModelInputs(
            feature_name=text_preprocessing.TOKENS_TRANSFORMED_KEY,
            feature_shape=(text.max_len,),
            num_classes=experiment.data.num_classes,
            # Padding, the vocabulary and the OOV buckets.
            vocab_size=text.vocab_size + text.num_oov_buckets + 1)

    def features_and_label(self, transformed: Dict[str, Any]) -> Tuple[Any, Any]:
        from tfprod.pipeline import text_preprocessing

        return (transformed[text_preprocessing.TOKENS_TRANSFORMED_KEY],
                transformed[features.LABEL_KEY])

    def compile_model(self, model, experiment: config_lib.ExperimentConfig, optimizer) -> None:
        compile_classifier(model, experiment, optimizer)

    def serving_signatures(self, model, tf_transform_output,
                           experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
        return make_text_signatures(model, tf_transform_output, experiment.data.num_classes)

    def warmup_requests(self, experiment: config_lib.ExperimentConfig) -> List[Any]:
        return text_warmup_requests(experiment.export.model_name)

    def eval_config(self, experiment: config_lib.ExperimentConfig):
        return classification_eval_config(experiment.eval)


def label_names(tf_transform_output) -> List[str]:
    """The label names, ordered by class id, from the Transform graph's label vocabulary."""
    from tfprod.pipeline import text_preprocessing

    return text_preprocessing.label_names_from_vocabulary(
        tf_transform_output.vocabulary_by_name(text_preprocessing.LABEL_VOCABULARY))


def make_text_signatures(model, tf_transform_output, num_classes: int) -> Dict[str, Any]:
    """serving_default (tf.Examples), serving_raw (strings [N]) and transform_features.

    The prediction signatures return probabilities [N, C], class_id [N] and classes [N]
    (label names). The label vocabulary is also saved as assets/label_vocabulary.txt.
    """
    import tensorflow as tf

    from tfprod.pipeline import text_ingestion, text_preprocessing

    names = label_names(tf_transform_output)
    if len(names) != num_classes:
        raise ValueError(f"the training data has {len(names)} labels {names}, but "
                         f"data.num_classes is {num_classes}")
    # Tracking the layer and the asset on the model saves them with it.
    model.tft_layer = tf_transform_output.transform_features_layer()
    vocabulary_path = os.path.join(tempfile.mkdtemp(prefix="labels"), LABEL_VOCABULARY_FILE)
    with open(vocabulary_path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in names))
    model.label_vocabulary = tf.saved_model.Asset(vocabulary_path)
    class_names = tf.constant(names)
    raw_feature_spec = tf_transform_output.raw_feature_spec()
    serving_feature_spec = {name: spec for name, spec in raw_feature_spec.items()
                            if name in (text_ingestion.TEXT_KEY,)}

    def predict(raw_features):
        transformed = model.tft_layer(raw_features)
        probabilities = model(transformed[text_preprocessing.TOKENS_TRANSFORMED_KEY],
                              training=False)
        class_id = tf.argmax(probabilities, axis=-1)
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.CLASS_ID_OUTPUT: class_id,
            CLASSES_OUTPUT: tf.gather(class_names, class_id),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized_examples):
        return predict(tf.io.parse_example(serialized_examples, serving_feature_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                                name=text_ingestion.TEXT_KEY)])
    def serve_raw(text):
        return predict({text_ingestion.TEXT_KEY: tf.reshape(text, [-1, 1])})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized_examples):
        return model.tft_layer(tf.io.parse_example(serialized_examples, raw_feature_spec))

    return {
        features.SERVING_DEFAULT_SIGNATURE: serve_examples.get_concrete_function(),
        features.SERVING_RAW_SIGNATURE: serve_raw.get_concrete_function(),
        features.TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
    }


def text_warmup_requests(model_name: str) -> List[Any]:
    """PredictRequests for both prediction signatures (a sentence and an empty text)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from tfprod.pipeline import text_ingestion

    texts = np.array([text.encode("utf-8") for text in WARMUP_TEXTS], dtype=object)
    raw = predict_pb2.PredictRequest()
    raw.model_spec.name = model_name
    raw.model_spec.signature_name = features.SERVING_RAW_SIGNATURE
    raw.inputs[text_ingestion.TEXT_KEY].CopyFrom(tf.make_tensor_proto(texts))
    serialized = []
    for text in texts:
        example = tf.train.Example()
        example.features.feature[text_ingestion.TEXT_KEY].bytes_list.value.append(text)
        serialized.append(example.SerializeToString())
    examples = predict_pb2.PredictRequest()
    examples.model_spec.name = model_name
    examples.model_spec.signature_name = features.SERVING_DEFAULT_SIGNATURE
    examples.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(serialized, dtype=object)))
    return [raw, examples]
