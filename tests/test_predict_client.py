"""`tfprod predict` as a fast client: gRPC without TensorFlow, one line when no server answers.

The numpy tensor packing (serving.tensor_codec) is checked against TensorFlow's own
make_tensor_proto/make_ndarray here; the no-TensorFlow check runs `tfprod predict
--protocol grpc` in a fresh interpreter against a real `tfprod serve` (a small TF1-style
model from tests/serving_models.py, no pipeline run) and reads its sys.modules.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfprod.serving import tensor_codec
from tests.conftest import REPO_ROOT

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
REQUEST = {"instances": [[1.0, 2.0], [3.0, -5.0]]}


@pytest.mark.parametrize("value", [
    np.array([[1.5, -2.25]], np.float32), np.arange(6, dtype=np.int64).reshape(2, 3),
    np.array([1, 2], np.int32), np.array([0, 255], np.uint8), np.array([True, False]),
    np.array([0.5], np.float64), np.array([1.5, 2.5], np.float16),
    np.array([b"a", b"\xff\x00", b""], dtype=object), np.array(3.0, np.float32)])
def test_tensor_packing_matches_tensorflow(value):
    import tensorflow as tf

    from tensorflow.core.framework import tensor_pb2

    ours = tensor_pb2.TensorProto()
    tensor_codec.fill_tensor_proto(ours, value)
    theirs = tf.make_tensor_proto(value)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(tf.make_ndarray(ours), value)
    for proto in (ours, theirs):
        decoded = tensor_codec.to_ndarray(proto)
        assert decoded.shape == value.shape and decoded.dtype == tf.make_ndarray(proto).dtype
        np.testing.assert_array_equal(decoded, value)


def test_typed_values_and_a_repeated_last_value_decode_as_tensorflow_does():
    import tensorflow as tf

    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=tensor_codec.DT_FLOAT, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add(size=4)
    np.testing.assert_array_equal(tensor_codec.to_ndarray(proto), tf.make_ndarray(proto))
    strings = tf.make_tensor_proto([b"x", b"y"])
    assert tensor_codec.to_ndarray(strings).tolist() == [b"x", b"y"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_no_server_is_one_line_naming_the_address(protocol, tmp_path):
    port = _free_port()  # nothing listens there once the probe is closed
    done = subprocess.run([TFPROD, "predict", "--protocol", protocol, "--server",
                           f"127.0.0.1:{port}", "--model_name", "m", "--request",
                           json.dumps(REQUEST)], cwd=REPO_ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: no ") and f"127.0.0.1:{port}" in lines[0]
    assert "refused" in lines[0].lower()
    assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_grpc_predict_imports_no_tensorflow(tmp_path):
    from tests.serving_models import build_examples_model, copy_version
    from tests.test_serving_e2e import ServerProcess

    model = build_examples_model(str(tmp_path / "model"))
    copy_version(model, str(tmp_path / "base"), 1)
    server = ServerProcess(["--model_name", "m", "--model_base_path", str(tmp_path / "base")],
                           tmp_path / "server.log")
    code = (
        "import json, sys\n"
        "from tfprod import cli\n"
        f"code = cli.main(['predict', '--protocol', 'grpc', '--server', "
        f"'127.0.0.1:{server.grpc_port}', '--model_name', 'm', '--request', "
        f"{json.dumps(REQUEST)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith("
        "('tensorflow.python', 'keras', 'tf_keras')))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    answer, report = [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]
    assert answer == {"outputs": {"sum": [3.0, -2.0], "label_bytes": ["positive", "negative"]}} \
        or answer["outputs"]["sum"] == [3.0, -2.0]
    assert answer["outputs"]["label_bytes"] == ["positive", "negative"]
    assert report == {"code": 0, "heavy": []}
