"""The TF lookup of packed tables: bit-exact round trips against the retrain state,
XLA, out-of-range ids, errors."""

import functools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import hlo_types
from test_codec import _expected, _lookup, _make_case, _report

from keras_mpe import codec, grouping, lookup, quantizers

SETTINGS = settings(max_examples=30, deadline=None)


def _compiled_lookup(packed, ids):
    """The lookup compiled with XLA, which takes the lookup's XLA op mix."""
    compiled = tf.function(functools.partial(_lookup, packed), jit_compile=True)
    return compiled(tf.constant(ids)).numpy()


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
    types = hlo_types(hlo)
    assert "u32" in types and not {"s64", "u64", "s8"} & types, types


@pytest.mark.parametrize("jit_compile", [False, True])
def test_the_op_mix_follows_the_compiler(jit_compile):
    """Traced for TensorFlow's kernels the lookup takes the distinct ids (Unique) and
    finds groups with one `searchsorted` (UpperBound); traced under XLA, which has no
    dynamic shapes, every id and a binary search of gathers."""
    table, steps, offset, candidates, groups, bits = _make_case([5, 6], [2, 4], 3, "ascending", 0)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    function = tf.function(functools.partial(_lookup, packed), jit_compile=jit_compile)
    graph = function.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph
    ops = {op.type for op in graph.get_operations()}
    assert ("UpperBound" in ops) is not jit_compile
    assert ("Unique" in ops) is not jit_compile
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


@pytest.mark.parametrize("layout", ["ascending", "shuffled"])
def test_repeated_ids_each_get_their_own_row(layout):
    """The graph lookup decodes each distinct id once: every repeat of an id, in any
    position, gets that id's values, and out-of-range ids of any value (they share
    one key) give zeros beside id 0."""
    table, steps, offset, candidates, groups, bits = _make_case([5, 6], [2, 4], 3, layout, 2)
    packed = codec.pack_table(table, steps, offset, candidates, groups, bits)
    ids = np.array([[7, 0, 7, -1], [11, 0, 3, 7], [3, 3, -5, 0]], np.int32)
    out = tf.function(functools.partial(_lookup, packed))(tf.constant(ids)).numpy()
    valid = (ids >= 0) & (ids < 11)
    expected = np.zeros(ids.shape + (3,), np.float32)
    expected[valid] = _expected(table, steps, offset, candidates, groups, bits, ids[valid])
    np.testing.assert_array_equal(out, expected)
    assert np.all(np.any(out[valid], axis=-1))


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
