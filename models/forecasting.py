"""Forecasters: a window of standardised columns in, the target's next `horizon` steps out.

Both predict a change on top of persistence: the LastValueResidual layer adds the
target's last observed (standardised) value to every step of the network's output,
so an untrained network starts as the naive forecast and learns the correction.
"""

import tensorflow as tf

from tfprod.contract.tasks import TaskName
from tfprod.models import registry


@tf.keras.utils.register_keras_serializable(package="tfprod")
class LastValueResidual(tf.keras.layers.Layer):
    """Adds the last step's value of one column of the window to a [N, horizon] output.

    Args:
      target_index: the column of the window [N, steps, columns] that is forecast.
    """

    def __init__(self, target_index: int, **kwargs):
        super().__init__(**kwargs)
        self.target_index = target_index

    def call(self, inputs):
        window, change = inputs
        return change + window[:, -1, self.target_index:self.target_index + 1]

    def get_config(self):
        config = super().get_config()
        config.update({"target_index": self.target_index})
        return config


@registry.register("lstm_forecaster", tasks=(TaskName.FORECASTING,))
def build_lstm_forecaster(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """Stacked LSTMs over the window -> Dense(horizon) change (+ a linear map of the whole
    window when linear_skip) -> plus the last observed target value."""
    params = model_config.lstm_forecaster
    if inputs.horizon < 1 or min(inputs.window_shape) < 1:
        raise ValueError("lstm_forecaster needs ModelInputs.window_shape and horizon "
                         f"(a forecasting task); got {inputs}")
    flat = tf.keras.Input(shape=inputs.feature_shape, name=inputs.feature_name)
    window = tf.keras.layers.Reshape(inputs.window_shape, name="to_window")(flat)
    x = window
    for layer, units in enumerate(params.lstm_units):
        last = layer == len(params.lstm_units) - 1
        x = tf.keras.layers.LSTM(units, return_sequences=not last, name=f"lstm{layer}")(x)
    if params.dropout:
        x = tf.keras.layers.Dropout(params.dropout, name="dropout")(x)
    # Zero-initialised outputs: the untrained model is exactly the persistence forecast.
    change = tf.keras.layers.Dense(inputs.horizon, kernel_initializer="zeros",
                                   name="lstm_change")(x)
    if params.linear_skip:
        linear = tf.keras.layers.Dense(inputs.horizon, kernel_initializer="zeros",
                                       name="linear_change")(flat)
        change = tf.keras.layers.Add(name="change")([change, linear])
    forecast = LastValueResidual(inputs.target_index, dtype="float32",
                                 name="forecast")([window, change])
    return tf.keras.Model(flat, forecast, name="lstm_forecaster")


@tf.keras.utils.register_keras_serializable(package="tfprod")
class PositionEmbedding(tf.keras.layers.Layer):
    """Adds a learned embedding of each step's position to a [N, steps, width] sequence.

    Args:
      sequence_length: the number of steps (positions) embedded.
    """

    def __init__(self, sequence_length: int, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            name="position_embeddings", shape=(self.sequence_length, int(input_shape[-1])),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, inputs):
        return inputs + self.position_embeddings[tf.newaxis, :tf.shape(inputs)[1], :]

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length})
        return config


def _encoder_block(x, params, block: int):
    """Self-attention and a feed-forward net, each with dropout, a residual and LayerNorm."""
    attention = tf.keras.layers.MultiHeadAttention(
        num_heads=params.num_heads, key_dim=params.model_width // params.num_heads,
        dropout=params.dropout, name=f"block{block}_attention")(x, x)
    x = tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_norm0")(
        tf.keras.layers.Add(name=f"block{block}_residual0")([x, attention]))
    feed_forward = tf.keras.layers.Dense(params.feed_forward_width, activation="relu",
                                         name=f"block{block}_feed_forward0")(x)
    feed_forward = tf.keras.layers.Dense(params.model_width,
                                         name=f"block{block}_feed_forward1")(feed_forward)
    if params.dropout:
        feed_forward = tf.keras.layers.Dropout(params.dropout,
                                               name=f"block{block}_dropout")(feed_forward)
    return tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{block}_norm1")(
        tf.keras.layers.Add(name=f"block{block}_residual1")([x, feed_forward]))


@registry.register("transformer_forecaster", tasks=(TaskName.FORECASTING,))
def build_transformer_forecaster(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """Each step projected to model_width, plus a learned position embedding -> encoder
    blocks -> the last step's and the mean state -> Dense(horizon) change (+ a linear map
    of the window when linear_skip) -> plus the last observed target value."""
    params = model_config.transformer_forecaster
    if inputs.horizon < 1 or min(inputs.window_shape) < 1:
        raise ValueError("transformer_forecaster needs ModelInputs.window_shape and horizon "
                         f"(a forecasting task); got {inputs}")
    flat = tf.keras.Input(shape=inputs.feature_shape, name=inputs.feature_name)
    window = tf.keras.layers.Reshape(inputs.window_shape, name="to_window")(flat)
    x = tf.keras.layers.Dense(params.model_width, name="step_projection")(window)
    x = PositionEmbedding(inputs.window_shape[0], name="position_embedding")(x)
    for block in range(params.num_blocks):
        x = _encoder_block(x, params, block)
    last_step = tf.keras.layers.Flatten(name="last_step")(
        tf.keras.layers.Cropping1D((inputs.window_shape[0] - 1, 0), name="crop_to_last")(x))
    mean_state = tf.keras.layers.GlobalAveragePooling1D(name="mean_state")(x)
    pooled = tf.keras.layers.Concatenate(name="pooled")([last_step, mean_state])
    change = tf.keras.layers.Dense(inputs.horizon, kernel_initializer="zeros",
                                   name="encoder_change")(pooled)
    if params.linear_skip:
        linear = tf.keras.layers.Dense(inputs.horizon, kernel_initializer="zeros",
                                       name="linear_change")(flat)
        change = tf.keras.layers.Add(name="change")([change, linear])
    forecast = LastValueResidual(inputs.target_index, dtype="float32",
                                 name="forecast")([window, change])
    return tf.keras.Model(flat, forecast, name="transformer_forecaster")
