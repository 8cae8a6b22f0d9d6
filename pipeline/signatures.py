"""The exported SavedModel's signatures, built around the Transform graph.

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


def make_serving_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput,
                            image_height: int, image_width: int) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """Returns the signatures to pass to tf.saved_model.save(model, ..., signatures=...)."""
    # Tracking the layer on the model saves the Transform graph's assets with it.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_feature_spec = tf_transform_output.raw_feature_spec()
    serving_feature_spec = {name: spec for name, spec in raw_feature_spec.items()
                            if name != features.LABEL_KEY}

    def predict(raw_features):
        transformed = model.tft_layer(raw_features)
        probabilities = model(transformed[features.IMAGE_TRANSFORMED_KEY], training=False)
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.CLASS_ID_OUTPUT: tf.argmax(probabilities, axis=-1),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized_examples):
        return predict(tf.io.parse_example(serialized_examples, serving_feature_spec))

    @tf.function(input_signature=[
        tf.TensorSpec([None, image_height, image_width], tf.float32, name=features.IMAGE_KEY)])
    def serve_raw(image):
        # The same int64 pixels a tf.Example carries; JSON numbers arrive as floats.
        pixels = tf.cast(tf.round(tf.reshape(image, [-1, image_height * image_width])), tf.int64)
        return predict({features.IMAGE_KEY: pixels})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized_examples):
        raw = tf.io.parse_example(serialized_examples, raw_feature_spec)
        return model.tft_layer(raw)

    return {
        features.SERVING_DEFAULT_SIGNATURE: serve_examples.get_concrete_function(),
        features.SERVING_RAW_SIGNATURE: serve_raw.get_concrete_function(),
        features.TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
    }
