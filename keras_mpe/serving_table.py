"""What an export's serving functions look ids up in: the packed table itself, or a
table decoded from it once, when the SavedModel loads.

`export_saved_model(..., serving_table=...)` chooses; the SavedModel stores the
packed table either way:

- ``"packed"`` (the default): every call decodes the rows it looks up
  (`keras_mpe.lookup.lookup_packed`). Serving memory: the packed table.
- ``"int8"``: the SavedModel decodes the table into int8 codes (one byte per value,
  plus one per row for its bit-width) when it loads, and every call gathers whole
  rows of codes and scales them (`keras_mpe.lookup.lookup_decoded`). Serving memory:
  the packed table plus `V * (D + 1)` bytes, a quarter of the float32 table's.
- ``"float32"``: the SavedModel decodes the table into float32 values when it loads;
  every call is one gather, as in the float32 model. Serving memory: the packed
  table plus the float32 table.

All three give the same values bit for bit. The decoded arrays are
`LoadTimeArray`s: resources that TensorFlow initializes from the restored variables
when it loads the SavedModel (the init op that the TF1 session loader and TF Serving
run, or `tf.saved_model.load`), and that are not written to the checkpoint.
"""

import uuid
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from keras_mpe import lookup
from keras_mpe.backend import tf_variable
from keras_mpe.embedding import EmbeddingShapes
from keras_mpe.ids import integer_ids

SERVING_TABLES = ("packed", "int8", "float32")
CHUNK_BYTES = 1 << 26  # of a decoded array, filled at a time when a SavedModel loads


def check(serving_table: Any) -> str:
    """`serving_table` if it names one of `SERVING_TABLES`, else a ValueError."""
    if not isinstance(serving_table, str) or serving_table not in SERVING_TABLES:
        raise ValueError(
            f"`serving_table` must be one of {list(SERVING_TABLES)}. "
            f"Received: serving_table={serving_table!r}"
        )
    return serving_table


def decoded_bytes(
    serving_table: str, input_dim: int, output_dim: int, num_nonzero_bit_widths: int
) -> int:
    """Bytes that a table decoded at load time takes in memory beside the packed one
    (0 for `"packed"`): its arrays of `DecodedTable`, the zero row included.

    Example:

    >>> decoded_bytes("int8", 1000, 16, 3)  # codes and kinds, scale and offset rows
    17529
    """
    rows = input_dim + 1
    if serving_table == "float32":
        return rows * output_dim * 4
    if serving_table == "int8":
        return rows * (output_dim + 1) + 2 * (num_nonzero_bit_widths + 1) * output_dim * 4
    return 0


class LoadTimeArray(tf.saved_model.experimental.TrackableResource):
    """An array that a SavedModel computes when it loads and holds in memory, never
    stored: a resource variable filled by the resource's initializer, `CHUNK_BYTES` of
    rows at a time (so that the decode's temporaries follow the chunk, not the table).

    Args:
        rows_of: the array's rows at int64 ids (1-D), in a TF graph (traced when the
            SavedModel is saved; it may read the model's variables, which the loader
            restores first).
        shape: the array's static shape.
        dtype: the array's dtype.

    Example:

    ```python
    module = tf.Module()
    module.source = tf.Variable([1.0, 2.0])
    module.doubled = LoadTimeArray(lambda ids: tf.gather(module.source, ids) * 2, [2],
                                   tf.float32)
    module.read = tf.function(lambda i: module.doubled.gather(i),
                              input_signature=[tf.TensorSpec([None], tf.int64)])
    tf.saved_model.save(module, "doubled")
    tf.saved_model.load("doubled").read(tf.constant([1], tf.int64))  # [4.0]
    ```
    """

    def __init__(
        self, rows_of: Callable[[tf.Tensor], tf.Tensor], shape: Any, dtype: tf.DType
    ) -> None:
        self._rows_of = rows_of
        self._shape = tf.TensorShape(shape)
        self._dtype = tf.as_dtype(dtype)
        # A name of its own, as `tf.lookup.StaticHashTable` takes: the TF1 session
        # loader runs the initializer and the serving function as separate calls,
        # which find the resource by name. Loads of the same export in one process
        # share it (the same values), and it is not destroyed before the process
        # ends (a TF1 session, which TF Serving runs, frees it with the session).
        self._shared_name = f"keras_mpe_{uuid.uuid4().hex}"
        super().__init__()
        self.resource_handle  # noqa: B018  made now: functions traced later capture it

    def _create_resource(self) -> tf.Tensor:
        return tf.raw_ops.VarHandleOp(
            dtype=self._dtype, shape=self._shape, shared_name=self._shared_name
        )

    def _initialize(self) -> Any:
        handle = self.resource_handle
        rows = tf.constant(self._shape[0], tf.int64)  # V + 1 may pass int32
        row_bytes = self._shape[1:].num_elements() * self._dtype.size
        chunk = tf.constant(max(1, CHUNK_BYTES // max(1, row_bytes)), tf.int64)
        zeros = tf.zeros(self._shape, self._dtype)
        with tf.control_dependencies([tf.raw_ops.AssignVariableOp(resource=handle, value=zeros)]):
            first = tf.constant(0, tf.int64)
        inner = [tf.constant(0, tf.int64)] * (self._shape.rank - 1)

        def fill(first: tf.Tensor) -> tf.Tensor:
            last = tf.minimum(first + chunk, rows)
            assign = tf.raw_ops.ResourceStridedSliceAssign(
                ref=handle,
                begin=tf.stack([first, *inner]),
                end=tf.stack([last, *(tf.constant(n, tf.int64) for n in self._shape[1:])]),
                strides=[1] * self._shape.rank,
                value=self._rows_of(tf.range(first, last)),
            )
            with tf.control_dependencies([assign]):
                return tf.identity(last)

        return tf.while_loop(lambda first: first < rows, fill, [first])

    def gather(self, indices: tf.Tensor) -> tf.Tensor:
        """The rows at `indices` (int32 or int64), read from the resource."""
        rows = tf.raw_ops.ResourceGather(
            resource=self.resource_handle, indices=indices, dtype=self._dtype
        )
        rows.set_shape(indices.shape.concatenate(self._shape[1:]))  # a raw handle has none
        return rows


class DecodedTable(tf.Module):
    """The table of a `keras_mpe.PackedEmbedding` decoded at load time, int8 or float32
    (module docstring), and its lookup: called on ids as the twin is.

    Args:
        twin: the packed twin whose variables the SavedModel stores.
        serving_table: ``"int8"`` or ``"float32"``.
    """

    def __init__(self, twin: Any, serving_table: str) -> None:
        super().__init__(name=None)
        # facts, not the Keras layer: the module tracks only its load-time arrays
        self._input_dim, self._compute_dtype = twin.input_dim, twin.compute_dtype
        arrays = {name: tf_variable(v) for name, v in twin.packed_variables.items()}
        facts = {"input_dim": twin.input_dim, "nonzero_bit_widths": twin.nonzero_bit_widths}
        # the last row is the zero row of out-of-range ids
        rows, dim = twin.input_dim + 1, twin.output_dim
        if serving_table == "float32":
            self.arrays = {
                "values": LoadTimeArray(
                    lambda ids: lookup.lookup_packed(ids, arrays, **facts), [rows, dim], tf.float32
                )
            }
            return
        kinds = len(twin.nonzero_bit_widths) + 1

        def dequantization_rows(index: int) -> Callable[[tf.Tensor], tf.Tensor]:
            return lambda ids: tf.gather(
                lookup.dequantization_rows(arrays["step_sizes"], arrays["offset"])[index], ids
            )

        self.arrays = {
            "codes": LoadTimeArray(
                lambda ids: lookup.decoded_codes(ids, arrays, **facts), [rows, dim], tf.int8
            ),
            "kinds": LoadTimeArray(
                lambda ids: lookup.decoded_kinds(ids, arrays, **facts), [rows], tf.uint8
            ),
            "scale_rows": LoadTimeArray(dequantization_rows(0), [kinds, dim], tf.float32),
            "offset_rows": LoadTimeArray(dequantization_rows(1), [kinds, dim], tf.float32),
        }

    def __call__(self, inputs: Any) -> Any:
        def look_up(ids: tf.Tensor) -> tf.Tensor:
            ids = integer_ids(ids, self._input_dim)
            values = lookup.lookup_decoded(ids, self.arrays, input_dim=self._input_dim)
            return tf.cast(values, self._compute_dtype)

        return EmbeddingShapes._rows_of(inputs, look_up)
