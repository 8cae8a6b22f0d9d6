"""tfprod: raw data to production models with TFX, Keras, TF Serving, TFLite and Kubeflow."""

from setuptools import find_packages, setup

# The one list of dependencies. constraints.txt pins the whole resolved set.
INSTALL_REQUIRES = [
    "tfx[kfp]==1.16.0",
    "apache-beam[gcp]==2.59.0",
    "tensorflow==2.16.2",
    "tf-keras==2.16.0",
    "tensorflow-transform==1.16.0",
    "tensorflow-model-analysis==0.47.1",
    "tensorflow-data-validation==1.16.1",
    "tensorflow-serving-api==2.16.1",
    "ai-edge-litert==2.3.0",
    "tflite-runtime==2.14.0",
    "tensorflow-datasets",
    "flatbuffers",
    "matplotlib",
    "jsonschema",
    "kubernetes-validate==1.37.0",  # offline Kubernetes schemas for kubeflow/manifests
    "pyyaml",
    "tensorflow-model-optimization==0.8.1",  # QAT, pruning, clustering (mobile/)
    "google-crc32c",  # the request log's TFRecord framing (serving/request_log.py)
    "setuptools<80",  # tfx and beam still import pkg_resources
]

# tflite-support: only its pure-Python metadata schema reader, the independent extractor in
# tests/test_mobile.py (its native parts do not import here; see ../shared/docs/STACK.md).
# websocket-client: the report's browser test talks to headless Chromium's DevTools protocol.
TEST_REQUIRES = ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "tflite-support==0.4.4",
                 "websocket-client"]

# One import root: the repository's top-level folders are installed as subpackages of
# tfprod (pipeline/ is tfprod.pipeline, ...); tfprod/ holds the root, the contract layer,
# the errors and the CLI. Nothing of ours is installed under a generic top-level name.
SUBPACKAGE_FOLDERS = ["pipeline", "models", "serving", "mobile", "kubeflow"]
PACKAGE_DIR = {"tfprod": "tfprod", **{f"tfprod.{name}": name for name in SUBPACKAGE_FOLDERS}}
PACKAGES = [f"tfprod.{name}" for name in find_packages(include=["contract", "contract.*"],
                                                        where="tfprod")]
PACKAGES.append("tfprod")
for folder in SUBPACKAGE_FOLDERS:
    PACKAGES.append(f"tfprod.{folder}")
    PACKAGES.extend(f"tfprod.{folder}.{name}" for name in find_packages(where=folder))

# Files the installed code reads at run time (the wheel carries them; see
# tests/test_kubeflow_wheel.py): the offline validator's CRD schemas and the Kustomize tree
# (kubeflow/manifests.py's SCHEMAS_DIR and MANIFESTS_DIR). configs/ and data/ are not part of
# the package; kubeflow/Dockerfile copies configs/ to /tfprod/configs.
PACKAGE_DATA = {"tfprod.kubeflow": ["schemas/*.json", "manifests/**/*"]}

setup(
    name="tfprod",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10,<3.11",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data=PACKAGE_DATA,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["tfprod = tfprod.cli:main"]},
)
