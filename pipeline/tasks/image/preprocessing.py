"""The tf.Transform preprocessing_fn: one graph shared by training and serving."""

from typing import Any, Dict, Optional

import tensorflow as tf

from tfprod.contract import features

# Pixels are stored as 0..255; the model sees them scaled to [0, 1].
PIXEL_SCALE = 255.0


def preprocessing_fn(inputs: Dict[str, Any],
                     custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Scales the image to [0, 1] floats and passes the label through.

    Args:
      inputs: raw features: `image` (int64 [N, height*width]) and `label` (int64 [N, 1]).
      custom_config: the Transform component's custom_config (unused for images).

    Returns:
      `image_xf` (float32 [N, height*width]) and `label` (int64 [N]).
    """
    del custom_config
    image = tf.cast(inputs[features.IMAGE_KEY], tf.float32) / PIXEL_SCALE
    outputs = {features.IMAGE_TRANSFORMED_KEY: image}
    if features.LABEL_KEY in inputs:
        outputs[features.LABEL_KEY] = tf.reshape(inputs[features.LABEL_KEY], [-1])
    return outputs
