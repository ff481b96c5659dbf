"""The metadata a packed SavedModel carries beside its checkpoint: one schema, written
by `keras_mpe.export_saved_model` and read by `keras_mpe.inspect`.

`assets.extra/keras_mpe.json` (TF Serving ignores `assets.extra`, where it reads
warmup requests from) holds the static facts of each packed table that its arrays
do not carry, and where in the SavedModel's object graph its variables are:

    {"format": 1, "tables": [{"name": ..., "object_path": ["tables", "0"],
                              "input_dim": ..., "output_dim": ...,
                              "bit_widths": [...]}, ...]}

`bit_widths` are the candidates (the step sizes belong to the non-zero ones); the
per-group bits are the table's `group_bits` array.
"""

import json
import os
from typing import Any

import tensorflow as tf

FILE = os.path.join("assets.extra", "keras_mpe.json")
FORMAT = 1
TABLE_KEYS = ("name", "object_path", "input_dim", "output_dim", "bit_widths")


def write(export_dir: str, tables: list[Any]) -> None:
    """Writes the metadata of `tables` (`PackedEmbedding` layers, in the order of
    their variables under `tables/<index>`)."""
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
        json.dump({"format": FORMAT, "tables": entries}, file, indent=1)


def read(export_dir: str) -> dict[str, Any]:
    """The metadata of an export, checked against the schema.

    Raises:
        FileNotFoundError: `export_dir` has no metadata file.
        ValueError: the file is not valid JSON of this schema; the message names it.
    """
    path = os.path.join(export_dir, FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"`export_dir` {export_dir!r} is not a keras_mpe export: {path} is missing. "
            "Pass a directory written by `keras_mpe.export_saved_model`."
        )
    try:
        with tf.io.gfile.GFile(path) as file:
            metadata = json.load(file)
    except (ValueError, tf.errors.OpError) as error:  # bad JSON or UTF-8; unreadable
        lines = str(error).strip().splitlines()
        raise ValueError(
            f"{path} cannot be read as JSON ({lines[0] if lines else type(error).__name__})."
            " Export the model again with `keras_mpe.export_saved_model`."
        ) from error
    if isinstance(metadata, dict) and metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} has format {metadata.get('format')!r}; this keras_mpe reads format {FORMAT}."
        )
    tables = metadata.get("tables") if isinstance(metadata, dict) else None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError(
            f"{path} must hold a JSON object whose 'tables' is a list of objects; it holds "
            f"{json.dumps(metadata)[:200]}. Export the model again with "
            "`keras_mpe.export_saved_model`."
        )
    for index, table in enumerate(tables):
        missing = sorted(set(TABLE_KEYS) - set(table))
        if missing:
            raise ValueError(
                f"{path}: table {index} lacks {missing}; each table needs "
                f"{list(TABLE_KEYS)}. Export the model again with "
                "`keras_mpe.export_saved_model`."
            )
    return metadata
