"""The demo's post-training baseline (the demo itself runs in `test_examples.py`)."""

import numpy as np
import pytest

from keras_mpe.demo import post_training_table


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rows_are_quantized_with_their_own_absmax_scale(bits):
    table = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    seen, stored = post_training_table(table, bits)
    largest = 2 ** (bits - 1) - 1
    for row, got in zip(table, seen, strict=True):
        scale = np.abs(row).max() / largest
        expected = np.clip(np.round(row / scale), -largest - 1, largest) * scale
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert np.abs(got).max() == pytest.approx(np.abs(row).max(), rel=1e-6)
    assert stored == (5 * 6 * bits + 7) // 8 + 4 * 5


def test_pruning_keeps_the_most_frequent_ids_and_counts_a_remap_only_when_needed():
    table = np.arange(1, 9, dtype=np.float32).reshape(4, 2)
    ranked, ranked_bytes = post_training_table(table, 8, np.array([9, 5, 2, 1]), keep_rows=2)
    assert np.all(ranked[2:] == 0) and np.all(ranked[:2] != 0)
    assert ranked_bytes == 2 * 2 + 4 * 2  # ids 0 and 1 kept: no remap
    shuffled, shuffled_bytes = post_training_table(table, 8, np.array([1, 9, 2, 5]), keep_rows=2)
    assert np.all(shuffled[[0, 2]] == 0) and np.all(shuffled[[1, 3]] != 0)
    assert shuffled_bytes == 2 * 2 + 4 * 2 + 4 * 4  # an int32 remap of the 4 ids


def test_a_zero_row_stays_zero():
    seen, _ = post_training_table(np.zeros((2, 3), np.float32), 4)
    assert np.all(seen == 0) and np.isfinite(seen).all()
