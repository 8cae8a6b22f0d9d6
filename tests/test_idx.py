"""IDX parsing: valid files, and clear errors for truncated or corrupt ones."""

import gzip
import struct

import numpy as np
import pytest

from tfprod.contract import idx


def test_round_trip_gzip_and_plain(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("images.idx.gz", "images.idx"):
        path = str(tmp_path / name)
        idx.write_idx(path, images)
        np.testing.assert_array_equal(idx.read_idx(path), images)


def test_reads_the_shipped_sample(mnist_sample):
    train_images, train_labels, test_images, test_labels = mnist_sample
    assert train_images.shape == (10000, 28, 28) and train_labels.shape == (10000,)
    assert test_images.shape == (2000, 28, 28) and test_labels.shape == (2000,)
    assert train_labels.max() == 9 and train_labels.min() == 0
    assert train_images.dtype == np.uint8 and train_images.max() == 255


def test_truncated_data_names_the_shapes(tmp_path):
    path = tmp_path / "truncated.idx"
    data = struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + bytes(28 * 28 * 10 - 5)
    path.write_bytes(data)
    with pytest.raises(idx.IdxFormatError, match=r"truncated or corrupt"):
        idx.read_idx(str(path))


def test_truncated_gzip_is_reported(tmp_path):
    full = tmp_path / "full.idx.gz"
    idx.write_idx(str(full), np.zeros((50, 28, 28), np.uint8) + 7)
    cut = tmp_path / "cut.idx.gz"
    cut.write_bytes(full.read_bytes()[:40])
    with pytest.raises(idx.IdxFormatError, match=r"cannot decompress"):
        idx.read_idx(str(cut))


def test_bad_magic_number(tmp_path):
    path = tmp_path / "not_idx.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"PK\x03\x04 this is a zip file, not IDX")
    with pytest.raises(idx.IdxFormatError, match=r"bad IDX magic number"):
        idx.read_idx(str(path))


def test_unsupported_type_code():
    data = struct.pack(">BBBBI", 0, 0, 0x0D, 1, 1) + b"\x00\x00\x00\x00"
    with pytest.raises(idx.IdxFormatError, match=r"type code 0x0d is not supported"):
        idx.parse_idx(data)


def test_header_too_short():
    with pytest.raises(idx.IdxFormatError, match=r"too short"):
        idx.parse_idx(b"\x00\x00")
    with pytest.raises(idx.IdxFormatError, match=r"ends early"):
        idx.parse_idx(struct.pack(">BBBB", 0, 0, 8, 3) + b"\x00\x00\x00\x05")


def test_images_and_labels_must_match(tmp_path):
    images = str(tmp_path / "i.gz")
    labels = str(tmp_path / "l.gz")
    idx.write_idx(images, np.zeros((5, 28, 28), np.uint8))
    idx.write_idx(labels, np.zeros((4,), np.uint8))
    with pytest.raises(idx.IdxFormatError, match=r"5 images but .* 4 labels"):
        idx.read_image_label_pair(images, labels)
    with pytest.raises(idx.IdxFormatError, match=r"expected 3 dimensions"):
        idx.read_image_label_pair(labels, labels)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data directory not found"):
        idx.check_idx_dir(str(tmp_path / "nowhere"))
    idx.write_idx(str(tmp_path / idx.TRAIN_IMAGES), np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError) as error:
        idx.check_idx_dir(str(tmp_path))
    message = str(error.value)
    assert idx.TRAIN_LABELS in message and idx.TEST_IMAGES in message
    assert idx.TRAIN_IMAGES + "," not in message.split("is missing")[1].split(";")[0]
    with pytest.raises(FileNotFoundError, match=r"IDX file not found"):
        idx.read_idx(str(tmp_path / "absent.gz"))


def test_write_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match=r"uint8"):
        idx.write_idx(str(tmp_path / "x"), np.zeros((2, 2), np.float32))


def test_read_shape_reads_the_header_only(tmp_path):
    for name in ("images.idx.gz", "images.idx"):
        path = tmp_path / name
        idx.write_idx(str(path), np.zeros((5, 27, 28), np.uint8))
        assert idx.read_shape(str(path)) == (5, 27, 28)
    cut = tmp_path / "cut.idx"
    cut.write_bytes((tmp_path / "images.idx").read_bytes()[:100])  # data cut, header whole
    assert idx.read_shape(str(cut)) == (5, 27, 28)
    cut.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 3, 5))
    with pytest.raises(idx.IdxFormatError, match=r"header declares 3 dimensions"):
        idx.read_shape(str(cut))


def test_image_size_other_than_configured_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    idx.write_idx(str(path), np.zeros((5, 27, 28), np.uint8))
    idx.check_image_size(str(path), 27, 28)
    with pytest.raises(idx.IdxFormatError, match=(
            rf"^{path}: images are 27x28 \(rows x cols\) but data.image_height x "
            r"data.image_width is 28x28")):
        idx.check_image_size(str(path), 28, 28)
