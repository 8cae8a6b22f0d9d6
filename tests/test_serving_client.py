"""serving.client.RestClient's wire format, against a recording HTTP server on 127.0.0.1.

The server here only records requests and answers canned JSON: it checks the client's
URLs and bodies; the real server is exercised by tests/test_serving_e2e.py.
"""

import http.server
import json
import threading

import pytest

from tfprod.serving import client as client_lib


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests = []

    def _answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        type(self).requests.append(("POST", self.path, body))
        if self.path.endswith("/versions/404:classify"):
            self._answer(404, {"error": "Servable not found for request: Specific(m, 404)"})
        else:
            self._answer(200, {"results": [[["0", 0.5]]]})

    def do_GET(self):  # noqa: N802
        type(self).requests.append(("GET", self.path, None))
        self._answer(200, {"model_version_status": []})

    def log_message(self, *args):
        pass


@pytest.fixture()
def recorder():
    _Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_classify_and_regress_send_tf_serving_bodies(recorder):
    client = client_lib.RestClient(f"127.0.0.1:{recorder.server_address[1]}", timeout=5)
    examples = [{"x": 1.0}, {"x": 2.0}]
    assert client.classify("m", examples, context={"c": "a"}, signature_name="cls",
                           label="stable") == {"results": [[["0", 0.5]]]}
    client.regress("m", examples, version=3)
    client.status("m", version=3)
    client.close()
    assert _Recorder.requests == [
        ("POST", "/v1/models/m/labels/stable:classify",
         {"examples": examples, "context": {"c": "a"}, "signature_name": "cls"}),
        ("POST", "/v1/models/m/versions/3:regress", {"examples": examples}),
        ("GET", "/v1/models/m/versions/3", None),
    ]


def test_error_answers_raise_client_error_with_the_status(recorder):
    client = client_lib.RestClient(f"127.0.0.1:{recorder.server_address[1]}", timeout=5)
    with pytest.raises(client_lib.ClientError) as error:
        client.classify("m", [{"x": 1.0}], version=404)
    assert error.value.status == 404 and "Servable not found" in error.value.message
    with pytest.raises(ValueError, match="exactly one of instances or inputs"):
        client.predict("m")
