"""The `keras-mpe` console command.

Subcommands:

- `keras-mpe inspect DIR [--json]`: per packed table of a SavedModel written by
  `keras_mpe.export_saved_model`, the bits histogram over groups and rows, payload and
  overhead bytes and the compression (see `keras_mpe.inspect`). A missing, incomplete
  or corrupted export prints one line, `keras-mpe inspect: error: ...`, naming the
  file, and exits with code 1.
- `keras-mpe demo [--smoke] [...]`: the end-to-end demo (see `keras_mpe.demo`).
- `keras-mpe convert MODEL DATA OUT [--target-compression R] [--epochs E] [...]`:
  `keras_mpe.convert` of a trained model saved with `model.save` (`.keras` only,
  loaded in safe mode: other formats can run code stored in them) on the
  arrays of an `.npz` file (`y`, the labels, and the inputs: one array, or one per
  named model input), exported with `keras_mpe.export_saved_model` to `OUT`
  (`--serving-table`: its `serving_table`); prints each table's compression. Bad
  input prints one line, `keras-mpe convert: error: ...`, and exits with code 1.
"""

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from typing import Any

from keras_mpe import checks, codec
from keras_mpe.inspection import inspect
from keras_mpe.serving_table import SERVING_TABLES


def format_inspection(reports: dict[str, dict[str, Any]]) -> str:
    """Renders `keras_mpe.inspect`'s result as text, one block per table.

    Example:

    >>> report = {"input_dim": 1000, "output_dim": 16, "bit_widths": [0, 2, 4],
    ...           "groups": 4, "bits_histogram": {0: 2, 2: 1, 4: 1},
    ...           "rows_histogram": {0: 500, 2: 250, 4: 250}, "permutation": False,
    ...           "average_bits": 1.5, "payload_bytes": 3000, "padding_bytes": 0,
    ...           "overhead_bytes": 128,
    ...           "total_bytes": 3128, "float32_bytes": 64000,
    ...           "compression_ratio": 20.46, "payload_compression_ratio": 21.33,
    ...           "serving_table": "int8", "serving_bytes": 20657}
    >>> print(format_inspection({"items": report}))
    table 'items': 1000 ids x 16 dims, 4 groups, candidate bits 0, 2, 4
      bits  groups    rows
         0       2     500
         2       1     250
         4       1     250
      average bits      1.500 per value
      payload            3000 bytes
      overhead            128 bytes (step sizes, offset, 3 uint32 per group)
      total              3128 bytes (float32 table: 64000 bytes)
      compression       20.46x with overhead, 21.33x payload only
      serving           20657 bytes in memory once loaded (serving_table 'int8')
    """
    blocks = []
    for name, report in reports.items():
        candidates = ", ".join(str(b) for b in report["bit_widths"])
        lines = [
            f"table '{name}': {report['input_dim']} ids x {report['output_dim']} dims, "
            f"{report['groups']} groups, candidate bits {candidates}",
            "  bits  groups    rows",
        ]
        for bits, groups in report["bits_histogram"].items():
            rows = report["rows_histogram"][bits]
            lines.append(f"  {bits:>4}  {groups:>6}  {rows:>6}")
        overhead = f"step sizes, offset, {len(codec.GROUP_FIELDS)} uint32 per group"
        if report["permutation"]:
            overhead += ", id permutation"
        lines += [
            f"  average bits {report['average_bits']:>10.3f} per value",
            f"  payload      {report['payload_bytes']:>10} bytes"
            + (
                f" ({report['padding_bytes']} of them pad rows to whole bytes)"
                if report["padding_bytes"]
                else ""
            ),
            f"  overhead     {report['overhead_bytes']:>10} bytes ({overhead})",
            f"  total        {report['total_bytes']:>10} bytes "
            f"(float32 table: {report['float32_bytes']} bytes)",
            f"  compression  {report['compression_ratio']:>10.2f}x with overhead, "
            f"{report['payload_compression_ratio']:.2f}x payload only",
            f"  serving      {report['serving_bytes']:>10} bytes in memory once loaded "
            f"(serving_table '{report['serving_table']}')",
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _inspect_command(args: argparse.Namespace) -> int:
    try:
        reports = inspect(args.export_dir)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())  # one line
        print(f"keras-mpe inspect: error: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        print(format_inspection(reports))
    return 0


def _convert_command(args: argparse.Namespace) -> int:
    import numpy as np

    import keras_mpe
    from keras_mpe.embedding import find_mixed_precision_layers

    def arrays(path: str) -> tuple[Any, np.ndarray]:
        with np.load(path) as stored:
            found = {name: stored[name] for name in stored.files}
        if "y" not in found or len(found) < 2:
            raise ValueError(
                f"{path} must hold the labels as `y` and the inputs as one more array, or "
                f"one array per named model input. It holds {sorted(found)}."
            )
        labels = found.pop("y")
        return (next(iter(found.values())) if len(found) == 1 else found), labels

    try:
        checks.local_path("OUT", args.out)  # before any work: "" would be the cwd
        model = _load_keras_file(args.model)
        data = arrays(args.data)
        validation = arrays(args.validation) if args.validation else None
        converted = keras_mpe.convert(
            model,
            data,
            target_compression=args.target_compression,
            epochs=args.epochs,
            validation_data=validation,
            batch_size=args.batch_size,
            num_groups=args.num_groups,
            verbose=2 if args.epochs else 0,
        )
        keras_mpe.export_saved_model(
            converted, args.out, overwrite=args.overwrite, serving_table=args.serving_table
        )
    except (OSError, ValueError, TypeError) as error:
        message = " ".join(str(error).split())  # one line
        print(f"keras-mpe convert: error: {message}", file=sys.stderr)
        return 1
    for layer in find_mixed_precision_layers(converted):
        report = layer.memory_report()
        print(
            f"table '{layer.name}': {layer.input_dim} x {layer.output_dim}, "
            f"{report['compression_ratio']:.2f}x with overhead, average bits "
            f"{report['average_bits']:.3f}"
        )
    print(f"exported to {args.out}")
    return 0


def _load_keras_file(path: str) -> Any:
    """The model in a `.keras` file, loaded in safe mode: the one format whose loading
    runs no code stored in the file (an `.h5` file or a SavedModel may carry a
    `Lambda`'s bytecode, which tf-keras runs as it loads them)."""
    from keras_mpe.backend import keras

    if not os.path.isfile(path):
        raise ValueError(f"MODEL {path!r} is not a file.")
    if not (path.endswith(".keras") and zipfile.is_zipfile(path)):
        raise ValueError(
            f"MODEL must be a `.keras` file (the zip that `model.save('model.keras')` "
            f"writes), which is loaded in safe mode. Received: {path!r}. Other formats "
            "(.h5, SavedModel) can carry code that runs as they load: re-save the "
            "model as `.keras` where it was trained."
        )
    return keras.models.load_model(path, safe_mode=True)


def build_parser() -> argparse.ArgumentParser:
    """The `keras-mpe` argument parser; each subcommand sets `handler`."""
    parser = argparse.ArgumentParser(
        prog="keras-mpe", description="Tools for Mixed-Precision Embedding models."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inspect_parser = commands.add_parser(
        "inspect",
        help="bits and bytes of the packed tables of an exported SavedModel",
        description="Per packed table of a SavedModel written by "
        "keras_mpe.export_saved_model: bits histogram over groups and rows, payload and "
        "overhead bytes, compression. Reads the SavedModel alone.",
    )
    inspect_parser.add_argument("export_dir", metavar="DIR", help="the SavedModel directory")
    inspect_parser.add_argument(
        "--json", action="store_true", help="print the figures as JSON instead of text"
    )
    inspect_parser.set_defaults(handler=_inspect_command)
    demo_parser = commands.add_parser(
        "demo",
        help="the whole MPE path on MovieLens-100K (synthetic data when offline); "
        "`keras-mpe demo --help` lists its options",
        add_help=False,
    )
    demo_parser.set_defaults(handler=_demo_command)
    convert_parser = commands.add_parser(
        "convert",
        help="compress a trained model's Embedding tables (keras_mpe.convert) and export it",
        description="keras_mpe.convert of a model saved with model.save (.keras), on the "
        "arrays of an .npz file (`y`: labels; the inputs: one array, or one per named "
        "model input), exported as a packed SavedModel.",
    )
    convert_parser.add_argument(
        "model", metavar="MODEL", help="the trained model (.keras; loaded in safe mode)"
    )
    convert_parser.add_argument("data", metavar="DATA", help="the training data (.npz)")
    convert_parser.add_argument("out", metavar="OUT", help="the SavedModel directory to write")
    convert_parser.add_argument(
        "--target-compression", type=float, default=16.0, help="default 16"
    )
    convert_parser.add_argument(
        "--epochs", type=int, default=1, help="fine-tuning epochs; 0: no training (default 1)"
    )
    convert_parser.add_argument("--validation", help="validation data (.npz, as DATA)")
    convert_parser.add_argument("--batch-size", type=int, default=None)
    convert_parser.add_argument("--num-groups", type=int, default=128)
    convert_parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it is not empty"
    )
    convert_parser.add_argument(
        "--serving-table",
        choices=SERVING_TABLES,
        default="packed",
        help="what serving looks ids up in: the packed table (least memory, default), or "
        "the table decoded when the SavedModel loads, as int8 codes or float32 values "
        "(less CPU per call; keras_mpe.serving_table)",
    )
    convert_parser.set_defaults(handler=_convert_command)
    return parser


def _demo_command(args: argparse.Namespace) -> int:
    from keras_mpe.demo import main as demo_main

    return demo_main(args.demo_arguments)  # the demo parses its own options


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-mpe` with `argv` (default: the command line); returns the exit code.

    Example:

    >>> main(["inspect", "/no/such/export"])  # the error goes to stderr
    1
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "demo" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.demo_arguments = rest
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
