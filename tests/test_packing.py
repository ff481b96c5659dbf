"""The packed codec and lookup: bit-exact round trips, the byte count, XLA,
out-of-range ids, errors."""

import functools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_mpe import checks, codec, grouping, lookup, precision, quantizers

SETTINGS = settings(max_examples=30, deadline=None)


def _unpack_bits(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Numpy reference: `count` values of `bits` bits, little-endian bit order."""
    stream = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")
    fields = stream[: count * bits].reshape(count, bits).astype(np.int64)
    return fields @ (1 << np.arange(bits, dtype=np.int64))


def _step_sizes(table: np.ndarray, nonzero: list[int], rng) -> np.ndarray:
    """The layer's initial step sizes, scaled at random."""
    mean_abs = np.abs(table).mean() + 1e-3
    base = 2 * mean_abs / np.sqrt(2.0 ** (np.asarray(nonzero, np.float64) - 1))
    steps = (base * rng.uniform(0.5, 2.0, size=len(nonzero))).astype(np.float32)
    return quantizers.round_step_sizes(steps).numpy()


def _make_case(sizes, bits, dim, layout, seed):
    """A table with groups of `sizes` rows at `bits`, ids laid out by `layout`."""
    rng = np.random.default_rng(seed)
    input_dim = int(sum(sizes))
    groups = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    if layout == "descending":  # StringLookup: id 0 the most frequent (last group)
        groups = groups[::-1].copy()
    elif layout == "shuffled":
        groups = rng.permutation(groups)
    table = rng.normal(scale=rng.uniform(0.01, 2.0), size=(input_dim, dim)).astype(np.float32)
    table[rng.random(table.shape) < 0.05] *= 50.0  # some values far outside the range
    nonzero = sorted({int(b) for b in bits if b} | {int(rng.integers(1, 9))})
    candidates = tuple(([0] if rng.random() < 0.5 or 0 in bits else []) + nonzero)
    steps = _step_sizes(table, nonzero, rng)
    offset = rng.normal(scale=0.1, size=dim).astype(np.float32)
    return table, steps, offset, candidates, groups, np.asarray(bits, np.int32)


def _expected(table, steps, offset, candidates, groups, bits, ids):
    """The retrain state's values: `lsq_quantize` with each row's step size and bits."""
    nonzero = [b for b in candidates if b]
    step_by_bits = np.ones(checks.MAX_BITS + 1, np.float32)
    step_by_bits[nonzero] = quantizers.round_step_sizes(np.asarray(steps, np.float32))
    row_bits = bits[groups[ids]]
    return quantizers.lsq_quantize(
        table[ids], step_by_bits[row_bits][:, None], offset, row_bits[:, None], 0.0
    ).numpy()


def _lookup(packed, ids):
    return lookup.lookup_packed(
        ids,
        packed.arrays(),
        input_dim=packed.input_dim,
        nonzero_bit_widths=packed.nonzero_bit_widths,
    )


def _compiled_lookup(packed, ids):
    """The lookup compiled with XLA, which takes the lookup's XLA op mix."""
    compiled = tf.function(functools.partial(_lookup, packed), jit_compile=True)
    return compiled(tf.constant(ids)).numpy()


def _report(table, steps, groups, bits):
    return precision.memory_report(
        rows_per_group=np.bincount(groups, minlength=bits.size),
        group_bits=bits,
        output_dim=table.shape[1],
        num_step_sizes=steps.size,
        needs_permutation=not grouping.groups_are_contiguous(groups),
    )


@st.composite
def cases(draw):
    num_groups = draw(st.integers(1, 5))
    sizes = draw(
        st.lists(
            st.one_of(st.sampled_from([1, 2, 31, 32, 33, 63, 65]), st.integers(1, 70)),
            min_size=num_groups,
            max_size=num_groups,
        )
    )
    bits = draw(st.lists(st.integers(0, 8), min_size=num_groups, max_size=num_groups))
    dim = draw(st.one_of(st.sampled_from([1, 3, 16, 31, 33, 130]), st.integers(1, 130)))
    layout = draw(st.sampled_from(["ascending", "descending", "shuffled"]))
    seed = draw(st.integers(0, 2**31))
    return sizes, bits, dim, layout, seed


@SETTINGS
@given(cases())
def test_round_trip_equals_lsq_quantize(case):
    sizes, bits, dim, layout, seed = case
    table, steps, offset, candidates, groups, bits = _make_case(sizes, bits, dim, layout, seed)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    ids = np.random.default_rng(seed).permutation(table.shape[0])
    expected = _expected(table, steps, offset, candidates, groups, bits, ids)
    np.testing.assert_array_equal(_lookup(packed, ids).numpy(), expected)
    np.testing.assert_array_equal(_compiled_lookup(packed, ids), expected)
    assert packed.nbytes == _report(table, steps, groups, bits)["total_bytes"]
    assert (packed.permutation is None) == grouping.groups_are_contiguous(groups)


@pytest.mark.parametrize("dim", [1, 5, 130])
@pytest.mark.parametrize("layout", ["ascending", "shuffled"])
def test_every_bit_width_round_trips(dim, layout):
    """Groups at every width 0..8, of 1, 33 and 70 rows, in one table."""
    bits = [b for b in range(9) for _ in range(3)]
    sizes = [1, 33, 70] * 9
    table, steps, offset, candidates, groups, bits = _make_case(sizes, bits, dim, layout, dim)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    ids = np.arange(table.shape[0])
    expected = _expected(table, steps, offset, candidates, groups, bits, ids)
    np.testing.assert_array_equal(_lookup(packed, ids).numpy(), expected)
    np.testing.assert_array_equal(_compiled_lookup(packed, ids), expected)
    assert np.count_nonzero(expected[bits[groups] == 8]) > 0
    assert not np.any(expected[bits[groups] == 0])


def _planes_reference(rows: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """Numpy reference of the row layout: value `d` of a `p`-bit plane of `n` bytes in
    bits `[s p, (s + 1) p)` of its byte `j`, `s, j = divmod(d, n)`, high plane first."""
    codes = np.zeros((rows.shape[0], dim), np.int64)
    start, low = 0, bits
    for p in codec.PLANES[bits]:
        n = -(-dim * p // 8)
        low -= p
        for d in range(dim):
            s, j = divmod(d, n)
            codes[:, d] |= ((rows[:, start + j].astype(np.int64) >> (s * p)) & (2**p - 1)) << low
        start += n
    assert start == rows.shape[1]
    return codes


@pytest.mark.parametrize("dim", [7, 16])
def test_codes_are_the_unsigned_training_codes(dim):
    """Each width's table holds `quantize_codes + 2**(b-1)` in bit planes, rows in
    storage order; `row_shift` maps a group's rows to rows of its table."""
    rng = np.random.default_rng(3)
    table = rng.normal(size=(60, dim)).astype(np.float32)
    groups = np.repeat([0, 1, 2, 3], [20, 25, 5, 10]).astype(np.int32)
    steps = [0.375, 0.046875]  # 16 significant bits: unchanged by the rounding
    packed = codec.pack_table(table, steps, np.zeros(dim), (0, 3, 6), groups, [3, 6, 0, 3])
    assert packed.first_rows.tolist() == [0, 20, 45, 50]
    assert packed.row_shift.tolist() == [0, 2**32 - 20, 0, 2**32 - 30]
    assert [len(packed.tables[b]) for b in (3, 6)] == [30, 25]
    for b, step, ids in [(3, 0.375, np.r_[0:20, 50:60]), (6, 0.046875, np.r_[20:45])]:
        codes = quantizers.quantize_codes(
            table[ids], np.float32(step), np.zeros(dim, np.float32), b
        )
        assert packed.tables[b].shape == (ids.size, codec.row_bytes(b, dim))
        np.testing.assert_array_equal(
            _planes_reference(packed.tables[b], b, dim), codes.numpy() + 2 ** (b - 1)
        )
        np.testing.assert_array_equal(
            codec.unpack_rows(packed.tables[b], b, dim), codes.numpy() + 2 ** (b - 1)
        )


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 13, 31, 32])
def test_pack_bits_round_trip(bits):
    rng = np.random.default_rng(bits)
    count = 32 * 8192 + 77  # crosses a packing chunk
    values = rng.integers(0, 2**bits, size=count, dtype=np.uint64)
    words = codec.pack_bits(values, bits)
    assert words.dtype == np.uint32 and words.size == -(-count * bits // 32)
    np.testing.assert_array_equal(_unpack_bits(words, bits, count), values.astype(np.int64))


@pytest.mark.parametrize(
    "sizes, bits, layout",
    [
        ([50, 50], [0, 4], "descending"),
        ([1], [0], "ascending"),
        ([3, 3, 4], [0, 0, 0], "shuffled"),
        ([33, 1, 64, 7], [1, 8, 5, 3], "shuffled"),
        ([1000, 24], [2, 6], "ascending"),
    ],
)
@pytest.mark.parametrize("dim", [1, 16, 33])
def test_bytes_equal_memory_report(sizes, bits, layout, dim):
    table, steps, offset, candidates, groups, bits = _make_case(sizes, bits, dim, layout, 0)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    report = _report(table, steps, groups, bits)
    assert packed.nbytes == report["total_bytes"]
    assert sum(t.nbytes for t in packed.tables.values()) == report["payload_bytes"]
    if dim % 8 == 0:  # rows fill whole bytes: the payload is the bits, nothing more
        assert 8 * report["payload_bytes"] == dim * (bits[groups]).sum()
    if packed.permutation is not None:
        assert packed.permutation.size == codec.permutation_words(table.shape[0])


def test_empty_group_is_skipped():
    """A group without ids stores nothing and never shadows its neighbours."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(9, 4)).astype(np.float32)
    groups = np.array([2, 2, 2, 0, 0, 0, 0, 2, 2], np.int32)  # group 1 is empty
    bits = np.array([4, 6, 2], np.int32)
    packed = codec.pack_table(table, [0.5, 0.1, 0.02], np.zeros(4), (2, 4, 6), groups, bits)
    assert packed.nbytes == _report(table, np.zeros(3), groups, bits)["total_bytes"]
    assert packed.first_rows.tolist()[-1] == 9  # the empty group comes last
    ids = np.arange(9)
    expected = _expected(
        table, np.array([0.5, 0.1, 0.02]), np.zeros(4), (2, 4, 6), groups, bits, ids
    )
    np.testing.assert_array_equal(_lookup(packed, ids).numpy(), expected)
    np.testing.assert_array_equal(_compiled_lookup(packed, ids), expected)


@pytest.mark.parametrize("groups", [1, 2, 5, 128, 129])
def test_binary_group_search_equals_searchsorted(groups):
    rng = np.random.default_rng(groups)
    first_rows = np.sort(rng.integers(1, 500, size=groups - 1))  # with repeats
    first_rows = tf.constant(np.concatenate([[0], first_rows]), tf.uint32)
    rows = tf.constant(np.arange(500, dtype=np.uint32))
    expected = lookup.find_groups(first_rows, rows, binary=False).numpy()
    np.testing.assert_array_equal(lookup.find_groups(first_rows, rows, binary=True), expected)
    np.testing.assert_array_equal(first_rows.numpy()[expected] <= rows.numpy(), True)


def _as_variables(packed):
    return {name: tf.Variable(array) for name, array in packed.arrays().items()}


@pytest.mark.parametrize("layout", ["descending", "shuffled"])
def test_xla_lookup_from_variables_matches_eager(layout):
    sizes, bits = [40, 1, 33, 64, 90], [0, 8, 3, 5, 1]
    table, steps, offset, candidates, groups, bits = _make_case(sizes, bits, 16, layout, 1)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    variables = _as_variables(packed)

    @tf.function(jit_compile=True)
    def serve(ids):
        return lookup.lookup_packed(
            ids,
            variables,
            input_dim=packed.input_dim,
            nonzero_bit_widths=packed.nonzero_bit_widths,
        )

    ids = np.random.default_rng(2).integers(-5, table.shape[0] + 5, size=(64, 26))
    ids = tf.constant(ids, tf.int32)
    compiled = serve(ids).numpy()
    assert compiled.shape == (64, 26, 16)
    np.testing.assert_array_equal(compiled, _lookup(packed, ids).numpy())
    np.testing.assert_array_equal(compiled, tf.function(serve.python_function)(ids).numpy())
    valid = ids.numpy()[(ids.numpy() >= 0) & (ids.numpy() < table.shape[0])]
    np.testing.assert_array_equal(
        _lookup(packed, valid).numpy(),
        _expected(table, steps, offset, candidates, groups, bits, valid),
    )
    hlo = serve.experimental_get_compiler_ir(ids)(stage="hlo")
    assert "s64" not in hlo and "u64" not in hlo and "s8" not in hlo


@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_op_mix_follows_the_compiler(jit_compile):
    """Traced for TensorFlow's kernels the lookup finds groups with one `searchsorted`
    (UpperBound); traced under XLA with a binary search of gathers."""
    table, steps, offset, candidates, groups, bits = _make_case([5, 6], [2, 4], 3, "ascending", 0)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    function = tf.function(functools.partial(_lookup, packed), jit_compile=jit_compile)
    graph = function.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert ("UpperBound" in ops) is not jit_compile
    out = function(tf.constant([0, 7]))
    np.testing.assert_array_equal(out.numpy(), _lookup(packed, [0, 7]).numpy())


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
@pytest.mark.parametrize("layout", ["ascending", "shuffled"])
def test_out_of_range_ids_give_zeros(dtype, layout, jit_compile):
    table, steps, offset, candidates, groups, bits = _make_case([5, 6], [2, 4], 3, layout, 4)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    bad = [-1, 11, 12, -(2**31)] + ([2**40, -(2**40)] if dtype == tf.int64 else [2**31 - 1])
    lookup = tf.function(functools.partial(_lookup, packed), jit_compile=jit_compile)
    out = lookup(tf.constant([[0] + bad], dtype)).numpy()
    assert out.shape == (1, len(bad) + 1, 3)
    assert np.any(out[0, 0]) and not np.any(out[0, 1:])


@pytest.mark.parametrize("dtype", [tf.uint8, tf.int16, tf.uint32, tf.uint64])
def test_other_integer_id_types(dtype):
    table, steps, offset, candidates, groups, bits = _make_case([5, 6], [2, 4], 3, "shuffled", 4)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    out = _lookup(packed, tf.constant([3, 11, 100], dtype)).numpy()
    np.testing.assert_array_equal(out[0], _lookup(packed, [3]).numpy()[0])
    assert np.any(out[0]) and not np.any(out[1:])


def test_all_groups_pruned_stores_no_payload():
    table = np.ones((10, 4), np.float32)
    packed = codec.pack_table(table, [0.1], np.full(4, 0.5), (0, 2), np.zeros(10, int), [0])
    assert packed.tables[2].size == 0
    for jit_compile in (False, True):
        out = tf.function(functools.partial(_lookup, packed), jit_compile=jit_compile)(
            tf.constant([3, 20])
        ).numpy()
        np.testing.assert_array_equal(out, np.zeros((2, 4)))


def test_matches_the_retrain_layer():
    """The packed lookup gives exactly the retrain-state layer's outputs."""
    from keras_mpe import MixedPrecisionEmbedding

    rng = np.random.default_rng(5)
    layer = MixedPrecisionEmbedding(300, 12, num_groups=9, bit_widths=(0, 1, 2, 4, 8))
    layer.adapt(rng.zipf(1.3, size=2000) % 300)
    layer.relative_offset.assign(rng.normal(scale=0.3, size=12).astype(np.float32))
    layer.freeze_precision(rng.choice([0, 1, 2, 4, 8], size=9).astype(np.int32))
    packed = layer.packed_table()
    ids = rng.integers(-3, 303, size=(50, 7)).astype(np.int32)
    np.testing.assert_array_equal(_lookup(packed, ids).numpy(), layer(ids).numpy())
    np.testing.assert_array_equal(_compiled_lookup(packed, ids), layer(ids).numpy())
    assert packed.nbytes == layer.memory_report()["total_bytes"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"table": np.zeros(4)}, ValueError, "`table` must be a non-empty 2-D"),
        ({"table": np.full((4, 2), np.nan)}, ValueError, "`table` must be finite"),
        ({"step_sizes": [0.1, 0.2]}, ValueError, "`step_sizes` must have shape"),
        ({"step_sizes": [0.0]}, ValueError, "`step_sizes` must all be > 0"),
        ({"offset": np.zeros(3)}, ValueError, "`offset` must have shape"),
        ({"bit_widths": (4, 2)}, ValueError, "`bit_widths` must be"),
        ({"bit_widths": (0, 9)}, ValueError, "`bit_widths` must be"),
        ({"group_bits": [2, 4]}, ValueError, "group_bits.*0 or one of the candidates"),
        ({"group_bits": [0.5, 4]}, TypeError, "`group_bits` must hold integers"),
        ({"id_to_group": [0, 1, 2, 0]}, ValueError, "id_to_group.*in \\[0, 1\\]"),
        ({"id_to_group": [0, 1]}, ValueError, "`id_to_group` must have shape"),
    ],
)
def test_pack_errors(kwargs, error, match):
    arguments = {
        "table": np.ones((4, 2), np.float32),
        "step_sizes": [0.1],
        "offset": np.zeros(2),
        "bit_widths": (0, 4),
        "id_to_group": [0, 1, 1, 0],
        "group_bits": [0, 4],
    }
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        codec.pack_table(**arguments)


def test_lookup_errors():
    packed = codec.pack_table(np.ones((4, 2)), [0.1], np.zeros(2), (4,), [0] * 4, [4])
    with pytest.raises(TypeError, match="`ids` must be integers"):
        _lookup(packed, tf.constant([0.5]))
    arrays = packed.arrays()
    common = {"input_dim": 4, "nonzero_bit_widths": (4,)}
    with pytest.raises(TypeError, match="`rows_4` must be uint8. Received dtype int32"):
        lookup.lookup_packed(
            [0], {**arrays, "rows_4": arrays["rows_4"].astype(np.int32)}, **common
        )
    with pytest.raises(ValueError, match=r"`rows_4` must have rows of 1 bytes"):
        lookup.lookup_packed([0], {**arrays, "rows_4": np.zeros((4, 3), np.uint8)}, **common)
    with pytest.raises(ValueError, match=r"`arrays` lacks \['row_shift'\]"):
        lookup.lookup_packed([0], {k: v for k, v in arrays.items() if k != "row_shift"}, **common)
    with pytest.raises(ValueError, match=r"`arrays` lacks \['rows_2'\]"):
        lookup.lookup_packed([0], arrays, input_dim=4, nonzero_bit_widths=(2, 4))
    with pytest.raises(ValueError, match="`input_dim` must be an integer"):
        lookup.lookup_packed([0], arrays, input_dim=0, nonzero_bit_widths=(4,))


def _exact_fma32(codes, steps, offsets):
    """Correctly rounded float32 `codes * steps + offsets`, from exact rationals."""
    from fractions import Fraction

    out = []
    for c, a, b in zip(codes.tolist(), steps.tolist(), offsets.tolist()):
        exact = Fraction(c) * Fraction(a) + Fraction(b)
        near = np.float32(float(exact))
        below, above = (
            np.nextafter(near, np.float32(-np.inf)),
            np.nextafter(near, np.float32(np.inf)),
        )
        candidates = sorted(
            (abs(Fraction(float(x)) - exact), i, x) for i, x in enumerate((near, below, above))
        )
        (d0, _, x0), (d1, _, x1) = candidates[:2]
        if d0 == d1:  # a tie: the even significand
            x0 = x0 if np.float32(x0).view(np.int32) % 2 == 0 else x1
        out.append(x0)
    return np.array(out, np.float32)


def test_rounded_step_sizes_make_a_multiply_and_add_round_once():
    """With step sizes of 16 significant bits, `code * step + offset` as a multiply
    and an add (graph mode) and under XLA (which may fuse them) both equal the
    correctly rounded value, against exact rationals, including cancellations and
    near-midpoint sums."""
    rng = np.random.default_rng(11)
    n = 4000
    codes = rng.integers(-128, 128, size=n).astype(np.float32)
    steps = (rng.uniform(1, 2, n) * 2.0 ** rng.integers(-20, 3, n)).astype(np.float32)
    offsets = np.concatenate(
        [
            rng.normal(size=n // 4) * 2.0 ** rng.integers(-40, 5, n // 4),
            -(codes[: n // 4] * steps[: n // 4].astype(np.float64))
            * (1 + rng.normal(size=n // 4) * 2.0 ** -rng.integers(1, 30, n // 4)),
            codes[: n // 4]
            * steps[: n // 4].astype(np.float64)
            * 2.0 ** -rng.integers(20, 60, n // 4),
            rng.integers(-(2**12), 2**12, n // 4) * 2.0 ** rng.integers(-45, -5, n // 4),
        ]
    ).astype(np.float32)
    steps[-n // 4 :] = (
        rng.integers(1, 2**10, n // 4) * 2.0 ** rng.integers(-25, -5, n // 4)
    ).astype(np.float32)
    unrounded = (codes * steps).astype(np.float32) + offsets
    assert np.count_nonzero(unrounded != _exact_fma32(codes, steps, offsets)) > 50
    steps = quantizers.round_step_sizes(steps).numpy()
    expected = _exact_fma32(codes, steps, offsets)

    def multiply_add(codes, steps, offsets):
        return codes * steps + offsets

    args = (tf.constant(codes), tf.constant(steps), tf.constant(offsets))
    np.testing.assert_array_equal(tf.function(multiply_add)(*args).numpy(), expected)
    compiled = tf.function(multiply_add, jit_compile=True)(*args)
    np.testing.assert_array_equal(compiled.numpy(), expected)


def test_chunked_packing_matches(monkeypatch):
    """Quantizing and packing in small chunks changes nothing."""
    table, steps, offset, candidates, groups, bits = _make_case(
        [7, 40, 33], [3, 8, 5], 6, "shuffled", 9
    )
    whole = codec.pack_table(table, steps, offset, candidates, groups, bits)
    monkeypatch.setattr(codec, "_QUANTIZE_CHUNK", 5)
    monkeypatch.setattr(codec, "_PACK_CHUNK", 64)
    chunked = codec.pack_table(table, steps, offset, candidates, groups, bits)
    for name, array in whole.arrays().items():
        np.testing.assert_array_equal(chunked.arrays()[name], array, err_msg=name)
    ids = np.arange(table.shape[0])
    np.testing.assert_array_equal(
        _lookup(chunked, ids).numpy(),
        _expected(table, steps, offset, candidates, groups, bits, ids),
    )


def test_bit_positions_do_not_overflow_uint32():
    """`divmod(index * width, 32)` in uint32 even where `index * width` exceeds 2**32."""
    rng = np.random.default_rng(0)
    width = rng.integers(1, 131 * 8, size=10_000)
    index = (rng.random(10_000) * np.minimum((2**31 - 1) * 32 // width, 2**31)).astype(np.int64)
    index[:3], width[:3] = [2**31 - 1, 2**30, 2**25 + 12345], [31, 63, 1040]
    word, bit = lookup.bit_position(tf.constant(index, tf.uint32), tf.constant(width, tf.uint32))
    assert word.dtype == tf.uint32
    np.testing.assert_array_equal(word.numpy(), index * width // 32)
    np.testing.assert_array_equal(bit.numpy(), index * width % 32)
    assert (index * width >= 2**32).mean() > 0.5
