"""`lstm`: a bidirectional LSTM text classifier over Transform's padded token ids."""

import tensorflow as tf

from tfprod.contract.tasks import TaskName
from tfprod.models import registry

@registry.register("lstm", tasks=(TaskName.TEXT_CLASSIFICATION,))
def build_lstm(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """Embedding (id 0 masked) -> SpatialDropout1D -> Bidirectional(LSTM) -> Dropout -> softmax.

    The input is int64 token ids [N, max_len], 0 = padding; inputs.vocab_size counts
    every id (padding, vocabulary and OOV buckets).
    """
    params = model_config.lstm
    token_ids = tf.keras.Input(shape=inputs.feature_shape, dtype=tf.int64,
                               name=inputs.feature_name)
    x = tf.keras.layers.Embedding(inputs.vocab_size, params.embedding_dim, mask_zero=True,
                                  name="embedding")(token_ids)
    if params.embedding_dropout:
        x = tf.keras.layers.SpatialDropout1D(params.embedding_dropout,
                                             name="embedding_dropout")(x)
    x = tf.keras.layers.Bidirectional(tf.keras.layers.LSTM(params.lstm_units),
                                      name="bidirectional_lstm")(x)
    if params.dropout:
        x = tf.keras.layers.Dropout(params.dropout, name="dropout")(x)
    outputs = tf.keras.layers.Dense(inputs.num_classes, activation="softmax", dtype="float32",
                                    name="probabilities")(x)
    return tf.keras.Model(token_ids, outputs, name="lstm")
