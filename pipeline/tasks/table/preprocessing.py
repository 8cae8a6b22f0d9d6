"""The table preprocessing_fn: impute, flag, standardize, look up; in every served model.

Per numeric column (float):
  value present -> (value - train mean) / train standard deviation
  value missing -> 0 (the train mean), and its missing flag is 1
  numeric_xf = [standardized values..., missing flags...]   float32 [N, 2 x columns]

Per categorical column (integers as their decimal text, or strings):
  id 0                      the value is missing
  ids 1..V                  the V <= data.table.vocabulary_size most frequent training values
  ids V+1..V+oov            data.table.num_oov_buckets hashed buckets for any other value
  categorical_xf = [ids...]                                 int64 [N, columns]

The label: the class id (classification) or (label - train mean) / train std with the
mean and std TableSpec carries (regression; the signatures scale predictions back).

A feature arrives as a SparseTensor (the relaxed schema makes every column optional) or,
under a curated schema, dense; a NaN float or an empty string is missing too, so the
served model treats them as the ExampleGen treats an empty cell.
"""

import re
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf
import tensorflow_transform as tft

from tfprod.contract import features
from tfprod.pipeline.ingestion import table

DEFAULT_SETTINGS = {"vocabulary_size": 1000, "num_oov_buckets": 1}


def cardinality(distinct: int, vocabulary_size: int, num_oov_buckets: int) -> int:
    """The number of ids of a categorical column: missing, its vocabulary, the OOV buckets.

    distinct counts train.csv's values, so it bounds the vocabulary Transform builds from
    the train split.
    """
    return 1 + min(int(distinct), int(vocabulary_size)) + int(num_oov_buckets)


def vocabulary_name(index: int, key: str) -> str:
    """The Transform asset holding a categorical column's vocabulary."""
    return f"table_{index}_{re.sub(r'[^A-Za-z0-9_]', '_', key)}"


def _batch_size(inputs: Dict[str, Any]) -> tf.Tensor:
    tensor = next(iter(inputs.values()))
    if isinstance(tensor, tf.SparseTensor):
        return tensor.dense_shape[0]
    return tf.shape(tensor, out_type=tf.int64)[0]


def dense_column(tensor, default) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(values [N], present [N] bool, the present values [M]) of a one-value-per-row feature."""
    if isinstance(tensor, tf.SparseTensor):
        values = tft.sparse_tensor_to_dense_with_shape(tensor, [None, 1], default_value=default)
        ones = tf.SparseTensor(tensor.indices, tf.ones(tf.shape(tensor.values), tf.float32),
                               tensor.dense_shape)
        present = tft.sparse_tensor_to_dense_with_shape(ones, [None, 1], default_value=0.0)
        return tf.reshape(values, [-1]), tf.reshape(present, [-1]) > 0, tensor.values
    values = tf.reshape(tensor, [-1])
    return values, tf.ones_like(values, dtype=tf.bool), values


def _numeric(tensor, batch_size) -> Tuple[tf.Tensor, tf.Tensor]:
    """(standardized value, missing flag), both float32 [N]."""
    if tensor is None:  # the train split never had a value: always missing
        zeros = tf.zeros(tf.reshape(batch_size, [1]), tf.float32)
        return zeros, zeros + 1.0
    values, present, observed = dense_column(tensor, float("nan"))
    values = tf.cast(values, tf.float32)
    present = tf.logical_and(present, tf.logical_not(tf.math.is_nan(values)))
    observed = tf.cast(observed, tf.float32)
    mean = tft.mean(observed)
    std = tf.sqrt(tft.var(observed))
    # No training value at all (mean NaN), or a constant column (std 0): keep it finite.
    mean = tf.where(tf.math.is_finite(mean), mean, 0.0)
    std = tf.where(tf.math.is_finite(std) & (std > 0), std, 1.0)
    standardized = tf.where(present, (values - mean) / std, 0.0)
    return standardized, 1.0 - tf.cast(present, tf.float32)


def _as_text(tensor, kind: str):
    if kind == table.INT:
        return tf.strings.as_string(tf.cast(tensor, tf.int64))
    return tensor


def _categorical(tensor, column, index: int, settings, batch_size) -> tf.Tensor:
    """The column's ids, int64 [N]: 0 missing, then the vocabulary, then the OOV buckets."""
    if tensor is None:
        return tf.zeros(tf.reshape(batch_size, [1]), tf.int64)
    if column.kind == table.INT:
        values, present, observed = dense_column(tensor, tf.constant(0, tensor.dtype))
        text, observed_text = _as_text(values, column.kind), _as_text(observed, column.kind)
    else:
        text, present, observed_text = dense_column(tensor, "")
        present = tf.logical_and(present, tf.not_equal(text, ""))
    vocabulary = tft.vocabulary(observed_text, top_k=int(settings["vocabulary_size"]),
                                vocab_filename=vocabulary_name(index, column.key))
    ids = tft.apply_vocabulary(text, vocabulary,
                               num_oov_buckets=int(settings["num_oov_buckets"]))
    return tf.where(present, ids + 1, tf.zeros_like(ids))


def preprocessing_fn(inputs: Dict[str, Any],
                     custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Raw columns (and label) -> numeric_xf, categorical_xf (and label).

    Args:
      inputs: one tensor per feature key of the TableSpec (a SparseTensor [N, <=1] or a
        dense [N, 1]); during analysis also `label`.
      custom_config: `spec` (TableSpec.to_dict()), vocabulary_size, num_oov_buckets.
    """
    settings = dict(DEFAULT_SETTINGS, **(custom_config or {}))
    spec = table.TableSpec.from_dict(settings["spec"])
    batch_size = _batch_size(inputs)
    outputs: Dict[str, tf.Tensor] = {}
    numeric = [_numeric(inputs.get(column.key), batch_size) for column in spec.numeric]
    if numeric:
        outputs[features.TABLE_NUMERIC_KEY] = tf.stack(
            [value for value, _ in numeric] + [flag for _, flag in numeric], axis=1)
    categorical = [_categorical(inputs.get(column.key), column, index, settings, batch_size)
                   for index, column in enumerate(spec.categorical)]
    if categorical:
        outputs[features.TABLE_CATEGORICAL_KEY] = tf.stack(categorical, axis=1)
    if features.LABEL_KEY in inputs:
        raw_label = inputs[features.LABEL_KEY]
        label, _, _ = dense_column(raw_label, tf.constant(0, raw_label.dtype))
        if spec.problem == table.CLASSIFICATION:
            outputs[features.LABEL_KEY] = tf.cast(label, tf.int64)
        else:
            outputs[features.LABEL_KEY] = (
                (tf.cast(label, tf.float32) - spec.label_mean) / spec.label_std)
    return outputs
