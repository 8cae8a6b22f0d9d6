"""Runs the copyable requests of a report's Serving section against `tfprod serve`.

The report writes its snippets for 127.0.0.1:8501 (REST) and :8500 (gRPC) and for
`.venv/bin/tfprod`; here they run as written, with only the ports and the tfprod path
replaced by the test server's, in a scratch directory (the heredoc writes request.json there).
"""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Dict, List

from tests.report.page_index import PageIndex

TFPROD = os.path.join(os.path.dirname(sys.executable), "tfprod")
SNIPPET_TIMEOUT_SECONDS = 300


def _localize(text: str, server) -> str:
    return (text.replace("127.0.0.1:8501", f"127.0.0.1:{server.rest_port}")
            .replace("127.0.0.1:8500", f"127.0.0.1:{server.grpc_port}")
            .replace(".venv/bin/tfprod", TFPROD))


def _json_lines(stdout: str) -> List[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_serving_snippets(page: PageIndex, server, work_dir: pathlib.Path) -> Dict[str, object]:
    """Runs every snippet of the page's Serving section; returns what each printed.

    Returns {"rest": [JSON answers of the request.json snippet: curl, tfprod predict REST,
    tfprod predict gRPC], "rest_examples": JSON answer of the tf.Example curl,
    "grpc": {output name: value} printed by the Python gRPC snippet}. A snippet that fails
    fails the test with its output.
    """
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    work_dir.mkdir(parents=True, exist_ok=True)
    result: Dict[str, object] = {}
    if "rest-request" in page.pres:
        script = _localize(page.pres["rest-request"], server)
        # Each command on its own line prints its answer on its own line.
        script = "set -e\n" + "\n".join(
            line + ("; echo" if line.startswith("curl ") else "") for line in script.splitlines())
        done = subprocess.run(["bash", "-c", script], cwd=work_dir, env=env, capture_output=True,
                              text=True, timeout=SNIPPET_TIMEOUT_SECONDS)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert (work_dir / "request.json").is_file()
        result["rest"] = _json_lines(done.stdout)
    if "rest-request-examples" in page.pres:
        command = _localize(page.pres["rest-request-examples"], server)
        done = subprocess.run(["bash", "-c", command], cwd=work_dir, env=env, capture_output=True,
                              text=True, timeout=SNIPPET_TIMEOUT_SECONDS)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result["rest_examples"] = json.loads(done.stdout)
    if "grpc-request" in page.pres:
        code = _localize(page.pres["grpc-request"], server)
        done = subprocess.run([sys.executable, "-c", code], cwd=work_dir, env=env,
                              capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_SECONDS)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        printed = {}
        for line in done.stdout.splitlines():
            match = re.match(r"(\w+) (.*)$", line)
            if match:
                printed[match.group(1)] = ast.literal_eval(match.group(2))
        result["grpc"] = printed
    return result


def serve_as_the_report_says(page: PageIndex, log_path: pathlib.Path):
    """`tfprod serve` with the model name and base path of the report's serve command (on
    free ports); the caller stops it."""
    from tests.test_serving_e2e import ServerProcess

    command = page.pres["serve-command"]
    name = re.search(r"--model_name=(\S+)", command).group(1)
    base_path = re.search(r"--model_base_path=(\S+)", command).group(1)
    return ServerProcess(["--model_name", name, "--model_base_path", base_path], log_path)


def check_report_snippets(report_path: pathlib.Path, work_dir: pathlib.Path) -> Dict[str, object]:
    """Serves the report's model, runs all its snippets, checks what every report must hold;
    returns run_serving_snippets' result for the task's own checks."""
    page = PageIndex(report_path.read_text(encoding="utf-8"))
    serving = page.sections["serving"]["text"]
    # Every request file a snippet refers to is written by a snippet on the page.
    assert "as above" not in serving
    assert "cat > request.json" in page.pres["rest-request"]
    assert "--protocol grpc" in page.pres["rest-request"]
    server = serve_as_the_report_says(page, work_dir / "server.log")
    try:
        result = run_serving_snippets(page, server, work_dir)
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    # curl, tfprod predict (REST), tfprod predict (gRPC): three answers to request.json.
    assert len(result["rest"]) == 3, result["rest"]
    assert "predictions" in result["rest"][0] and "outputs" in result["rest"][2]
    assert result["rest"][0] == result["rest"][1]
    assert result["grpc"], "the gRPC snippet printed no output"
    return result
