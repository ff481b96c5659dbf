"""The MPE bit-width choice and the memory accounting."""

import numpy as np
import pytest

from keras_mpe import precision


def test_select_takes_the_largest_width_at_half_uniform_probability():
    bit_widths = np.array([0, 1, 2, 3])  # K = 4, threshold 1/8
    probabilities = np.array(
        [
            [0.7, 0.05, 0.125, 0.125],  # exactly at the threshold counts
            [0.9, 0.05, 0.03, 0.02],  # only 0 bits qualify
            [0.0, 0.0, 1.0, 0.0],
            [0.2, 0.2, 0.5, 0.1],  # 3 bits fall below 1/8
        ]
    )
    chosen = bit_widths[precision.selected_index(probabilities).numpy()]
    assert chosen.tolist() == [3, 0, 2, 2]


def test_memory_report_by_hand():
    # 3 groups of 10, 10, 13 rows, D = 5: bits 0, 3, 7
    report = precision.memory_report(np.array([10, 10, 13]), np.array([0, 3, 7]), 5, 4, False)
    # bytes per row, a plane of p bits in ceil(5 p / 8) bytes: 0; 3 = 2 + 1 bits in
    # 2 + 1 bytes; 7 = 4 + 2 + 1 bits in 3 + 2 + 1 bytes -> 10 * 3 + 13 * 6 bytes
    assert report["payload_bytes"] == 108
    # 4 step sizes + 5 offsets + 3 groups x 3 uint32 fields
    assert report["overhead_bytes"] == 4 * (4 + 5 + 9)
    assert report["total_bytes"] == 108 + 72
    assert report["float32_bytes"] == 4 * 33 * 5
    assert report["compression_ratio"] == pytest.approx(660 / 180)
    assert report["payload_compression_ratio"] == pytest.approx(660 / 108)
    assert report["average_bits"] == pytest.approx((30 + 91) / 33)


def test_memory_report_counts_a_permutation_when_ids_are_not_grouped():
    grouped = precision.memory_report(np.array([500, 500]), np.array([2, 4]), 8, 6, False)
    permuted = precision.memory_report(np.array([500, 500]), np.array([2, 4]), 8, 6, True)
    # 1000 ids x 10 bits = 10,000 bits = 313 words
    assert permuted["overhead_bytes"] - grouped["overhead_bytes"] == 4 * 313


def test_all_pruned_table_has_infinite_payload_ratio():
    report = precision.memory_report(np.array([4, 4]), np.array([0, 0]), 2, 1, False)
    assert report["payload_bytes"] == 0
    assert report["payload_compression_ratio"] == float("inf")
