"""Feature, output and signature names shared by ingestion, Transform, the Trainer, serving,
evaluation and TFLite conversion."""

# Raw features, as ExampleGen writes them into tf.Examples.
IMAGE_KEY = "image"  # int64 list of height*width pixel values 0..255, row-major
LABEL_KEY = "label"  # int64 class id

# Transformed features, as preprocessing_fn returns them.
IMAGE_TRANSFORMED_KEY = "image_xf"  # float32 [height*width], scaled to [0, 1]

# Outputs of the exported prediction signatures.
PROBABILITIES_OUTPUT = "probabilities"
CLASS_ID_OUTPUT = "class_id"

# Names of the exported SavedModel signatures.
SERVING_DEFAULT_SIGNATURE = "serving_default"  # serialized tf.Examples
SERVING_RAW_SIGNATURE = "serving_raw"  # raw feature tensors (JSON-friendly)
TRANSFORM_SIGNATURE = "transform_features"  # serialized tf.Examples -> transformed features
