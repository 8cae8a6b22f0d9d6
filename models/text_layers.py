"""Serializable Keras layers for the text models (padding id 0 is masked everywhere).

Each layer is registered under the "tfprod" package, so a saved Keras model
reloads without custom_objects, and get_config/from_config round-trips.
"""

import tensorflow as tf

PACKAGE = "tfprod"


def _table(sublayer: str) -> property:
    """A sublayer's embedding table, read and replaced by name (mobile.compression)."""
    return property(lambda self: getattr(self, sublayer).embeddings,
                    lambda self, value: setattr(getattr(self, sublayer), "embeddings", value))


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class TokenAndPositionEmbedding(tf.keras.layers.Layer):
    """Token ids [N, T] -> token embedding + learned position embedding [N, T, dim].

    Emits the padding mask (ids != 0) for the layers after it.
    """

    def __init__(self, vocab_size: int, max_len: int, embedding_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.embedding_dim = embedding_dim
        self.token_embedding = tf.keras.layers.Embedding(vocab_size, embedding_dim,
                                                         name="token_embedding")
        self.position_embedding = tf.keras.layers.Embedding(max_len, embedding_dim,
                                                            name="position_embedding")

    def build(self, input_shape):
        # The tables exist once built (a rebuilt copy takes set_weights before a call).
        self.token_embedding.build(input_shape)
        self.position_embedding.build((self.max_len,))
        super().build(input_shape)

    def call(self, token_ids):
        positions = tf.range(tf.shape(token_ids)[-1])
        return self.token_embedding(token_ids) + self.position_embedding(positions)

    def compute_mask(self, token_ids, mask=None):
        return tf.not_equal(token_ids, 0)

    # mobile.compression (tensorflow-model-optimization's protocol for custom layers, by
    # duck typing: models/ does not import the toolkit). The two tables are most of a text
    # model's weights, so pruning and clustering reach them here.
    def get_prunable_weights(self):
        return [self.token_embedding.embeddings, self.position_embedding.embeddings]

    def get_clusterable_weights(self):
        return [("token_embeddings", self.token_embedding.embeddings),
                ("position_embeddings", self.position_embedding.embeddings)]

    def get_clusterable_algorithm(self, weight_name):
        return None  # the toolkit's default (one set of centroids per table)

    # The clustering wrapper swaps each table for its clustered values by attribute name.
    token_embeddings = _table("token_embedding")
    position_embeddings = _table("position_embedding")

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_len=self.max_len,
                      embedding_dim=self.embedding_dim)
        return config


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class TransformerEncoderBlock(tf.keras.layers.Layer):
    """Post-norm encoder block: x + MHA(x) -> LayerNorm -> x + FFN(x) -> LayerNorm.

    Padding positions are masked out of the attention keys; the mask passes through.
    """

    def __init__(self, embedding_dim: int, num_heads: int, feed_forward_dim: int,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.feed_forward_dim = feed_forward_dim
        self.dropout = dropout
        self.attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=embedding_dim // num_heads, dropout=dropout,
            name="self_attention")
        self.feed_forward = tf.keras.Sequential([
            tf.keras.layers.Dense(feed_forward_dim, activation="gelu"),
            tf.keras.layers.Dense(embedding_dim),
        ], name="feed_forward")
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6,
                                                                 name="attention_norm")
        self.feed_forward_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6,
                                                                    name="feed_forward_norm")
        self.attention_dropout = tf.keras.layers.Dropout(dropout)
        self.feed_forward_dropout = tf.keras.layers.Dropout(dropout)

    def call(self, inputs, mask=None, training=None):
        attention_mask = None
        if mask is not None:
            # [N, 1, T]: every query attends to the non-padding keys only.
            attention_mask = tf.cast(mask, tf.bool)[:, tf.newaxis, :]
        attended = self.attention(inputs, inputs, attention_mask=attention_mask,
                                  training=training)
        x = self.attention_norm(
            inputs + self.attention_dropout(attended, training=training))
        transformed = self.feed_forward(x, training=training)
        return self.feed_forward_norm(
            x + self.feed_forward_dropout(transformed, training=training))

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, num_heads=self.num_heads,
                      feed_forward_dim=self.feed_forward_dim, dropout=self.dropout)
        return config


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class MaskedMeanPooling(tf.keras.layers.Layer):
    """Mean over the non-padding time steps, [N, T, D] -> [N, D].

    An all-padding row (empty text) pools to zeros instead of dividing by zero.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return tf.reduce_mean(inputs, axis=1)
        weights = tf.cast(mask, inputs.dtype)[:, :, tf.newaxis]
        total = tf.reduce_sum(inputs * weights, axis=1)
        count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
        return total / count

    def compute_mask(self, inputs, mask=None):
        return None
