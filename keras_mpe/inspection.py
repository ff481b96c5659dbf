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

from keras_mpe import codec, precision
from keras_mpe import metadata as metadata_file

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_REQUIRED = tuple(name for name in codec.ARRAYS if name != "permutation")
_REPORTED = (
    "average_bits",
    "payload_bytes",
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
        `overhead_bytes`, `total_bytes`, `float32_bytes`, `compression_ratio` (with
        overhead) and `payload_compression_ratio` (payload only). Tables whose
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
        reports[key] = _table_report(table, table_arrays)
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
    missing = [field for field in _REQUIRED if field not in arrays]
    if missing:
        raise ValueError(
            f"Table '{name}': the metadata names no variable for {missing}; a packed "
            f"table needs {list(_REQUIRED)}."
        )
    input_dim, output_dim = int(table["input_dim"]), int(table["output_dim"])
    bit_widths = [int(b) for b in table["bit_widths"]]
    packed = codec.PackedTable(
        words=arrays["words"],
        first_rows=arrays["first_rows"],
        first_words=arrays["first_words"],
        group_bits=arrays["group_bits"],
        step_sizes=arrays["step_sizes"],
        offset=arrays["offset"],
        permutation=arrays.get("permutation"),
        nonzero_bit_widths=tuple(b for b in bit_widths if b > 0),
        input_dim=input_dim,
        output_dim=output_dim,
    )
    _check_layout(name, packed)
    report = packed.memory_report()
    bits = packed.group_bits.astype(np.int64)
    rows = packed.rows_per_group
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
    """Raises ValueError unless the arrays' shapes and dtypes form a packed table."""
    groups = packed.group_bits.shape
    integers = ("int32", "uint32")  # per-group fields may be uint32 (GPU-resident)
    expected = {
        "words": (("uint32",), None),
        "first_rows": (integers, groups),
        "first_words": (integers, groups),
        "group_bits": (integers, groups),
        "step_sizes": (("float32",), (len(packed.nonzero_bit_widths),)),
        "offset": (("float32",), (packed.output_dim,)),
        "permutation": (("uint32",), None),
    }
    for field, array in packed.arrays().items():
        dtypes, shape = expected[field]
        if array.dtype.name not in dtypes or array.ndim != 1 or (shape and array.shape != shape):
            raise ValueError(
                f"Table '{name}': `{field}` must be a 1-D {' or '.join(dtypes)} array"
                + (f" of shape {shape}" if shape else "")
                + f". The checkpoint holds {array.dtype.name} of shape {array.shape}."
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
    group_words = precision.payload_words(packed.rows_per_group, bits, packed.output_dim)
    expected = np.concatenate([[0], np.cumsum(group_words)[:-1]])
    wrong = packed.first_words.astype(np.int64) != expected
    if wrong.any():
        group = int(np.argmax(wrong))
        raise ValueError(
            f"{name}: `first_words` must place each group after the words of the ones "
            f"before it. The checkpoint has group {group} at word "
            f"{packed.first_words[group]}; its rows and bits put it at {expected[group]}."
        )
    if packed.words.size != group_words.sum():
        raise ValueError(
            f"{name}: `words` holds {packed.words.size} words; the groups' rows "
            f"and bits need {group_words.sum()}."
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
        width = precision.id_bits(packed.input_dim)
        needed = -(-packed.input_dim * width // 32)
        if packed.permutation.size != needed:
            raise ValueError(
                f"{name}: `permutation` holds {packed.permutation.size} words; "
                f"{packed.input_dim} ids at {width} bits need {needed}."
            )
        rows = codec.unpack_bits(packed.permutation, width, packed.input_dim)
        if not np.array_equal(np.sort(rows), np.arange(packed.input_dim, dtype=np.uint32)):
            raise ValueError(
                f"{name}: `permutation` must map the {packed.input_dim} ids to the rows "
                f"0..{packed.input_dim - 1}, each once; it does not."
            )
