"""ImageFolderExampleGen: folders of photos -> tf.Examples holding the encoded files, on Beam.

Layout (data.format: image_folder)::

    <data_dir>/train/<class name>/*.{jpg,jpeg,png}
    <data_dir>/test/<class name>/*.{jpg,jpeg,png}

Class names are the folder names, sorted (class id i = the i-th name); train and test must
hold the same classes. `eval` is held out of train by a stable hash of each file's bytes and
label (tfprod.pipeline.ingestion.is_eval); test is the test folders.

Each tf.Example carries the file's bytes unchanged (`image_bytes`, JPEG or PNG, any size,
grayscale, RGB or RGBA), its class id (`label`) and its class name (`class_name`): the
TFRecords stay near the size of the photos, and decoding and resizing happen in the Transform
graph (pipeline/tasks/image/preprocessing.py), which the served model runs too.

Every file is decoded once before examples are written (`scan`, also the task's preflight).
A file that does not decode, or has another extension, stops the run naming the file
(ImageFolderError, an InputDataError: exit 3), unless data.bad_images is skip: then it is
left out and listed in the examples artifact's skipped_inputs.json, which the run summary
reads. Hidden files (names starting with ".", e.g. .DS_Store) are not inputs and are ignored.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from tfprod import errors
from tfprod.contract import features, layout
from tfprod.pipeline import ingestion
from tfprod.pipeline.ingestion import EVAL_SPLIT, TEST_SPLIT, TRAIN_SPLIT

TRAIN_DIR = "train"
TEST_DIR = "test"
# Split patterns, relative to input_base: every file of every class folder, so the driver's
# fingerprint (and so the cache) covers them all.
TRAIN_PATTERN = f"{TRAIN_DIR}/*/*"
TEST_PATTERN = f"{TEST_DIR}/*/*"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# How many bad files an error message names before "and N more".
MAX_NAMED = 10
# The executor-property / custom_config settings.
CHANNELS_SETTING = "image_channels"
SKIP_BAD_SETTING = "skip_bad_images"
EVAL_FRACTION_SETTING = "eval_fraction"
# The examples artifact's output key (tfx standard_component_specs.EXAMPLES_KEY).
_EXAMPLES_KEY = "examples"


class ImageFolderError(errors.InputDataError):
    """The photo folders are not laid out as data.format image_folder needs, or a file does
    not decode."""


@dataclasses.dataclass(frozen=True)
class BadFile:
    """An input file left out of (or stopping) the run, and why."""

    path: str
    reason: str

    def to_json(self) -> Dict[str, str]:
        return {"file": self.path, "reason": self.reason}


@dataclasses.dataclass
class FolderListing:
    """What scan() found: the classes, the good files of each split, and the bad files."""

    class_names: List[str]
    # Per split directory (train, test): (path, class id) of every file that decodes.
    files: Dict[str, List[Tuple[str, int]]]
    bad: List[BadFile]

    def counts(self) -> Dict[str, Dict[str, int]]:
        """{split dir: {class name: number of good files}}."""
        return {split: {name: sum(1 for _, label in items if label == index)
                        for index, name in enumerate(self.class_names)}
                for split, items in self.files.items()}


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_folders(split_dir: str) -> Tuple[List[str], List[str]]:
    """(sorted class folder names, stray files directly in split_dir)."""
    if not tf.io.gfile.isdir(split_dir):
        raise ImageFolderError(
            f"{split_dir}: no such directory. data.format image_folder reads "
            f"<data_dir>/{TRAIN_DIR}/<class>/*.jpg and <data_dir>/{TEST_DIR}/<class>/*.jpg; "
            "point --data-dir (data.data_dir) at the folder that holds train/ and test/")
    classes, stray = [], []
    for entry in tf.io.gfile.listdir(split_dir):
        name = entry.rstrip("/")
        if _is_hidden(name):
            continue
        path = os.path.join(split_dir, name)
        (classes if tf.io.gfile.isdir(path) else stray).append(name)
    return sorted(classes), sorted(stray)


def decode_error(contents: bytes, channels: int) -> Optional[str]:
    """Why the bytes do not decode as an image (as the Transform graph decodes them), or None."""
    if not contents:
        return "empty file"
    try:
        image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        return f"does not decode as JPEG or PNG ({error.message.splitlines()[0][:200]})"
    if image.shape[0] == 0 or image.shape[1] == 0:
        return "decodes to an empty image"
    return None


def scan(data_dir: str, channels: int = 3, decode: bool = True) -> FolderListing:
    """Lists the class folders of train/ and test/ and checks that every file decodes.

    Args:
      data_dir: the folder holding train/ and test/.
      channels: the channels the files are decoded to (1 or 3), as the model sees them.
      decode: decode every file (the ExampleGen and the preflight do; off for listing only).

    Returns:
      The listing; files that are not JPEG/PNG or do not decode are in `bad`.

    Raises:
      ImageFolderError: train/ or test/ is missing, has no class folders or files directly
        in it, a class folder is empty (of good and bad files alike), or train and test
        have different classes.
    """
    class_lists = {}
    for split in (TRAIN_DIR, TEST_DIR):
        split_dir = os.path.join(data_dir, split)
        classes, stray = _class_folders(split_dir)
        if stray:
            raise ImageFolderError(
                f"{split_dir}: files outside a class folder ({', '.join(stray[:MAX_NAMED])}); "
                f"each photo goes in {split}/<class name>/, move or delete them")
        if len(classes) < 2:
            raise ImageFolderError(
                f"{split_dir}: {len(classes)} class folder(s) {classes}; an image classifier "
                f"needs at least 2 ({split}/<class name>/*.jpg)")
        class_lists[split] = classes
    if class_lists[TRAIN_DIR] != class_lists[TEST_DIR]:
        only_train = sorted(set(class_lists[TRAIN_DIR]) - set(class_lists[TEST_DIR]))
        only_test = sorted(set(class_lists[TEST_DIR]) - set(class_lists[TRAIN_DIR]))
        raise ImageFolderError(
            f"{data_dir}: train/ and test/ must hold the same class folders (names are "
            f"case-sensitive); only in train: {only_train}, only in test: {only_test}")
    class_names = class_lists[TRAIN_DIR]
    files: Dict[str, List[Tuple[str, int]]] = {}
    bad: List[BadFile] = []
    for split in (TRAIN_DIR, TEST_DIR):
        files[split] = []
        for label, name in enumerate(class_names):
            class_dir = os.path.join(data_dir, split, name)
            entries = sorted(entry for entry in tf.io.gfile.listdir(class_dir)
                             if not _is_hidden(entry.rstrip("/")))
            if not entries:
                raise ImageFolderError(f"{class_dir}: empty class folder; add its photos or "
                                       f"remove the class from both train/ and test/")
            for entry in entries:
                path = os.path.join(class_dir, entry.rstrip("/"))
                if not entry.lower().endswith(IMAGE_EXTENSIONS):
                    bad.append(BadFile(path, "not a .jpg, .jpeg or .png file"))
                    continue
                if decode:
                    with tf.io.gfile.GFile(path, "rb") as handle:
                        reason = decode_error(handle.read(), channels)
                    if reason:
                        bad.append(BadFile(path, reason))
                        continue
                files[split].append((path, label))
    return FolderListing(class_names, files, bad)


def check_bad_files(listing: FolderListing, skip: bool) -> None:
    """Raises on bad files unless skip; classes left with no good file raise either way.

    Raises:
      ImageFolderError: naming the bad files and the --set that skips them.
    """
    if listing.bad and not skip:
        named = "; ".join(f"{bad.path}: {bad.reason}" for bad in listing.bad[:MAX_NAMED])
        more = len(listing.bad) - MAX_NAMED
        raise ImageFolderError(
            f"{len(listing.bad)} input file(s) are not usable photos: {named}"
            + (f"; and {more} more" if more > 0 else "")
            + ". Fix or remove them, or run with --set data.bad_images=skip to leave them out "
            "(run_summary.json then lists them)")
    for split, counts in listing.counts().items():
        empty = [name for name, count in counts.items() if count == 0]
        if empty:
            raise ImageFolderError(
                f"{split}/: no usable photo left in class folder(s) {empty} after leaving out "
                "the files that do not decode")


def _example(path: str, label: int, class_name: str) -> Tuple[bytes, bytes]:
    """(content key, serialized tf.Example) of one photo file."""
    with tf.io.gfile.GFile(path, "rb") as handle:
        contents = handle.read()
    example = tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_BYTES_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[contents])),
        features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        features.CLASS_NAME_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[class_name.encode("utf-8")])),
    }))
    # The split key: the photo's bytes and its class, not its path (a renamed or moved file
    # stays in its split).
    return contents + label.to_bytes(4, "big"), example.SerializeToString()


def make_custom_config(eval_fraction: float, channels: int, skip_bad: bool
                       ) -> example_gen_pb2.CustomConfig:
    """Packs the executor's settings into ExampleGen's standard custom_config field."""
    return ingestion.pack_custom_config({EVAL_FRACTION_SETTING: eval_fraction,
                                         CHANNELS_SETTING: channels, SKIP_BAD_SETTING: skip_bad})


def write_skipped(examples_uri: str, bad: Sequence[BadFile]) -> str:
    """Writes skipped_inputs.json into the examples artifact; returns its path."""
    path = os.path.join(examples_uri, layout.SKIPPED_INPUTS_FILE)
    tf.io.gfile.makedirs(examples_uri)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps({"count": len(bad), "files": [b.to_json() for b in bad]},
                                indent=1))
    return path


class ImageFolderExampleGenExecutor(base_example_gen_executor.BaseExampleGenExecutor):
    """Lists and checks the photo folders, then writes their tf.Examples on Beam."""

    _listing: Optional[FolderListing] = None

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        raise NotImplementedError("ImageFolderExampleGen writes its splits in "
                                  "GenerateExamplesByBeam")

    def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],
           exec_properties: Dict[str, Any]) -> None:
        # The folders are listed and every file decoded here, once, before Beam starts: the
        # bad ones stop the run or are recorded beside the examples (the run summary reads
        # them from there).
        settings = ingestion.read_custom_config(exec_properties, "ImageFolderExampleGen")
        listing = scan(exec_properties[ingestion.INPUT_BASE_KEY],
                       int(settings.get(CHANNELS_SETTING, 3)))
        check_bad_files(listing, bool(settings.get(SKIP_BAD_SETTING, False)))
        write_skipped(output_dict[_EXAMPLES_KEY][0].uri, listing.bad)
        self._listing = listing
        super().Do(input_dict, output_dict, exec_properties)

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: Dict[str, Any]) -> Dict[str, beam.PCollection]:
        ingestion.split_patterns(exec_properties, "ImageFolderExampleGen")
        settings = ingestion.read_custom_config(exec_properties, "ImageFolderExampleGen")
        eval_fraction = float(settings.get(EVAL_FRACTION_SETTING, 0.1))
        listing = self._listing
        if listing is None:  # GenerateExamplesByBeam called without Do (e.g. a test).
            listing = scan(exec_properties[ingestion.INPUT_BASE_KEY],
                           int(settings.get(CHANNELS_SETTING, 3)))
        names = listing.class_names
        train_and_eval = (
            pipeline
            | "ReadTrainFiles" >> _ReadPhotos(listing.files[TRAIN_DIR], names)
            | "SplitTrainEval" >> beam.Partition(
                lambda keyed, _: int(ingestion.is_eval(keyed[0], eval_fraction)), 2))
        test = (pipeline
                | "ReadTestFiles" >> _ReadPhotos(listing.files[TEST_DIR], names)
                | "TestExamples" >> beam.Values())
        return {TRAIN_SPLIT: train_and_eval[0] | "TrainExamples" >> beam.Values(),
                EVAL_SPLIT: train_and_eval[1] | "EvalExamples" >> beam.Values(),
                TEST_SPLIT: test}


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _ReadPhotos(pipeline: beam.Pipeline, files: List[Tuple[str, int]],
                class_names: List[str]) -> beam.PCollection:
    """(path, class id) pairs -> (content key, serialized tf.Example)."""
    return (pipeline
            | "Files" >> beam.Create(files)
            # Spread the reads over workers.
            | "Reshuffle" >> beam.Reshuffle()
            | "ToExample" >> beam.MapTuple(
                lambda path, label: _example(path, label, class_names[label])))


class ImageFolderExampleGen(FileBasedExampleGen):
    """ExampleGen for photo folders: train/eval from train/<class>/, test from test/<class>/."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(ImageFolderExampleGenExecutor)

    def __init__(self, input_base: str, eval_fraction: float = 0.1, channels: int = 3,
                 skip_bad: bool = False):
        super().__init__(input_base=input_base,
                         input_config=ingestion.input_config(TRAIN_PATTERN, TEST_PATTERN),
                         custom_config=make_custom_config(eval_fraction, channels, skip_bad))

