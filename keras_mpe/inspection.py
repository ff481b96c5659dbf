"""What the packed tables of an exported SavedModel hold, read from the SavedModel alone.

`inspect(export_dir)` reads the checkpoint under `export_dir/variables` (through
`tf.train.load_checkpoint`, no model or layer is rebuilt) and the static facts that
`keras_mpe.export_saved_model` writes beside it (`assets.extra/keras_mpe.json`: per
table the number of ids, the candidate bit-widths and the path of its variables in
the checkpoint's object graph, `tables/<index>/<field>`). The byte
figures come from `keras_mpe.precision.memory_report` over the stored arrays, the same
accounting as `MixedPrecisionEmbedding.memory_report()`.
"""

import os
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import trackable_object_graph_pb2

from keras_mpe import codec, precision, serving_table
from keras_mpe import metadata as metadata_file

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_REPORTED = (
    "average_bits",
    "payload_bytes",
    "padding_bytes",
    "overhead_bytes",
    "total_bytes",
    "float32_bytes",
    "compression_ratio",
    "payload_compression_ratio",
)


def inspect(export_dir: str) -> dict[str, dict[str, Any]]:
    """Per packed table of a `keras_mpe.export_saved_model` export: bits and bytes.

    Args:
        export_dir: a directory written by `keras_mpe.export_saved_model`.

    Returns:
        A dict from each table's layer name to a dict with `input_dim`, `output_dim`,
        `bit_widths` (the candidates), `groups`, `bits_histogram` (bit-width -> number
        of groups, every candidate listed), `rows_histogram` (bit-width -> number of
        rows), `permutation` (whether an id-to-row permutation is stored),
        `stored_bytes` (bytes of the table's arrays in the checkpoint) and, from
        `keras_mpe.precision.memory_report`, `average_bits`, `payload_bytes`,
        `padding_bytes`, `overhead_bytes`, `total_bytes`, `float32_bytes`,
        `compression_ratio` (with overhead) and `payload_compression_ratio` (payload
        only), `serving_table` (what serving looks ids up in:
        `keras_mpe.serving_table`) and `serving_bytes` (what the table takes in
        memory once loaded: `stored_bytes` plus what is decoded at load). Tables whose
        layers share a name (nested models may hold several `"embedding"` layers)
        are keyed `"<name> (tables/<index>)"` by their place in the SavedModel,
        so none hides another; a name used once is the key as it is.

    Raises:
        FileNotFoundError: `export_dir` holds no SavedModel checkpoint or no
            `assets.extra/keras_mpe.json`.
        ValueError: the metadata is not valid JSON of the expected form, the
            checkpoint cannot be read (truncated or corrupted files), or its arrays
            do not form the packed layout the metadata describes; the message names
            the file.

    Example:

    >>> import shutil, tempfile
    >>> import keras_mpe
    >>> from keras_mpe.backend import keras
    >>> layer = keras_mpe.MixedPrecisionEmbedding(1000, 16, num_groups=4, name="items")
    >>> inputs = keras.Input(shape=(2,), dtype="int32")
    >>> model = keras.Model(inputs, layer(inputs))
    >>> layer.freeze_precision([0, 0, 2, 4])
    >>> export_dir = tempfile.mkdtemp()
    >>> keras_mpe.export_saved_model(model, export_dir)
    >>> report = inspect(export_dir)["items"]
    >>> {bits: groups for bits, groups in report["bits_histogram"].items() if groups}
    {0: 2, 2: 1, 4: 1}
    >>> report["payload_bytes"], report["overhead_bytes"], round(report["compression_ratio"])
    (3000, 136, 20)
    >>> shutil.rmtree(export_dir)
    """
    metadata = metadata_file.read(export_dir)
    prefix = os.path.join(export_dir, "variables", "variables")
    if not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(
            f"`export_dir` {export_dir!r} holds no SavedModel checkpoint "
            f"({prefix}.index is missing)."
        )
    try:
        reader = tf.train.load_checkpoint(prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
        arrays = []
        for table in metadata["tables"]:
            keys = _variable_keys(graph, table["object_path"], table["name"])
            arrays.append({field: reader.get_tensor(key) for field, key in keys.items()})
    except (tf.errors.OpError, DecodeError, IndexError) as error:
        raise ValueError(
            f"The SavedModel checkpoint {prefix} cannot be read ({_first_line(error)}); the "
            "export is "
            "incomplete or corrupted. Export the model again with "
            "`keras_mpe.export_saved_model`."
        ) from error
    names = [table["name"] for table in metadata["tables"]]
    reports = {}
    for table, table_arrays in zip(metadata["tables"], arrays, strict=True):
        key = table["name"]
        if names.count(key) > 1:
            key = f"{key} ({'/'.join(table['object_path'])})"
        report = _table_report(table, table_arrays)
        report["serving_table"] = metadata.get("serving_table", "packed")
        report["serving_bytes"] = report["stored_bytes"] + serving_table.decoded_bytes(
            report["serving_table"],
            report["input_dim"],
            report["output_dim"],
            sum(b > 0 for b in report["bit_widths"]),
        )
        reports[key] = report
    return reports


def _first_line(error: Exception) -> str:
    """The first line of `error`'s message (TensorFlow's run over several), or its type."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _variable_keys(graph: Any, path: list[str], table: str) -> dict[str, str]:
    """The checkpoint key of each variable child of the object at `path` from the root."""
    node = graph.nodes[0]
    for step, name in enumerate(path):
        children = {child.local_name: child.node_id for child in node.children}
        if name not in children:
            where = "/".join(path[:step]) or "the root"
            raise ValueError(
                f"Table '{table}': the checkpoint's object graph has no {name!r} under "
                f"{where}; it has {sorted(children)}."
            )
        node = graph.nodes[children[name]]
    keys = {}
    for child in node.children:
        for attribute in graph.nodes[child.node_id].attributes:
            if attribute.name == "VARIABLE_VALUE":
                keys[child.local_name] = attribute.checkpoint_key
    return keys


def _table_report(table: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    name = table["name"]
    input_dim, output_dim = int(table["input_dim"]), int(table["output_dim"])
    bit_widths = [int(b) for b in table["bit_widths"]]
    nonzero = tuple(b for b in bit_widths if b > 0)
    required = [codec.table_name(b) for b in nonzero]
    required += [*codec.GROUP_FIELDS, "step_sizes", "offset"]
    missing = [field for field in required if field not in arrays]
    if missing:
        raise ValueError(
            f"Table '{name}': the metadata names no variable for {missing}; a packed "
            f"table of bit-widths {bit_widths} needs {required}."
        )
    packed = codec.PackedTable.from_arrays(arrays, nonzero, input_dim, output_dim)
    _check_layout(name, packed)
    bits = packed.group_bits.astype(np.int64)
    rows = packed.rows_per_group
    report = precision.memory_report(
        rows_per_group=rows,
        group_bits=bits,
        output_dim=output_dim,
        num_step_sizes=len(nonzero),
        needs_permutation=packed.permutation is not None,
    )
    present = sorted(set(bit_widths) | set(bits.tolist()))
    result: dict[str, Any] = {
        "input_dim": input_dim,
        "output_dim": output_dim,
        "bit_widths": bit_widths,
        "groups": int(bits.size),
        "bits_histogram": {b: int((bits == b).sum()) for b in present},
        "rows_histogram": {b: int(rows[bits == b].sum()) for b in present},
        "permutation": packed.permutation is not None,
        "stored_bytes": packed.nbytes,
    }
    for key in _REPORTED:
        value = report[key]
        result[key] = float(value) if isinstance(value, float) else int(value)
    return result


def _check_layout(name: str, packed: codec.PackedTable) -> None:
    """Raises ValueError unless the arrays' shapes and dtypes form the packed layout
    of `keras_mpe.codec.array_specs` and its fields agree with one another."""
    # the tables' row counts and the groups' count come from the arrays; the rest
    # of every shape from the static facts
    for field, (shape, dtype) in packed.specs().items():
        array = packed.arrays()[field]
        if array.dtype.name != dtype or array.shape != shape:
            raise ValueError(
                f"Table '{name}': `{field}` must be a {dtype} array of shape {shape}. "
                f"The checkpoint holds {array.dtype.name} of shape {array.shape}."
            )
    name = f"Table '{name}'"
    first_rows = packed.first_rows.astype(np.int64)
    if first_rows.size and (
        first_rows[0] != 0 or (np.diff(first_rows) < 0).any() or first_rows[-1] > packed.input_dim
    ):
        raise ValueError(
            f"{name}: `first_rows` must start at 0 and ascend to at most input_dim="
            f"{packed.input_dim}, so that the groups' rows add up to input_dim. The "
            f"checkpoint holds {packed.first_rows[:20].tolist()}."
        )
    bits = packed.group_bits.astype(np.int64)
    allowed = [0, *packed.nonzero_bit_widths]
    unknown = ~np.isin(bits, allowed)
    if unknown.any():
        group = int(np.argmax(unknown))
        raise ValueError(
            f"{name}: `group_bits` must be 0 or a candidate bit-width {allowed}. The "
            f"checkpoint holds {bits[group]} for group {group}."
        )
    rows = packed.rows_per_group
    for b in packed.nonzero_bit_widths:
        mine = bits == b
        stored = len(packed.tables[b])
        if stored != rows[mine].sum():
            raise ValueError(
                f"{name}: `{codec.table_name(b)}` holds {stored} rows; the groups at {b} "
                f"bits have {rows[mine].sum()}."
            )
        expected = np.concatenate([[0], np.cumsum(rows[mine])[:-1]])
        shift = (expected - first_rows[mine]) % 2**32
        wrong = np.flatnonzero(packed.row_shift.astype(np.int64)[mine] != shift)
        if wrong.size:
            group = int(np.flatnonzero(mine)[wrong[0]])
            raise ValueError(
                f"{name}: `row_shift` must place each group's rows after those of the "
                f"groups of its width before it. The checkpoint has "
                f"{packed.row_shift[group]} for group {group}; its rows and bits need "
                f"{shift[wrong[0]]}."
            )
    for field in ("step_sizes", "offset"):
        values = getattr(packed, field)
        bad = ~np.isfinite(values) | ((values <= 0) if field == "step_sizes" else False)
        if bad.any():
            index = int(np.argmax(bad))
            must = "finite and > 0" if field == "step_sizes" else "finite"
            raise ValueError(
                f"{name}: `{field}` must be {must}. The checkpoint holds "
                f"{field}[{index}]={values[index]}."
            )
    if packed.permutation is not None:
        width = codec.id_bits(packed.input_dim)
        rows = codec.unpack_bits(packed.permutation, width, packed.input_dim)
        if not np.array_equal(np.sort(rows), np.arange(packed.input_dim, dtype=np.uint32)):
            raise ValueError(
                f"{name}: `permutation` must map the {packed.input_dim} ids to the rows "
                f"0..{packed.input_dim - 1}, each once; it does not."
            )
