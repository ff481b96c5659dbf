"""The metadata a packed SavedModel carries beside its checkpoint: one schema, written
by `keras_mpe.export_saved_model` and read by `keras_mpe.inspect`.

`assets.extra/keras_mpe.json` (TF Serving ignores `assets.extra`, where it reads
warmup requests from) holds the static facts of each packed table that its arrays
do not carry, and where in the SavedModel's object graph its variables are:

    {"format": 2, "serving_table": "packed",
     "tables": [{"name": ..., "object_path": ["tables", "0"], "input_dim": ...,
                 "output_dim": ..., "bit_widths": [...]}, ...]}

`format` is the packed layout's version (`keras_mpe.codec.FORMAT`); `bit_widths` are
the candidates (the step sizes belong to the non-zero ones); the per-group bits are
the table's `group_bits` array. `serving_table` is what the serving functions look
ids up in (`keras_mpe.serving_table`); exports written before it existed lack it and
serve from the packed table.
"""

import json
import os
import stat
from typing import Any, NoReturn

import tensorflow as tf

from keras_mpe import checks, codec
from keras_mpe.serving_table import SERVING_TABLES

FILE = os.path.join("assets.extra", "keras_mpe.json")
TABLE_KEYS = ("name", "object_path", "input_dim", "output_dim", "bit_widths")


def write(export_dir: str, tables: list[Any], serving_table: str) -> None:
    """Writes the metadata of `tables` (`PackedEmbedding` layers, in the order of
    their variables under `tables/<index>`), served from `serving_table`."""
    entries = [
        {
            "name": table.name,
            "object_path": ["tables", str(index)],
            "input_dim": int(table.input_dim),
            "output_dim": int(table.output_dim),
            "bit_widths": [int(b) for b in table.bit_widths],
        }
        for index, table in enumerate(tables)
    ]
    path = os.path.join(export_dir, FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        contents = {"format": codec.FORMAT, "serving_table": serving_table, "tables": entries}
        json.dump(contents, file, indent=1)


MAX_FILE_BYTES = 1 << 20  # an entry takes about 200 bytes: room for thousands of tables


def read(export_dir: str) -> dict[str, Any]:
    """The metadata of an export, checked against the schema.

    The file is read only if it is a regular file of at most `MAX_FILE_BYTES`
    (a FIFO there would block the reader, a huge file exhaust its memory), and every
    field is checked for its type and range, so that what is read can be trusted
    by `keras_mpe.inspect`'s checks of the arrays.

    Raises:
        FileNotFoundError: `export_dir` has no metadata file.
        ValueError: the file is not a bounded regular file holding JSON of this
            schema; the message names it and the first field that is wrong.

    Example:

    >>> import tempfile
    >>> directory = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(directory, "assets.extra"))
    >>> with open(os.path.join(directory, FILE), "w") as file:
    ...     _ = file.write('{"format": 2, "tables": [{"name": "t", "input_dim": null}]}')
    >>> read(directory)
    Traceback (most recent call last):
    ...
    ValueError: .../assets.extra/keras_mpe.json is wrong: table 0 lacks ['bit_widths', \
'object_path', 'output_dim']; each table needs ['name', 'object_path', 'input_dim', \
'output_dim', 'bit_widths']. Export the model again with `keras_mpe.export_saved_model`.
    """
    path = os.path.join(export_dir, FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"`export_dir` {export_dir!r} is not a keras_mpe export: {path} is missing. "
            "Pass a directory written by `keras_mpe.export_saved_model`."
        )
    text = _bounded_text(path)
    try:
        metadata = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8; nested too deep
        lines = str(error).strip().splitlines()
        _refuse(path, f"cannot be read as JSON ({lines[0] if lines else type(error).__name__})")
    if not isinstance(metadata, dict):
        _refuse(path, f"must hold a JSON object; it holds {text[:100]!r}")
    if metadata.get("format") != codec.FORMAT:
        raise ValueError(
            f"{path} describes packed tables of format {str(metadata.get('format'))[:50]}; "
            f"this keras_mpe reads format {codec.FORMAT} only. The SavedModel itself "
            "still loads and serves; export the model again to inspect it."
        )
    if metadata.get("serving_table", "packed") not in SERVING_TABLES:
        _refuse(
            path,
            f"is wrong: 'serving_table' must be one of {list(SERVING_TABLES)}, not "
            f"{json.dumps(metadata['serving_table'])[:50]}",
        )
    tables = metadata.get("tables")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        _refuse(path, "must hold a JSON object whose 'tables' is a list of objects")
    for index, table in enumerate(tables):
        missing = sorted(set(TABLE_KEYS) - set(table))
        if missing:
            _refuse(
                path,
                f"is wrong: table {index} lacks {missing}; each table needs {list(TABLE_KEYS)}",
            )
        problem = _table_problem(table)
        if problem:
            _refuse(path, f"is wrong: table {index}: {problem}")
    return metadata


def _bounded_text(path: str) -> str:
    """The text of `path` if it is a regular file of at most `MAX_FILE_BYTES`."""
    try:
        if "://" not in path and not stat.S_ISREG(os.stat(path).st_mode):
            _refuse(path, "is not a regular file")
        if tf.io.gfile.stat(path).length > MAX_FILE_BYTES:
            _refuse(path, f"is larger than {MAX_FILE_BYTES} bytes, far more than metadata takes")
        with tf.io.gfile.GFile(path, "rb") as file:
            return file.read(MAX_FILE_BYTES + 1).decode("utf-8")
    except (OSError, tf.errors.OpError, UnicodeDecodeError) as error:
        lines = str(error).strip().splitlines()
        _refuse(path, f"cannot be read ({lines[0] if lines else type(error).__name__})")


def _table_problem(table: dict) -> str | None:
    """What is wrong with a table entry's fields, or None."""
    name, path = table["name"], table["object_path"]
    if not isinstance(name, str) or not name:
        return f"'name' must be a non-empty string, not {json.dumps(name)[:50]}"
    if not isinstance(path, list) or not path or not all(isinstance(p, str) for p in path):
        return f"'object_path' must be a non-empty list of strings, not {json.dumps(path)[:50]}"
    for key, high in (("input_dim", 2**31 - 1), ("output_dim", 2**16)):
        value = table[key]
        if not checks.is_int(value) or not 1 <= value <= high:
            return f"'{key}' must be an integer in [1, {high}], not {json.dumps(value)[:50]}"
    try:
        checks.bit_widths(table["bit_widths"])
    except ValueError:
        return (
            "'bit_widths' must be a strictly increasing list of integers in "
            f"[0, {checks.MAX_BITS}], not {json.dumps(table['bit_widths'])[:50]}"
        )
    return None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _refuse(path: str, problem: str) -> NoReturn:
    raise ValueError(
        f"{path} {problem}. Export the model again with `keras_mpe.export_saved_model`."
    )
