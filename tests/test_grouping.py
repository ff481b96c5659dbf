"""Frequency counting and frequency groups."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mpe import grouping


def test_count_frequencies_from_array_tensor_and_dataset_agree():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(300, 4))
    expected = np.bincount(ids.reshape(-1), minlength=60)
    dataset = tf.data.Dataset.from_tensor_slices(ids).batch(32)
    for data in (ids, tf.constant(ids), dataset, dataset.unbatch()):
        np.testing.assert_array_equal(grouping.count_frequencies(data, 60), expected)


def test_count_frequencies_streams_in_chunks(monkeypatch):
    monkeypatch.setattr(grouping, "_CHUNK", 7)
    ids = np.arange(100) % 9
    np.testing.assert_array_equal(grouping.count_frequencies(ids, 9), np.bincount(ids))


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
def test_count_frequencies_of_datasets_of_any_element_shape(monkeypatch, chunk):
    # scalars and fixed shapes are batched up to `_CHUNK` ids; ragged batches (no
    # static shape) stream as they are; counts are summed over many bincounts
    monkeypatch.setattr(grouping, "_CHUNK", chunk)
    ids = np.random.default_rng(1).integers(0, 11, size=200)
    expected = np.bincount(ids, minlength=12)
    scalars = tf.data.Dataset.from_tensor_slices(ids)
    pairs = tf.data.Dataset.from_tensor_slices(ids.reshape(100, 2))
    uneven = tf.data.Dataset.from_generator(
        lambda: (ids[i : i + 1 + i % 5] for i in range(200)),
        output_signature=tf.TensorSpec([None], tf.int64),
    )
    uneven_expected = np.bincount(
        np.concatenate([ids[i : i + 1 + i % 5] for i in range(200)]), minlength=12
    )
    np.testing.assert_array_equal(grouping.count_frequencies(scalars, 12), expected)
    np.testing.assert_array_equal(grouping.count_frequencies(pairs, 12), expected)
    np.testing.assert_array_equal(grouping.count_frequencies(uneven, 12), uneven_expected)


@pytest.mark.parametrize("bad", [-1, 10])
def test_count_frequencies_rejects_out_of_range_ids(bad):
    with pytest.raises(ValueError, match=rf"id {bad}, outside \[0, input_dim=10\)"):
        grouping.count_frequencies(np.array([1, bad, 3]), 10)


def test_count_frequencies_rejects_float_ids_and_tuple_datasets():
    with pytest.raises(TypeError, match="integer ids.*float64"):
        grouping.count_frequencies(np.array([1.0, 2.0]), 10)
    pairs = tf.data.Dataset.from_tensor_slices((np.arange(3), np.arange(3)))
    with pytest.raises(TypeError, match="tuple"):
        grouping.count_frequencies(pairs, 10)


@pytest.mark.parametrize(
    "frequencies, message",
    [
        ([1.0, -2.0, 3.0], r"frequencies\[1\]=-2.0"),
        ([1.0, np.nan, 3.0], r"frequencies\[1\]=nan"),
        ([1.0, 2.0], r"shape \(input_dim,\) = \(3,\). Received shape \(2,\)"),
        ([np.inf, 1.0, 1.0], r"frequencies\[0\]=inf"),
        ([1.0, 2.5, 1.0], r"whole-number counts below 2\*\*63. Received frequencies\[1\]=2.5"),
    ],
)
def test_validate_frequencies_errors_name_the_value(frequencies, message):
    with pytest.raises(ValueError, match=message):
        grouping.validate_frequencies(frequencies, 3)


def test_validate_frequencies_rejects_strings():
    with pytest.raises(TypeError, match="frequencies"):
        grouping.validate_frequencies(["a", "b", "c"], 3)


@pytest.mark.parametrize(
    "input_dim, num_groups, sizes",
    [(10, 3, [3, 3, 4]), (12, 4, [3, 3, 3, 3]), (3, 128, [1, 1, 1]), (1, 1, [1])],
)
def test_group_sizes_are_equal_with_the_remainder_last(input_dim, num_groups, sizes):
    assert grouping.group_sizes(input_dim, num_groups).tolist() == sizes


def test_frequency_groups_sort_rarest_first_and_weigh_groups():
    frequencies = np.array([10.0, 0.0, 4.0, 1.0, 7.0, 2.0])
    id_to_group, masses = grouping.frequency_groups(frequencies, 3)
    # ascending: id1 (0), id3 (1), id5 (2), id2 (4), id4 (7), id0 (10)
    assert id_to_group.tolist() == [2, 0, 1, 0, 2, 1]
    # totals: g0 = 0 + 1 = 1, g1 = 2 + 4 = 6, g2 = 7 + 10 = 17
    np.testing.assert_allclose(masses, [1.0, 6.0, 17.0])


def test_without_counts_ids_are_ranked_by_descending_frequency():
    id_to_group, masses = grouping.frequency_groups(np.zeros(7), 3)
    # id 0 is the most frequent: it lands in the last group; the rarest ids go first
    assert id_to_group.tolist() == [2, 2, 2, 1, 1, 0, 0]
    np.testing.assert_array_equal(masses, [1.0, 1.0, 1.0])


def test_empty_groups_get_the_lightest_mass():
    frequencies = np.array([0.0, 0.0, 0.0, 1.0, 3.0, 6.0])
    _, masses = grouping.frequency_groups(frequencies, 3)
    # totals 0 (ids 2, 1), 1 (ids 0, 3), 9 (ids 4, 5): the empty group weighs like 1
    np.testing.assert_allclose(masses, [1.0, 1.0, 9.0])


@pytest.mark.parametrize(
    "chunks",
    [
        [[0, 0, 0], [1, 1, 1], [2, 2, 3]],  # contiguous, a change at a chunk's edge
        [[0, 0, 0], [1, 1, 1], [0, 2, 3]],  # group 0 comes back in the next chunk
        [[3, 3, 3], [3, 3, 3], [2, 1, 0]],  # a group over two chunks
        [[1, 1, 1], [1], [1, 1]],  # one group has every id
    ],
)
def test_group_layout_in_chunks_matches_the_whole_array(chunks):
    whole = np.concatenate(chunks)
    rows, contiguous = grouping.group_layout([np.array(c) for c in chunks], 5)
    np.testing.assert_array_equal(rows, np.bincount(whole, minlength=5))
    assert contiguous == (np.count_nonzero(np.diff(whole)) == np.unique(whole).size - 1)


def test_groups_are_contiguous():
    assert grouping.groups_are_contiguous(np.array([2, 2, 1, 0, 0]))
    assert not grouping.groups_are_contiguous(np.array([0, 1, 0]))
    assert grouping.groups_are_contiguous(np.array([0]))


@pytest.mark.parametrize(
    "frequencies, ranked",
    [
        ([0, 9, 4, 4, 1], True),  # StringLookup: the OOV id 0 never occurs
        ([0, 0, 9, 4, 1], True),  # with a mask token: ids 0 and 1
        ([9, 0, 4, 0, 1], True),  # vocabulary entries the training data lacks
        ([0, 0, 0], True),
        ([0, 4, 9], False),
        ([9, 1, 4], False),
    ],
)
def test_seen_ids_ranked(frequencies, ranked):
    assert grouping.seen_ids_ranked(np.array(frequencies)) is ranked


def test_unseen_ids_keep_their_place_when_the_seen_ids_are_ranked():
    frequencies = np.array([0.0, 9.0, 5.0, 4.0, 0.0, 2.0, 1.0])
    id_to_group, masses = grouping.frequency_groups(frequencies, 3)
    # ranked by id alone: groups of 2, 2 and 3 ids (the most frequent takes the rest)
    assert id_to_group.tolist() == [2, 2, 2, 1, 1, 0, 0]
    # totals: g0 = 2 + 1 = 3, g1 = 4 + 0 = 4, g2 = 0 + 9 + 5 = 14
    np.testing.assert_allclose(masses, [1.0, 4.0 / 3.0, 14.0 / 3.0], rtol=1e-6)


def test_an_adapted_string_lookup_needs_no_permutation():
    """A table behind a real StringLookup packs as small as a perfectly ranked one."""
    from keras_mpe import MixedPrecisionEmbedding, PackedEmbedding
    from keras_mpe.backend import keras

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in rng.zipf(1.3, size=5000) if i < 400])
    lookup = keras.layers.StringLookup()
    lookup.adapt(words)
    ids = np.asarray(lookup(words))
    input_dim = lookup.vocabulary_size()
    counts = np.bincount(ids, minlength=input_dim)
    assert counts[0] == 0 and counts[1] > 0  # the OOV id, then the most frequent word

    layer = MixedPrecisionEmbedding(input_dim, 8, num_groups=16)
    layer.adapt(ids)
    assert grouping.groups_are_contiguous(layer.id_to_group.numpy())
    ranked = MixedPrecisionEmbedding(input_dim, 8, num_groups=16)
    ranked.set_frequencies(np.sort(counts)[::-1])
    bits = np.linspace(0, 6, 16).round().astype(int)
    assert layer.memory_report(bits)["total_bytes"] == ranked.memory_report(bits)["total_bytes"]

    layer.freeze_precision(bits)
    assert layer.packed_table().permutation is None
    np.testing.assert_array_equal(
        PackedEmbedding.from_layer(layer)(np.arange(input_dim)).numpy(),
        layer(np.arange(input_dim)).numpy(),
    )
