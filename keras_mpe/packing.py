"""Bit-exact packing of a quantized table (numpy, at export) and its lookup (TF ops).

The layout is the one `keras_mpe.precision.memory_report` counts, array for array:

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
- ``first_rows``, ``first_words``, ``group_bits``: int32 ``[G]``, per group (in
  storage order) its first row, its first word and its bit-width. Groups without
  rows come last, with first row ``V``.
- ``permutation``: only when the groups are not contiguous id ranges
  (`keras_mpe.grouping.groups_are_contiguous`): uint32 words holding each id's row
  at ``max(1, ceil(log2 V))`` bits per id, in the same bit order. Rows are the ids
  sorted by (storage position of their group, id). When the groups are contiguous
  the row of an id is the id itself and nothing is stored.

Shape facts that are not arrays (``V``, ``D``, the non-zero candidate bit-widths
the step sizes belong to) are kept as Python values, like a graph's static shapes.

`lookup_packed` serves ids from these arrays with core TF ops only: it finds each
id's row (unpacking the permutation if there is one) and group, gathers only the
words holding the id's codes and unpacks those, with 32-bit integer arithmetic (no
int64, no shifts of 8-bit integers); it compiles with XLA. Values are
``(code - 2**(b-1)) * step_size_b + offset`` rounded once, as the fused multiply-add
of training's XLA-compiled quantizer, so a packed lookup equals the retrain-state
layer's output bit for bit, compiled or not.

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
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import grouping, precision, quantizers

MAX_BITS = precision.MAX_BITS
_MAX_WORDS = 2**31 - 1  # word indices are int32
_PACK_CHUNK = 32 * 8192  # values packed at a time; a multiple of 32 keeps chunks word-aligned
_QUANTIZE_CHUNK = 1 << 18  # rows quantized at a time (one compiled shape, plus the rest)


@dataclasses.dataclass(frozen=True)
class PackedTable:
    """A packed embedding table: the arrays `memory_report` counts, and static facts.

    Attributes:
        words: uint32 payload words.
        first_rows: int32 `[G]` first row of each group, in storage order (ascending).
        first_words: int32 `[G]` first payload word of each group.
        group_bits: int32 `[G]` bit-width of each group.
        step_sizes: float32 `[K]` step size of each non-zero candidate bit-width.
        offset: float32 `[D]`.
        permutation: uint32 words of the packed id-to-row map, or None when the
            groups are contiguous id ranges (then the row of an id is the id).
        step_bit_widths: the K non-zero candidate bit-widths, ascending (static).
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
    step_bit_widths: tuple[int, ...]
    input_dim: int
    output_dim: int

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays by name (no `permutation` entry when none is needed)."""
        names = ["words", "first_rows", "first_words", "group_bits", "step_sizes", "offset"]
        if self.permutation is not None:
            names.append("permutation")
        return {name: getattr(self, name) for name in names}

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
            bits_per_group=self.group_bits,
            output_dim=self.output_dim,
            num_step_sizes=len(self.step_bit_widths),
            needs_permutation=self.permutation is not None,
        )

    def lookup(self, ids: Any) -> tf.Tensor:
        """`lookup_packed` over this table's arrays (as constants)."""
        return lookup_packed(
            ids,
            words=self.words,
            first_rows=self.first_rows,
            first_words=self.first_words,
            group_bits=self.group_bits,
            step_sizes=self.step_sizes,
            offset=self.offset,
            permutation=self.permutation,
            input_dim=self.input_dim,
            step_bit_widths=self.step_bit_widths,
            max_bits=self.max_bits,
        )


# --------------------------------------------------------------------- checks
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _float_array(name: str, value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(value.numpy() if isinstance(value, tf.Variable | tf.Tensor) else value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold numbers. Received an array of dtype {array.dtype}.")
    if array.shape != shape:
        raise ValueError(
            f"`{name}` must have shape {shape} ({what}). Received shape {array.shape}."
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        index = np.unravel_index(np.argmax(~np.isfinite(array)), array.shape)
        raise ValueError(
            f"`{name}` must be finite. Received {name}[{', '.join(map(str, index))}]="
            f"{array[index]}."
        )
    return array


def _int_array(name: str, value: Any, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
    array = np.asarray(value.numpy() if isinstance(value, tf.Variable | tf.Tensor) else value)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integers. Received an array of dtype {array.dtype}.")
    if array.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}. Received shape {array.shape}.")
    bad = (array < low) | (array > high)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"`{name}` values must be in [{low}, {high}]. Received {name}[{index}]={array[index]}."
        )
    return array.astype(np.int64)


# ---------------------------------------------------------------------- pack
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
    if not _is_int(bits) or not 0 <= bits <= 32:
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


def id_bits(input_dim: int) -> int:
    """Bits per id of the packed permutation: `max(1, ceil(log2(input_dim)))`.

    Example:

    >>> id_bits(1000), id_bits(1024), id_bits(1)
    (10, 10, 1)
    """
    return max(1, math.ceil(math.log2(input_dim)))


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
    (array([35689], dtype=uint32), array([4, 0], dtype=int32))
    >>> packed.first_rows, packed.first_words
    (array([0, 2], dtype=int32), array([0, 1], dtype=int32))
    >>> packed.lookup([[1, 2, 7]]).numpy().round(3)
    array([[[0.3, 0. ],
            [0. , 0. ],
            [0. , 0. ]]], dtype=float32)
    >>> packed.nbytes == packed.memory_report()["total_bytes"] == 4 * (1 + 1 + 2 + 3 * 2)
    True
    """
    candidates = precision.check_bit_widths(bit_widths)
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
    steps = _float_array(
        "step_sizes", step_sizes, (len(nonzero),), f"one per non-zero bit-width of {candidates}"
    )
    if (steps <= 0).any():
        raise ValueError(f"`step_sizes` must all be > 0. Received: step_sizes={steps.tolist()}")
    beta = _float_array("offset", offset, (output_dim,), "[output_dim]")
    bits_array = np.asarray(group_bits)
    if bits_array.ndim != 1 or bits_array.size < 1:
        raise ValueError(
            f"`group_bits` must be a non-empty 1-D array, one bit-width per group. "
            f"Received shape {bits_array.shape}."
        )
    num_groups = bits_array.size
    bits = _int_array("group_bits", group_bits, (num_groups,), 0, MAX_BITS)
    unknown = ~np.isin(bits, (0,) + nonzero)
    if unknown.any():
        index = int(np.argmax(unknown))
        raise ValueError(
            f"`group_bits` must be 0 or one of the candidates {candidates}. "
            f"Received group_bits[{index}]={bits[index]}."
        )
    groups = _int_array("id_to_group", id_to_group, (input_dim,), 0, num_groups - 1)

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
        permutation = pack_bits(id_to_row, id_bits(input_dim))
    return PackedTable(
        words=words,
        first_rows=first_rows.astype(np.int32),
        first_words=first_words.astype(np.int32),
        group_bits=stored_bits.astype(np.int32),
        step_sizes=steps,
        offset=beta,
        permutation=permutation,
        step_bit_widths=nonzero,
        input_dim=int(input_dim),
        output_dim=int(output_dim),
    )


# -------------------------------------------------------------------- lookup
def _static_length(name: str, value: Any) -> int:
    length = value.shape[0] if value.shape.rank else None
    if length is None:
        raise ValueError(f"`{name}` must have a static 1-D shape. Received shape {value.shape}.")
    return int(length)


def _as_tensor_or_variable(name: str, value: Any, dtypes: tuple[tf.DType, ...]) -> Any:
    """Leaves variables alone (a gather from a variable reads only what it gathers)."""
    if not isinstance(value, tf.Variable):
        value = tf.convert_to_tensor(value)
    if value.dtype not in dtypes:
        expected = " or ".join(d.name for d in dtypes)
        raise TypeError(f"`{name}` must be {expected}. Received dtype {value.dtype.name}.")
    if value.shape.rank != 1:
        raise ValueError(f"`{name}` must be 1-D. Received shape {value.shape}.")
    return value


def _extract(lo: tf.Tensor, hi: tf.Tensor, shift: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """The `mask`-wide field starting at bit `shift` of the 64-bit pair `(hi, lo)`.

    uint32 only; every shift amount stays in [0, 31].
    """
    shift = tf.cast(shift, tf.uint32)
    low_part = tf.bitwise.right_shift(lo, shift)
    high_part = tf.bitwise.left_shift(tf.bitwise.left_shift(hi, 1), 31 - shift)
    return tf.bitwise.bitwise_and(tf.bitwise.bitwise_or(low_part, high_part), mask)


def _bit_position(index: tf.Tensor, width: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(index * width) // 32, (index * width) % 32` without forming `index * width`.

    int32 only, for `index` up to 2**31 - 1 and `width` below 2**31 with a word index
    that fits int32: `width = 32 q + m` and `index = 32 h + l`.
    """
    q, m = width // 32, width % 32
    h, low = index // 32, index % 32
    return q * index + m * h + (m * low) // 32, (m * low) % 32


def _two_sum(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(s, e)` with `s = a + b` rounded and `s + e == a + b` exactly (Knuth)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def _add_round_to_odd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`a + b` rounded to odd: exact sums stay, inexact ones take the odd neighbour."""
    s, error = _two_sum(a, b)
    bits = tf.bitcast(s, tf.int32)
    even = tf.equal(tf.bitwise.bitwise_and(bits, 1), 0)
    toward_error = tf.where(tf.equal(error > 0, s > 0), 1, -1)
    bits = tf.where(tf.logical_and(error != 0, even), bits + toward_error, bits)
    return tf.bitcast(bits, tf.float32)


def _split_step_sizes(step_sizes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(high, low)` with `high` the top 16 significant bits, `high + low` exact."""
    high = tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(step_sizes, tf.int32), -256), tf.float32)
    return high, step_sizes - high


def fused_multiply_add(
    codes: tf.Tensor, step_high: tf.Tensor, step_low: tf.Tensor, offset: tf.Tensor
) -> tf.Tensor:
    """`codes * step + offset` rounded once, as a fused multiply-add, in float32 ops.

    Training runs the quantizer under XLA, which contracts `code * step + offset`
    into a hardware FMA (one rounding); a plain multiply and add (two roundings)
    can differ by one ulp. This emulation is exact for integer `codes` of at most
    8 significant bits (|code| <= 256) and `step = step_high + step_low` from
    `_split_step_sizes`: both partial products are exact, and the three-term sum is
    correctly rounded with rounding to odd (Boldo and Melquiond, IEEE Trans.
    Computers 57(4), 2008), barring overflow and underflow. Contractions of the
    exact products by XLA change nothing.
    """
    high, low = codes * step_high, codes * step_low
    u_high, u_low = _two_sum(low, offset)
    t_high, t_low = _two_sum(high, u_high)
    return t_high + _add_round_to_odd(t_low, u_low)


def _find_groups(first_rows: tf.Tensor, rows: tf.Tensor, binary: bool) -> tf.Tensor:
    """The last group whose first row is <= each row (groups sorted by first row)."""
    if not binary:
        return tf.searchsorted(first_rows, rows, side="right") - 1
    # XLA lowers searchsorted to all-pairs comparisons; a binary search of gathers
    # compiles to a few fused passes over the ids
    last = first_rows.shape[0] - 1
    slot = tf.zeros_like(rows)
    step = 1 << last.bit_length()
    while step:
        candidate = tf.minimum(slot + step, last)
        slot = tf.where(tf.gather(first_rows, candidate) <= rows, candidate, slot)
        step //= 2
    return slot


def _position_tables(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key `bits * 32 + first bit of the row` and dimension `d` in `0..D`: the
    word (relative to the row's first word) and the bit where the code of `d` starts,
    `divmod(first + d * bits, 32)`. Entry `D` is one past the row: a code that
    straddles two words ends in the word where the next code starts.
    """
    bits, first = np.divmod(np.arange((MAX_BITS + 1) * 32), 32)
    position = first[:, None] + bits[:, None] * np.arange(dim + 1)[None, :]
    return (position // 32).astype(np.int32), (position[:, :dim] % 32).astype(np.uint32)


def _codebook(
    step_sizes: tf.Tensor, offset: tf.Tensor, step_bit_widths: tuple[int, ...]
) -> tuple[tf.Tensor, np.ndarray]:
    """Every dequantized value, `[D * R]` with entry `d * R + base[b] + code`.

    Entry `d * R + 0` is 0 (0-bit groups, out-of-range ids); `base[b]` is where the
    `2**b` codes of bit-width `b` start. Computed from `step_sizes` and `offset` at
    each call (a few thousand values), so nothing derived is stored.
    """
    codes = [np.arange(2**b, dtype=np.float32) - 2 ** (b - 1) for b in step_bit_widths]
    which = [np.full(2**b, k, np.int32) for k, b in enumerate(step_bit_widths)]
    steps = tf.gather(step_sizes, np.concatenate(which)) if codes else tf.zeros([0])
    high, low = _split_step_sizes(steps)
    codes = np.concatenate(codes) if codes else np.zeros(0, np.float32)
    values = fused_multiply_add(codes[None, :], high[None, :], low[None, :], offset[:, None])
    values = tf.concat([tf.zeros([offset.shape[0], 1]), values], axis=1)  # [D, R]
    base = np.zeros(MAX_BITS + 1, np.int32)
    base[list(step_bit_widths)] = 1 + np.cumsum([0] + [2**b for b in step_bit_widths])[:-1]
    return tf.reshape(values, [-1]), base


def lookup_packed(
    ids: Any,
    *,
    words: Any,
    first_rows: Any,
    first_words: Any,
    group_bits: Any,
    step_sizes: Any,
    offset: Any,
    permutation: Any = None,
    input_dim: int,
    step_bit_widths: Sequence[int],
    max_bits: int = MAX_BITS,
) -> tf.Tensor:
    """Looks ids up in a packed table: gathers each id's words, unpacks only those.

    Core TF ops only; the unpacking uses uint32 shifts and masks, the offsets int32
    arithmetic (no 64-bit integers, no 8-bit shifts). Compiles under
    `tf.function(jit_compile=True)`. The arrays may be tensors, numpy arrays or
    variables (a variable is gathered from, never read whole, except the `[G]`
    first rows).

    Two op mixes, each the faster one in its setting, give the same values; the
    mix is chosen when the lookup is traced. Traced inside a
    `tf.function(jit_compile=True)` (a SavedModel's `serving_xla`, a Keras model
    compiled with XLA) the lookup finds groups by a binary search rather than
    `tf.searchsorted`, gathers a window of words per id rather than words per value,
    and dequantizes with a plain multiply-add, which XLA fuses into one rounding as
    it does in training's kernels (on targets with a fused multiply-add; tested on
    x86-64 CPUs). Elsewhere it dequantizes through a small table of
    every value, computed with `fused_multiply_add`. Either way the values are
    `(code - 2**(b-1)) * step_size_b + offset` rounded once and equal the
    retrain-state layer's outputs bit for bit.

    Args:
        ids: integer ids, any shape. Ids outside `[0, input_dim)` give zero vectors.
        words: uint32 payload (`PackedTable.words`), static length.
        first_rows, first_words, group_bits: int32 or uint32 `[G]` per-group fields
            (uint32 keeps them off the host on GPUs, where int32 gathers are
            host-only).
        step_sizes: float32 `[K]`.
        offset: float32 `[D]`, static D.
        permutation: uint32 packed id-to-row words, or None for contiguous groups.
        input_dim: V (Python int).
        step_bit_widths: the K non-zero bit-widths of `step_sizes` (Python ints).
        max_bits: an upper bound of `group_bits` (Python int); under XLA it sets
            the window of `(31 + D * max_bits) // 32 + 1` words gathered per id.

    Returns:
        float32 `ids.shape + [D]`; zeros for 0-bit groups and out-of-range ids.

    Example:

    >>> packed = pack_table(np.array([[0.25], [-0.5]]), [0.25], [0.0], (2,), [0, 0], [2])
    >>> lookup_packed(tf.constant([1, 0, -1]), words=packed.words,
    ...               first_rows=packed.first_rows, first_words=packed.first_words,
    ...               group_bits=packed.group_bits, step_sizes=packed.step_sizes,
    ...               offset=packed.offset, input_dim=2, step_bit_widths=(2,),
    ...               max_bits=2).numpy()
    array([[-0.5 ],
           [ 0.25],
           [ 0.  ]], dtype=float32)
    """
    if not _is_int(input_dim) or not 1 <= input_dim < 2**31:
        raise ValueError(
            f"`input_dim` must be an integer in [1, 2**31). Received: input_dim={input_dim!r}"
        )
    if not _is_int(max_bits) or not 0 <= max_bits <= MAX_BITS:
        raise ValueError(
            f"`max_bits` must be an integer in [0, {MAX_BITS}]. Received: max_bits={max_bits!r}"
        )
    step_bit_widths = tuple(step_bit_widths)
    if not all(_is_int(b) and 1 <= b <= MAX_BITS for b in step_bit_widths) or any(
        a >= b for a, b in zip(step_bit_widths, step_bit_widths[1:])
    ):
        raise ValueError(
            f"`step_bit_widths` must be strictly increasing integers in [1, {MAX_BITS}]. "
            f"Received: step_bit_widths={step_bit_widths!r}"
        )
    step_bit_widths = tuple(int(b) for b in step_bit_widths)
    xla = tf.__internal__.get_enclosing_xla_context() is not None
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"`ids` must be integers. Received ids of dtype {ids.dtype.name}.")
    if ids.dtype not in (tf.int32, tf.int64):  # e.g. uint8, or uint64 beyond int64
        ids = tf.cast(ids, tf.int64)
    int_types = (tf.int32, tf.uint32)
    words = _as_tensor_or_variable("words", words, (tf.uint32,))
    first_rows = _as_tensor_or_variable("first_rows", first_rows, int_types)
    first_words = _as_tensor_or_variable("first_words", first_words, int_types)
    group_bits = _as_tensor_or_variable("group_bits", group_bits, int_types)
    step_sizes = _as_tensor_or_variable("step_sizes", step_sizes, (tf.float32,))
    offset = _as_tensor_or_variable("offset", offset, (tf.float32,))
    if _static_length("step_sizes", step_sizes) != len(step_bit_widths):
        raise ValueError(
            f"`step_sizes` has {step_sizes.shape[0]} entries but `step_bit_widths` "
            f"{step_bit_widths} has {len(step_bit_widths)}; they must match."
        )
    dim = _static_length("offset", offset)
    num_words = _static_length("words", words)
    step_sizes = tf.convert_to_tensor(step_sizes)
    offset = tf.convert_to_tensor(offset)

    valid = tf.logical_and(ids >= 0, ids < input_dim)
    flat_valid = tf.reshape(valid, [-1])
    flat_ids = tf.cast(tf.reshape(tf.where(valid, ids, tf.zeros_like(ids)), [-1]), tf.int32)
    if permutation is None:
        rows = flat_ids
    else:
        permutation = _as_tensor_or_variable("permutation", permutation, (tf.uint32,))
        width = id_bits(input_dim)
        last = _static_length("permutation", permutation) - 1
        word, shift = _bit_position(flat_ids, tf.constant(width))
        lo = tf.gather(permutation, word)
        hi = tf.gather(permutation, tf.minimum(word + 1, last))
        rows = tf.cast(_extract(lo, hi, shift, tf.constant(2**width - 1, tf.uint32)), tf.int32)

    # per id: its group, bit-width (0 for out-of-range ids), first word and bit
    bounds = tf.cast(tf.convert_to_tensor(first_rows), tf.int32)
    slot = _find_groups(bounds, rows, binary=xla)
    bits = tf.where(flat_valid, tf.cast(tf.gather(group_bits, slot), tf.int32), 0)
    word, shift = _bit_position(rows - tf.gather(bounds, slot), dim * bits)
    word = tf.where(bits > 0, word + tf.cast(tf.gather(first_words, slot), tf.int32), 0)
    mask = tf.cast(tf.bitwise.left_shift(1, bits) - 1, tf.uint32)[:, None]

    # per value: the two words its code may span, and its first bit
    if num_words == 0:  # every group pruned
        return tf.zeros(tf.concat([tf.shape(ids), [dim]], axis=0))
    word_table, shift_table = _position_tables(dim)
    key = bits * 32 + shift
    relative = tf.gather(word_table, key)  # [N, D + 1]
    first_bit = tf.gather(shift_table, key)  # [N, D]
    if xla:
        # one small gather per id, then selects that XLA fuses
        window = (31 + dim * max_bits) // 32 + 1
        gathered = tf.gather(words, tf.minimum(word[:, None] + tf.range(window), num_words - 1))
        start = relative[:, :dim]
        lo = hi = tf.zeros_like(first_bit)
        for w in range(window):
            lo = tf.where(start == w, gathered[:, w : w + 1], lo)
            hi = tf.where(start == w - 1, gathered[:, w : w + 1], hi)
    else:
        # the word where code d starts, and the one where code d + 1 starts, which is
        # where code d ends whenever it straddles two words
        starts = tf.gather(words, tf.minimum(word[:, None] + relative, num_words - 1))
        lo, hi = starts[:, :dim], starts[:, 1:]
    codes = _extract(lo, hi, first_bit, mask)

    if xla:
        half = tf.where(bits > 0, tf.bitwise.left_shift(1, tf.maximum(bits - 1, 0)), 0)
        step_index = np.zeros(MAX_BITS + 1, np.int32)
        step_index[list(step_bit_widths)] = np.arange(1, len(step_bit_widths) + 1)
        steps = tf.gather(tf.concat([tf.ones([1]), step_sizes], axis=0), step_index)
        centered = tf.cast(tf.cast(codes, tf.int32) - half[:, None], tf.float32)
        values = centered * tf.gather(steps, bits)[:, None] + offset  # one FMA under XLA
        values = tf.where((bits > 0)[:, None], values, tf.zeros_like(values))
    else:
        codebook, base = _codebook(step_sizes, offset, step_bit_widths)
        columns = tf.gather(base, bits)[:, None] + tf.range(dim) * (codebook.shape[0] // dim)
        values = tf.gather(codebook, tf.cast(codes, tf.int32) + columns)
    return tf.reshape(values, tf.concat([tf.shape(ids), [dim]], axis=0))
