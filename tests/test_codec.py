"""The numpy codec: bit packing, the row layout, the byte count, chunked packing, errors."""

import numpy as np
import pytest

from keras_mpe import checks, codec, grouping, lookup, precision, quantizers


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


def _report(table, steps, groups, bits):
    return precision.memory_report(
        rows_per_group=np.bincount(groups, minlength=bits.size),
        group_bits=bits,
        output_dim=table.shape[1],
        num_step_sizes=steps.size,
        needs_permutation=not grouping.groups_are_contiguous(groups),
    )


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
