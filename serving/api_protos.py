"""TF Serving's gRPC messages and stubs for clients, loadable without importing TensorFlow.

tensorflow-serving-api's generated modules (tensorflow_serving.apis.*_pb2) import the
TensorFlow protos they use from `tensorflow.core.framework`, `tensorflow.core.example`,
`tensorflow.core.protobuf` and `tensorflow.tsl.protobuf`. Those are plain generated
_pb2 files in empty packages, but importing any of them first runs
`tensorflow/__init__.py`, which loads all of TensorFlow (8-80 s on a busy machine; the
files themselves load in well under a second).

load_without_tensorflow() imports them with a stand-in for the top `tensorflow` package
only (a bare module whose __path__ is TensorFlow's folder, so the real sub-packages and
_pb2 files load from there), then takes the stand-in out of sys.modules again: afterwards
`"tensorflow" not in sys.modules`, and the _pb2 modules are the real ones. A later
`import tensorflow` runs TensorFlow's __init__ as usual and reuses those _pb2 modules (the
same files, so the same descriptors). It is for short-lived client processes (`tfprod
predict`), which never import TensorFlow; a process that will use TensorFlow should
import it first, and then this module simply imports the protos the usual way.
"""

import importlib
import importlib.util
import sys
import threading
import types
from typing import Dict

# The generated modules a client needs; their own imports pull in the rest.
MODULES = {
    "predict_pb2": "tensorflow_serving.apis.predict_pb2",
    "classification_pb2": "tensorflow_serving.apis.classification_pb2",
    "regression_pb2": "tensorflow_serving.apis.regression_pb2",
    "get_model_metadata_pb2": "tensorflow_serving.apis.get_model_metadata_pb2",
    "get_model_status_pb2": "tensorflow_serving.apis.get_model_status_pb2",
    "prediction_service_pb2_grpc": "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "model_service_pb2_grpc": "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensor_pb2": "tensorflow.core.framework.tensor_pb2",
    "types_pb2": "tensorflow.core.framework.types_pb2",
    "meta_graph_pb2": "tensorflow.core.protobuf.meta_graph_pb2",
}

_lock = threading.Lock()


def modules() -> types.SimpleNamespace:
    """The client's protos and stubs (MODULES' keys as attributes), imported as usual: after
    load_without_tensorflow() they are the modules it loaded, else this imports TensorFlow."""
    return types.SimpleNamespace(**{name: importlib.import_module(path)
                                    for name, path in MODULES.items()})


def load_without_tensorflow() -> types.SimpleNamespace:
    """modules(), without running tensorflow/__init__.py when TensorFlow is not imported yet.

    Returns the same namespace as modules(); `"tensorflow" not in sys.modules` after it
    (unless TensorFlow was imported before, which it leaves as it is).
    """
    with _lock:
        if "tensorflow" in sys.modules or all(path in sys.modules for path in MODULES.values()):
            return modules()
        spec = importlib.util.find_spec("tensorflow")  # finds the folder; runs nothing
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("tensorflow's generated protos are not installed (the "
                              "tensorflow-serving-api package needs them)")
        stand_in = types.ModuleType("tensorflow", "stand-in: only the _pb2 files load")
        stand_in.__path__ = list(spec.submodule_search_locations)
        stand_in.__spec__ = spec
        sys.modules["tensorflow"] = stand_in
        try:
            loaded: Dict[str, types.ModuleType] = {
                name: importlib.import_module(path) for name, path in MODULES.items()}
        finally:
            if sys.modules.get("tensorflow") is stand_in:
                del sys.modules["tensorflow"]
        return types.SimpleNamespace(**loaded)
