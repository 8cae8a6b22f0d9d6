"""Small SavedModels for the serving tests, built with real TensorFlow in temp dirs.

The pipeline's model (TF2 `tf.saved_model.save`) has only predict signatures, as
every TF2 export does. TF Serving's Classify and Regress need signatures with the
classify/regress method names, which only TF1-style exports carry, so this
builds one: a two-feature linear model over serialized tf.Examples.
"""

import os

import tensorflow as tf

CLASS_LABELS = (b"negative", b"positive")


def build_examples_model(export_dir: str, bias: float = 0.0) -> str:
    """Writes a SavedModel with classify, regress and predict signatures over feature x (2 floats).

    classify: scores = softmax([-s, s]) with s = x0 + x1 + bias, classes = CLASS_LABELS
    regress:  outputs = x0 + x1 + bias, shape [N, 1]
    predict (serving_default): {"x": [N, 2] float} -> {"sum": [N], "label_bytes": [N] string}
    """
    with tf.Graph().as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        parsed = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})
        total = tf.reduce_sum(parsed["x"], axis=1) + bias
        scores = tf.nn.softmax(tf.stack([-total, total], axis=1))
        classes = tf.tile(tf.constant([list(CLASS_LABELS)]), [tf.shape(total)[0], 1])
        direct_x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        direct_sum = tf.reduce_sum(direct_x, axis=1) + bias
        label_bytes = tf.where(direct_sum > 0, tf.fill(tf.shape(direct_sum), CLASS_LABELS[1]),
                               tf.fill(tf.shape(direct_sum), CLASS_LABELS[0]))
        signatures = {
            "classify_x": tf.compat.v1.saved_model.classification_signature_def(serialized, classes, scores),
            "regress_x": tf.compat.v1.saved_model.regression_signature_def(
                serialized, tf.expand_dims(total, 1)),
            "serving_default": tf.compat.v1.saved_model.predict_signature_def(
                {"x": direct_x}, {"sum": direct_sum, "label_bytes": label_bytes}),
        }
        builder = tf.compat.v1.saved_model.Builder(export_dir)
        with tf.compat.v1.Session() as session:
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return export_dir


def example(x0: float, x1: float) -> tf.train.Example:
    value = tf.train.Example()
    value.features.feature["x"].float_list.value.extend([x0, x1])
    return value


def copy_version(source_dir: str, base_path: str, version: int) -> str:
    """Copies a SavedModel into <base_path>/<version> atomically (rename), as a pusher should."""
    import shutil

    os.makedirs(base_path, exist_ok=True)
    staging = os.path.join(base_path, f".staging-{version}")
    shutil.copytree(source_dir, staging)
    target = os.path.join(base_path, str(version))
    os.rename(staging, target)
    return target
