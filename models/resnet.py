"""A small ResNet for images of any height x width x channels (grayscale or RGB).

The shape of He et al., "Deep Residual Learning for Image Recognition" (2016): a strided
stem, then stages of basic residual blocks (two 3x3 convolutions with BatchNorm, the input
added back), each stage after the first halving the resolution and widening, then global
average pooling and a softmax classifier. Global pooling makes the classifier independent
of the input size; the defaults (model.resnet) train on 2 CPU cores in minutes at 128x128.
"""

import tensorflow as tf

from tfprod.contract.tasks import TaskName
from tfprod.models import registry

# As in models/cnn.py: small datasets train for few steps, so BatchNorm's moving statistics
# (used at inference) must settle quickly.
BN_MOMENTUM = 0.9


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    x = tf.keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                               kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if relu:
        x = tf.keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def residual_block(x, filters: int, stride: int, name: str):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU.

    The shortcut is the input itself, or a strided 1x1 conv with BatchNorm where the
    block changes the resolution or the width (the "projection shortcut").
    """
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_proj", relu=False)
    y = _conv_bn(x, filters, 3, stride, f"{name}_a")
    y = _conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
    y = tf.keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return tf.keras.layers.ReLU(name=f"{name}_out")(y)


@registry.register("resnet", tasks=(TaskName.IMAGE_CLASSIFICATION,))
def build_resnet(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """The ResNet of model_config.resnet for inputs.image_shape (height, width, channels).

    The input is the transformed image feature, flat ([N, height*width*channels]) or
    shaped; it is reshaped to inputs.image_shape inside the model.
    """
    params = model_config.resnet
    features = tf.keras.Input(shape=inputs.feature_shape, name=inputs.feature_name)
    x = tf.keras.layers.Reshape(inputs.image_shape, name="to_image")(features)
    x = _conv_bn(x, params.stem_filters, 3, 2, "stem")
    if params.stem_pool:
        x = tf.keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, filters in enumerate(params.filters):
        for block in range(params.blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            x = residual_block(x, filters, stride, name=f"stage{stage}_block{block}")
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if params.dropout:
        x = tf.keras.layers.Dropout(params.dropout, name="dropout")(x)
    # float32 output so the softmax stays stable under mixed precision.
    outputs = tf.keras.layers.Dense(inputs.num_classes, activation="softmax", dtype="float32",
                                    name="probabilities")(x)
    return tf.keras.Model(features, outputs, name="resnet")
