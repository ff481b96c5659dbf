"""The packed table: its layout, written down once, and the numpy codec that packs it.

Layout of a packed `[V, D]` table, format `FORMAT` (what `keras_mpe.precision.memory_report`
counts, array for array, what `keras_mpe.PackedEmbedding` stores and what the export
saves; `array_specs` gives each array's name, shape and dtype):

- ``rows_<b>``, one per non-zero candidate bit-width ``b``: uint8
  ``[rows of width b, row_bytes(b, D)]``, the rows of every group at ``b`` bits, one
  after another in *storage order* (groups by ascending first row). A row holds each
  value's unsigned code ``q + 2**(b-1)`` (``q`` from
  `keras_mpe.quantizers.quantize_codes`, so the codes match training bit for bit)
  split into the power-of-two bit planes ``PLANES[b]`` (e.g. 6 = 4 + 2), the plane
  of the high bits first. A plane of ``p`` bits takes ``n = ceil(D * p / 8)`` bytes:
  value ``d`` is in bits ``[s * p, (s + 1) * p)`` of the plane's byte ``j``, with
  ``s, j = divmod(d, n)``, so that a whole row decodes with a shift and a mask by
  scalars per field. When ``D`` is a multiple of 8 a row is exactly ``D * b / 8``
  bytes. 0-bit groups store nothing.
- ``first_rows``: uint32 ``[G]``, per group in storage order its first row. Groups
  without rows come last, with first row ``V``.
- ``row_shift``: uint32 ``[G]``, per group what turns a row into its row of
  ``rows_<b>``: ``(row + row_shift) mod 2**32`` (0 for 0-bit groups).
- ``group_bits``: uint32 ``[G]``, per group its bit-width.
- ``step_sizes``: float32, one per non-zero candidate bit-width, each of at most
  `keras_mpe.quantizers.STEP_BITS` significant bits, so that the value
  ``(code - 2**(b-1)) * step + offset`` rounds once in a multiply and an add.
- ``offset``: float32 ``[D]``.
- ``permutation``: only when the groups are not contiguous id ranges
  (`keras_mpe.grouping.groups_are_contiguous`): uint32 words holding each id's row
  at ``id_bits(V)`` bits per id, little-endian (`pack_bits`). Rows are the ids
  sorted by (storage position of their group, id). When the groups are contiguous
  the row of an id is the id itself and nothing is stored.

(uint32, not int32, and uint8 tables: a GPU gathers them from a variable in device
memory, int32 only on the host.) Shape facts that are not arrays (``V``, ``D``, the
non-zero candidate bit-widths the step sizes belong to) are kept as Python values,
like a graph's static shapes. `keras_mpe.lookup.lookup_packed` reads the layout back
inside a TF graph.

Example:

>>> from keras_mpe import lookup
>>> table = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
>>> packed = pack_table(table, step_sizes=[0.5, 0.125], offset=[0.0, 0.0],
...                     bit_widths=(0, 2, 8), id_to_group=[2, 2, 1, 1, 0, 0],
...                     group_bits=[0, 2, 8])
>>> sorted(packed.arrays())
['first_rows', 'group_bits', 'offset', 'row_shift', 'rows_2', 'rows_8', 'step_sizes']
>>> lookup.lookup_packed([0, 3, 5], packed.arrays(), input_dim=6,
...                      nonzero_bit_widths=(2, 8)).numpy()  # 8 bits; 2 (clipped); 0
array([[0.   , 0.125],
       [0.5  , 0.5  ],
       [0.   , 0.   ]], dtype=float32)

Nothing here imports Keras, so both Keras flavours share it.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, grouping, quantizers

FORMAT = 2  # the layout's version, written in each export's metadata
# the bit planes of each bit-width, high bits first
PLANES = {1: (1,), 2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 7: (4, 2, 1), 8: (8,)}
GROUP_FIELDS = ("first_rows", "row_shift", "group_bits")  # one uint32 each per group
_QUANTIZE_CHUNK = 1 << 18  # rows quantized at a time (one compiled shape, plus the rest)
_PACK_CHUNK = 32 * 8192  # values packed at a time; a multiple of 32 keeps chunks word-aligned


def table_name(bits: int) -> str:
    """The name of the array of the rows at `bits` bits.

    >>> table_name(4)
    'rows_4'
    """
    return f"rows_{bits}"


def plane_bytes(planes: int, output_dim: int) -> int:
    """Bytes of a `planes`-bit plane of a row of `output_dim` values.

    >>> plane_bytes(2, 16), plane_bytes(2, 10)
    (4, 3)
    """
    return -(-output_dim * planes // 8)


def row_bytes(bits: int, output_dim: int) -> int:
    """Bytes of one row at `bits` bits (0 for 0 bits): its planes' bytes.

    >>> row_bytes(6, 16), row_bytes(3, 10), row_bytes(0, 16)
    (12, 5, 0)
    """
    return sum(plane_bytes(p, output_dim) for p in PLANES.get(bits, ()))


def id_bits(input_dim: int) -> int:
    """Bits per id of the packed permutation: `max(1, ceil(log2(input_dim)))`.

    >>> id_bits(1000), id_bits(1024), id_bits(1)
    (10, 10, 1)
    """
    return max(1, math.ceil(math.log2(input_dim)))


def permutation_words(input_dim: int) -> int:
    """uint32 words of an id-to-row permutation of `input_dim` ids.

    >>> permutation_words(1000)
    313
    """
    return -(-input_dim * id_bits(input_dim) // 32)


def code_bytes(rows_per_group: Any, group_bits: Any, output_dim: int) -> int:
    """Bytes the codes alone take, `ceil(sum(rows * bits) * D / 8)`: the payload
    without the padding of rows to whole bytes.

    >>> code_bytes([3, 5], [0, 3], 10), code_bytes([10], [2.5], 16)
    (19, 50)
    """
    rows = np.asarray(rows_per_group, np.int64)
    bits = np.asarray(group_bits)
    return int(math.ceil((rows * bits).sum() * output_dim / 8))


def payload_bytes(rows_per_group: Any, group_bits: Any, output_dim: int) -> int:
    """Bytes of the `rows_<b>` arrays for groups of these rows and bits: `code_bytes`
    when D is a multiple of 8, more (each plane of a row padded to whole bytes)
    otherwise. Fractional bits (a search's expected bits) count `code_bytes`, an
    estimate.

    >>> payload_bytes([3, 5], [0, 3], 16), payload_bytes([3, 5], [0, 3], 10)
    (30, 25)
    """
    rows = np.asarray(rows_per_group, np.int64)
    bits = np.asarray(group_bits)
    if np.issubdtype(bits.dtype, np.integer) or np.array_equal(bits, np.round(bits)):
        per_row = np.array([row_bytes(b, output_dim) for b in range(checks.MAX_BITS + 1)])
        return int((rows * per_row[np.asarray(bits, np.int64)]).sum())
    return code_bytes(rows, bits, output_dim)


def overhead_bytes(
    groups: int, output_dim: int, num_step_sizes: int, input_dim: int | None
) -> int:
    """Bytes of every array but the rows: the per-group fields, the step sizes, the
    offset and, when `input_dim` is given, the permutation of that many ids.

    >>> overhead_bytes(4, 16, 6, None), overhead_bytes(4, 16, 6, 1000)
    (136, 1388)
    """
    words = len(GROUP_FIELDS) * groups + num_step_sizes + output_dim
    return 4 * (words + (permutation_words(input_dim) if input_dim else 0))


def array_specs(
    output_dim: int,
    nonzero_bit_widths: Sequence[int],
    width_rows: Sequence[int],
    groups: int,
    permutation: int | None,
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every stored array's `(shape, dtype)` by name, in storage order.

    Args:
        output_dim: D.
        nonzero_bit_widths: the non-zero candidate bit-widths.
        width_rows: the rows stored at each of them.
        groups: G.
        permutation: the words of the permutation, or None when none is stored.

    Example:

    >>> array_specs(16, (2, 4), (10, 0), 3, None)
    {'rows_2': ((10, 4), 'uint8'), 'rows_4': ((0, 8), 'uint8'), \
'first_rows': ((3,), 'uint32'), 'row_shift': ((3,), 'uint32'), \
'group_bits': ((3,), 'uint32'), 'step_sizes': ((2,), 'float32'), \
'offset': ((16,), 'float32')}
    """
    specs = {
        table_name(b): ((int(rows), row_bytes(b, output_dim)), "uint8")
        for b, rows in zip(nonzero_bit_widths, width_rows, strict=True)
    }
    specs.update({field: ((groups,), "uint32") for field in GROUP_FIELDS})
    specs["step_sizes"] = ((len(nonzero_bit_widths),), "float32")
    specs["offset"] = ((output_dim,), "float32")
    if permutation is not None:
        specs["permutation"] = ((permutation,), "uint32")
    return specs


@dataclasses.dataclass(frozen=True)
class PackedTable:
    """A packed embedding table: the arrays of the layout, and static facts.

    Attributes:
        tables: uint8 `rows_<b>` array of each non-zero candidate bit-width `b`.
        first_rows: uint32 `[G]` first row of each group, in storage order (ascending).
        row_shift: uint32 `[G]` what turns a group's rows into rows of its table.
        group_bits: uint32 `[G]` bit-width of each group.
        step_sizes: float32 `[K]` step size of each non-zero candidate bit-width.
        offset: float32 `[D]`.
        permutation: uint32 words of the packed id-to-row map, or None when the
            groups are contiguous id ranges (then the row of an id is the id).
        nonzero_bit_widths: the K non-zero candidate bit-widths, ascending (static).
        input_dim: V, the number of ids (static).
        output_dim: D (static).
    """

    tables: dict[int, np.ndarray]
    first_rows: np.ndarray
    row_shift: np.ndarray
    group_bits: np.ndarray
    step_sizes: np.ndarray
    offset: np.ndarray
    permutation: np.ndarray | None
    nonzero_bit_widths: tuple[int, ...]
    input_dim: int
    output_dim: int

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, np.ndarray],
        nonzero_bit_widths: Sequence[int],
        input_dim: int,
        output_dim: int,
    ) -> "PackedTable":
        """The table of stored arrays named as `array_specs` names them."""
        widths = tuple(int(b) for b in nonzero_bit_widths)
        return cls(
            tables={b: arrays[table_name(b)] for b in widths},
            **{field: arrays[field] for field in (*GROUP_FIELDS, "step_sizes", "offset")},
            permutation=arrays.get("permutation"),
            nonzero_bit_widths=widths,
            input_dim=int(input_dim),
            output_dim=int(output_dim),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays by name, in `array_specs` order (no `permutation` entry
        when none is needed)."""
        arrays = {table_name(b): self.tables[b] for b in self.nonzero_bit_widths}
        arrays.update({field: getattr(self, field) for field in GROUP_FIELDS})
        arrays.update(step_sizes=self.step_sizes, offset=self.offset)
        if self.permutation is not None:
            arrays["permutation"] = self.permutation
        return arrays

    def specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """`array_specs` of this table's static facts: what its arrays must be."""
        return array_specs(
            self.output_dim,
            self.nonzero_bit_widths,
            [len(self.tables[b]) for b in self.nonzero_bit_widths],
            self.group_bits.size,
            None if self.permutation is None else permutation_words(self.input_dim),
        )

    @property
    def nbytes(self) -> int:
        """Total bytes of the stored arrays."""
        return int(sum(array.nbytes for array in self.arrays().values()))

    @property
    def rows_per_group(self) -> np.ndarray:
        """int64 `[G]` rows of each group, in storage order."""
        bounds = np.append(self.first_rows.astype(np.int64), self.input_dim)
        return np.diff(bounds)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Packs unsigned `values` at `bits` bits each into uint32 words, little-endian.

    Value `i` occupies bits `[i * bits, (i + 1) * bits)` of the stream; stream bit `k`
    is bit `k % 32` of word `k // 32`. Returns `ceil(len(values) * bits / 32)` words.

    Args:
        values: non-negative integers below `2**bits`, any shape (flattened).
        bits: bits per value, in `[0, 32]`.

    Example:

    >>> pack_bits(np.array([1, 2, 3]), 2)
    array([57], dtype=uint32)
    >>> pack_bits(np.zeros(3, int), 0).size
    0
    """
    if not checks.is_int(bits) or not 0 <= bits <= 32:
        raise ValueError(f"`bits` must be an integer in [0, 32]. Received: bits={bits!r}")
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or (bits < 32 and flat.max() >= 2**bits)):
        raise ValueError(
            f"`values` must be in [0, 2**bits) = [0, {2**bits}). "
            f"Received values in [{flat.min()}, {flat.max()}]."
        )
    flat = flat.astype(np.uint32)
    words = np.zeros(-(-flat.size * bits // 32), np.uint32)
    shifts = np.arange(bits, dtype=np.uint32)
    for start in range(0, flat.size if bits else 0, _PACK_CHUNK):
        chunk = flat[start : start + _PACK_CHUNK]
        stream = ((chunk[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
        packed = np.packbits(stream, bitorder="little")
        packed = np.concatenate([packed, np.zeros(-packed.size % 4, np.uint8)])
        chunk_words = packed.view("<u4").astype(np.uint32)
        first = start * bits // 32
        words[first : first + chunk_words.size] = chunk_words
    return words


def unpack_bits(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` values of `bits` bits each in `words`, as `pack_bits` laid
    them out; uint32.

    Example:

    >>> unpack_bits(pack_bits(np.array([1, 2, 3]), 2), 2, 3)
    array([1, 2, 3], dtype=uint32)
    """
    if not checks.is_int(bits) or not 1 <= bits <= 32:
        raise ValueError(f"`bits` must be an integer in [1, 32]. Received: bits={bits!r}")
    if words.size * 32 < count * bits:
        raise ValueError(
            f"`words` holds {words.size} words; {count} values of {bits} bits need "
            f"{-(-count * bits // 32)}."
        )
    spare = np.append(words, 0).astype(np.uint64)  # the last value's next word
    values = np.empty(count, np.uint32)
    for start in range(0, count, _PACK_CHUNK):
        position = np.arange(start, min(count, start + _PACK_CHUNK), dtype=np.uint64) * bits
        word, shift = position // 32, position % 32
        pair = spare[word] | (spare[word + 1] << np.uint64(32))
        values[start : start + word.size] = (pair >> shift) & np.uint64(2**bits - 1)
    return values


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 `[n, D]` unsigned codes of `bits` bits -> uint8 `[n, row_bytes(bits, D)]`
    rows of the layout (bit planes, high bits first).

    Example:

    >>> pack_rows(np.array([[1, 2, 3, 0, 1, 2, 3, 0, 3]]), 2)  # 3 bytes, 4 values each
    array([[49,  6, 59]], dtype=uint8)
    """
    codes = np.asarray(codes, np.uint8)
    count, dim = codes.shape
    planes, low = [], bits
    for p in PLANES[bits]:
        low -= p
        width = plane_bytes(p, dim)
        fields = np.zeros((count, width * (8 // p)), np.uint8)
        fields[:, :dim] = (codes >> low) & (2**p - 1)
        fields = fields.reshape(count, 8 // p, width)
        plane = np.zeros((count, width), np.uint8)
        for s in range(8 // p):
            plane |= fields[:, s] << np.uint8(s * p)
        planes.append(plane)
    return np.concatenate(planes, axis=1)


def unpack_rows(rows: np.ndarray, bits: int, output_dim: int) -> np.ndarray:
    """The uint8 `[n, D]` codes of rows packed by `pack_rows`.

    Example:

    >>> unpack_rows(np.array([[49, 6, 59]], np.uint8), 2, 9).tolist()
    [[1, 2, 3, 0, 1, 2, 3, 0, 3]]
    """
    codes = np.zeros((rows.shape[0], output_dim), np.uint8)
    start, low = 0, bits
    for p in PLANES[bits]:
        low -= p
        width = plane_bytes(p, output_dim)
        plane = rows[:, start : start + width]
        fields = [(plane >> np.uint8(s * p)) & np.uint8(2**p - 1) for s in range(8 // p)]
        codes |= np.concatenate(fields, axis=1)[:, :output_dim] << np.uint8(low)
        start += width
    return codes


def storage_order(id_to_group: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """`(storage, row_to_id)`: the groups in storage order (by smallest id, groups
    without ids last) and the id of each row (ids sorted by the storage position of
    their group, then by id; the identity for contiguous groups)."""
    input_dim = id_to_group.size
    smallest = np.full(num_groups, input_dim, np.int64)
    np.minimum.at(smallest, id_to_group, np.arange(input_dim))
    storage = np.lexsort((np.arange(num_groups), smallest))
    position = np.empty(num_groups, np.int64)
    position[storage] = np.arange(num_groups)
    return storage, np.argsort(position[id_to_group], kind="stable")


def _first_width_rows(
    rows: np.ndarray, stored_bits: np.ndarray, nonzero: Sequence[int]
) -> np.ndarray:
    """Each group's (in storage order) first row in its bit-width's table: the rows
    of the groups of its width before it.

    >>> _first_width_rows(np.array([2, 3, 4, 1]), np.array([4, 0, 4, 2]), (2, 4))
    array([0, 0, 2, 0])
    """
    first = np.zeros(rows.size, np.int64)
    for b in nonzero:
        mine = stored_bits == b
        first[mine] = np.concatenate([[0], np.cumsum(rows[mine])[:-1]])
    return first


def _read_rows(values: Any, ids: np.ndarray) -> np.ndarray:
    """float32 `[len(ids), D]` rows of `values` (numpy, a tensor or a variable),
    checked to be finite."""
    rows = values[ids] if isinstance(values, np.ndarray) else tf.gather(values, ids).numpy()
    rows = rows.astype(np.float32, copy=False)
    bad = ~np.isfinite(rows)
    if bad.any():
        row, column = np.unravel_index(np.argmax(bad), bad.shape)
        raise ValueError(
            f"`table` must be finite. Received table[{ids[row]}, {column}]={rows[row, column]}."
        )
    return rows


def _codes(
    chunk: np.ndarray, steps: np.ndarray, offset: np.ndarray, bits: np.ndarray
) -> np.ndarray:
    """The signed codes of `chunk`'s rows, each at its own step size and bit-width,
    exactly as the retrain state computes them (one step size and bit-width per
    row)."""
    return quantizers.quantize_codes(
        tf.constant(chunk),
        tf.constant(steps[:, None]),
        tf.constant(offset),
        tf.constant(bits.astype(np.int32)[:, None]),
    ).numpy()


def pack_table(
    table: Any,
    step_sizes: Any,
    offset: Any,
    bit_widths: Sequence[int],
    id_to_group: Any,
    group_bits: Any,
) -> PackedTable:
    """Quantizes and packs a table at per-group bit-widths, bit-exact with training.

    The step sizes are rounded as `keras_mpe.quantizers.round_step_sizes` rounds them
    (a layer's `step_sizes` already are), and the codes come from
    `keras_mpe.quantizers.quantize_codes`, called as the layer's retrain state calls
    it (one step size and bit-width per row), so looking up the packed table gives
    exactly the layer's fake-quantized rows.

    Args:
        table: float `[V, D]`, the float table (e.g. `layer.embeddings`); a variable
            or tensor is read in chunks of rows, so packing needs no float copy.
        step_sizes: float `[K]`, one step size per non-zero entry of `bit_widths`
            (e.g. `layer.step_sizes`), each > 0.
        offset: float `[D]`, the offset `beta` (e.g. `layer.offset`).
        bit_widths: the candidate bit-widths, strictly increasing, in `0..8`.
        id_to_group: integer `[V]`, the group of each id, in `[0, G)`.
        group_bits: integer `[G]`, the bit-width of each group: 0 or a candidate.

    Returns:
        A `PackedTable`.

    Example:

    >>> table = np.array([[0.1, -0.2], [0.3, 0.0], [-0.5, 0.4]], np.float32)
    >>> packed = pack_table(table, [0.125], np.zeros(2), (0, 4), [1, 1, 0], [0, 4])
    >>> packed.tables[4], packed.group_bits
    (array([[105],
           [138]], dtype=uint8), array([4, 0], dtype=uint32))
    >>> packed.first_rows, packed.row_shift
    (array([0, 2], dtype=uint32), array([0, 0], dtype=uint32))
    """
    candidates = checks.bit_widths(bit_widths)
    nonzero = tuple(b for b in candidates if b > 0)
    # a variable or tensor (a Keras 3 variable too) is read a chunk of rows at a
    # time, never copied whole
    in_tf = tf.is_tensor(table) or isinstance(table, tf.Variable)
    values = table if in_tf else np.asarray(table)
    shape = tuple(values.shape)
    if len(shape) != 2 or not shape[0] or not shape[1]:
        raise ValueError(
            f"`table` must be a non-empty 2-D array [input_dim, output_dim]. "
            f"Received shape {shape}."
        )
    input_dim, output_dim = shape
    dtype = np.dtype(tf.as_dtype(values.dtype).as_numpy_dtype) if in_tf else values.dtype
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"`table` must hold numbers. Received an array of dtype {dtype}.")
    steps = checks.float_array(
        "step_sizes", step_sizes, (len(nonzero),), f"one per non-zero bit-width of {candidates}"
    )
    if (steps <= 0).any():
        raise ValueError(f"`step_sizes` must all be > 0. Received: step_sizes={steps.tolist()}")
    steps = quantizers.round_step_sizes(steps).numpy()
    beta = checks.float_array("offset", offset, (output_dim,), "[output_dim]")
    bits_array = np.asarray(group_bits)
    if bits_array.ndim != 1 or bits_array.size < 1:
        raise ValueError(
            f"`group_bits` must be a non-empty 1-D array, one bit-width per group. "
            f"Received shape {bits_array.shape}."
        )
    num_groups = bits_array.size
    bits = checks.int_array("group_bits", group_bits, (num_groups,), 0, checks.MAX_BITS)
    unknown = ~np.isin(bits, (0,) + nonzero)
    if unknown.any():
        index = int(np.argmax(unknown))
        raise ValueError(
            f"`group_bits` must be 0 or one of the candidates {candidates}. "
            f"Received group_bits[{index}]={bits[index]}."
        )
    groups = checks.int_array("id_to_group", id_to_group, (input_dim,), 0, num_groups - 1)
    storage, row_to_id = storage_order(groups, num_groups)
    rows = np.bincount(groups, minlength=num_groups)[storage]
    stored_bits = bits[storage]
    first_rows = np.concatenate([[0], np.cumsum(rows)[:-1]])
    first_width_rows = _first_width_rows(rows, stored_bits, nonzero)
    tables = {
        b: np.zeros((int(rows[stored_bits == b].sum()), row_bytes(b, output_dim)), np.uint8)
        for b in nonzero
    }
    step_by_bits = np.ones(checks.MAX_BITS + 1, np.float32)
    step_by_bits[list(nonzero)] = steps
    # the rows in storage order, in chunks of a fixed number of rows (one compiled
    # shape, plus the last), each row at its group's bits; a width's rows come in the
    # order its table stores them. Every row is read, so every row is checked.
    row_bits = np.repeat(stored_bits.astype(np.uint8), rows)
    filled = dict.fromkeys(nonzero, 0)
    for start in range(0, input_dim, _QUANTIZE_CHUNK):
        chunk_bits = row_bits[start : start + _QUANTIZE_CHUNK]
        chunk = _read_rows(values, row_to_id[start : start + _QUANTIZE_CHUNK])
        codes = _codes(chunk, step_by_bits[chunk_bits], beta, chunk_bits)
        for b in nonzero:
            mine = chunk_bits == b
            count = int(np.count_nonzero(mine))
            if count:
                unsigned = (codes[mine] + np.float32(2 ** (b - 1))).astype(np.uint8)
                tables[b][filled[b] : filled[b] + count] = pack_rows(unsigned, b)
                filled[b] += count

    permutation = None
    if not grouping.groups_are_contiguous(groups):
        id_to_row = np.empty(input_dim, np.int64)
        id_to_row[row_to_id] = np.arange(input_dim)
        permutation = pack_bits(id_to_row, id_bits(input_dim))
    return PackedTable(
        tables=tables,
        first_rows=first_rows.astype(np.uint32),
        row_shift=np.where(stored_bits > 0, (first_width_rows - first_rows) % 2**32, 0).astype(
            np.uint32
        ),
        group_bits=stored_bits.astype(np.uint32),
        step_sizes=steps,
        offset=beta,
        permutation=permutation,
        nonzero_bit_widths=nonzero,
        input_dim=int(input_dim),
        output_dim=int(output_dim),
    )
