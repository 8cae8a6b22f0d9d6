"""The choices of a TFLite export, without TensorFlow (the config imports these)."""

import enum

# Runtimes the models are verified on: LiteRT (ai-edge-litert) and tflite-runtime 2.14.
RUNTIMES = ("litert", "tflite_runtime")

# How many training images int8 calibration may draw (mobile.calibration_samples).
CALIBRATION_SAMPLES_RANGE = (100, 500)


class ConversionMode(str, enum.Enum):
    """How the weights (and activations) are stored in the TFLite model."""

    FLOAT32 = "float32"
    DYNAMIC = "dynamic"  # int8 weights, float activations (dynamic-range quantization)
    FLOAT16 = "float16"  # float16 weights, dequantized to float32 at load time
    INT8 = "int8"  # int8 weights and activations, calibrated on a representative dataset


class IoType(str, enum.Enum):
    """The type of the int8 model's input and output tensors."""

    FLOAT32 = "float32"  # quantize/dequantize ops inside the model
    INT8 = "int8"
    UINT8 = "uint8"  # for images: raw pixels 0..255 go in as they are (scale 1, zero point 0)
