"""The console: known-harmless lines filtered (never from run.log), progress lines."""

import io
import logging
import os

import pytest

from tfprod import console

# One real line of each harmless kind, as this stack prints it.
HARMLESS_LINES = [
    "2026-12-01 03:07:35.712056: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:479] "
    "Unable to register cuFFT factory: Attempting to register factory for plugin cuFFT when one "
    "has already been registered",
    "2026-12-01 03:07:35.734887: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:10575] "
    "Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one "
    "has already been registered",
    "2026-12-01 03:07:35.734939: E external/local_xla/xla/stream_executor/cuda/cuda_blas.cc:1442] "
    "Unable to register cuBLAS factory: Attempting to register factory for plugin cuBLAS when one "
    "has already been registered",
    "2026-12-01 03:07:35.699687: I external/local_tsl/tsl/cuda/cudart_stub.cc:32] Could not find "
    "cuda drivers on your machine, GPU will not be used.",
    "WARNING:absl:ArtifactQuery.property_predicate is not supported.",
    "WARNING:absl:Could not find matching artifact class for type 'ExampleStatistics' (proto: "
    "'name: \"ExampleStatistics\"\\nbase_type: STATISTICS\\n'); generating an ephemeral "
    "artifact class on-the-fly.",
    "WARNING:absl:SavedModel saved prior to TF 2.5 detected when loading Keras model. Please "
    "ensure that you are saving the model with model.save() or tf.keras.models.save_model(), "
    "*NOT* tf.saved_model.save().",
    "WARNING:tensorflow:From /x/tfx/components/util/examples_utils.py:1: tf_record_iterator "
    "(from tensorflow.python.lib.io.tf_record) is deprecated and will be removed in a future "
    "version.",
    "/x/google/api_core/_python_version_support.py:246: FutureWarning: You are using a "
    "non-supported Python version (3.10.13). Google will not post any further updates to "
    "google.api_core supporting this Python version.",
]


@pytest.mark.parametrize("line", HARMLESS_LINES)
def test_each_known_harmless_line_is_recognised(line):
    assert console.is_harmless(line)


def test_every_entry_says_why():
    assert all(len(entry.why) > 30 for entry in console.HARMLESS)


def test_other_lines_and_continuations_are_kept_or_dropped_with_their_line():
    lines = [HARMLESS_LINES[-1], "  warnings.warn(message, FutureWarning)",
             "WARNING:absl:a real warning", "  its indented detail"]
    assert console.filter_lines(lines) == lines[2:]
    assert not console.is_harmless("error: data.data_dir: directory not found")


def test_the_logging_filter_drops_harmless_records_only():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(console.HarmlessFilter())
    logger = logging.getLogger("tfprod.test_console")
    logger.addHandler(handler)
    try:
        logger.warning("ArtifactQuery.property_predicate is not supported.")
        logger.warning("Model %s is large", "m")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "Model m is large\n"


def test_quiet_import_holds_back_file_descriptor_2_and_keeps_every_line(capfd):
    console.IMPORT_LINES.clear()
    with console.quiet_import(verbose=False):
        # TensorFlow's C++ and Python's warnings both end on file descriptor 2 (pytest's
        # capture replaces sys.stderr, so the descriptor is written to directly here).
        os.write(2, (HARMLESS_LINES[0] + "\nsomething that matters\n").encode())
        os.write(2, (HARMLESS_LINES[-1] + "\n  warnings.warn(message, FutureWarning)\n").encode())
    err = capfd.readouterr().err
    assert err == "something that matters\n"
    assert console.IMPORT_LINES == [HARMLESS_LINES[0], "something that matters",
                                    HARMLESS_LINES[-1], "  warnings.warn(message, FutureWarning)"]
    console.IMPORT_LINES.clear()
    with console.quiet_import(verbose=True):
        os.write(2, (HARMLESS_LINES[0] + "\n").encode())
    assert HARMLESS_LINES[0] in capfd.readouterr().err
    assert console.IMPORT_LINES == []


def test_a_skipped_component_says_why_instead_of_its_time():
    from tfprod.pipeline import local_runner

    lines = []
    tracker = local_runner.ComponentProgress(["Evaluator", "Pusher", "TFLiteConverter"],
                                             lines.append)

    def log(message, *args):
        tracker.handle(logging.LogRecord("absl", logging.INFO, __file__, 1, message, args, None))

    for node, said in [("Evaluator", "Evaluation complete."),
                       ("Pusher", "Model on %s was not blessed by model validation"),
                       ("TFLiteConverter", "TFLiteConverter: the model was not blessed; nothing "
                                           "converted")]:
        log("Component %s is running.", node)
        log(said, "/some/uri") if "%s" in said else log(said)
        log("Component %s is finished.", node)
    assert lines[1].startswith("[1/3] Evaluator done in ")
    assert lines[3] == "[2/3] Pusher skipped (not blessed)"
    assert lines[5] == "[3/3] TFLiteConverter skipped (not blessed)"


def test_epoch_progress_off_a_terminal_prints_plain_lines_with_rate_and_eta():
    import numpy as np
    import tensorflow as tf

    from tfprod.pipeline import keras_progress

    stream = io.StringIO()
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    progress = keras_progress.EpochProgress(2, 4, stream=stream, interval_seconds=0.0)
    assert not progress.interactive  # a StringIO is no terminal
    model.fit(np.zeros((8, 2)), np.zeros((8, 1)), batch_size=2, epochs=2, verbose=0,
              callbacks=[progress])
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert any(line.startswith("  epoch 1/2: step 1/4 (25%), ") and "steps/s, ETA " in line
               for line in lines), text
    assert [line.split(" done in")[0] for line in lines if " done in " in line] == [
        "  epoch 1/2", "  epoch 2/2"]
    assert "loss 0.0000" in lines[-1]


def test_epoch_progress_in_a_terminal_draws_a_tqdm_bar():
    import numpy as np
    import tensorflow as tf

    from tfprod.pipeline import keras_progress

    stream = io.StringIO()
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((8, 2)), np.zeros((8, 1)), batch_size=2, epochs=1, verbose=0,
              callbacks=[keras_progress.EpochProgress(1, 4, stream=stream, interactive=True)])
    assert "0/4 [" in stream.getvalue() and "step/s" in stream.getvalue()  # tqdm throttles
    assert stream.getvalue().rstrip().splitlines()[-1].startswith("  epoch 1/1 done in ")


def test_filtered_stderr_keeps_cxx_harmless_lines_for_run_log_and_shows_the_rest(capfd):
    kept = []
    with console.filtered_stderr(kept.append):
        os.write(2, b"W0000 00:00:1796095903.990956   27353 tf_tfl_flatbuffer_helpers.cc:390] "
                    b"Ignored output_format.\nINFO: Created TensorFlow Lite XNNPACK delegate "
                    b"for CPU.\nE0000 a real C++ error\n")
    assert capfd.readouterr().err == "E0000 a real C++ error\n"
    assert len(kept) == 2 and kept[1] == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_a_long_component_gets_elapsed_time_lines_but_the_trainer_does_not():
    import time

    from tfprod.pipeline import local_runner

    lines = []
    tracker = local_runner.ComponentProgress(["Transform", "Trainer"], lines.append)
    for node in ("Transform", "Trainer"):
        tracker.handle(logging.LogRecord("absl", logging.INFO, __file__, 1,
                                         "Component %s is running.", (node,), None))
        with local_runner.Heartbeat(tracker, lines.append, interval=0.05,
                                    quiet_ids=["Trainer"]):
            time.sleep(0.3)
    assert any(line.startswith("  Transform: still running (0m00s)") for line in lines)
    assert not any("Trainer: still running" in line for line in lines)
