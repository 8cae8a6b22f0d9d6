"""TensorFlow Datasets as a pipeline source: dataset checks, an ExampleGen, a local builder."""

import os

# Keras 2 (tf-keras) everywhere: must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
