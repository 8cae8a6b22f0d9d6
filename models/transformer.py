"""`transformer`: a small Transformer encoder text classifier over padded token ids."""

import tensorflow as tf

from tfprod.contract.tasks import TaskName
from tfprod.models import registry, text_layers


@registry.register("transformer", tasks=(TaskName.TEXT_CLASSIFICATION,))
def build_transformer(model_config, inputs: registry.ModelInputs) -> tf.keras.Model:
    """Token + position embeddings -> dropout -> num_blocks encoder blocks
    -> masked mean pooling -> dropout -> softmax.

    The input is int64 token ids [N, max_len], 0 = padding (masked in attention and
    pooling); inputs.vocab_size counts every id.
    """
    params = model_config.transformer
    token_ids = tf.keras.Input(shape=inputs.feature_shape, dtype=tf.int64,
                               name=inputs.feature_name)
    x = text_layers.TokenAndPositionEmbedding(inputs.vocab_size, inputs.feature_shape[0],
                                              params.embedding_dim, name="embedding")(token_ids)
    if params.dropout:
        x = tf.keras.layers.Dropout(params.dropout, name="embedding_dropout")(x)
    for block in range(params.num_blocks):
        x = text_layers.TransformerEncoderBlock(
            params.embedding_dim, params.num_heads, params.feed_forward_dim, params.dropout,
            name=f"encoder_block{block}")(x)
    x = text_layers.MaskedMeanPooling(name="masked_mean_pooling")(x)
    if params.dropout:
        x = tf.keras.layers.Dropout(params.dropout, name="dropout")(x)
    outputs = tf.keras.layers.Dense(inputs.num_classes, activation="softmax", dtype="float32",
                                    name="probabilities")(x)
    return tf.keras.Model(token_ids, outputs, name="transformer")
