"""`tfprod tfds-build`: prepare the project's own TFDS dataset (offline) into a data dir.

Argument parsing only; the work is pipeline.ingestion.tfds.mnist_sample.build.
"""

import argparse

# The builder's constants, repeated here so that building the parser imports no TensorFlow.
_CONFIG_NAMES = ("full", "small")


def register(subparsers) -> None:
    """Adds the `tfds-build` subcommand to the `tfprod` parser."""
    parser = subparsers.add_parser(
        "tfds-build", help="build the MNIST sample as a TFDS dataset (offline) into a data dir",
        description=("Prepare tfprod_mnist_sample (the IDX sample in data/mnist_sample, as a "
                     "TFDS dataset) into a TFDS data dir; then run the pipeline on it with "
                     "--set data.source=tfds."))
    parser.add_argument("--data-dir", required=True, help="the TFDS data dir to write to")
    parser.add_argument("--config", dest="configs", action="append", choices=_CONFIG_NAMES,
                        help="builder config: full (10,000/2,000 images) or small (2,000/500); "
                             "repeatable; default: full")
    parser.add_argument("--source-dir",
                        help="directory with the four IDX files (default: data/mnist_sample)")
    parser.set_defaults(handler=_tfds_build_command)


def _tfds_build_command(args: argparse.Namespace) -> int:
    from tfprod.pipeline.ingestion.tfds import mnist_sample

    # Missing source files: SourceFilesError, a ConfigError (tfprod/cli.py exits with 2).
    names = mnist_sample.build(args.data_dir, configs=args.configs or ["full"],
                               source_dir=args.source_dir)
    for name in names:
        print(f"prepared {name} in {args.data_dir}\n  use it with: tfprod run --config "
              f"configs/mnist_cnn.yaml --set data.source=tfds --set data.tfds_name={name} "
              f"--set data.tfds_data_dir={args.data_dir}")
    return 0
