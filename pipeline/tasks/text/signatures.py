"""The text classifier's signatures (on the shared skeleton) and warm-up requests.

  serving_default:    serialized tf.Examples (a `text` feature) -> probabilities, class_id,
                      classes
  serving_raw:        raw strings [N] -> the same outputs (so a REST body
                      `{"instances": ["a sentence", ...]}` works)
  transform_features: serialized tf.Examples -> the transformed features

`classes` is the class name, from the label vocabulary Transform exported; the vocabulary
is also saved as assets/label_vocabulary.txt.
"""

import os
import tempfile
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tfprod.contract import features
from tfprod.pipeline.ingestion import tsv
from tfprod.pipeline.tasks import signatures
from tfprod.pipeline.tasks.text import preprocessing

CLASSES_OUTPUT = "classes"
# Written into the SavedModel's assets/: one label name per line, line i = class id i.
LABEL_VOCABULARY_FILE = "label_vocabulary.txt"
WARMUP_TEXTS = ("a warm-up sentence .", "")


def label_names(tf_transform_output) -> List[str]:
    """The label names, ordered by class id, from the Transform graph's label vocabulary."""
    return preprocessing.label_names_from_vocabulary(
        tf_transform_output.vocabulary_by_name(preprocessing.LABEL_VOCABULARY))


def make_text_signatures(model, tf_transform_output, num_classes: int) -> Dict[str, Any]:
    """serving_default (tf.Examples), serving_raw (strings [N]) and transform_features.

    The prediction signatures return probabilities [N, C], class_id [N] and classes [N]
    (label names). The label vocabulary is also saved as assets/label_vocabulary.txt.
    """
    names = label_names(tf_transform_output)
    if len(names) != num_classes:
        raise ValueError(f"the training data has {len(names)} labels {names}, but "
                         f"data.num_classes is {num_classes}")
    # Tracking the asset on the model saves it with it.
    vocabulary_path = os.path.join(tempfile.mkdtemp(prefix="labels"), LABEL_VOCABULARY_FILE)
    with open(vocabulary_path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in names))
    model.label_vocabulary = tf.saved_model.Asset(vocabulary_path)
    class_names = tf.constant(names)

    def outputs(model, transformed):
        probabilities = model(transformed[preprocessing.TOKENS_TRANSFORMED_KEY], training=False)
        class_id = tf.argmax(probabilities, axis=-1)
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.CLASS_ID_OUTPUT: class_id,
            CLASSES_OUTPUT: tf.gather(class_names, class_id),
        }

    return signatures.make_signatures(
        model, tf_transform_output, outputs=outputs,
        raw_input=tf.TensorSpec([None], tf.string, name=tsv.TEXT_KEY),
        raw_to_features=lambda text: {tsv.TEXT_KEY: tf.reshape(text, [-1, 1])},
        serving_features=(tsv.TEXT_KEY,))


def text_warmup_requests(model_name: str) -> List[Any]:
    """PredictRequests for both prediction signatures (a sentence and an empty text)."""
    texts = np.array([text.encode("utf-8") for text in WARMUP_TEXTS], dtype=object)
    raw = predict_pb2.PredictRequest()
    raw.model_spec.name = model_name
    raw.model_spec.signature_name = features.SERVING_RAW_SIGNATURE
    raw.inputs[tsv.TEXT_KEY].CopyFrom(tf.make_tensor_proto(texts))
    serialized = []
    for text in texts:
        example = tf.train.Example()
        example.features.feature[tsv.TEXT_KEY].bytes_list.value.append(text)
        serialized.append(example.SerializeToString())
    examples = predict_pb2.PredictRequest()
    examples.model_spec.name = model_name
    examples.model_spec.signature_name = features.SERVING_DEFAULT_SIGNATURE
    examples.inputs[signatures.EXAMPLES_INPUT].CopyFrom(
        tf.make_tensor_proto(np.array(serialized, dtype=object)))
    return [raw, examples]
