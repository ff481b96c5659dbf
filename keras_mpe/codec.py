"""The packed table: its layout, written down once, and the numpy codec that packs it.

Layout of a packed `[V, D]` table (what `keras_mpe.precision.memory_report` counts,
array for array, what `keras_mpe.PackedEmbedding` stores and what the export saves):

- ``words``: uint32 payload. Groups are stored one after another in *storage order*
  (ascending first row); a group of ``n`` rows at ``b`` bits holds ``n * D * b``
  bits, each value's unsigned code ``q + 2**(b-1)`` (``q`` from
  `keras_mpe.quantizers.quantize_codes`, so the codes match training bit for bit)
  in ``b`` consecutive bits, little-endian bit order: bit ``k`` of a group's stream
  is bit ``k % 32`` of its word ``k // 32``. Row ``r``, dimension ``d`` of a group
  starts at bit ``(r * D + d) * b``. Every group starts on a word boundary and 0-bit
  groups store nothing.
- ``step_sizes``: float32, one per non-zero candidate bit-width.
- ``offset``: float32 ``[D]``.
- ``first_rows``, ``first_words``, ``group_bits``: uint32 ``[G]``, per group (in
  storage order) its first row, its first word and its bit-width. Groups without
  rows come last, with first row ``V``. (uint32, not int32: a GPU gathers uint32
  from a variable in device memory, int32 only on the host.)
- ``permutation``: only when the groups are not contiguous id ranges
  (`keras_mpe.grouping.groups_are_contiguous`): uint32 words holding each id's row
  at ``max(1, ceil(log2 V))`` bits per id, in the same bit order. Rows are the ids
  sorted by (storage position of their group, id). When the groups are contiguous
  the row of an id is the id itself and nothing is stored.

Shape facts that are not arrays (``V``, ``D``, the non-zero candidate bit-widths
the step sizes belong to) are kept as Python values, like a graph's static shapes.
`keras_mpe.lookup.lookup_packed` reads the layout back inside a TF graph.

Example:

>>> table = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
>>> packed = pack_table(table, step_sizes=[0.4, 0.1], offset=[0.0, 0.0],
...                     bit_widths=(0, 2, 8), id_to_group=[2, 2, 1, 1, 0, 0],
...                     group_bits=[0, 2, 8])
>>> packed.lookup([0, 3, 5]).numpy()  # 8 bits; 2 bits (clipped at code 1); 0 bits
array([[0. , 0.1],
       [0.4, 0.4],
       [0. , 0. ]], dtype=float32)
>>> packed.nbytes == packed.memory_report()["total_bytes"]
True

Nothing here imports Keras, so both Keras flavours share it.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, grouping, lookup, precision, quantizers

MAX_BITS = checks.MAX_BITS
# the arrays of a packed table, in the order they are stored (the permutation only if
# the groups are not contiguous id ranges)
ARRAYS = (
    "words",
    "first_rows",
    "first_words",
    "group_bits",
    "step_sizes",
    "offset",
    "permutation",
)
_MAX_WORDS = 2**31 - 1  # word indices are int32
_PACK_CHUNK = 32 * 8192  # values packed at a time; a multiple of 32 keeps chunks word-aligned
_QUANTIZE_CHUNK = 1 << 18  # rows quantized at a time (one compiled shape, plus the rest)


@dataclasses.dataclass(frozen=True)
class PackedTable:
    """A packed embedding table: the arrays `memory_report` counts, and static facts.

    Attributes:
        words: uint32 payload words.
        first_rows: uint32 `[G]` first row of each group, in storage order (ascending).
        first_words: uint32 `[G]` first payload word of each group.
        group_bits: uint32 `[G]` bit-width of each group.
        step_sizes: float32 `[K]` step size of each non-zero candidate bit-width.
        offset: float32 `[D]`.
        permutation: uint32 words of the packed id-to-row map, or None when the
            groups are contiguous id ranges (then the row of an id is the id).
        nonzero_bit_widths: the K non-zero candidate bit-widths, ascending (static).
        input_dim: V, the number of ids (static).
        output_dim: D (static).
    """

    words: np.ndarray
    first_rows: np.ndarray
    first_words: np.ndarray
    group_bits: np.ndarray
    step_sizes: np.ndarray
    offset: np.ndarray
    permutation: np.ndarray | None
    nonzero_bit_widths: tuple[int, ...]
    input_dim: int
    output_dim: int

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays by name, in `ARRAYS` order (no `permutation` entry when
        none is needed)."""
        return {name: getattr(self, name) for name in ARRAYS if getattr(self, name) is not None}

    @property
    def nbytes(self) -> int:
        """Total bytes of the stored arrays."""
        return int(sum(array.nbytes for array in self.arrays().values()))

    @property
    def rows_per_group(self) -> np.ndarray:
        """int64 `[G]` rows of each group, in storage order."""
        bounds = np.append(self.first_rows.astype(np.int64), self.input_dim)
        return np.diff(bounds)

    @property
    def max_bits(self) -> int:
        """The largest bit-width of any group (0 when every group is pruned)."""
        return int(self.group_bits.max(initial=0))

    def memory_report(self) -> dict:
        """`keras_mpe.precision.memory_report` of this table; its `total_bytes` equals
        `nbytes`."""
        return precision.memory_report(
            rows_per_group=self.rows_per_group,
            group_bits=self.group_bits,
            output_dim=self.output_dim,
            num_step_sizes=len(self.nonzero_bit_widths),
            needs_permutation=self.permutation is not None,
        )

    def lookup(self, ids: Any) -> tf.Tensor:
        """`keras_mpe.lookup.lookup_packed` over this table's arrays (as constants)."""
        return lookup.lookup_packed(
            ids,
            **self.arrays(),
            input_dim=self.input_dim,
            nonzero_bit_widths=self.nonzero_bit_widths,
            max_bits=self.max_bits,
        )


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


def pack_table(
    table: Any,
    step_sizes: Any,
    offset: Any,
    bit_widths: Sequence[int],
    id_to_group: Any,
    group_bits: Any,
) -> PackedTable:
    """Quantizes and packs a table at per-group bit-widths, bit-exact with training.

    The codes come from `keras_mpe.quantizers.quantize_codes`, called as the layer's
    retrain state calls it (one step size and bit-width per row), so looking up the
    packed table gives exactly the layer's fake-quantized rows.

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
        A `PackedTable`; its `nbytes` equals `memory_report()["total_bytes"]`.

    Example:

    >>> table = np.array([[0.1, -0.2], [0.3, 0.0], [-0.5, 0.4]], np.float32)
    >>> packed = pack_table(table, [0.1], np.zeros(2), (0, 4), [1, 1, 0], [0, 4])
    >>> packed.words, packed.group_bits
    (array([35689], dtype=uint32), array([4, 0], dtype=uint32))
    >>> packed.first_rows, packed.first_words
    (array([0, 2], dtype=uint32), array([0, 1], dtype=uint32))
    >>> packed.lookup([[1, 2, 7]]).numpy().round(3)
    array([[[0.3, 0. ],
            [0. , 0. ],
            [0. , 0. ]]], dtype=float32)
    >>> packed.nbytes == packed.memory_report()["total_bytes"] == 4 * (1 + 1 + 2 + 3 * 2)
    True
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
    beta = checks.float_array("offset", offset, (output_dim,), "[output_dim]")
    bits_array = np.asarray(group_bits)
    if bits_array.ndim != 1 or bits_array.size < 1:
        raise ValueError(
            f"`group_bits` must be a non-empty 1-D array, one bit-width per group. "
            f"Received shape {bits_array.shape}."
        )
    num_groups = bits_array.size
    bits = checks.int_array("group_bits", group_bits, (num_groups,), 0, MAX_BITS)
    unknown = ~np.isin(bits, (0,) + nonzero)
    if unknown.any():
        index = int(np.argmax(unknown))
        raise ValueError(
            f"`group_bits` must be 0 or one of the candidates {candidates}. "
            f"Received group_bits[{index}]={bits[index]}."
        )
    groups = checks.int_array("id_to_group", id_to_group, (input_dim,), 0, num_groups - 1)

    # storage order: groups by their smallest id (empty groups last); rows: ids sorted
    # by (storage position of their group, id), the identity for contiguous groups
    smallest = np.full(num_groups, input_dim, np.int64)
    np.minimum.at(smallest, groups, np.arange(input_dim))
    storage = np.lexsort((np.arange(num_groups), smallest))
    position = np.empty(num_groups, np.int64)
    position[storage] = np.arange(num_groups)
    row_to_id = np.argsort(position[groups], kind="stable")
    contiguous = grouping.groups_are_contiguous(groups)
    if contiguous and not np.array_equal(row_to_id, np.arange(input_dim)):
        raise AssertionError("contiguous groups must keep ids as rows")  # pragma: no cover

    rows = np.bincount(groups, minlength=num_groups)[storage]
    stored_bits = bits[storage]
    group_words = precision.payload_words(rows, stored_bits, output_dim)
    first_words = np.concatenate([[0], np.cumsum(group_words)[:-1]])
    total_words = int(group_words.sum())
    if total_words > _MAX_WORDS:
        raise ValueError(
            f"The packed payload needs {total_words} uint32 words; at most {_MAX_WORDS} "
            "(int32 word indices) are supported. Split the table."
        )
    first_rows = np.concatenate([[0], np.cumsum(rows)[:-1]])

    def read_rows(ids: np.ndarray) -> np.ndarray:
        """float32 `[len(ids), D]` rows of the table, checked to be finite."""
        rows = tf.gather(values, ids).numpy() if in_tf else values[ids]
        rows = rows.astype(np.float32, copy=False)
        bad = ~np.isfinite(rows)
        if bad.any():
            row, column = np.unravel_index(np.argmax(bad), bad.shape)
            raise ValueError(
                f"`table` must be finite. Received table[{ids[row]}, {column}]="
                f"{rows[row, column]}."
            )
        return rows

    # group by group, in chunks of a fixed number of rows: codes exactly as the
    # retrain state computes them (one step size and bit-width per row), stored
    # unsigned in uint8, then packed; every row is read, so every row is checked
    step_by_bits = np.ones(MAX_BITS + 1, np.float32)
    step_by_bits[list(nonzero)] = steps
    words = np.zeros(total_words, np.uint32)
    for slot in range(num_groups):
        b, start, count = int(stored_bits[slot]), int(first_rows[slot]), int(rows[slot])
        codes = np.empty((count, output_dim), np.uint8) if b else None
        for begin in range(0, count, _QUANTIZE_CHUNK):
            end = min(begin + _QUANTIZE_CHUNK, count)
            chunk = read_rows(row_to_id[start + begin : start + end])
            if b:
                signed = quantizers.quantize_codes(
                    tf.constant(chunk),
                    tf.constant(np.full((end - begin, 1), step_by_bits[b], np.float32)),
                    tf.constant(beta),
                    tf.constant(np.full((end - begin, 1), b, np.int32)),
                ).numpy()
                codes[begin:end] = signed + np.float32(2 ** (b - 1))
        if b and count:
            packed = pack_bits(codes, b)
            words[first_words[slot] : first_words[slot] + packed.size] = packed

    permutation = None
    if not contiguous:
        id_to_row = np.empty(input_dim, np.int64)
        id_to_row[row_to_id] = np.arange(input_dim)
        permutation = pack_bits(id_to_row, precision.id_bits(input_dim))
    return PackedTable(
        words=words,
        first_rows=first_rows.astype(np.uint32),
        first_words=first_words.astype(np.uint32),
        group_bits=stored_bits.astype(np.uint32),
        step_sizes=steps,
        offset=beta,
        permutation=permutation,
        nonzero_bit_widths=nonzero,
        input_dim=int(input_dim),
        output_dim=int(output_dim),
    )
