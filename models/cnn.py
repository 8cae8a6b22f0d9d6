"""A small VGG-style CNN for single-channel images, with BatchNorm and Dropout."""

import tensorflow as tf

from tfprod.contract.tasks import TaskName
from tfprod.models import registry

# Faster-moving BatchNorm statistics than the 0.99 default: small datasets train for
# only a few hundred steps, and inference uses the moving statistics.
BN_MOMENTUM = 0.9


@registry.register("cnn", tasks=(TaskName.IMAGE_CLASSIFICATION,))
def build_cnn(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """Blocks of (Conv3x3 -> BatchNorm -> ReLU) x convs_per_block -> MaxPool -> Dropout,
    then Dense -> BatchNorm -> ReLU -> Dropout -> softmax over the classes.

    The input is the transformed image feature, flat ([N, height*width]) or shaped;
    it is reshaped to inputs.image_shape inside the model.
    """
    params = model_config.cnn
    features = tf.keras.Input(shape=inputs.feature_shape, name=inputs.feature_name)
    x = tf.keras.layers.Reshape(inputs.image_shape, name="to_image")(features)
    for block, filters in enumerate(params.filters):
        for conv in range(params.convs_per_block):
            x = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                       name=f"block{block}_conv{conv}")(x)
            x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM,
                                                   name=f"block{block}_bn{conv}")(x)
            x = tf.keras.layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = tf.keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
        if params.conv_dropout:
            x = tf.keras.layers.Dropout(params.conv_dropout, name=f"block{block}_dropout")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = tf.keras.layers.Dense(params.dense_units, use_bias=False, name="dense")(x)
    x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="dense_bn")(x)
    x = tf.keras.layers.ReLU(name="dense_relu")(x)
    if params.dense_dropout:
        x = tf.keras.layers.Dropout(params.dense_dropout, name="dense_dropout")(x)
    # float32 output so the softmax stays stable under mixed precision.
    outputs = tf.keras.layers.Dense(inputs.num_classes, activation="softmax", dtype="float32",
                                    name="probabilities")(x)
    return tf.keras.Model(features, outputs, name="cnn")
