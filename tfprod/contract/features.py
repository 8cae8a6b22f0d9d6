"""Feature, output and signature names shared by ingestion, Transform, the Trainer, serving,
evaluation and TFLite conversion."""

# Raw features, as ExampleGen writes them into tf.Examples.
IMAGE_KEY = "image"  # int64 list of height*width pixel values 0..255, row-major
LABEL_KEY = "label"  # int64 class id
# data.format image_folder: the file's bytes as stored (JPEG or PNG, not decoded pixels), and
# the class's name (its folder's name) beside the label id.
IMAGE_BYTES_KEY = "image_bytes"
CLASS_NAME_KEY = "class_name"

# Transformed features, as preprocessing_fn returns them.
IMAGE_TRANSFORMED_KEY = "image_xf"  # float32 [height*width*channels], scaled to [0, 1]
# data.format table: the model's two inputs (either may be absent when the table has no
# column of that type).
TABLE_NUMERIC_KEY = "numeric_xf"  # float32 [2 x numeric columns]: standardized, then missing flags
TABLE_CATEGORICAL_KEY = "categorical_xf"  # int64 [categorical columns]: 0 missing, 1.. vocabulary/OOV

# Outputs of the exported prediction signatures.
PROBABILITIES_OUTPUT = "probabilities"
CLASS_ID_OUTPUT = "class_id"
CLASS_NAME_OUTPUT = "class_name"  # the class's name (string), where a task knows the names

# Names of the exported SavedModel signatures.
SERVING_DEFAULT_SIGNATURE = "serving_default"  # serialized tf.Examples
SERVING_RAW_SIGNATURE = "serving_raw"  # raw feature tensors (JSON-friendly)
TRANSFORM_SIGNATURE = "transform_features"  # serialized tf.Examples -> transformed features
SERVING_PIXELS_SIGNATURE = "serving_pixels"  # image_folder: float pixels [N, H, W, C], 0..255
