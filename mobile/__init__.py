"""TFLite conversion, Android metadata and verification on LiteRT for tfprod models."""

import os

# Keras 2 (tf-keras) everywhere: must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
