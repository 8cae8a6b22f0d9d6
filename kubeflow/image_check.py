"""Imports every module a compiled pipeline names, and shows where each tfprod module came from.

The pipeline image must be able to import everything the KFP v2 launcher and the TFX
executor entry point will import in its pods. This reads those names from a compiled
package (or compiles a config first), not from a hand-written list:

- each executor's ``python -m MODULE`` (and its lifecycle hooks': the ExampleGen driver);
- each ``--executor_class_path`` (standard and custom components' executors);
- each task parameter ending in ``_fn`` whose value is a dotted path (``run_fn``,
  ``preprocessing_fn``, ``tuner_fn``, ...);
- each artifact type's schema title, as the entry point resolves it to a class (custom
  types are imported by their title, e.g. ``tfprod.TFLiteModels``);

plus any ``--module`` given (the TFJob's ``tfprod.kubeflow.train_worker``). With
``--expect-under DIR`` every tfprod module must have been loaded from below DIR (the
installed wheel, not a checkout). kubeflow/Dockerfile runs this as its smoke check, and
tests/test_kubeflow_wheel.py runs it from the wheel unpacked into a temp dir.

    python -m tfprod.kubeflow.image_check --package pipeline.yaml [--module M] [--expect-under DIR]
    python -m tfprod.kubeflow.image_check --config configs/mnist_cnn.yaml [--set K=V] [--module M]
"""

import argparse
import importlib
import os
import sys
from typing import Any, Dict, Iterator, List, Optional

import yaml

FUNCTION_PARAMETER_SUFFIX = "_fn"


def _walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _walk_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_strings(item)


def _module_of_command(command: List[str]) -> Optional[str]:
    if "-m" in command[:-1]:
        return command[command.index("-m") + 1]
    return None


def _artifact_titles(spec: Dict[str, Any]) -> Iterator[str]:
    for component in spec.get("components", {}).values():
        for side in ("inputDefinitions", "outputDefinitions"):
            for artifact in component.get(side, {}).get("artifacts", {}).values():
                artifact_type = artifact.get("artifactType", {})
                if "schemaTitle" in artifact_type:
                    yield artifact_type["schemaTitle"]
                elif "instanceSchema" in artifact_type:
                    schema = yaml.safe_load(artifact_type["instanceSchema"]) or {}
                    yield schema.get("title", "tfx.Artifact")


def named_imports(spec: Dict[str, Any]) -> List[str]:
    """Every module, class or function path the package tells its pods to import, sorted."""
    from tfx.orchestration.kubeflow.v2 import compiler_utils

    names = set()
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        container = executor.get("container")
        if not container:
            continue
        hooks = [container] + list(container.get("lifecycle", {}).values())
        for hook in hooks:
            module = _module_of_command(hook.get("command", []))
            if module:
                names.add(module)
            args = hook.get("args", [])
            for index, arg in enumerate(args[:-1]):
                if arg == "--executor_class_path":
                    names.add(args[index + 1])
    for task in spec.get("root", {}).get("dag", {}).get("tasks", {}).values():
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            constant = source.get("runtimeValue", {}).get("constant")
            if (key.endswith(FUNCTION_PARAMETER_SUFFIX) and isinstance(constant, str)
                    and "." in constant and " " not in constant):
                names.add(constant)
    for title in _artifact_titles(spec):
        names.add(compiler_utils.TITLE_TO_CLASS_PATH.get(title, title))
    return sorted(names)


def import_name(name: str) -> Any:
    """Imports a module path, or a module's attribute (``module.Class``, ``module.fn``)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise  # the module exists but something it imports does not
        module, _, attribute = name.rpartition(".")
        return getattr(importlib.import_module(module), attribute)


def check(names: List[str], expect_under: Optional[str] = None) -> List[str]:
    """Imports each name; returns the problems (empty when all import from the right place)."""
    problems = []
    for name in names:
        try:
            import_name(name)
        except Exception as error:  # every failure is reported, then the check fails
            problems.append(f"{name}: {type(error).__name__}: {error}")
    if expect_under:
        root = os.path.realpath(expect_under) + os.sep
        for module_name, module in sorted(sys.modules.items()):
            if module_name != "tfprod" and not module_name.startswith("tfprod."):
                continue
            location = getattr(module, "__file__", None)
            if location is None or not os.path.realpath(location).startswith(root):
                problems.append(f"{module_name}: loaded from {location}, not under "
                                f"{expect_under}")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfprod.kubeflow.image_check",
                                     description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--package", help="a compiled package (tfprod kubeflow compile)")
    source.add_argument("--config", help="an experiment YAML, compiled first")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (with --config)")
    parser.add_argument("--module", dest="modules", action="append", default=[],
                        help="another module to import (repeatable)")
    parser.add_argument("--expect-under", help="every tfprod module must load from below here")
    args = parser.parse_args(argv)
    if args.package:
        with open(args.package, encoding="utf-8") as handle:
            spec = next(document for document in yaml.safe_load_all(handle) if document)
    else:
        from tfprod.kubeflow import compiler
        from tfprod.pipeline import config as config_lib

        spec = compiler.compile_pipeline(
            config_lib.load_config(args.config, args.overrides)).pipeline_spec
    names = named_imports(spec) + list(args.modules)
    problems = check(names, args.expect_under)
    import tfprod

    print(f"tfprod {tfprod.__version__} from {os.path.dirname(tfprod.__file__)}")
    for name in names:
        print(f"  imported {name}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
