"""Table models: numeric and categorical columns in, class probabilities or a number out.

Both take the table task's two transformed inputs (tfprod.contract.features):
`numeric_xf` (float [numeric width]: standardized values, then one missing flag per
column) and `categorical_xf` (int64 [columns]: per column 0 = missing, then the
vocabulary's ids, then the OOV buckets; ModelInputs.categorical_cardinalities gives each
column's id count). Either input is absent when the table has no column of its type.

The output is a softmax over ModelInputs.num_classes classes, or for num_classes 0 one
linear unit (a regression target, standardized by Transform). Output layers are float32
so mixed precision keeps the loss in full precision.
"""

from typing import Dict, List, Tuple

import tensorflow as tf

from tfprod.contract import features
from tfprod.contract.tasks import TaskName
from tfprod.models import registry


def _inputs(inputs: registry.ModelInputs) -> Tuple[Dict[str, tf.keras.Input], List, List]:
    """(Keras inputs by name, the numeric tensor or nothing, one id column per categorical)."""
    if not inputs.numeric_width and not inputs.categorical_cardinalities:
        raise ValueError("a table model needs ModelInputs.numeric_width or "
                         f"categorical_cardinalities (the table task's); got {inputs}")
    keras_inputs: Dict[str, tf.keras.Input] = {}
    numeric, columns = [], []
    if inputs.numeric_width:
        keras_inputs[features.TABLE_NUMERIC_KEY] = tf.keras.Input(
            shape=(inputs.numeric_width,), name=features.TABLE_NUMERIC_KEY, dtype=tf.float32)
        numeric.append(keras_inputs[features.TABLE_NUMERIC_KEY])
    if inputs.categorical_cardinalities:
        ids = tf.keras.Input(shape=(len(inputs.categorical_cardinalities),),
                             name=features.TABLE_CATEGORICAL_KEY, dtype=tf.int64)
        keras_inputs[features.TABLE_CATEGORICAL_KEY] = ids
        columns = [tf.keras.layers.Lambda(lambda x, i=i: x[:, i], name=f"column{i}")(ids)
                   for i in range(len(inputs.categorical_cardinalities))]
    return keras_inputs, numeric, columns


def _embeddings(columns, cardinalities, embedding_dim: int) -> List:
    return [tf.keras.layers.Embedding(cardinality, min(embedding_dim, cardinality),
                                      name=f"embedding{i}")(column)
            for i, (column, cardinality) in enumerate(zip(columns, cardinalities))]


def _deep(x, hidden_units, dropout: float, batch_norm: bool, prefix: str):
    for layer, units in enumerate(hidden_units):
        x = tf.keras.layers.Dense(units, use_bias=not batch_norm, name=f"{prefix}dense{layer}")(x)
        if batch_norm:
            x = tf.keras.layers.BatchNormalization(name=f"{prefix}bn{layer}")(x)
        x = tf.keras.layers.Activation("relu", name=f"{prefix}relu{layer}")(x)
        if dropout:
            x = tf.keras.layers.Dropout(dropout, name=f"{prefix}dropout{layer}")(x)
    return x


def _head(num_classes: int, name: str) -> tf.keras.layers.Layer:
    if num_classes:
        return tf.keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)
    return tf.keras.layers.Dense(1, dtype="float32", name=name)


def _concat(parts, name: str):
    return parts[0] if len(parts) == 1 else tf.keras.layers.Concatenate(name=name)(parts)


@registry.register("mlp", tasks=(TaskName.TABLE,))
def build_mlp(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """Embeddings of the categorical columns + numeric inputs -> BatchNorm -> dense blocks."""
    params = model_config.mlp
    keras_inputs, numeric, columns = _inputs(inputs)
    parts = numeric + _embeddings(columns, inputs.categorical_cardinalities, params.embedding_dim)
    x = _concat(parts, "features")
    if params.batch_norm:
        x = tf.keras.layers.BatchNormalization(name="input_bn")(x)
    x = _deep(x, params.hidden_units, params.dropout, params.batch_norm, "")
    outputs = _head(inputs.num_classes, "output")(x)
    return tf.keras.Model(keras_inputs, outputs, name="mlp")


@registry.register("wide_deep", tasks=(TaskName.TABLE,))
def build_wide_deep(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """A linear model of one-hot ids and numeric inputs, plus an MLP of embeddings; their
    logits (or values) are added before the softmax."""
    params = model_config.wide_deep
    keras_inputs, numeric, columns = _inputs(inputs)
    width = max(inputs.num_classes, 1)
    one_hot = [tf.keras.layers.CategoryEncoding(cardinality, output_mode="one_hot",
                                                name=f"one_hot{i}")(column)
               for i, (column, cardinality) in enumerate(
                   zip(columns, inputs.categorical_cardinalities))]
    wide = tf.keras.layers.Dense(width, name="wide")(_concat(numeric + one_hot, "wide_features"))
    deep_in = _concat(numeric + _embeddings(columns, inputs.categorical_cardinalities,
                                            params.embedding_dim), "deep_features")
    deep = _deep(deep_in, params.hidden_units, params.dropout, True, "deep_")
    deep = tf.keras.layers.Dense(width, name="deep")(deep)
    logits = tf.keras.layers.Add(name="wide_plus_deep")([wide, deep])
    if inputs.num_classes:
        outputs = tf.keras.layers.Activation("softmax", dtype="float32", name="output")(logits)
    else:
        outputs = tf.keras.layers.Activation("linear", dtype="float32", name="output")(logits)
    return tf.keras.Model(keras_inputs, outputs, name="wide_deep")
