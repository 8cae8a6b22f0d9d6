"""`tfprod kubeflow submit` through kfp.Client, against a FAKE Kubeflow Pipelines API server.

No Kubeflow cluster exists on these machines, so FakeKfpApi is a small HTTP server on
127.0.0.1 that answers the v2beta1 REST calls kfp 2.5's Client makes (healthz, list and
upload pipelines and versions, list and create experiments, create runs) with the
fields the client reads, and records every request. The client, its HTTP layer and the
multipart upload are the real ones. The package submitted is the compiled golden copy.
"""

import http.server
import json
import threading
import urllib.parse

import pytest

from tfprod.kubeflow import compiler, submit
from tfprod.kubeflow.errors import ParameterError, SubmitError
from tfprod import cli
from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "tests" / "golden" / "mnist_cnn_pipeline.yaml"
API = "/apis/v2beta1"


class FakeKfpApi(http.server.ThreadingHTTPServer):
    """Records requests; keeps pipelines, versions, experiments and runs in memory."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests = []
        self.pipelines = {}  # id -> display name
        self.versions = {}  # pipeline id -> [version ids]
        self.uploads = {}  # version id -> uploaded bytes
        self.experiments = {}  # id -> display name
        self.runs = []
        self.fail_runs_with = None  # an HTTP status to answer POST /runs with

    @property
    def host(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self):
        return [(method, path) for method, path, _, _ in self.requests]


def _multipart_file(content_type, body):
    """The bytes of the uploaded file in a multipart/form-data body."""
    boundary = content_type.split("boundary=")[1].encode()
    for part in body.split(b"--" + boundary):
        if b"filename=" in part:
            return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    raise AssertionError("no file part in the upload")


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def _answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.server.requests.append((self.command, url.path, query, body))
        return url.path, query, body

    def do_GET(self):
        server = self.server
        path, query, _ = self._record()
        if path == f"{API}/healthz":
            return self._answer(200, {"multi_user": False})
        if path == f"{API}/pipelines":
            wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            found = [{"pipeline_id": pid, "display_name": name}
                     for pid, name in server.pipelines.items() if name == wanted]
            return self._answer(200, {"pipelines": found} if found else {})
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            versions = [{"pipeline_id": pipeline_id, "pipeline_version_id": vid}
                        for vid in reversed(server.versions.get(pipeline_id, []))]
            return self._answer(200, {"pipeline_versions": versions})
        if path == f"{API}/experiments":
            wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            found = [{"experiment_id": eid, "display_name": name}
                     for eid, name in server.experiments.items() if name == wanted]
            return self._answer(200, {"experiments": found} if found else {})
        return self._answer(404, {"error": f"fake server: no GET {path}"})

    def do_POST(self):
        server = self.server
        path, query, body = self._record()
        if path in (f"{API}/pipelines/upload", f"{API}/pipelines/upload_version"):
            if path.endswith("/upload"):
                pipeline_id = f"pipeline-{len(server.pipelines) + 1}"
                server.pipelines[pipeline_id] = query["name"][0]
            else:
                pipeline_id = query["pipelineid"][0]
            version_id = f"version-{sum(map(len, server.versions.values())) + 1}"
            server.versions.setdefault(pipeline_id, []).append(version_id)
            server.uploads[version_id] = _multipart_file(self.headers["Content-Type"], body)
            if path.endswith("/upload"):
                return self._answer(200, {"pipeline_id": pipeline_id,
                                          "display_name": query["name"][0]})
            return self._answer(200, {"pipeline_id": pipeline_id,
                                      "pipeline_version_id": version_id})
        if path == f"{API}/experiments":
            experiment_id = f"experiment-{len(server.experiments) + 1}"
            server.experiments[experiment_id] = json.loads(body)["display_name"]
            return self._answer(200, {"experiment_id": experiment_id,
                                      "display_name": server.experiments[experiment_id]})
        if path == f"{API}/runs":
            if server.fail_runs_with:
                return self._answer(server.fail_runs_with, {"error": "fake failure",
                                                            "code": 13})
            run = json.loads(body)
            run["run_id"] = f"run-{len(server.runs) + 1}"
            server.runs.append(run)
            return self._answer(200, run)
        return self._answer(404, {"error": f"fake server: no POST {path}"})


@pytest.fixture
def fake_api():
    server = FakeKfpApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_first_submit_uploads_the_pipeline_and_starts_a_run(fake_api):
    run = submit.submit(str(PACKAGE), fake_api.host, experiment_name="mnist",
                        parameters={"data_dir": "gs://bucket/mnist"},
                        pipeline_root="gs://bucket/root", run_name="first")
    assert fake_api.paths() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/pipelines"),
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/pipeline-1/versions"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    assert fake_api.pipelines == {"pipeline-1": "mnist-cnn"}
    assert fake_api.uploads["version-1"] == PACKAGE.read_bytes()
    (created,) = fake_api.runs
    assert created["display_name"] == "first"
    assert created["experiment_id"] == "experiment-1" == run.experiment_id
    assert created["pipeline_version_reference"] == {"pipeline_id": "pipeline-1",
                                                     "pipeline_version_id": "version-1"}
    assert created["runtime_config"] == {"parameters": {"data_dir": "gs://bucket/mnist"},
                                         "pipeline_root": "gs://bucket/root"}
    assert (run.run_id, run.pipeline_id, run.pipeline_version_id) == (
        "run-1", "pipeline-1", "version-1")


def test_second_submit_adds_a_version_and_reuses_the_experiment(fake_api):
    submit.submit(str(PACKAGE), fake_api.host, experiment_name="mnist")
    fake_api.requests.clear()
    run = submit.submit(str(PACKAGE), fake_api.host, experiment_name="mnist")
    methods_paths = fake_api.paths()
    assert ("POST", f"{API}/pipelines/upload_version") in methods_paths
    assert ("POST", f"{API}/pipelines/upload") not in methods_paths
    assert ("POST", f"{API}/experiments") not in methods_paths
    assert run.pipeline_version_id == "version-2" and run.experiment_id == "experiment-1"
    # Without --param and --pipeline-root the package's defaults apply (nothing is sent).
    assert fake_api.runs[-1]["runtime_config"] == {"parameters": {}}


def test_unknown_parameter_is_refused_before_any_request(fake_api):
    with pytest.raises(ParameterError, match="data_dir"):
        submit.submit(str(PACKAGE), fake_api.host, parameters={"data_path": "x"})
    assert fake_api.requests == []


def test_api_error_names_the_status(fake_api):
    fake_api.fail_runs_with = 500
    with pytest.raises(SubmitError, match="500"):
        submit.submit(str(PACKAGE), fake_api.host)


def test_cli_submit(fake_api, capsys):
    code = cli.main(["kubeflow", "submit", "--host", fake_api.host, "--package", str(PACKAGE),
                     "--experiment", "cli", "--param", "data_dir=gs://bucket/other"])
    assert code == 0, capsys.readouterr().err
    assert "run_id run-1" in capsys.readouterr().out
    assert fake_api.runs[0]["runtime_config"]["parameters"] == {"data_dir": "gs://bucket/other"}
    assert fake_api.experiments == {"experiment-1": "cli"}


def test_cli_submit_bad_param_exits_2(fake_api, capsys):
    code = cli.main(["kubeflow", "submit", "--host", fake_api.host, "--package", str(PACKAGE),
                     "--param", "no-equals-sign"])
    assert code == 2 and "key=value" in capsys.readouterr().err


def test_parse_parameters_reads_yaml_scalars():
    assert submit.parse_parameters(["a=3", "b=true", "c=gs://x/y", "d=0.5"]) == {
        "a": 3, "b": True, "c": "gs://x/y", "d": 0.5}


def test_golden_package_is_a_valid_spec():
    pipeline_spec, _ = compiler.read_package(str(PACKAGE))
    assert compiler.DATA_DIR_PARAMETER in pipeline_spec.root.input_definitions.parameters


class FakeRunClient:
    """A stand-in for kfp.Client's get_run: no KFP API server exists here, so the polling
    of `submit --wait` is tested against these scripted run states."""

    def __init__(self, states, error=None):
        self.states = list(states)
        self.error = error
        self.calls = 0

    def get_run(self, run_id):
        self.calls += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return type("Run", (), {"run_id": run_id, "state": state,
                                "error": self.error if state == "FAILED" else None})()


def test_wait_for_run_reports_each_state_once_until_it_ends():
    client = FakeRunClient(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    lines = []
    state = submit.wait_for_run(client, "run-1", report=lines.append, sleep=lambda s: None)
    assert state == "SUCCEEDED" and client.calls == 4
    assert [line.split(": ")[-1] for line in lines] == ["PENDING", "RUNNING", "SUCCEEDED"]


def test_wait_for_run_gives_up_after_the_timeout():
    ticks = iter(range(100))
    with pytest.raises(SubmitError, match="still RUNNING"):
        submit.wait_for_run(FakeRunClient(["RUNNING"]), "run-1", timeout=3, report=print,
                            clock=lambda: next(ticks), sleep=lambda s: None)


def test_cli_submit_token_no_cache_and_wait(fake_api, monkeypatch, capsys):
    made = {}
    real_make_client = submit.make_client

    def make_client(host, namespace=None, token=None):
        made["token"] = token
        client = real_make_client(host, namespace=namespace, token=token)
        client.get_run = FakeRunClient(["RUNNING", "FAILED"], error="Transform: OOMKilled").get_run
        return client

    monkeypatch.setattr(submit, "make_client", make_client)
    code = cli.main(["kubeflow", "submit", "--host", fake_api.host, "--package", str(PACKAGE),
                     "--token", "secret-token", "--no-cache", "--wait"])
    assert code == 1  # the run FAILED
    assert made["token"] == "secret-token"
    out, err = capsys.readouterr()
    assert "#/runs/details/run-1" in out and "FAILED (Transform: OOMKilled)" in out
    assert "ended FAILED" in err


def test_submit_no_cache_disables_caching_in_the_run(fake_api):
    import yaml

    submit.submit(str(PACKAGE), fake_api.host, enable_caching=False)
    # kfp 2.5 ignores enable_caching for a run of an uploaded version, so the uploaded
    # package itself has every task's cache off.
    [uploaded] = fake_api.uploads.values()
    tasks = yaml.safe_load(uploaded.decode())["root"]["dag"]["tasks"]
    assert tasks and all(task["cachingOptions"] == {"enableCache": False}
                         for task in tasks.values())


def test_make_client_reads_the_standard_service_account_token(fake_api, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("projected-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    client = submit.make_client(fake_api.host)
    assert client._existing_config.api_key["authorization"] == "projected-token"
