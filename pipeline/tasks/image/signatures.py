"""The image classifier's signatures, on the shared skeleton (pipeline.tasks.signatures).

  serving_default:    serialized tf.Examples -> probabilities, class_id
  serving_raw:        raw image tensor [N, height, width] (float32, 0..255) -> same outputs
  transform_features: serialized tf.Examples -> the transformed features

Both prediction signatures run the same Transform graph and the same model, so
they give identical outputs for the same image.
"""

from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft

from tfprod.contract import features
from tfprod.pipeline.tasks import signatures


def make_serving_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                            image_height: int, image_width: int) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Returns the signatures to pass to tf.saved_model.save(model, ..., signatures=...)."""

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
