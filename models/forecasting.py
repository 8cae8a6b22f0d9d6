"""Forecasters: a window of standardised columns in, the target's next `horizon` steps out.

Both predict a change on top of persistence: the LastValueResidual layer adds the
target's last observed (standardised) value to every step of the network's output,
so an untrained network starts as the naive forecast and learns the correction.
"""

import tensorflow as tf

from models import registry

FORECASTING_TASK = "forecasting"


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


@registry.register("lstm_forecaster", tasks=(FORECASTING_TASK,))
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
