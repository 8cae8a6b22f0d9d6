"""The image classifier's signatures, on the shared skeleton (pipeline.tasks.signatures).

IDX and TFDS (grayscale pixels):

  serving_default:    serialized tf.Examples -> probabilities, class_id
  serving_raw:        raw image tensor [N, height, width] (float32, 0..255) -> same outputs
  transform_features: serialized tf.Examples -> the transformed features

Photo folders (data.format image_folder):

  serving_default:    serialized tf.Examples (`image_bytes`) -> probabilities, class_id,
                      class_name
  serving_raw:        the encoded files, string [N] (`image_bytes`): a REST body
                      {"instances": [{"b64": "<JPEG or PNG>"}]} or a gRPC DT_STRING tensor
  serving_pixels:     float32 pixels [N, image_height, image_width, image_channels], 0..255
                      (input `pixels`): encoded losslessly as PNG in the graph, then the
                      same path, so it answers exactly what serving_raw answers for that PNG
  transform_features: serialized tf.Examples -> the transformed features

Every prediction signature runs the same Transform graph (decode, resize, crop) and the same
model. The class names (the training folders' names, by class id) are also saved as
assets/labels.txt, one a line.
"""

import os
import tempfile
from typing import Dict, List

import tensorflow as tf
import tensorflow_transform as tft

from tfprod.contract import features, layout
from tfprod.pipeline.tasks import signatures
from tfprod.pipeline.tasks.image import preprocessing

# The SavedModel asset of the class names (tfprod.contract.layout).
LABELS_FILE = layout.LABELS_FILE_NAME
PIXELS_INPUT = "pixels"


def make_serving_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                            image_height: int, image_width: int) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """IDX/TFDS: the signatures to pass to tf.saved_model.save(model, ..., signatures=...)."""

    def outputs(model, transformed):
        probabilities = model(transformed[features.IMAGE_TRANSFORMED_KEY], training=False)
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.CLASS_ID_OUTPUT: tf.argmax(probabilities, axis=-1),
        }

    def raw_to_features(image):
        # The same int64 pixels a tf.Example carries; JSON numbers arrive as floats.
        pixels = tf.cast(tf.round(tf.reshape(image, [-1, image_height * image_width])), tf.int64)
        return {features.IMAGE_KEY: pixels}

    return signatures.make_signatures(
        model, tf_transform_output, outputs=outputs,
        raw_input=tf.TensorSpec([None, image_height, image_width], tf.float32,
                                name=features.IMAGE_KEY),
        raw_to_features=raw_to_features)


def class_names(tf_transform_output: tft.TFTransformOutput) -> List[str]:
    """The class names by class id, from the Transform graph's class vocabulary."""
    return preprocessing.class_names_from_vocabulary(
        tf_transform_output.vocabulary_by_name(preprocessing.CLASS_VOCABULARY))


def make_photo_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                          image_height: int, image_width: int, image_channels: int,
                          num_classes: int) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """image_folder: serving_default, serving_raw (encoded bytes), serving_pixels and
    transform_features; the class names saved as assets/labels.txt.

    Raises:
      ValueError: the training data's classes are not num_classes.
    """
    names = class_names(tf_transform_output)
    if len(names) != num_classes:
        raise ValueError(f"the training data has {len(names)} classes {names}, but "
                         f"data.num_classes is {num_classes}")
    labels_path = os.path.join(tempfile.mkdtemp(prefix="labels"), LABELS_FILE)
    with open(labels_path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in names))
    # Tracking the asset on the model saves it (as assets/labels.txt) with the SavedModel.
    model.class_labels = tf.saved_model.Asset(labels_path)
    class_name_table = tf.constant(names)

    def outputs(model, transformed):
        probabilities = model(transformed[features.IMAGE_TRANSFORMED_KEY], training=False)
        class_id = tf.argmax(probabilities, axis=-1)
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.CLASS_ID_OUTPUT: class_id,
            features.CLASS_NAME_OUTPUT: tf.gather(class_name_table, class_id),
        }

    result = signatures.make_signatures(
        model, tf_transform_output, outputs=outputs,
        raw_input=tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_KEY),
        raw_to_features=lambda encoded: {
            features.IMAGE_BYTES_KEY: tf.reshape(encoded, [-1, 1])},
        serving_features=(features.IMAGE_BYTES_KEY,))

    @tf.function(input_signature=[tf.TensorSpec(
        [None, image_height, image_width, image_channels], tf.float32, name=PIXELS_INPUT)])
    def serve_pixels(pixels):
        as_bytes = tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8)
        encoded = tf.map_fn(tf.io.encode_png, as_bytes,
                            fn_output_signature=tf.TensorSpec([], tf.string))
        # model.tft_layer: the Transform layer make_signatures tracked on the model.
        return outputs(model, model.tft_layer({features.IMAGE_BYTES_KEY:
                                               tf.reshape(encoded, [-1, 1])}))

    result[features.SERVING_PIXELS_SIGNATURE] = serve_pixels.get_concrete_function()
    return result


def photo_warmup_requests(model_name: str, image_height: int, image_width: int,
                          image_channels: int) -> List:
    """PredictRequests for serving_raw (a PNG), serving_default and serving_pixels."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    blank = np.zeros([image_height, image_width, image_channels], np.uint8)
    encoded = tf.io.encode_png(blank).numpy()
    requests = []
    raw = predict_pb2.PredictRequest()
    raw.model_spec.name = model_name
    raw.model_spec.signature_name = features.SERVING_RAW_SIGNATURE
    raw.inputs[features.IMAGE_BYTES_KEY].CopyFrom(
        tf.make_tensor_proto(np.array([encoded], dtype=object)))
    requests.append(raw)
    example = tf.train.Example()
    example.features.feature[features.IMAGE_BYTES_KEY].bytes_list.value.append(encoded)
    default = predict_pb2.PredictRequest()
    default.model_spec.name = model_name
    default.model_spec.signature_name = features.SERVING_DEFAULT_SIGNATURE
    default.inputs[signatures.EXAMPLES_INPUT].CopyFrom(
        tf.make_tensor_proto(np.array([example.SerializeToString()], dtype=object)))
    requests.append(default)
    pixels = predict_pb2.PredictRequest()
    pixels.model_spec.name = model_name
    pixels.model_spec.signature_name = features.SERVING_PIXELS_SIGNATURE
    pixels.inputs[PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(blank[None].astype(np.float32)))
    requests.append(pixels)
    return requests
