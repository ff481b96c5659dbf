"""Looking ids up in a packed table inside a TF graph (the layout: `keras_mpe.codec`).

Outside XLA the ids are first reduced to the distinct ones (`tf.unique`), so that
what follows runs once per distinct id. Per id: its row (the permutation, if any),
its group (`tf.searchsorted` over the groups' first rows), its bit-width and its row
of that width's table; then one gather of a whole row per id from its width's uint8
table, decoded by a shift and a mask by scalars per field, and dequantized as
`(code - 2**(b-1)) * step + offset` in a multiply and an add (exact: the step sizes
have 16 significant bits). Work per call grows with the ids, never with the table:
the tables are only gathered from.

Every tensor that grows with the batch or the table is uint8, uint32, int64, float32
or bool, and the packed arrays are read through gathers from their variables:
TensorFlow runs 32-bit signed integer arithmetic in host memory on a GPU, and has no
GPU gather of uint8 or uint32 from a tensor (only from a variable), so with these
types the whole lookup stays in device memory. Under XLA no 64-bit integer appears
unless the ids themselves are int64, so that form lowers to 32-bit types only, as a
TPU needs.

A table can also be decoded once, whole (`decoded_codes`, `decoded_kinds`: what
`keras_mpe.serving_table` does when a SavedModel loads), and then looked up by
gathers of whole rows (`lookup_decoded`), equal to `lookup_packed` bit for bit.

Nothing here imports Keras, so both Keras flavours share it.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, codec
from keras_mpe.ids import ids_in_range


def _static_length(name: str, value: Any) -> int:
    length = value.shape[0] if value.shape.rank else None
    if length is None:
        raise ValueError(f"`{name}` must have a static 1-D shape. Received shape {value.shape}.")
    return int(length)


def _as_tensor_or_variable(name: str, value: Any, dtype: tf.DType, rank: int = 1) -> Any:
    """Leaves variables alone (a gather from a variable reads only what it gathers)."""
    if not isinstance(value, tf.Variable):
        value = tf.convert_to_tensor(value)
    if value.dtype != dtype:
        raise TypeError(f"`{name}` must be {dtype.name}. Received dtype {value.dtype.name}.")
    if value.shape.rank != rank:
        raise ValueError(f"`{name}` must be {rank}-D. Received shape {value.shape}.")
    return value


def _extract(lo: tf.Tensor, hi: tf.Tensor, shift: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """The `mask`-wide field starting at bit `shift` of the 64-bit pair `(hi, lo)`.

    uint32 only; every shift amount stays in [0, 31].
    """
    low_part = tf.bitwise.right_shift(lo, shift)
    high_part = tf.bitwise.left_shift(tf.bitwise.left_shift(hi, 1), 31 - shift)
    return tf.bitwise.bitwise_and(tf.bitwise.bitwise_or(low_part, high_part), mask)


def bit_position(index: tf.Tensor, width: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """`(index * width) // 32, (index * width) % 32` in uint32, without forming the
    product (which may pass 2**32): `width = 32 q + m` and `index = 32 h + l`.

    Exact whenever the word index fits uint32.

    Example:

    >>> word, bit = bit_position(tf.constant([2**31 - 1], tf.uint32), 9)
    >>> int(word[0]), int(bit[0]), divmod((2**31 - 1) * 9, 32)
    (603979775, 23, (603979775, 23))
    """
    width = tf.cast(width, tf.uint32)
    q, m = width // 32, width % 32
    h, low = index // 32, index % 32
    return q * index + m * h + (m * low) // 32, (m * low) % 32


def find_groups(first_rows: Any, rows: tf.Tensor, binary: bool) -> tf.Tensor:
    """The slot of the last group whose first row is <= each row (groups sorted by
    first row), as gather indices.

    `binary=False` runs `tf.searchsorted` (one kernel; its int64 result is the
    index type a GPU computes with in device memory); `binary=True` a binary search
    of gathers in uint32, which XLA compiles to a few fused passes over the ids
    where it would lower `searchsorted` to all-pairs comparisons.
    """
    if not binary:
        bounds = tf.convert_to_tensor(first_rows)
        return tf.searchsorted(bounds, rows, side="right", out_type=tf.int64) - 1
    last = first_rows.shape[0] - 1
    slot = tf.zeros_like(rows)
    step = 1 << last.bit_length()
    while step:
        candidate = tf.minimum(slot + step, last)
        reached = tf.gather(first_rows, tf.cast(candidate, tf.int32)) <= rows
        slot = tf.where(reached, candidate, slot)
        step //= 2
    return tf.cast(slot, tf.int32)


def _decode_rows(rows: tf.Tensor, bits: int, dim: int) -> tf.Tensor:
    """uint8 `[m, row_bytes]` rows at `bits` bits -> uint8 `[m, D]` codes: per plane,
    each field by a shift and a mask by scalars, the fields joined along the row."""
    codes, start, low = None, 0, bits
    for p in codec.PLANES[bits]:
        width = codec.plane_bytes(p, dim)
        plane = rows[:, start : start + width]
        start += width
        low -= p
        if p < 8:
            mask = np.uint8(2**p - 1)
            fields = [tf.bitwise.bitwise_and(plane, mask)]
            fields += [
                tf.bitwise.bitwise_and(tf.bitwise.right_shift(plane, np.uint8(s)), mask)
                for s in range(p, 8 - p, p)
            ]
            fields.append(tf.bitwise.right_shift(plane, np.uint8(8 - p)))
            plane = tf.concat(fields, axis=1)
            if width * 8 // p != dim:
                plane = plane[:, :dim]
        if low:
            plane = tf.bitwise.left_shift(plane, np.uint8(low))
        codes = plane if codes is None else tf.bitwise.bitwise_or(codes, plane)
    return codes


def _check_static(input_dim: Any, nonzero_bit_widths: Sequence[int]) -> tuple:
    if not checks.is_int(input_dim) or not 1 <= input_dim < 2**31:
        raise ValueError(
            f"`input_dim` must be an integer in [1, 2**31). Received: input_dim={input_dim!r}"
        )
    widths = tuple(nonzero_bit_widths)
    if not all(checks.is_int(b) and 1 <= b <= checks.MAX_BITS for b in widths) or any(
        a >= b for a, b in zip(widths, widths[1:])
    ):
        raise ValueError(
            f"`nonzero_bit_widths` must be strictly increasing integers in "
            f"[1, {checks.MAX_BITS}]. Received: nonzero_bit_widths={nonzero_bit_widths!r}"
        )
    return int(input_dim), tuple(int(b) for b in widths)


@dataclasses.dataclass(frozen=True)
class _Arrays:
    """The arrays of a packed table, checked against its static facts."""

    input_dim: int
    dim: int
    group: dict[str, Any]  # the uint32 fields of `codec.GROUP_FIELDS`
    step_sizes: tf.Tensor
    offset: tf.Tensor
    tables: dict[int, tuple[Any, tf.Tensor]]  # width -> (its rows, its step size); not empty
    permutation: Any  # None when the row of an id is the id

    @classmethod
    def checked(
        cls, arrays: Mapping[str, Any], input_dim: Any, nonzero_bit_widths: Sequence[int]
    ) -> "_Arrays":
        input_dim, widths = _check_static(input_dim, nonzero_bit_widths)
        needed = [*map(codec.table_name, widths), *codec.GROUP_FIELDS, "step_sizes", "offset"]
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise ValueError(f"`arrays` lacks {missing}; a packed table of {widths} needs them.")
        group = {
            field: _as_tensor_or_variable(field, arrays[field], tf.uint32)
            for field in codec.GROUP_FIELDS
        }
        step_sizes = tf.convert_to_tensor(
            _as_tensor_or_variable("step_sizes", arrays["step_sizes"], tf.float32)
        )
        offset = tf.convert_to_tensor(
            _as_tensor_or_variable("offset", arrays["offset"], tf.float32)
        )
        if _static_length("step_sizes", step_sizes) != len(widths):
            raise ValueError(
                f"`step_sizes` has {step_sizes.shape[0]} entries but `nonzero_bit_widths` "
                f"{widths} has {len(widths)}; they must match."
            )
        dim = _static_length("offset", offset)
        tables = {}
        for k, b in enumerate(widths):
            name = codec.table_name(b)
            table = _as_tensor_or_variable(name, arrays[name], tf.uint8, rank=2)
            if table.shape[1] != codec.row_bytes(b, dim):
                raise ValueError(
                    f"`{name}` must have rows of {codec.row_bytes(b, dim)} bytes ({dim} "
                    f"values at {b} bits). Received shape {table.shape}."
                )
            if table.shape[0]:  # a width without rows is never looked up
                tables[b] = (table, step_sizes[k])
        permutation = None
        if "permutation" in arrays:
            permutation = _as_tensor_or_variable("permutation", arrays["permutation"], tf.uint32)
        return cls(input_dim, dim, group, step_sizes, offset, tables, permutation)

    def widths_and_rows(
        self, rows: tf.Tensor, valid: tf.Tensor, xla: bool
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Per uint32 id: its bit-width (0 where not `valid`) and its row of that
        width's table."""
        if self.permutation is not None:
            width = codec.id_bits(self.input_dim)
            last = _static_length("permutation", self.permutation) - 1
            word, shift = bit_position(rows, width)
            lo = tf.gather(self.permutation, tf.cast(word, tf.int32))
            hi = tf.gather(self.permutation, tf.cast(tf.minimum(word + 1, last), tf.int32))
            rows = _extract(lo, hi, shift, tf.constant(2**width - 1, tf.uint32))
        slot = find_groups(self.group["first_rows"], rows, binary=xla)
        group_bits = tf.gather(self.group["group_bits"], slot)
        bits = tf.where(valid, group_bits, tf.constant(0, tf.uint32))
        return bits, rows + tf.gather(self.group["row_shift"], slot)  # modulo 2**32


def lookup_packed(
    ids: Any,
    arrays: Mapping[str, Any],
    *,
    input_dim: int,
    nonzero_bit_widths: Sequence[int],
) -> tf.Tensor:
    """Looks ids up in a packed table: one row gather per id, decoded in the graph.

    Core TF ops only. The arrays may be tensors, numpy arrays or `tf.Variable`s; a
    variable is gathered from, never read whole, except the `[G]` first rows
    outside XLA. Traced inside a `tf.function(jit_compile=True)` (a SavedModel's
    `serving_xla`, a Keras model compiled with XLA), which has no dynamic shapes,
    the lookup gathers a row of every width's table for every id and keeps the id's
    own, and finds groups by a binary search (XLA lowers `tf.searchsorted` to
    all-pairs comparisons); elsewhere it looks each distinct id of the call up once
    (`tf.unique`; a repeated id costs one more slot of the final gather), splitting
    them by bit-width (`tf.dynamic_partition`) and gathering each one's row once.
    Either way the values are `(code - 2**(b-1)) * step_size_b + offset`, equal to
    the retrain-state layer's outputs bit for bit.

    Args:
        ids: integer ids, any shape. Ids outside `[0, input_dim)` give zero vectors.
        arrays: the arrays of `keras_mpe.codec.array_specs` by name, e.g.
            `PackedTable.arrays()` or a layer's variables; static shapes.
        input_dim: V (Python int).
        nonzero_bit_widths: the K non-zero bit-widths of `step_sizes` (Python ints).

    Returns:
        float32 `ids.shape + [D]`; zeros for 0-bit groups and out-of-range ids.

    Example:

    >>> packed = codec.pack_table(np.array([[0.25], [-0.5]]), [0.25], [0.0], (2,), [0, 0], [2])
    >>> lookup_packed(tf.constant([1, 0, -1]), packed.arrays(), input_dim=2,
    ...               nonzero_bit_widths=(2,)).numpy()
    array([[-0.5 ],
           [ 0.25],
           [ 0.  ]], dtype=float32)
    """
    table = _Arrays.checked(arrays, input_dim, nonzero_bit_widths)
    xla = tf.__internal__.get_enclosing_xla_context() is not None
    ids, valid = ids_in_range(ids, table.input_dim)
    out_shape = tf.concat([tf.shape(ids), [table.dim]], axis=0)
    rows, valid = tf.reshape(ids, [-1]), tf.reshape(valid, [-1])
    if not table.tables:  # every group pruned
        return tf.zeros(out_shape)
    index = None
    if not xla:  # each distinct id once; out-of-range ids share the key V
        keys = tf.where(valid, rows, tf.constant(table.input_dim, tf.uint32))
        keys, index = tf.unique(keys, out_idx=tf.int64)
        valid = keys < table.input_dim
        rows = tf.where(valid, keys, tf.zeros_like(keys))
    bits, local = table.widths_and_rows(rows, valid, xla)
    if xla:
        values = _select_rows(table.tables, bits, local, table.offset, table.dim)
    else:
        values = _partition_rows(table.tables, bits, local, table.offset, table.dim, index)
    return tf.reshape(values, out_shape)


def decoded_kinds(
    ids: Any, arrays: Mapping[str, Any], *, input_dim: int, nonzero_bit_widths: Sequence[int]
) -> tf.Tensor:
    """The kind of each id's row, as a table decoded once keeps it (e.g. when a
    SavedModel loads): uint8, per id `k + 1` where its group has the width
    `nonzero_bit_widths[k]`, 0 where it has 0 bits or the id is out of range. See
    `lookup_decoded`.

    Example:

    >>> packed = codec.pack_table(np.zeros((3, 1)), [0.25, 0.5], [0.0], (0, 2, 4),
    ...                           [0, 1, 2], [0, 2, 4])
    >>> decoded_kinds([0, 1, 2, 3], packed.arrays(), input_dim=3,
    ...               nonzero_bit_widths=(2, 4)).numpy()
    array([0, 1, 2, 0], dtype=uint8)
    """
    table = _Arrays.checked(arrays, input_dim, nonzero_bit_widths)
    bits, _ = table.widths_and_rows(*ids_in_range(ids, table.input_dim), xla=False)
    kind_of_width = np.zeros(checks.MAX_BITS + 1, np.uint8)
    kind_of_width[list(nonzero_bit_widths)] = np.arange(1, len(nonzero_bit_widths) + 1)
    return tf.gather(kind_of_width, tf.cast(bits, tf.int32))


def decoded_codes(
    ids: Any, arrays: Mapping[str, Any], *, input_dim: int, nonzero_bit_widths: Sequence[int]
) -> tf.Tensor:
    """The codes of each id's row, as a table decoded once keeps them (e.g. when a
    SavedModel loads): int8 `[n, D]` for 1-D `ids`, the codes `q` of
    `keras_mpe.quantizers` (`code - 2**(b-1)`), 0 for 0-bit groups and ids out of
    range. See `lookup_decoded`.

    Example:

    >>> packed = codec.pack_table(np.array([[0.25], [-0.5]]), [0.25], [0.0], (2,),
    ...                           [0, 0], [2])
    >>> decoded_codes([0, 1, 2], packed.arrays(), input_dim=2,
    ...               nonzero_bit_widths=(2,)).numpy()
    array([[ 1],
           [-2],
           [ 0]], dtype=int8)
    """
    table = _Arrays.checked(arrays, input_dim, nonzero_bit_widths)
    bits, local = table.widths_and_rows(*ids_in_range(ids, table.input_dim), xla=False)
    partition = tf.cast(bits, tf.int32)
    count = checks.MAX_BITS + 1
    positions = tf.dynamic_partition(tf.range(tf.size(bits)), partition, count)
    locals_ = tf.dynamic_partition(tf.cast(local, tf.int64), partition, count)
    where = [positions[0]]
    pieces = [tf.zeros(tf.stack([tf.size(positions[0]), table.dim]), tf.int8)]
    for b, (rows, _) in table.tables.items():
        codes = _decode_rows(tf.gather(rows, locals_[b]), b, table.dim)
        # code - 2**(b-1) modulo 256, read as int8: the signed code
        pieces.append(tf.bitcast(codes - np.uint8(2 ** (b - 1)), tf.int8))
        where.append(positions[b])
    return tf.dynamic_stitch(where, pieces)


def dequantization_rows(step_sizes: Any, offset: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 `[K + 1, D]` scale and offset rows of each kind (`decoded_kinds`): kind
    0 zeros, kind `k + 1` the step size `step_sizes[k]` and `offset`."""
    step_sizes = tf.convert_to_tensor(step_sizes, tf.float32)
    offset = tf.convert_to_tensor(offset, tf.float32)
    ones = tf.ones_like(offset)[None, :]
    scales = tf.concat([[0.0], step_sizes], axis=0)[:, None] * ones
    present = tf.concat([[0.0], tf.ones_like(step_sizes)], axis=0)[:, None]
    return scales, present * offset[None, :]


def dequantize_kinds(
    codes: tf.Tensor, kinds: tf.Tensor, scale_rows: Any, offset_rows: Any
) -> tf.Tensor:
    """`code * step + offset` of rows of int8 `codes` `[n, D]` of uint8 `kinds`
    `[n]` (`decoded_kinds`), by the rows of `dequantization_rows` (or anything with
    a `gather(indices)` method, such as a `keras_mpe.serving_table.LoadTimeArray`):
    the packed lookup's values bit for bit, in a multiply and an add of whole rows."""
    xla = tf.__internal__.get_enclosing_xla_context() is not None
    kinds = tf.cast(kinds, tf.int32 if xla else tf.int64)  # as `lookup_decoded`'s rows
    scales, offsets = _gather(scale_rows, kinds), _gather(offset_rows, kinds)
    return tf.cast(codes, tf.float32) * scales + offsets


def lookup_decoded(ids: Any, arrays: Mapping[str, Any], *, input_dim: int) -> tf.Tensor:
    """Looks ids up in a table decoded once: one gather of whole rows per id, no
    unique ids, no routing by width, no bit fields.

    `arrays` is either `{"values": float32 [V + 1, D]}` or the int8 form
    `{"codes": decoded_codes(...), "kinds": decoded_kinds(...), "scale_rows": ...,
    "offset_rows": ...}` (`dequantization_rows`), each a tensor, a variable or
    anything with a `gather(indices)` method; the last row is the zero row that
    out-of-range ids look up.

    Returns:
        float32 `ids.shape + [D]`, equal to `lookup_packed` bit for bit.

    Example:

    >>> packed = codec.pack_table(np.array([[0.25], [-0.5]]), [0.25], [0.0], (2,),
    ...                           [0, 0], [2])
    >>> arrays, facts = packed.arrays(), dict(input_dim=2, nonzero_bit_widths=(2,))
    >>> scales, offsets = dequantization_rows(arrays["step_sizes"], arrays["offset"])
    >>> rows = [0, 1, 2]  # the ids, and the zero row
    >>> decoded = {"codes": decoded_codes(rows, arrays, **facts),
    ...            "kinds": decoded_kinds(rows, arrays, **facts),
    ...            "scale_rows": scales, "offset_rows": offsets}
    >>> lookup_decoded(tf.constant([1, 0, -1]), decoded, input_dim=2).numpy()
    array([[-0.5 ],
           [ 0.25],
           [ 0.  ]], dtype=float32)
    """
    input_dim = _check_static(input_dim, ())[0]
    ids, _ = ids_in_range(ids, input_dim, fill=input_dim)  # V: the zero row
    # int64 indices, which a GPU keeps in device memory; int32 under XLA, which then
    # lowers to 32-bit types only (as a TPU needs); cast after the reshape, since a GPU
    # reshapes int32 tensors in host memory
    xla = tf.__internal__.get_enclosing_xla_context() is not None
    rows = tf.cast(tf.reshape(ids, [-1]), tf.int32 if xla else tf.int64)
    if "values" in arrays:
        values = _gather(arrays["values"], rows)
    else:
        codes, kinds = _gather(arrays["codes"], rows), _gather(arrays["kinds"], rows)
        values = dequantize_kinds(codes, kinds, arrays["scale_rows"], arrays["offset_rows"])
    return tf.reshape(values, tf.concat([tf.shape(ids), tf.shape(values)[1:]], axis=0))


def _gather(array: Any, indices: tf.Tensor) -> tf.Tensor:
    """Rows of a tensor or variable, or of anything with a `gather(indices)` method."""
    gather = getattr(array, "gather", None)
    return gather(indices) if gather is not None else tf.gather(array, indices)


def _dequantize(codes: tf.Tensor, bits: int, step: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """`(code - 2**(bits-1)) * step + offset`: the product is exact, one rounding."""
    return (tf.cast(codes, tf.float32) - 2.0 ** (bits - 1)) * step + offset


def _partition_rows(
    tables: dict,
    bits: tf.Tensor,
    local: tf.Tensor,
    offset: tf.Tensor,
    dim: int,
    index: tf.Tensor,
) -> tf.Tensor:
    """Graph mode, on the distinct ids: split by bit-width, one row gather and decode
    per width, the values of every id (`index`: the position of its distinct id) put
    back in id order by one gather (its order from a `scatter_nd` of the positions:
    int64 and float32 throughout, which a GPU keeps in device memory, where it would
    keep `tf.dynamic_stitch`'s indices on the host)."""
    count = checks.MAX_BITS + 1
    partition = tf.cast(bits, tf.int32)
    positions = tf.dynamic_partition(tf.range(tf.size(bits, tf.int64)), partition, count)
    locals_ = tf.dynamic_partition(tf.cast(local, tf.int64), partition, count)
    pieces = [tf.zeros(tf.stack([tf.size(positions[0]), dim]))]
    where = [positions[0]]
    for b, (table, step) in tables.items():
        codes = _decode_rows(tf.gather(table, locals_[b]), b, dim)
        pieces.append(_dequantize(codes, b, step, offset))
        where.append(positions[b])
    where = tf.concat(where, axis=0)
    size = tf.size(where, tf.int64)
    order = tf.scatter_nd(where[:, None], tf.range(size), size[None])
    return tf.gather(tf.concat(pieces, axis=0), tf.gather(order, index))


def _select_rows(
    tables: dict, bits: tf.Tensor, local: tf.Tensor, offset: tf.Tensor, dim: int
) -> tf.Tensor:
    """Under XLA (no dynamic shapes): a row of every width's table for every id
    (row 0 for ids of other widths), decoded, the id's own width kept."""
    values = tf.zeros(tf.stack([tf.size(bits), dim]))
    for b, (table, step) in tables.items():
        mine = tf.equal(bits, b)
        index = tf.cast(tf.where(mine, local, tf.zeros_like(local)), tf.int32)
        decoded = _dequantize(_decode_rows(tf.gather(table, index), b, dim), b, step, offset)
        values = tf.where(mine[:, None], decoded, values)
    return values
