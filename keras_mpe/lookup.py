"""Looking ids up in a packed table inside a TF graph (the layout: `keras_mpe.codec`).

Every tensor that grows with the batch or the table is uint32, float32 or bool, and
the packed arrays are read through gathers from their variables: TensorFlow runs
32-bit signed integer arithmetic in host memory on a GPU, and has no GPU gather of
uint32 from a tensor (only from a variable), so with these types the whole lookup
stays in device memory. No 64-bit integer appears unless the ids themselves are
int64, so the XLA form lowers to 32-bit types only, as a TPU needs.

Nothing here imports Keras, so both Keras flavours share it.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import checks, precision

MAX_BITS = checks.MAX_BITS


def integer_ids(inputs: Any, input_dim: int) -> tf.Tensor:
    """The ids an embedding layer was given, as integers.

    Integer ids pass as they are. float32 ids (a Keras 3 `Sequential` without
    `keras.Input(dtype="int32")` feeds them) become int32 when `input_dim <= 2**24`,
    which float32 holds exactly; fractional or non-finite ones become -1, an
    out-of-range id that looks up zeros.

    Example:

    >>> integer_ids(tf.constant([2.0, 0.5, -1.0]), 10).numpy()
    array([ 2, -1, -1], dtype=int32)
    """
    inputs = tf.convert_to_tensor(inputs)
    if inputs.dtype.is_integer:
        return inputs
    if inputs.dtype != tf.float32 or input_dim > 2**24:
        raise TypeError(
            "An embedding layer takes integer ids (or float32 ids when input_dim <= "
            "2**24, which float32 holds exactly). Received inputs of dtype "
            f"{inputs.dtype.name} for input_dim={input_dim}. Feed int32 ids, e.g. start "
            "a Keras 3 `Sequential` model with `keras.Input(shape=..., dtype='int32')`."
        )
    whole = tf.logical_and(tf.equal(tf.math.floor(inputs), inputs), tf.abs(inputs) <= input_dim)
    return tf.where(whole, tf.cast(tf.where(whole, inputs, 0.0), tf.int32), -1)


def ids_in_range(ids: Any, input_dim: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Ids as uint32 (0 where out of range) and whether each is in `[0, input_dim)`.

    Ids of at most 32 bits are reinterpreted as uint32 first, so that a negative id
    becomes at least 2**31 and one unsigned comparison checks both ends, and so that
    a GPU keeps them in device memory (it reshapes, compares and even takes the
    shape of int32 tensors in host memory).

    Args:
        ids: integer ids, any shape.
        input_dim: the number of ids, below 2**31.

    Returns:
        `(ids, valid)`, uint32 and bool, of the shape of `ids`.

    Example:

    >>> ids, valid = ids_in_range(tf.constant([[3, -1], [7, 9]]), 8)
    >>> ids.numpy().tolist(), valid.numpy().tolist()
    ([[3, 0], [7, 0]], [[True, False], [True, False]])
    """
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"`ids` must be integers. Received ids of dtype {ids.dtype.name}.")
    if ids.dtype.size <= 4:
        ids = tf.cast(ids, tf.uint32)
        valid = ids < input_dim
    else:
        valid = ids < input_dim
        if not ids.dtype.is_unsigned:
            valid = tf.logical_and(valid, ids >= 0)
    ids = tf.where(valid, tf.cast(ids, tf.uint32), tf.constant(0, tf.uint32))
    return ids, valid


def _static_length(name: str, value: Any) -> int:
    length = value.shape[0] if value.shape.rank else None
    if length is None:
        raise ValueError(f"`{name}` must have a static 1-D shape. Received shape {value.shape}.")
    return int(length)


def _as_tensor_or_variable(name: str, value: Any, dtype: tf.DType) -> Any:
    """Leaves variables alone (a gather from a variable reads only what it gathers)."""
    if not isinstance(value, tf.Variable):
        value = tf.convert_to_tensor(value)
    if value.dtype != dtype:
        raise TypeError(f"`{name}` must be {dtype.name}. Received dtype {value.dtype.name}.")
    if value.shape.rank != 1:
        raise ValueError(f"`{name}` must be 1-D. Received shape {value.shape}.")
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


def _two_sum(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(s, e)` with `s = a + b` rounded and `s + e == a + b` exactly (Knuth)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def _add_round_to_odd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`a + b` rounded to odd: exact sums stay, inexact ones take the odd neighbour."""
    s, error = _two_sum(a, b)
    bits = tf.bitcast(s, tf.uint32)
    even = tf.equal(tf.bitwise.bitwise_and(bits, 1), 0)
    # the magnitude grows by one ulp when the error points away from zero
    away = tf.equal(error > 0, s > 0)
    odd = tf.where(away, bits + 1, bits - 1)
    return tf.bitcast(tf.where(tf.logical_and(error != 0, even), odd, bits), tf.float32)


def split_step_sizes(step_sizes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(high, low)` with `high` the top 16 significant bits, `high + low` exact."""
    mask = tf.constant(0xFFFFFF00, tf.uint32)
    high = tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(step_sizes, tf.uint32), mask), tf.float32)
    return high, step_sizes - high


def fused_multiply_add(
    codes: tf.Tensor, step_high: tf.Tensor, step_low: tf.Tensor, offset: tf.Tensor
) -> tf.Tensor:
    """`codes * step + offset` rounded once, as a fused multiply-add, in float32 ops.

    Training runs the quantizer under XLA, which contracts `code * step + offset`
    into a hardware FMA (one rounding); a plain multiply and add (two roundings)
    can differ by one ulp. This emulation is exact for integer `codes` of at most
    8 significant bits (|code| <= 256) and `step = step_high + step_low` from
    `split_step_sizes`: both partial products are exact, and the three-term sum is
    correctly rounded with rounding to odd (Boldo and Melquiond, IEEE Trans.
    Computers 57(4), 2008), barring overflow and underflow. Contractions of the
    exact products by XLA change nothing.
    """
    high, low = codes * step_high, codes * step_low
    u_high, u_low = _two_sum(low, offset)
    t_high, t_low = _two_sum(high, u_high)
    return t_high + _add_round_to_odd(t_low, u_low)


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


def _codebook(
    step_sizes: tf.Tensor, offset: tf.Tensor, nonzero_bit_widths: tuple[int, ...]
) -> tuple[tf.Tensor, np.ndarray]:
    """Every dequantized value, `[D * R]` with entry `d * R + base[b] + code`.

    Entry `d * R + 0` is 0 (0-bit groups, out-of-range ids); `base[b]` is where the
    `2**b` codes of bit-width `b` start (float32, exact). Computed from `step_sizes`
    and `offset` at each call (a few thousand values), so nothing derived is stored.
    """
    codes = [np.arange(2**b, dtype=np.float32) - 2 ** (b - 1) for b in nonzero_bit_widths]
    # int64: a GPU keeps int32 constants in host memory
    which = [np.full(2**b, k, np.int64) for k, b in enumerate(nonzero_bit_widths)]
    steps = tf.gather(step_sizes, np.concatenate(which))
    high, low = split_step_sizes(steps)
    values = fused_multiply_add(
        np.concatenate(codes)[None, :], high[None, :], low[None, :], offset[:, None]
    )
    values = tf.concat([tf.zeros([offset.shape[0], 1]), values], axis=1)  # [D, R]
    base = np.zeros(MAX_BITS + 1, np.float32)
    base[list(nonzero_bit_widths)] = 1 + np.cumsum([0] + [2**b for b in nonzero_bit_widths])[:-1]
    return tf.reshape(values, [-1]), base


def _check_static(input_dim: Any, max_bits: Any, nonzero_bit_widths: Sequence[int]) -> tuple:
    if not checks.is_int(input_dim) or not 1 <= input_dim < 2**31:
        raise ValueError(
            f"`input_dim` must be an integer in [1, 2**31). Received: input_dim={input_dim!r}"
        )
    if not checks.is_int(max_bits) or not 0 <= max_bits <= MAX_BITS:
        raise ValueError(
            f"`max_bits` must be an integer in [0, {MAX_BITS}]. Received: max_bits={max_bits!r}"
        )
    widths = tuple(nonzero_bit_widths)
    if not all(checks.is_int(b) and 1 <= b <= MAX_BITS for b in widths) or any(
        a >= b for a, b in zip(widths, widths[1:])
    ):
        raise ValueError(
            f"`nonzero_bit_widths` must be strictly increasing integers in [1, {MAX_BITS}]. "
            f"Received: nonzero_bit_widths={nonzero_bit_widths!r}"
        )
    return int(input_dim), int(max_bits), tuple(int(b) for b in widths)


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
    nonzero_bit_widths: Sequence[int],
    max_bits: int = MAX_BITS,
) -> tf.Tensor:
    """Looks ids up in a packed table: gathers each id's words, unpacks only those.

    Core TF ops only, uint32 integer arithmetic (see the module docstring for why);
    compiles under `tf.function(jit_compile=True)`. The arrays may be tensors, numpy
    arrays or `tf.Variable`s; a variable is gathered from, never read whole, except
    the `[G]` first rows outside XLA.

    Two op mixes, each the faster one in its setting, give the same values; the
    mix is chosen when the lookup is traced. Traced inside a
    `tf.function(jit_compile=True)` (a SavedModel's `serving_xla`, a Keras model
    compiled with XLA) the lookup finds groups by a binary search rather than
    `tf.searchsorted`, gathers a window of words per id rather than words per value,
    and dequantizes with a plain multiply-add, which XLA fuses into one rounding as
    it does in training's kernels (on targets with a fused multiply-add). Elsewhere
    it dequantizes through a small table of every value, computed with
    `fused_multiply_add`. Either way the values are
    `(code - 2**(b-1)) * step_size_b + offset` rounded once and equal the
    retrain-state layer's outputs bit for bit.

    Args:
        ids: integer ids, any shape. Ids outside `[0, input_dim)` give zero vectors.
        words: uint32 payload, static length.
        first_rows, first_words, group_bits: uint32 `[G]` per-group fields.
        step_sizes: float32 `[K]`.
        offset: float32 `[D]`, static D.
        permutation: uint32 packed id-to-row words, or None for contiguous groups.
        input_dim: V (Python int).
        nonzero_bit_widths: the K non-zero bit-widths of `step_sizes` (Python ints).
        max_bits: an upper bound of `group_bits` (Python int); under XLA it sets
            the window of `(31 + D * max_bits) // 32 + 1` words gathered per id.

    Returns:
        float32 `ids.shape + [D]`; zeros for 0-bit groups and out-of-range ids.

    Example:

    >>> from keras_mpe import codec
    >>> packed = codec.pack_table(np.array([[0.25], [-0.5]]), [0.25], [0.0], (2,), [0, 0], [2])
    >>> lookup_packed(tf.constant([1, 0, -1]), **packed.arrays(), input_dim=2,
    ...               nonzero_bit_widths=(2,), max_bits=2).numpy()
    array([[-0.5 ],
           [ 0.25],
           [ 0.  ]], dtype=float32)
    """
    input_dim, max_bits, nonzero_bit_widths = _check_static(
        input_dim, max_bits, nonzero_bit_widths
    )
    xla = tf.__internal__.get_enclosing_xla_context() is not None
    words = _as_tensor_or_variable("words", words, tf.uint32)
    first_rows = _as_tensor_or_variable("first_rows", first_rows, tf.uint32)
    first_words = _as_tensor_or_variable("first_words", first_words, tf.uint32)
    group_bits = _as_tensor_or_variable("group_bits", group_bits, tf.uint32)
    step_sizes = tf.convert_to_tensor(_as_tensor_or_variable("step_sizes", step_sizes, tf.float32))
    offset = tf.convert_to_tensor(_as_tensor_or_variable("offset", offset, tf.float32))
    if _static_length("step_sizes", step_sizes) != len(nonzero_bit_widths):
        raise ValueError(
            f"`step_sizes` has {step_sizes.shape[0]} entries but `nonzero_bit_widths` "
            f"{nonzero_bit_widths} has {len(nonzero_bit_widths)}; they must match."
        )
    dim = _static_length("offset", offset)
    num_words = _static_length("words", words)
    ids, valid = ids_in_range(ids, input_dim)
    out_shape = tf.concat([tf.shape(ids), [dim]], axis=0)
    rows, valid = tf.reshape(ids, [-1]), tf.reshape(valid, [-1])
    if num_words == 0:  # every group pruned
        return tf.zeros(out_shape)
    if permutation is not None:
        permutation = _as_tensor_or_variable("permutation", permutation, tf.uint32)
        width = precision.id_bits(input_dim)
        last = _static_length("permutation", permutation) - 1
        word, shift = bit_position(rows, width)
        lo = tf.gather(permutation, tf.cast(word, tf.int32))
        hi = tf.gather(permutation, tf.cast(tf.minimum(word + 1, last), tf.int32))
        rows = _extract(lo, hi, shift, tf.constant(2**width - 1, tf.uint32))

    # per id: its group, bit-width (0 for out-of-range ids), first word and bit
    slot = find_groups(first_rows, rows, binary=xla)
    bits = tf.where(valid, tf.gather(group_bits, slot), tf.constant(0, tf.uint32))
    word, shift = bit_position(rows - tf.gather(first_rows, slot), dim * bits)
    word = tf.where(bits > 0, word + tf.gather(first_words, slot), tf.constant(0, tf.uint32))
    mask = (tf.bitwise.left_shift(tf.constant(1, tf.uint32), bits) - 1)[:, None]

    # per value d (and one past the last): where its code starts, from the row's
    # first bit; a code that straddles two words ends where the next code starts
    position = shift[:, None] + np.arange(dim + 1, dtype=np.uint32) * bits[:, None]
    first_bit = position[:, :dim] % 32
    relative = position // 32
    last_word = tf.constant(num_words - 1, tf.uint32)
    if xla:
        # one small gather per id, then selects that XLA fuses
        window = (31 + dim * max_bits) // 32 + 1
        spans = tf.minimum(word[:, None] + np.arange(window, dtype=np.uint32), last_word)
        gathered = tf.gather(words, tf.cast(spans, tf.int32))
        start = relative[:, :dim]
        lo = hi = tf.zeros_like(first_bit)
        for w in range(window):
            lo = tf.where(start == w, gathered[:, w : w + 1], lo)
            hi = tf.where(start == w - 1, gathered[:, w : w + 1], hi)
    else:
        starts = tf.gather(
            words, tf.cast(tf.minimum(word[:, None] + relative, last_word), tf.int32)
        )
        lo, hi = starts[:, :dim], starts[:, 1:]
    codes = _extract(lo, hi, first_bit, mask)

    if xla:
        half = tf.bitwise.left_shift(tf.constant(1, tf.uint32), tf.maximum(bits, 1) - 1)
        centered = tf.cast(codes, tf.float32) - tf.cast(half, tf.float32)[:, None]
        step_by_bits = np.zeros(MAX_BITS + 1, np.int32)
        step_by_bits[list(nonzero_bit_widths)] = np.arange(1, len(nonzero_bit_widths) + 1)
        steps = tf.gather(tf.concat([tf.ones([1]), step_sizes], axis=0), step_by_bits)
        step = tf.gather(steps, tf.cast(bits, tf.int32))[:, None]
        values = centered * step + offset  # one FMA under XLA
        values = tf.where((bits > 0)[:, None], values, tf.zeros_like(values))
    else:
        codebook, base = _codebook(step_sizes, offset, nonzero_bit_widths)
        first_code = tf.cast(tf.gather(base, tf.cast(bits, tf.int32)), tf.uint32)
        stride = np.arange(dim, dtype=np.uint32) * (codebook.shape[0] // dim)
        values = tf.gather(codebook, tf.cast(codes + first_code[:, None] + stride, tf.int32))
    return tf.reshape(values, out_shape)
