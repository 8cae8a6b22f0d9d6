"""File access for the readers' checks, without TensorFlow for local paths.

The preflight checks (Task.preflight) read the input files before the run, and `tfprod run`
runs them before TensorFlow is imported. Local paths go through the standard library;
a URL (gs://, s3://, hdfs://: anything with "://") goes through tf.io.gfile, which imports
TensorFlow only then.
"""

import glob as glob_lib
import os
from typing import IO, List


def is_url(path: str) -> bool:
    """Whether path names a file system tf.io.gfile serves (a scheme before "://")."""
    return "://" in path


def glob(pattern: str) -> List[str]:
    """The paths matching pattern (unsorted, as tf.io.gfile.glob)."""
    if is_url(pattern):
        import tensorflow as tf

        return tf.io.gfile.glob(pattern)
    return glob_lib.glob(pattern)


def isdir(path: str) -> bool:
    if is_url(path):
        import tensorflow as tf

        return tf.io.gfile.isdir(path)
    return os.path.isdir(path)


def open_text(path: str) -> IO[str]:
    """path opened for reading text (UTF-8)."""
    if is_url(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "r")
    return open(path, "r", encoding="utf-8")


def exists(path: str) -> bool:
    if is_url(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def open_binary(path: str) -> IO[bytes]:
    """path opened for reading bytes."""
    if is_url(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")
