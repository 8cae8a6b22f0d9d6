"""The project as a wheel: what kubeflow/Dockerfile and serving/deploy/Dockerfile install.

The wheel is built from the tracked files (copied to a temp dir, so nothing of the
checkout's build/ or egg-info leaks in) with `pip wheel --no-deps --no-build-isolation`
(offline: setuptools comes from .venv). It is unpacked into a temp dir and, in a
subprocess started elsewhere with only that dir on PYTHONPATH, `tfprod.kubeflow.image_check`
imports every module the compiled MNIST pipeline names (executors, run_fn,
preprocessing_fn, artifact types, the entry points) and the TFJob's train worker, and
fails unless every tfprod module came from the unpacked wheel (not the checkout, not the
editable install in .venv). The Dockerfiles run the same check; no Docker engine here, so
the images themselves are not built.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from tfprod.kubeflow import compiler, image_check, manifests
from tfprod.pipeline import config as config_lib
from tests.conftest import MNIST_CONFIG, REPO_ROOT

pytestmark = pytest.mark.e2e  # builds a wheel and imports TFX in a subprocess (~1 min)

PACKAGE_FOLDERS = {"tfprod": "tfprod", "tfprod/pipeline": "pipeline", "tfprod/models": "models",
                   "tfprod/serving": "serving", "tfprod/mobile": "mobile",
                   "tfprod/kubeflow": "kubeflow"}
TFJOB_MANIFEST = REPO_ROOT / "kubeflow" / "manifests" / "base" / "tfjob.yaml"


def tracked_files():
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                             check=True).stdout.decode()
    return [name for name in listing.split("\0") if name and (REPO_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
                   check=True, timeout=300)
    (path,) = out.glob("tfprod-*.whl")
    return path


def worker_modules():
    """The modules the TFJob manifest runs with `python -m` (the train worker)."""
    modules = []
    # The manifest is a Jinja2 template: read it as rendered from the default config.
    for document in manifests._load_yaml_documents(TFJOB_MANIFEST):
        for spec in (document or {}).get("spec", {}).get("tfReplicaSpecs", {}).values():
            for container in spec["template"]["spec"]["containers"]:
                command = container.get("command", []) + container.get("args", [])
                if "-m" in command:
                    modules.append(command[command.index("-m") + 1])
    return modules


def test_the_wheel_carries_every_module_and_the_data_the_code_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for installed, folder in PACKAGE_FOLDERS.items():
        for path in (REPO_ROOT / folder).rglob("*.py"):
            relative = path.relative_to(REPO_ROOT / folder).as_posix()
            if folder == "tfprod" and relative.split("/")[0] not in ("contract",) and "/" in relative:
                continue  # tfprod/ holds the root modules and contract/ only
            assert f"{installed}/{relative}" in names, relative
    for folder in ("schemas", "manifests"):
        for path in (REPO_ROOT / "kubeflow" / folder).rglob("*"):
            if path.is_file() and path.suffix in (".json", ".yaml"):
                relative = path.relative_to(REPO_ROOT / "kubeflow").as_posix()
                assert f"tfprod/kubeflow/{relative}" in names, relative


def dockerfile_smoke_check(dockerfile):
    """The arguments of the Dockerfile's `python -m tfprod.kubeflow.image_check` RUN line."""
    text = dockerfile.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines()
               if line.startswith("RUN ") and "tfprod.kubeflow.image_check" in line]
    arguments = shlex.split(line[len("RUN "):].split("--expect-under")[0])
    assert arguments[:3] == ["python", "-m", "tfprod.kubeflow.image_check"], line
    return arguments[3:]


def test_the_wheel_alone_imports_everything_the_compiled_pipeline_names(wheel, tmp_path):
    """The Dockerfile's smoke check, run as in the image: the wheel on the path, the
    working directory a copy of the image's /tfprod (configs/ only)."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    compiled = compiler.compile_pipeline(config_lib.load_config(str(MNIST_CONFIG), []))
    names = image_check.named_imports(compiled.pipeline_spec)
    # What the names cover (read from the spec, not listed by hand).
    assert "tfprod.pipeline.trainer.run_fn" in names
    assert "tfprod.pipeline.tasks.image.preprocessing.preprocessing_fn" in names
    assert "tfprod.pipeline.tflite_converter.TFLiteConverter_Executor" in names
    assert "tfprod.TFLiteModels" in names
    assert "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver" in names
    workers = worker_modules()
    assert workers == ["tfprod.kubeflow.train_worker"]
    arguments = dockerfile_smoke_check(REPO_ROOT / "kubeflow" / "Dockerfile")
    assert [arguments[i + 1] for i, arg in enumerate(arguments) if arg == "--module"] == workers

    image_workdir = tmp_path / "tfprod"
    shutil.copytree(REPO_ROOT / "configs", image_workdir / "configs")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "tfprod.kubeflow.image_check", *arguments,
               "--expect-under", str(site)]
    result = subprocess.run(command, cwd=image_workdir, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from {site}/tfprod" in result.stdout
    for name in names + workers:
        assert f"imported {name}" in result.stdout


def test_the_serving_image_smoke_check_passes_from_the_wheel(wheel, tmp_path):
    """serving/deploy/Dockerfile's check (`python -c "import ..."` and `tfprod serve --help`)
    against the unpacked wheel; compose builds that Dockerfile for its tfprod service."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    dockerfile = (REPO_ROOT / "serving" / "deploy" / "Dockerfile").read_text()
    (imports,) = re.findall(r'python -c "(import [^"]+)"', dockerfile)
    assert "tfprod serve --help" in dockerfile
    compose = yaml.safe_load((REPO_ROOT / "serving" / "deploy" / "docker-compose.yml").read_text())
    build = compose["services"]["tfprod"]["build"]
    assert (REPO_ROOT / "serving" / "deploy" / build["context"] / build["dockerfile"]).resolve() \
        == (REPO_ROOT / "serving" / "deploy" / "Dockerfile")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    code = (f"{imports}; import tfprod, sys; from tfprod import cli; "
            f"assert tfprod.__file__.startswith({str(site)!r}), tfprod.__file__; "
            "sys.argv = ['tfprod', 'serve', '--help']; cli.main(['serve', '--help'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--rest_api_port" in result.stdout
