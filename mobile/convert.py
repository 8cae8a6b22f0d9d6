"""Conversion of a pushed tfprod SavedModel to TFLite, in four modes.

What goes into the TFLite graph is only what a phone must run: the model, and
for images the pixel scaling of the Transform graph folded in front of it.
tf.Example parsing and the Transform graph's string handling stay out:

  * image models take one image as a 4-D NHWC tensor, float32
    [1, height, width, channels] (channels 1 for grayscale, 3 for RGB), pixel
    values 0..255: the layout the TFLite Task Library's ImageClassifier and
    MediaPipe's image classifier require ("Only 4D tensors in BHWD layout are
    supported" otherwise), even for a 28x28 grayscale digit. The scaling is
    measured from the SavedModel's own ``transform_features`` signature (see
    :func:`probe_pixel_scaling`) and folded into the graph, so the metadata's
    normalization is the identity (mean 0, std 1). Both the Task Library and
    MediaPipe accept only RGB inputs (1 x height x width x 3, colour space RGB),
    so a grayscale model (the MNIST CNN) gets an RGB input by default, with the
    RGB -> gray conversion (ITU-R BT.601 luma)
    folded in: a gray image given as three equal channels gives back its own
    pixels. ``input_channels=1`` keeps a [1, height, width, 1] input instead, for
    apps that call the interpreter themselves;
  * text models take int32 token ids [1, sequence_length] (:class:`TokenIdsInput`):
    tokenization (lower-casing, splitting, the vocabulary lookup, padding) stays on
    the app side, because the Transform graph's string ops are not TFLite builtins.
    The vocabulary that maps words to ids ships in the metadata (mobile.export);
  * forecasters take the raw window float32 [1, lookback, columns]
    (:class:`WindowInput`): the Transform graph's per-column standardisation is
    measured from the SavedModel (:func:`probe_window_normalization`) and folded
    in front of the model, and the forecast is scaled back to the target's units
    behind it, as serving_raw does. Keras LSTMs without a mask (the forecasters)
    convert to TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM op.

The batch dimension is fixed to 1 (:data:`BATCH_SIZE`), as an app runs it: with a
dynamic batch the Keras Reshape/Flatten layers leave SHAPE/STRIDED_SLICE/PACK ops
in the graph, and tflite-runtime 2.14's XNNPACK delegate then does not take the
model (it ran about 25x slower on the reference kernels, measured here).

Only TFLite builtin ops are allowed (never SELECT_TF_OPS / Flex): a model that
needs another op fails with :class:`UnsupportedOpError` naming it.
"""

import dataclasses
import re
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfprod import errors
from tfprod.mobile.options import ConversionMode, IoType  # noqa: F401  (part of this API)
from tfprod.contract import features


BATCH_SIZE = 1
# Input and output names of the sequence models' TFLite graphs.
TOKEN_IDS_INPUT = "token_ids"
WINDOW_INPUT = "window"
FORECAST_OUTPUT = "forecast"
RGB_CHANNELS = 3
# RGB -> gray weights: ITU-R BT.601 luma. They sum to exactly 1 (tf.image.rgb_to_grayscale's
# rounded 0.2989 + 0.5870 + 0.1140 do not), so three equal channels give back the gray value.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


class ConversionError(errors.RunFailure):
    """The SavedModel could not be converted; the message says why and what to change."""


class UnsupportedOpError(ConversionError):
    """The model needs TensorFlow ops that TFLite's builtin op set does not have."""

    def __init__(self, ops: Sequence[str], detail: str):
        self.ops = list(ops)
        super().__init__(
            f"TFLite conversion failed: the model needs TensorFlow op(s) {', '.join(self.ops)}, "
            "which are not TFLite builtins. tfprod does not enable Flex (SELECT_TF_OPS), "
            "which Android apps would have to bundle; keep these ops out of the model "
            "(e.g. move them into preprocessing on the app side) or replace them with "
            f"supported ops.\nConverter said: {detail.strip()[:2000]}")


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """An image model's input: raw pixels; the model sees pixel * scale + offset.

    Attributes:
      height, width, channels: the TFLite input is [1, height, width, channels].
      scale, offset: the Transform graph's pixel scaling (folded into the TFLite graph).
      model_shape: the shape of one transformed image as the Keras model takes it (e.g.
        (784,) for the MNIST CNN's flat pixels); the NHWC input is reshaped to it.
      input_channels: the TFLite input's channels when they differ from the model's
        (see the module docstring); None: 3, the Task Library's RGB.
    """

    height: int
    width: int
    scale: float
    offset: float = 0.0
    channels: int = 1
    model_shape: Tuple[int, ...] = ()
    input_channels: Optional[int] = None

    @property
    def tflite_channels(self) -> int:
        """The TFLite input's channels: input_channels, else 3 (what the Task Library takes)."""
        return self.input_channels or RGB_CHANNELS

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """The TFLite input shape, NHWC with batch 1."""
        return (BATCH_SIZE, self.height, self.width, self.tflite_channels)

    def as_input(self, images: np.ndarray) -> np.ndarray:
        """Images in the serving_raw layout -> [N, height, width, tflite_channels] float32.

        A grayscale image fed to an RGB input is repeated into three equal channels, as
        an app's gray-to-RGB conversion (or the Task Library's) does.
        """
        images = np.asarray(images, np.float32).reshape(
            -1, self.height, self.width, self.channels)
        if self.channels == 1 and self.tflite_channels == RGB_CHANNELS:
            images = np.repeat(images, RGB_CHANNELS, axis=-1)
        return images


@dataclasses.dataclass(frozen=True)
class TokenIdsInput:
    """A text model's input: int32 token ids, padded to sequence_length.

    Attributes:
      sequence_length: the TFLite input is [1, sequence_length].
      vocabulary: token id i is vocabulary[i] (id 0 is padding; see mobile.export).
    """

    sequence_length: int
    vocabulary: Tuple[str, ...] = ()

    @property
    def shape(self) -> Tuple[int, int]:
        return (BATCH_SIZE, self.sequence_length)

    def as_input(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids [N, sequence_length] as the TFLite input takes them (int32)."""
        return np.asarray(token_ids).reshape(-1, self.sequence_length).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class WindowInput:
    """A forecaster's input: the raw window; the model sees (window - mean) / std.

    Attributes:
      lookback, columns: the TFLite input is [1, lookback, len(columns)] float32, columns
        in this order (serving_raw's order).
      mean, std: per column, the Transform graph's standardisation (folded into the graph).
      target_mean, target_std: the forecast is model output * target_std + target_mean.
      horizon: the forecast's length.
    """

    lookback: int
    columns: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    target_mean: float
    target_std: float
    horizon: int

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (BATCH_SIZE, self.lookback, len(self.columns))

    def as_input(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows [N, lookback, columns] float32."""
        return np.asarray(windows, np.float32).reshape(-1, self.lookback, len(self.columns))


def probe_pixel_scaling(serving_model, height: int, width: int, channels: int = 1,
                        input_channels: Optional[int] = None) -> ImageInput:
    """Measures the Transform graph's pixel scaling from the SavedModel itself.

    Feeds tf.Examples with known pixel values (``image``: height * width * channels
    int64 values, channels last) through the ``transform_features`` signature and
    fits transformed = pixel * scale + offset. The transformed image's shape is what
    the Keras model takes. ``input_channels`` is recorded for the TFLite input (see
    :class:`ImageInput`); it must be 3, 1 or the model's own channels.

    Raises:
      ConversionError: the transform is not such a per-pixel affine scaling, so it
        cannot be folded into the TFLite graph.
    """
    signature = serving_model.signatures.get(features.TRANSFORM_SIGNATURE)
    if signature is None:
        raise ConversionError(
            f"the SavedModel has no '{features.TRANSFORM_SIGNATURE}' signature; export it with "
            "tfprod.pipeline.tasks.image.signatures.make_serving_signatures")
    rng = np.random.default_rng(0)
    size = height * width * channels
    pixels = np.stack([np.zeros(size), np.full(size, 255),
                       rng.integers(0, 256, size)]).astype(np.int64)
    # Each example carries the image both ways ExampleGen writes one: int64 pixels (IDX,
    # TFDS) and a lossless PNG file (image folders); parsing ignores what the spec lacks.
    examples = [tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=row)),
        features.IMAGE_BYTES_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[
            tf.io.encode_png(row.reshape(height, width, channels).astype(np.uint8)).numpy()])),
        features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
        features.CLASS_NAME_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"0"])),
    })).SerializeToString() for row in pixels]
    try:
        transformed = signature(examples=tf.constant(examples))[features.IMAGE_TRANSFORMED_KEY]
    except (tf.errors.InvalidArgumentError, KeyError) as error:
        raise ConversionError(
            f"could not probe the pixel scaling: the '{features.TRANSFORM_SIGNATURE}' signature "
            f"did not take tf.Examples with '{features.IMAGE_KEY}' as {size} int64 pixels "
            f"({height}x{width}x{channels}, channels last) or has no "
            f"'{features.IMAGE_TRANSFORMED_KEY}' output: {str(error)[:500]}") from error
    model_shape = tuple(int(dim) for dim in transformed.shape[1:])
    transformed = np.asarray(transformed, np.float64).reshape(len(examples), -1)
    offset = float(transformed[0].mean())
    scale = float((transformed[1].mean() - offset) / 255.0)
    expected = pixels.astype(np.float64) * scale + offset
    if not np.allclose(transformed, expected, atol=1e-5):
        raise ConversionError(
            "the Transform graph does not scale pixels as pixel * scale + offset, so it cannot "
            "be folded into the TFLite model; describe the preprocessing in the metadata "
            "instead or simplify preprocessing_fn")
    if input_channels not in (None, 1, RGB_CHANNELS) or (
            channels == RGB_CHANNELS and input_channels not in (None, RGB_CHANNELS)):
        raise ConversionError(
            f"TFLite input channels {input_channels} for a model of {channels} channel(s): "
            "an RGB model takes 3, a grayscale one 3 (RGB, for the Task Library) or 1")
    return ImageInput(height=height, width=width, scale=scale, offset=offset,
                      channels=channels, model_shape=model_shape,
                      input_channels=input_channels)


def inference_function(serving_model, model_input) -> tf.types.experimental.ConcreteFunction:
    """The function TFLite converts: raw input -> {'probabilities': [1, classes]}
    (image and text classifiers) or {'forecast': [1, horizon]} (forecasters).

    The SavedModel's Keras model is called directly (its ``__call__``), so the
    Transform layer and tf.Example parsing are not in the graph; what of Transform can
    be folded (pixel scaling, window standardisation) is folded around the call.
    """
    if isinstance(model_input, ImageInput):
        model_shape = [BATCH_SIZE, *(model_input.model_shape or
                                     (model_input.height * model_input.width
                                      * model_input.channels,))]

        @tf.function(input_signature=[tf.TensorSpec(
            model_input.shape, tf.float32, name=features.IMAGE_KEY)])
        def predict(image):
            if model_input.channels == 1 and model_input.tflite_channels == RGB_CHANNELS:
                image = tf.reduce_sum(image * tf.constant(GRAY_WEIGHTS, tf.float32), axis=-1)
            # Both shapes are static, so this is one RESHAPE (or none), no shape arithmetic.
            pixels = tf.reshape(image, model_shape)
            scaled = pixels * model_input.scale + model_input.offset
            return {features.PROBABILITIES_OUTPUT: serving_model(scaled, training=False)}
    elif isinstance(model_input, TokenIdsInput):
        @tf.function(input_signature=[tf.TensorSpec(
            model_input.shape, tf.int32, name=TOKEN_IDS_INPUT)])
        def predict(token_ids):
            # The Keras model takes Transform's int64 ids; int32 is what TFLite apps feed.
            return {features.PROBABILITIES_OUTPUT: serving_model(
                tf.cast(token_ids, tf.int64), training=False)}
    elif isinstance(model_input, WindowInput):
        mean = tf.constant(model_input.mean, tf.float32)
        std = tf.constant(model_input.std, tf.float32)
        flat_shape = [BATCH_SIZE, model_input.lookback * len(model_input.columns)]

        @tf.function(input_signature=[tf.TensorSpec(
            model_input.shape, tf.float32, name=WINDOW_INPUT)])
        def predict(window):
            # Time-major flattening, as Transform's window_xf is laid out.
            standardised = tf.reshape((window - mean) / std, flat_shape)
            forecast = serving_model(standardised, training=False)
            return {FORECAST_OUTPUT: forecast * model_input.target_std
                    + model_input.target_mean}
    else:
        raise TypeError(f"unknown model input description {model_input!r}")
    return predict.get_concrete_function()


# Modes the TF 2.16.2 converter crashes on (the process dies: no exception to catch) for a
# model whose float32 graph has an operator; measured here on tfprod's models. They are
# not attempted: the report lists them with this reason (mobile.export).
CONVERTER_CRASHES = {
    (ConversionMode.FLOAT16, "UNIDIRECTIONAL_SEQUENCE_LSTM"):
        "not attempted: TF 2.16.2's converter crashes converting the fused LSTM op "
        "(UNIDIRECTIONAL_SEQUENCE_LSTM) to float16 (a segmentation fault, or all memory: "
        "17 GB on the configs/etth1_lstm.yaml forecaster); dynamic or int8 shrink it instead",
    (ConversionMode.INT8, "WHILE"):
        "not attempted: TF 2.16.2's converter crashes (segmentation fault) quantizing a "
        "model with a WHILE loop (the text lstm's masked LSTM) to int8; dynamic shrinks "
        "its weights instead",
}


def known_crash(mode: ConversionMode, float32_operators: Sequence[str]) -> Optional[str]:
    """Why mode is not attempted for a model with these float32 operators, or None."""
    for (crash_mode, operator), reason in CONVERTER_CRASHES.items():
        if ConversionMode(mode) == crash_mode and operator in float32_operators:
            return reason
    return None


_NOT_BUILTIN = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_SELECT_OPS = re.compile(r"TF Select ops: ([\w, ]+)")


def _unsupported_ops(message: str) -> List[str]:
    ops = set(_NOT_BUILTIN.findall(message))
    for group in _SELECT_OPS.findall(message):
        ops.update(op.strip() for op in group.split(",") if op.strip())
    return sorted(ops)


def convert(concrete_function, mode: ConversionMode,
            representative_images: Optional[Callable[[], Iterable[List[np.ndarray]]]] = None,
            io_type: IoType = IoType.FLOAT32, trackable=None) -> bytes:
    """Converts a concrete function to a TFLite flatbuffer in the given mode.

    Args:
      concrete_function: from :func:`inference_function`.
      mode: the quantization mode.
      representative_images: for INT8, a callable yielding [input] lists of single examples
        (the calibration set).
      io_type: for INT8, the type of the model's input and output tensors.
      trackable: the object that owns the function's variables (the loaded SavedModel).

    Raises:
      UnsupportedOpError: the graph needs an op outside TFLite's builtins.
      ConversionError: any other conversion failure, or bad arguments.
    """
    mode = ConversionMode(mode)
    io_type = IoType(io_type)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function], trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if io_type != IoType.FLOAT32 and mode != ConversionMode.INT8:
        raise ConversionError(f"int8/uint8 input and output need mode int8, not {mode.value}")
    if mode == ConversionMode.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == ConversionMode.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == ConversionMode.INT8:
        if representative_images is None:
            raise ConversionError("mode int8 needs a representative dataset (calibration images)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_images
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type != IoType.FLOAT32:
            converter.inference_input_type = tf.as_dtype(io_type.value)
            converter.inference_output_type = tf.as_dtype(io_type.value)
    try:
        return converter.convert()
    except Exception as error:  # The converter raises several types; classify by message.
        message = str(error)
        ops = _unsupported_ops(message)
        if ops:
            raise UnsupportedOpError(ops, message) from error
        raise ConversionError(f"TFLite conversion ({mode.value}) failed: {message[:3000]}") \
            from error


def operator_names(model_bytes: bytes) -> List[str]:
    """The distinct operators of a TFLite model (builtin names, or custom codes)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(model_bytes), 0)
    builtin_names = {value: name for name, value in vars(schema.BuiltinOperator).items()
                     if not name.startswith("_")}
    names = set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            names.add(builtin_names.get(builtin, str(builtin)))
    return sorted(names)


def check_mobile_friendly(model_bytes: bytes) -> None:
    """Raises ConversionError if the model has Flex (TF) ops or string ops."""
    names = operator_names(model_bytes)
    flex = [name for name in names if name.startswith("CUSTOM:Flex")]
    if flex:
        raise ConversionError(f"the TFLite model needs Flex ops {flex}; Android apps would "
                              "have to bundle the TensorFlow Select runtime")
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(model_bytes), 0)
    for subgraph_index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(subgraph_index)
        for tensor_index in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(tensor_index)
            if tensor.Type() == schema.TensorType.STRING:
                raise ConversionError(
                    f"the TFLite model has a string tensor '{tensor.Name().decode()}': keep "
                    "tf.Example parsing and string handling out of the converted graph")
