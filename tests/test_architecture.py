"""The package diagram of docs/architecture.md, checked against the code's imports.

Every import statement of every module is read with `ast` (function-local imports
included, since they load the package all the same), so nothing is imported here.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
from typing import Dict, Set

import pytest

from tests.conftest import REPO_ROOT

# tfprod.<name> -> its folder in the repository (setup.py's package_dir).
PACKAGE_FOLDERS = {
    "contract": REPO_ROOT / "tfprod" / "contract",
    "models": REPO_ROOT / "models",
    "serving": REPO_ROOT / "serving",
    "mobile": REPO_ROOT / "mobile",
    "pipeline": REPO_ROOT / "pipeline",
    "kubeflow": REPO_ROOT / "kubeflow",
}
# Modules of the root package itself, each a layer of its own at the bottom.
ROOT_MODULES = ("errors", "configlib", "console")

# Which packages each may import (docs/architecture.md). The CLI (tfprod.cli) sits above all
# of them and is not listed; nothing imports it.
BOTTOM = {"errors", "contract", "configlib", "console"}
ALLOWED = {
    "errors": set(),
    "contract": {"errors"},
    "configlib": {"errors"},
    "console": set(),
    "models": BOTTOM,
    "serving": BOTTOM,
    "mobile": BOTTOM,
    "pipeline": BOTTOM | {"models", "serving", "mobile"},
    "kubeflow": BOTTOM | {"models", "serving", "mobile", "pipeline"},
}


def _package_of_import(module: str) -> str:
    """The tfprod package an absolute module name belongs to, or '' when it is not ours."""
    parts = module.split(".")
    if parts[0] != "tfprod" or len(parts) == 1:
        return ""  # tfprod/__init__.py only sets the Keras switch; importing it is harmless
    return parts[1]  # a package, a root module, or e.g. "cli" (not allowed below the top)


def imported_modules(path: pathlib.Path) -> Set[str]:
    """Absolute names of the modules a file imports (`from X import y` counts X and X.y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_graph() -> Dict[str, Dict[str, Set[str]]]:
    """{package: {imported package: {files that import it}}}, between tfprod packages."""
    sources = {name: sorted(folder.rglob("*.py")) for name, folder in PACKAGE_FOLDERS.items()}
    for name in ROOT_MODULES:
        sources[name] = [REPO_ROOT / "tfprod" / f"{name}.py"]
    graph: Dict[str, Dict[str, Set[str]]] = {name: {} for name in sources}
    for package, files in sources.items():
        for path in files:
            for module in imported_modules(path):
                target = _package_of_import(module)
                if target and target != package:
                    graph[package].setdefault(target, set()).add(
                        str(path.relative_to(REPO_ROOT)))
    return graph


def find_cycle(graph: Dict[str, Dict[str, Set[str]]]):
    """One cycle as a list of packages [a, b, ..., a], or None."""
    state: Dict[str, str] = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_chain():
    assert find_cycle({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == [
        "a", "b", "c", "a"]
    assert find_cycle({"a": {"b": set()}, "b": {"c": set()}, "c": {}}) is None


def test_no_import_cycle_between_packages():
    graph = package_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})"
                 for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between tfprod packages:\n  " + "\n  ".join(edges))


def test_every_import_between_packages_follows_the_diagram():
    wrong = [f"tfprod.{package} imports tfprod.{target} in "
             f"{', '.join(sorted(files))}"
             for package, targets in package_graph().items()
             for target, files in targets.items() if target not in ALLOWED[package]]
    assert not wrong, ("imports that docs/architecture.md does not allow:\n  "
                       + "\n  ".join(wrong))


@pytest.mark.parametrize("folder", [REPO_ROOT / "tfprod" / "contract"],
                         ids=["contract"])
def test_the_contract_layer_imports_no_tensorflow(folder):
    heavy = ("tensorflow", "tfx", "tensorflow_transform", "tensorflow_serving", "apache_beam",
             "keras", "tf_keras")
    found = [f"{path.relative_to(REPO_ROOT)}: {module}" for path in sorted(folder.rglob("*.py"))
             for module in imported_modules(path) if module.split(".")[0] in heavy]
    assert not found, found


def test_one_import_root_from_any_directory(tmp_path):
    """Installed, our folders are found only under tfprod: `import models` finds nothing of ours.

    Run from a directory outside the checkout, as a user's script would be (inside the
    checkout the current directory is on sys.path, and Python finds any folder there).
    """
    code = ("import importlib.util, json, tfprod.pipeline, tfprod.kubeflow, tfprod.contract;"
            "print(json.dumps({name: getattr(importlib.util.find_spec(name), 'origin', None)"
            " for name in ('pipeline', 'models', 'serving', 'mobile', 'kubeflow')}));"
            "print(tfprod.pipeline.__file__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    found, pipeline_file = result.stdout.strip().splitlines()
    ours = {name: origin for name, origin in json.loads(found).items()
            if origin and origin.startswith(str(REPO_ROOT))}
    assert not ours, f"generic top-level names resolve to this checkout: {ours}"
    assert pipeline_file == str(REPO_ROOT / "pipeline" / "__init__.py")
