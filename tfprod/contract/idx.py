"""Reading IDX files (the MNIST format) into NumPy arrays, with clear errors.

Part of the contract layer because both the pipeline (ingestion, preflight checks) and
mobile (calibration data for `tfprod convert --data-dir`) read this format; NumPy only.

The IDX format is a big-endian header followed by raw data:
  magic (4 bytes): two zero bytes, a type code (0x08 = uint8), the number of
  dimensions; then one uint32 per dimension; then the data, row-major.
Files may be gzip-compressed (``.gz``).
"""

import gzip
import os
import struct
import zlib
from typing import Tuple

import numpy as np

from tfprod import errors

UINT8_TYPE_CODE = 0x08

# The four files of an IDX image dataset, in the layout MNIST ships with.
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


class IdxFormatError(errors.InputDataError):
    """An IDX file is truncated, corrupt or not the kind of file expected."""


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        with open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise IdxFormatError(
            f"{path}: cannot decompress ({error}); the file is truncated or not gzip. "
            "Re-copy it from the original dataset."
        ) from error


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an uncompressed IDX file into a uint8 array."""
    if len(data) < 4:
        raise IdxFormatError(f"{source}: {len(data)} bytes is too short for an IDX header")
    zero1, zero2, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero1 != 0 or zero2 != 0 or ndim == 0:
        raise IdxFormatError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000 followed by "
            "a type code and the number of dimensions); this is not an IDX file"
        )
    if type_code != UINT8_TYPE_CODE:
        raise IdxFormatError(
            f"{source}: IDX type code 0x{type_code:02x} is not supported (only uint8, 0x08)"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{source}: header declares {ndim} dimensions but the file ends early")
    shape = struct.unpack(">" + "I" * ndim, data[4:header_size])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_size
    if actual != expected:
        raise IdxFormatError(
            f"{source}: header declares shape {tuple(shape)} ({expected} bytes of data) but the "
            f"file holds {actual}; it is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a uint8 array."""
    return parse_idx(_read_bytes(path), source=path)


def read_shape(path: str) -> Tuple[int, ...]:
    """The shape an IDX file's header declares, reading the header only (the data is not
    decompressed); read_idx checks the data against it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            ndim = magic[3] if len(magic) == 4 else 0
            dims = handle.read(4 * ndim)
    except (OSError, EOFError, zlib.error) as error:
        raise IdxFormatError(
            f"{path}: cannot decompress ({error}); the file is truncated or not gzip. "
            "Re-copy it from the original dataset.") from error
    # parse_idx's header checks, on the header alone (its size check is read_idx's).
    header = magic + dims
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or ndim == 0 \
            or magic[2] != UINT8_TYPE_CODE or len(dims) < 4 * ndim:
        parse_idx(header, source=path)  # raises the matching IdxFormatError
    return tuple(struct.unpack(">" + "I" * ndim, dims))


def check_image_size(images_path: str, height: int, width: int) -> None:
    """An images file's header declares [N, height, width] images.

    Raises:
      IdxFormatError: naming the file, the size it holds and the size configured.
    """
    shape = read_shape(images_path)
    if len(shape) != 3:
        raise IdxFormatError(
            f"{images_path}: expected 3 dimensions [N, rows, cols], got shape {shape}")
    if shape[1:] != (height, width):
        raise IdxFormatError(
            f"{images_path}: images are {shape[1]}x{shape[2]} (rows x cols) but "
            f"data.image_height x data.image_width is {height}x{width}; use the dataset's "
            f"files, or --set data.image_height={shape[1]} --set data.image_width={shape[2]}")


def read_image_label_pair(images_path: str, labels_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads a matching images file ([N, rows, cols]) and labels file ([N])."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise IdxFormatError(
            f"{images_path}: expected 3 dimensions [N, rows, cols], got shape {images.shape}"
        )
    if labels.ndim != 1:
        raise IdxFormatError(f"{labels_path}: expected 1 dimension [N], got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the two files do not belong together"
        )
    return images, labels


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file (gzip-compressed if path ends in .gz)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx only writes uint8 arrays, got {array.dtype}")
    header = struct.pack(">BBBB", 0, 0, UINT8_TYPE_CODE, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if path.endswith(".gz"):
        with gzip.GzipFile(path, "wb", mtime=0) as handle:
            handle.write(payload)
    else:
        with open(path, "wb") as handle:
            handle.write(payload)


def check_idx_dir(data_dir: str) -> None:
    """Raises FileNotFoundError naming every missing file of the four-file layout."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"data directory not found: {data_dir} (expected a directory holding "
            f"{', '.join(IDX_FILES)})"
        )
    missing = [name for name in IDX_FILES if not os.path.isfile(os.path.join(data_dir, name))]
    if missing:
        raise FileNotFoundError(
            f"{data_dir} is missing {', '.join(missing)}; an IDX image dataset needs all of "
            f"{', '.join(IDX_FILES)}"
        )
