"""`tfprod tflite`: convert a pushed SavedModel to TFLite, attach metadata, verify, report.

Errors leave as tfprod.errors kinds (tfprod/cli.py prints them and exits): a bad flag, model
directory or data directory is a ConfigError (2: mobile.data.DataError, mobile.export.
ExportError); a conversion, metadata or verification failure is a RunFailure (1).
"""

import argparse
import os

from tfprod import errors
from tfprod.mobile import int8_auto, options  # neither imports TensorFlow

# TensorFlow is imported only when the command runs, so `tfprod --help` stays fast.

DEFAULT_DATA_DIR = "data/mnist_sample"
DEFAULT_CALIBRATION_SAMPLES = 200


def register(subparsers) -> None:
    """Adds the `tflite` subcommand to tfprod's argument parser."""
    parser = subparsers.add_parser(
        "tflite", help="convert a pushed SavedModel to TFLite (with Android metadata) and "
                       "verify it on LiteRT and tflite-runtime",
        description="Convert a pushed model version to TFLite in one or more modes, attach the "
                    "Android metadata (labels, normalization), verify each model on LiteRT and "
                    "tflite-runtime against the SavedModel, and write report.json/report.md.")
    parser.add_argument("--model-dir", required=True,
                        help="a pushed SavedModel version, e.g. outputs/mnist_cnn/serving/"
                             "mnist_cnn/1700000000")
    parser.add_argument("--mode", dest="modes", action="append",
                        choices=[mode.value for mode in options.ConversionMode],
                        help="conversion mode (repeatable; default: all four)")
    parser.add_argument("--int8-io", nargs="?", const="int8", default=None,
                        choices=[options.IoType.INT8.value, options.IoType.UINT8.value],
                        help="int8 mode: quantized input and output tensors (int8, or uint8 "
                             "for raw pixels) instead of float32")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="IDX directory: train files for calibration, t10k files for "
                             f"verification (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--output-dir",
                        help="where the models and report go (default: <output-dir>/tflite/"
                             "<model_name>/<version> beside the serving/ directory)")
    parser.add_argument("--model-name", help="name in the metadata (default: from --model-dir)")
    parser.add_argument("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES,
                        help="int8 calibration images drawn from the training files (100-500)")
    parser.add_argument("--test-examples", type=int, default=None,
                        help="verify on the first N test images only (default: all)")
    parser.add_argument("--latency-examples", type=int, default=200,
                        help="single-example invokes timed per runtime and thread count")
    parser.add_argument("--input-channels", type=int, choices=(1, 3), default=None,
                        help="a grayscale model's TFLite input channels: 3 (default: RGB, "
                             "what the Task Library and MediaPipe take) or 1 ([1, H, W, 1], "
                             "for apps that call the interpreter themselves)")
    parser.add_argument("--runtime", dest="runtimes", action="append", choices=options.RUNTIMES,
                        help="runtime to verify on (repeatable; default: both)")
    parser.add_argument("--int8-strategy", choices=[s.value for s in int8_auto.Int8Strategy],
                        default=int8_auto.Int8Strategy.PTQ.value,
                        help="ptq: post-training int8; auto: then the layers with the largest "
                             "quantization error kept in float until the gates pass "
                             "(docs/mobile.md)")
    parser.add_argument("--max-int8-accuracy-drop", type=float,
                        default=int8_auto.DEFAULT_MAX_ACCURACY_DROP_POINTS,
                        help="int8 gate: most accuracy points lost against the SavedModel")
    parser.add_argument("--min-int8-agreement", type=float,
                        default=int8_auto.DEFAULT_MIN_TOP1_AGREEMENT,
                        help="int8 gate: least top-1 agreement with the SavedModel")
    parser.add_argument("--int8-gate", choices=[a.value for a in int8_auto.GateAction],
                        default=int8_auto.GateAction.WARN.value,
                        help="a failing int8 gate: warn (in the report) or fail (exit 1)")
    parser.set_defaults(handler=_tflite_command)


def default_names(model_dir: str):
    """(model_name, version, output_dir) for <root>/serving/<model_name>/<version>."""
    model_dir = os.path.abspath(model_dir)
    version = os.path.basename(model_dir)
    model_name = os.path.basename(os.path.dirname(model_dir))
    serving_dir = os.path.dirname(os.path.dirname(model_dir))
    output_dir = None
    if os.path.basename(serving_dir) == "serving":
        output_dir = os.path.join(os.path.dirname(serving_dir), "tflite", model_name, version)
    return model_name, version, output_dir


def _check_paths(args: argparse.Namespace) -> None:
    """The model and data directories exist, before TensorFlow is imported (exit 2 at once)."""
    if not os.path.isfile(os.path.join(args.model_dir, "saved_model.pb")):
        raise errors.ConfigError(
            f"no SavedModel at {args.model_dir} (expected saved_model.pb there; pass a pushed "
            "model version, <output-dir>/serving/<model_name>/<version>)")
    if not os.path.isdir(args.data_dir):
        raise errors.ConfigError(f"--data-dir {args.data_dir}: directory not found")


def _tflite_command(args: argparse.Namespace) -> int:
    model_name, version, output_dir = default_names(args.model_dir)
    model_name = args.model_name or model_name
    output_dir = args.output_dir or output_dir
    if output_dir is None:
        raise errors.ConfigError(
            f"{args.model_dir} is not in the <output-dir>/serving/<model_name>/<version> "
            "layout; pass --output-dir")
    modes = args.modes or [mode.value for mode in options.ConversionMode]
    if args.int8_io and "int8" not in modes:
        raise errors.ConfigError("--int8-io applies to --mode int8 only")
    _check_paths(args)
    from tfprod.mobile import convert, data, export, verify

    calibration = None
    if "int8" in modes:
        train_images, _ = data.read_idx_split(args.data_dir, "train")
        calibration = data.calibration_sample(train_images, args.calibration_samples)
    test_images, test_labels = data.read_idx_split(args.data_dir, "test")
    if args.test_examples:
        test_images, test_labels = (test_images[:args.test_examples],
                                    test_labels[:args.test_examples])
    export_options = export.ExportOptions(
        modes=modes, int8_io=args.int8_io or convert.IoType.FLOAT32.value,
        runtimes=args.runtimes or verify.RUNTIMES, latency_examples=args.latency_examples,
        input_channels=args.input_channels, int8_strategy=args.int8_strategy,
        int8_gates=int8_auto.Int8Gates(args.max_int8_accuracy_drop, args.min_int8_agreement),
        int8_gate=args.int8_gate)
    result = export.export_tflite(
        args.model_dir, output_dir, model_name, version, calibration, test_images,
        test_labels, export_options, progress=lambda line: print(line, flush=True))
    print(verify.format_markdown(result.report), flush=True)
    for mode, path in result.model_files.items():
        print(f"{mode}: {path}")
    print(f"report: {result.report_files['json']} and {result.report_files['markdown']}")
    print(f"android: {result.android_dir}")
    return 0
