"""A TensorFlow Serving-compatible model server (REST and gRPC), its clients and deployment files."""

import os

# Keras 2 (tf-keras) everywhere: must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
