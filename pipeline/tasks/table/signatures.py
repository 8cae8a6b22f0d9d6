"""The table model's signatures (on the shared skeleton) and warm-up requests.

  serving_default:    serialized tf.Examples -> outputs
  serving_raw:        one input per feature column, [N] each: float32 for numeric columns
                      and integer categorical ones (NaN = missing), string for the others
                      ("" = missing). A TF Serving row `{"instances": [{"fare": 12.5,
                      "company": "Flash Cab"}]}` is that, one row per example; tfprod serve
                      fills a row's missing key or JSON null with NaN or "".
  transform_features: serialized tf.Examples -> the transformed features
  evaluation:         (regression only) serialized tf.Examples -> prediction, mean_baseline

Outputs: classification `probabilities` [N, C], `class_id` [N], `class_name` [N] (the label
as written in train.csv); regression `prediction` [N] in the label's units.
"""

from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tfprod.contract import features
from tfprod.pipeline.ingestion import table
from tfprod.pipeline.tasks import signatures
from tfprod.pipeline.tasks.table import (EVALUATION_SIGNATURE, MEAN_BASELINE_OUTPUT,
                                         PREDICTION_OUTPUT)


def raw_input_specs(spec: table.TableSpec) -> Dict[str, tf.TensorSpec]:
    """serving_raw's inputs: one [N] tensor per feature column, named by its feature key."""
    return {column.key: tf.TensorSpec([None], tf.string if column.kind == table.STRING
                                      else tf.float32, name=column.key)
            for column in spec.columns}


def _to_sparse(values: tf.Tensor, present: tf.Tensor) -> tf.SparseTensor:
    """[N] values -> SparseTensor [N, 1] holding the present ones (what parse_example gives)."""
    rows = tf.where(present)
    indices = tf.concat([rows, tf.zeros_like(rows)], axis=1)
    return tf.SparseTensor(indices, tf.boolean_mask(values, present),
                           tf.stack([tf.shape(values, out_type=tf.int64)[0],
                                     tf.constant(1, tf.int64)]))


def raw_to_features(spec: table.TableSpec, raw_feature_spec) -> Any:
    """serving_raw's inputs -> the raw features Transform reads (as parse_example gives them)."""

    def convert(raw: Dict[str, tf.Tensor]) -> Dict[str, Any]:
        result = {}
        for column in spec.columns:
            if column.key not in raw_feature_spec:
                continue  # never present in the train split: Transform treats it as missing
            values = tf.reshape(raw[column.key], [-1])
            if column.kind == table.STRING:
                present = tf.not_equal(values, "")
            else:
                present = tf.logical_not(tf.math.is_nan(values))
                if column.kind == table.INT:
                    values = tf.cast(tf.round(values), tf.int64)
            wanted = raw_feature_spec[column.key]
            if isinstance(wanted, tf.io.VarLenFeature):
                result[column.key] = _to_sparse(tf.cast(values, wanted.dtype), present)
            else:  # a curated schema's dense column: missing values stay NaN / "" / 0
                result[column.key] = tf.reshape(tf.cast(values, wanted.dtype), [-1, 1])
        return result

    return convert


def make_table_signatures(model, tf_transform_output, spec: table.TableSpec) -> Dict[str, Any]:
    """serving_default, serving_raw, transform_features (and evaluation for regression)."""
    raw_feature_spec = tf_transform_output.raw_feature_spec()
    serving_features = [column.key for column in spec.columns if column.key in raw_feature_spec]

    def model_inputs(transformed):
        return {key: transformed[key] for key in (features.TABLE_NUMERIC_KEY,
                                                  features.TABLE_CATEGORICAL_KEY)
                if key in transformed}

    extra = None
    if spec.problem == table.CLASSIFICATION:
        class_names = tf.constant(spec.label_names)

        def outputs(model, transformed):
            probabilities = model(model_inputs(transformed), training=False)
            class_id = tf.argmax(probabilities, axis=-1)
            return {features.PROBABILITIES_OUTPUT: probabilities,
                    features.CLASS_ID_OUTPUT: class_id,
                    features.CLASS_NAME_OUTPUT: tf.gather(class_names, class_id)}
    else:
        mean, std = float(spec.label_mean), float(spec.label_std)

        def outputs(model, transformed):
            standardized = tf.reshape(model(model_inputs(transformed), training=False), [-1])
            return {PREDICTION_OUTPUT: standardized * std + mean}

        def evaluate(raw, predict):
            prediction = predict(raw)[PREDICTION_OUTPUT]
            # The train split's mean, for every example: the baseline the model must beat.
            return {PREDICTION_OUTPUT: prediction,
                    MEAN_BASELINE_OUTPUT: tf.fill(tf.shape(prediction), tf.constant(mean))}

        extra = {EVALUATION_SIGNATURE: evaluate}

    return signatures.make_signatures(
        model, tf_transform_output, outputs=outputs,
        raw_input=raw_input_specs(spec),
        raw_to_features=raw_to_features(spec, raw_feature_spec),
        serving_features=serving_features, extra=extra)


def table_warmup_requests(spec: table.TableSpec, model_name: str) -> List[Any]:
    """PredictRequests for both prediction signatures: a row of typical values and a row
    with every value missing."""
    raw = predict_pb2.PredictRequest()
    raw.model_spec.name = model_name
    raw.model_spec.signature_name = features.SERVING_RAW_SIGNATURE
    typical = tf.train.Example()
    for column in spec.columns:
        if column.kind == table.STRING:
            values = np.array([b"", b""], dtype=object)
        else:
            values = np.array([0.0, np.nan], dtype=np.float32)
            if column.kind == table.FLOAT:
                typical.features.feature[column.key].float_list.value.append(0.0)
            else:
                typical.features.feature[column.key].int64_list.value.append(0)
        raw.inputs[column.key].CopyFrom(tf.make_tensor_proto(values))
    examples = predict_pb2.PredictRequest()
    examples.model_spec.name = model_name
    examples.model_spec.signature_name = features.SERVING_DEFAULT_SIGNATURE
    serialized = [typical.SerializeToString(), tf.train.Example().SerializeToString()]
    examples.inputs[signatures.EXAMPLES_INPUT].CopyFrom(
        tf.make_tensor_proto(np.array(serialized, dtype=object)))
    return [raw, examples]
