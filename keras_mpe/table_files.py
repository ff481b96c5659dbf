"""A table kept in a `.npy` file instead of memory, written and read back in chunks.

`PrecisionSearch` keeps each initial table this way for the rewind, so the search
holds one table in memory, not two. The file's pages are written and read with
plain file I/O (not mapped), so they sit in the page cache, which the system
reclaims, and never count in the process's resident memory.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe.backend import ShardedVariable, gather_rows, tf_variable

CHUNK_BYTES = 16 * 2**20  # each chunk passes through memory about twice


def _variable(variable: Any) -> Any:
    """The `tf.Variable` (or sharded variable) that holds a weight's value."""
    if isinstance(variable, (tf.Variable, ShardedVariable)):
        return variable
    return tf_variable(variable)


def _dtype(variable: Any) -> np.dtype:
    return np.dtype(getattr(variable.dtype, "name", variable.dtype))  # Keras 3: a str


def _rows_per_chunk(variable: Any, chunk_bytes: int) -> int:
    row_bytes = int(np.prod(variable.shape[1:])) * _dtype(variable).itemsize
    return max(1, chunk_bytes // max(1, row_bytes))


def save_table(variable: Any, path: str, chunk_bytes: int = CHUNK_BYTES) -> np.memmap:
    """Writes `variable`'s value to the `.npy` file `path`, `chunk_bytes` at a time.

    Returns the file as a read-only `np.memmap` (nothing of it is read yet).

    Example:

    >>> import os, tempfile
    >>> table = tf.Variable(tf.reshape(tf.range(12.0), [6, 2]))
    >>> path = os.path.join(tempfile.mkdtemp(), "table.npy")
    >>> saved = save_table(table, path, chunk_bytes=16)
    >>> table.assign(tf.zeros([6, 2]))  # doctest: +ELLIPSIS
    <...>
    >>> restore_table(table, saved, chunk_bytes=16)
    >>> table.numpy()[:, 1].tolist()
    [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
    """
    shape = tuple(int(n) for n in variable.shape)
    dtype = _dtype(variable)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        for _, chunk in read_chunks(variable, chunk_bytes):
            chunk.tofile(file)
    return np.load(path, mmap_mode="r")


def read_chunks(variable: Any, chunk_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """`variable`'s value a chunk of rows (about `chunk_bytes`, by default
    `CHUNK_BYTES`) at a time, in row order: `(first row, numpy rows)` pairs. A
    sharded variable's rows are gathered across its shards.

    Example:

    >>> table = tf.Variable(tf.reshape(tf.range(6.0), [3, 2]))
    >>> [(start, rows.tolist()) for start, rows in read_chunks(table, chunk_bytes=16)]
    [(0, [[0.0, 1.0], [2.0, 3.0]]), (2, [[4.0, 5.0]])]
    """
    rows_in_table = int(variable.shape[0])
    step = _rows_per_chunk(variable, CHUNK_BYTES if chunk_bytes is None else chunk_bytes)
    for start in range(0, rows_in_table, step):
        rows = tf.range(start, min(start + step, rows_in_table), dtype=tf.int64)
        chunk = (
            tf.gather(variable, rows)
            if isinstance(variable, tf.Variable)
            else gather_rows(variable, rows)
        )
        yield start, np.ascontiguousarray(chunk.numpy())


def restore_table(variable: Any, table: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Assigns `table` to `variable`, a chunk of rows at a time. A table that
    `save_table` returned is read from its file (the map's pages are never
    touched); any other array is assigned from memory."""
    if tuple(table.shape) != tuple(int(n) for n in variable.shape):
        raise ValueError(
            f"The table to restore has shape {tuple(table.shape)}; the variable "
            f"'{variable.name}' has {tuple(variable.shape)}."
        )
    target = _variable(variable)
    step = _rows_per_chunk(variable, chunk_bytes)
    row_values = int(np.prod(table.shape[1:]))
    if not isinstance(table, np.memmap):
        for start in range(0, table.shape[0], step):
            rows = tf.range(start, min(start + step, table.shape[0]), dtype=tf.int64)
            target.scatter_update(tf.IndexedSlices(tf.constant(table[start : start + step]), rows))
        return
    with open(table.filename, "rb") as file:
        file.seek(table.offset)
        for start in range(0, table.shape[0], step):
            count = min(step, table.shape[0] - start)
            chunk = np.fromfile(file, table.dtype, count * row_values)
            rows = tf.range(start, start + count, dtype=tf.int64)
            values = chunk.reshape((count, *table.shape[1:]))
            target.scatter_update(tf.IndexedSlices(tf.constant(values), rows))
