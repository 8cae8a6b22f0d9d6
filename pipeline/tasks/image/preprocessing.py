"""The tf.Transform preprocessing_fn: one graph shared by training and serving.

Two raw forms, one task:

- IDX and TFDS: `image`, int64 pixels 0..255 [N, height*width] (grayscale), scaled to [0, 1].
- Photo folders (data.format image_folder): `image_bytes`, the encoded JPEG or PNG file
  [N, 1], of any size, grayscale, RGB or RGBA. Each is decoded to data.image_channels
  (grayscale is repeated to RGB, RGB is averaged to gray by the luma weights, alpha is
  dropped), resized keeping its aspect ratio until it covers image_height x image_width
  (bilinear, antialiased when shrinking), then center-cropped to that size, and scaled to
  [0, 1]. Crop rather than pad: a padded border would tell the model each photo's original
  aspect ratio, a cue that differs between collections rather than between objects.
  Because it is in this graph, the served model does the same to the JPEG a client sends.

Either way the model sees `image_xf`, float32 [N, height*width*channels] in [0, 1].
"""

from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
import tensorflow_transform as tft

from tfprod.contract import features

# Pixels are stored as 0..255; the model sees them scaled to [0, 1].
PIXEL_SCALE = 255.0
# transform_custom_config keys (image_folder only; IDX/TFDS need none).
HEIGHT_SETTING = "image_height"
WIDTH_SETTING = "image_width"
CHANNELS_SETTING = "image_channels"
# The Transform asset listing the classes: one "<class id, 6 digits>:<class name>" line each.
CLASS_VOCABULARY = "class_names"
_CLASS_ID_DIGITS = 6


def decode_and_fit(encoded: tf.Tensor, height: int, width: int, channels: int) -> tf.Tensor:
    """One encoded JPEG/PNG (scalar string) -> float32 [height, width, channels], 0..255.

    Aspect-preserving resize so the image covers height x width, then a center crop.
    """
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image = tf.cast(image, tf.float32)
    image.set_shape([None, None, channels])
    source = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.constant([height, width], tf.float32)
    # The larger of the two scales: both sides reach at least the target.
    scale = tf.reduce_max(target / source)
    covering = tf.cast(tf.math.ceil(source * scale - 1e-3), tf.int32)
    covering = tf.maximum(covering, tf.constant([height, width], tf.int32))
    resized = tf.image.resize(image, covering, method=tf.image.ResizeMethod.BILINEAR,
                              antialias=True)
    top = (covering[0] - height) // 2
    left = (covering[1] - width) // 2
    cropped = resized[top:top + height, left:left + width, :]
    return tf.reshape(tf.clip_by_value(cropped, 0.0, PIXEL_SCALE), [height, width, channels])


def decode_batch(encoded: tf.Tensor, height: int, width: int, channels: int) -> tf.Tensor:
    """Encoded images [N] or [N, 1] -> float32 [N, height, width, channels], 0..255."""
    flat = tf.reshape(encoded, [-1])
    return tf.map_fn(lambda one: decode_and_fit(one, height, width, channels), flat,
                     fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))


def image_settings(custom_config: Optional[Dict[str, Any]]) -> Tuple[int, int, int]:
    """(height, width, channels) from the Transform custom_config of an image_folder run."""
    config = custom_config or {}
    missing = [key for key in (HEIGHT_SETTING, WIDTH_SETTING, CHANNELS_SETTING)
               if key not in config]
    if missing:
        raise ValueError(f"encoded images need Transform custom_config {missing} "
                         "(ImageClassificationTask.transform_custom_config sets them)")
    return (int(config[HEIGHT_SETTING]), int(config[WIDTH_SETTING]),
            int(config[CHANNELS_SETTING]))


def preprocessing_fn(inputs: Dict[str, Any],
                     custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Scales (IDX/TFDS) or decodes and fits (photos) the image; passes the label through.

    Args:
      inputs: raw features: `image` (int64 [N, height*width]) or `image_bytes` (string
        [N, 1]); during analysis also `label` (int64 [N, 1]) and, for photos, `class_name`
        (string [N, 1]).
      custom_config: image_folder: image_height, image_width and image_channels.

    Returns:
      `image_xf` (float32 [N, height*width*channels]) and `label` (int64 [N]).
    """
    if features.IMAGE_BYTES_KEY in inputs:
        height, width, channels = image_settings(custom_config)
        pixels = decode_batch(inputs[features.IMAGE_BYTES_KEY], height, width, channels)
        image = tf.reshape(pixels, [-1, height * width * channels]) / PIXEL_SCALE
    else:
        image = tf.cast(inputs[features.IMAGE_KEY], tf.float32) / PIXEL_SCALE
    outputs = {features.IMAGE_TRANSFORMED_KEY: image}
    if features.LABEL_KEY in inputs:
        label = tf.reshape(inputs[features.LABEL_KEY], [-1])
        outputs[features.LABEL_KEY] = label
        if features.CLASS_NAME_KEY in inputs:
            # The class names travel with the Transform graph, in class-id order once sorted
            # by the zero-padded id (pipeline/tasks/image/signatures.py reads them back).
            name = tf.reshape(inputs[features.CLASS_NAME_KEY], [-1])
            tft.vocabulary(tf.strings.join(
                [tf.strings.as_string(label, width=_CLASS_ID_DIGITS, fill="0"), name],
                separator=":"), vocab_filename=CLASS_VOCABULARY)
    return outputs


def class_names_from_vocabulary(entries: List[Any]) -> List[str]:
    """The CLASS_VOCABULARY asset's entries (bytes or str) -> class names by class id.

    Raises:
      ValueError: the ids are not 0..K-1 (a class without training examples).
    """
    pairs = []
    for entry in entries:
        text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
        class_id, name = text.split(":", 1)
        pairs.append((int(class_id), name))
    pairs.sort()
    ids = [class_id for class_id, _ in pairs]
    if ids != list(range(len(ids))):
        raise ValueError(f"class vocabulary ids are not 0..{len(ids) - 1}: {ids}; every class "
                         "needs training examples")
    return [name for _, name in pairs]
