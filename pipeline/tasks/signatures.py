"""The serving-signature skeleton every task exports, around the Transform graph.

  serving_default:    serialized tf.Examples -> the task's outputs
  serving_raw:        the task's raw input tensor (JSON-friendly) -> the same outputs
  transform_features: serialized tf.Examples -> the transformed features
  (and any extra signature a task adds, e.g. forecasting's `evaluation`)

Both prediction signatures run the same Transform graph (tracked on the model as
`tft_layer`, so its assets are saved with it) and the same model, so they give identical
outputs for the same input. A task supplies only what differs: which raw features a
tf.Example request carries, how the model's outputs are named, and how the raw tensor
becomes raw features.
"""

from typing import Any, Callable, Collection, Dict, Mapping, Optional

import tensorflow as tf

from tfprod.contract import features

#: The input name of the signatures that take serialized tf.Examples.
EXAMPLES_INPUT = "examples"

RawFeatures = Dict[str, tf.Tensor]
Outputs = Dict[str, tf.Tensor]


def make_signatures(
        model, tf_transform_output, *,
        outputs: Callable[[Any, RawFeatures], Outputs],
        raw_input: tf.TensorSpec,
        raw_to_features: Callable[[tf.Tensor], RawFeatures],
        serving_features: Optional[Collection[str]] = None,
        extra: Optional[Mapping[str, Callable[[RawFeatures, Callable[[RawFeatures], Outputs]],
                                              Outputs]]] = None,
) -> Dict[str, Any]:
    """The concrete functions for tf.saved_model.save(model, ..., signatures=...).

    Args:
      model: the trained Keras model; the Transform layer is tracked on it.
      tf_transform_output: the Transform graph (tft.TFTransformOutput).
      outputs: (model, transformed features) -> the prediction signatures' outputs.
      raw_input: serving_raw's one input (its name is the request's input name).
      raw_to_features: serving_raw's input -> the raw features Transform reads.
      serving_features: the raw features serving_default parses from each tf.Example
        (default: every raw feature but the label).
      extra: more signatures over serialized tf.Examples, by name: each gets the parsed
        serving features and the predict function (raw features -> outputs).

    Returns:
      {serving_default, serving_raw, transform_features, *extra}: concrete functions.
    """
    # Tracking the layer on the model saves the Transform graph's assets with it.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_feature_spec = tf_transform_output.raw_feature_spec()
    if serving_features is None:
        serving_features = [name for name in raw_feature_spec if name != features.LABEL_KEY]
    serving_feature_spec = {name: spec for name, spec in raw_feature_spec.items()
                            if name in serving_features}
    examples_spec = tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)

    def predict(raw_features: RawFeatures) -> Outputs:
        return outputs(model, model.tft_layer(raw_features))

    @tf.function(input_signature=[examples_spec])
    def serve_examples(serialized_examples):
        return predict(tf.io.parse_example(serialized_examples, serving_feature_spec))

    @tf.function(input_signature=[raw_input])
    def serve_raw(raw):
        return predict(raw_to_features(raw))

    @tf.function(input_signature=[examples_spec])
    def transform_features(serialized_examples):
        return model.tft_layer(tf.io.parse_example(serialized_examples, raw_feature_spec))

    signatures = {
        features.SERVING_DEFAULT_SIGNATURE: serve_examples.get_concrete_function(),
        features.SERVING_RAW_SIGNATURE: serve_raw.get_concrete_function(),
        features.TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
    }
    for name, signature in (extra or {}).items():
        signatures[name] = _examples_signature(
            signature, serving_feature_spec, predict).get_concrete_function()
    return signatures


def _examples_signature(signature, feature_spec, predict):
    """A tf.function over serialized tf.Examples that runs signature(parsed, predict)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve(serialized_examples):
        return signature(tf.io.parse_example(serialized_examples, feature_spec), predict)

    return serve
