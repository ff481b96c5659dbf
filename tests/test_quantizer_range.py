"""The quantizer's range against the table: the clipped share and the step sizes
re-estimated from the table, checked against hand-computed values."""

import numpy as np
import pytest

from keras_mpe import (
    MixedPrecisionEmbedding,
    PrecisionSearch,
    QuantizerRange,
    quantizer_range,
    quantizers,
    table_files,
)
from keras_mpe.backend import keras
from keras_mpe.datasets import synthetic_interactions


def test_clipped_share_counts_values_beyond_the_codes_by_row_weight():
    # 2 bits, step 1, offset 0: codes -2..1, so values below -2 or above 1 are clipped
    values = np.array([[-2.5, -2.0, 1.0, 1.5], [0.0, 3.0, -9.0, 0.5], [5.0, 5.0, 5.0, 5.0]])
    bits = np.array([[2], [2], [0]])  # the last row is pruned: never clipped
    shares = quantizers.clipped_share(values, 1.0, np.zeros(4), bits, np.array([1.0, 2.0, 7.0]))
    np.testing.assert_allclose(shares, [0.5 * 1, 0.5 * 2, 0.0])  # -2.5 and 1.5; 3 and -9
    # the offset shifts the range, the step size scales it
    shifted = quantizers.clipped_share(np.array([[2.4, 3.1]]), 0.5, np.array([2.0, 2.0]), 2, [1])
    np.testing.assert_allclose(shifted, [0.5])  # (2.4 - 2) / 0.5 = 0.8; (3.1 - 2) / 0.5 = 2.2 > 1


def _layer(frequencies):
    layer = MixedPrecisionEmbedding(
        4, 2, num_groups=2, bit_widths=(0, 2, 4), frequencies=frequencies
    )
    layer.build()
    return layer


def test_layer_clipped_shares_by_hand():
    # groups go from the rarest to the most frequent: ids 2, 3 in group 0, ids 0, 1 in 1
    layer = _layer([6, 2, 1, 1])
    np.testing.assert_array_equal(layer.id_to_group.numpy(), [1, 1, 0, 0])
    layer._assign_step_sizes(np.array([1.0, 0.25], np.float32))  # 2 bits, 4 bits
    layer.embeddings.assign(
        np.array([[0.5, 3.0], [-3.0, -3.0], [1.0, 2.5], [0.0, 0.0]], np.float32)
    )
    # group 1 at 2 bits (codes -2..1): id 0 has 1 of 2 values clipped, id 1 has 2 of 2:
    # (6 * 0.5 + 2 * 1) / 8; group 0 at 4 bits, step 0.25 (codes -8..7, up to 1.75):
    # id 2 has 1 of 2 clipped, id 3 none: (1 * 0.5 + 0) / 2
    np.testing.assert_allclose(layer.clipped_shares([4, 2]), [0.25, 5 / 8], rtol=1e-6)
    assert layer.clipped_share([4, 2]) == pytest.approx((0.5 + 5) / 10)
    shares = layer.clipped_shares([4, 0])
    assert np.isnan(shares[1]) and shares[0] == pytest.approx(0.25)
    assert layer.clipped_share([4, 0]) == pytest.approx(0.25)
    assert layer.clipped_share([0, 0]) == 0.0
    with pytest.raises(ValueError, match="candidates"):
        layer.clipped_shares([3, 4])
    with pytest.raises(ValueError, match="shape"):
        layer.clipped_shares([2])


def test_group_lookups_by_hand():
    # ids 2, 3 (frequencies 1, 1) in group 0, ids 0, 1 (6, 2) in group 1
    layer = _layer([6, 2, 1, 1])
    np.testing.assert_array_equal(layer.group_lookups(), [2.0, 8.0])
    # without frequencies every row weighs 1: each group's number of rows
    np.testing.assert_array_equal(_layer([0, 0, 0, 0]).group_lookups(), [2.0, 2.0])
    # the weights that make `clipped_share()` from `clipped_shares()`: group 0 at 2 bits
    # has id 2's two values clipped (1 * 1 + 1 * 0) / 2, group 1 at 4 bits one of id 0's
    # (6 * 0.5 + 2 * 0) / 8; overall (2 * 0.5 + 8 * 0.375) / 10
    layer._assign_step_sizes(np.array([1.0, 0.25], np.float32))  # 2 bits, 4 bits
    layer.embeddings.assign(np.array([[9.0, 0.0], [0.0, 0.0], [9.0, 9.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(layer.clipped_shares([2, 4]), [0.5, 0.375], rtol=1e-6)
    assert layer.clipped_share([2, 4]) == pytest.approx(0.4)


def test_table_step_sizes_follow_the_table_and_raise_never_lowers():
    layer = _layer([3, 1, 0, 0])
    layer.embeddings.assign(np.array([[0.4, -0.4], [2.0, 2.0], [9.0, 9.0], [9.0, 9.0]]))
    # frequency-weighted mean |w|: (3 * 0.4 + 1 * 2.0) / 4 = 0.8 (unseen rows weigh 0)
    expected = [2 * 0.8 / np.sqrt(2.0), 2 * 0.8 / np.sqrt(8.0)]
    np.testing.assert_allclose(layer.table_step_sizes(), expected, rtol=1e-6)
    layer._assign_step_sizes(np.array([10.0, 1e-3], np.float32))
    layer.raise_step_sizes()
    np.testing.assert_allclose(layer.step_sizes.numpy(), [10.0, expected[1]], rtol=1e-5)
    layer.raise_step_sizes(reset=True)
    np.testing.assert_allclose(layer.step_sizes.numpy(), expected, rtol=1e-5)


def test_range_statistics_read_the_table_in_chunks(monkeypatch):
    monkeypatch.setattr(table_files, "CHUNK_BYTES", 64)  # 2 rows of 8 values, 8 ids
    frequencies = np.random.default_rng(1).integers(0, 5, size=101)
    layer = MixedPrecisionEmbedding(101, 8, num_groups=4, frequencies=frequencies)
    layer.build()
    table = layer.embeddings.numpy()
    weights = frequencies.astype(np.float64)
    expected = 2 * np.dot(weights, np.abs(table).mean(axis=1)) / weights.sum()
    np.testing.assert_allclose(
        layer.table_step_sizes(),
        expected / np.sqrt(2.0 ** (np.array(layer._nonzero_bit_widths) - 1)),
        rtol=1e-6,
    )
    groups = layer.id_to_group.numpy()
    np.testing.assert_array_equal(
        layer.group_lookups(), np.bincount(groups, weights, minlength=layer.groups)
    )


def test_lookup_sample_draws_rows_by_frequency(monkeypatch):
    monkeypatch.setattr(table_files, "CHUNK_BYTES", 40)  # 5 ids per chunk
    frequencies = np.zeros(23, np.int64)
    frequencies[[0, 4, 5, 22]] = [1, 2, 3, 4]  # across chunks, the last id included
    layer = MixedPrecisionEmbedding(23, 2, frequencies=frequencies)
    sample = layer.lookup_sample(20000, seed=3)
    assert sample.shape == (20000,) and (np.diff(sample) >= 0).all()
    counts = np.bincount(sample, minlength=23)
    assert set(np.flatnonzero(counts)) == {0, 4, 5, 22}  # never an unseen id
    np.testing.assert_allclose(counts[[0, 4, 5, 22]] / 20000, [0.1, 0.2, 0.3, 0.4], atol=0.015)
    np.testing.assert_array_equal(layer.lookup_sample(20000, seed=3), sample)
    # rows drawn by frequency and counted alike estimate the weighted mean
    estimate = layer.table_step_sizes(rows=sample)
    np.testing.assert_allclose(estimate, layer.table_step_sizes(), rtol=0.05)
    with pytest.raises(ValueError, match=r"`rows` values must be in \[0, 22\]"):
        layer.table_step_sizes(rows=[0, 23])


def test_quantizer_range_estimates_a_large_table_over_a_sample(monkeypatch):
    monkeypatch.setattr(quantizer_range, "WHOLE_TABLE_ROWS", 50)
    monkeypatch.setattr(quantizer_range, "SAMPLE_ROWS", 300)
    frequencies = np.random.default_rng(2).integers(0, 9, size=101)
    layer = MixedPrecisionEmbedding(101, 4, frequencies=frequencies)
    model = keras.Sequential([keras.Input(shape=(1,), dtype="int32"), layer])
    rule = QuantizerRange("reset")
    rule.set_model(model)
    rule.on_train_begin()
    rule.update()
    expected = layer.table_step_sizes(rows=layer.lookup_sample(300))
    np.testing.assert_allclose(layer.step_sizes.numpy(), expected, rtol=1e-5)
    assert not np.allclose(expected, layer.table_step_sizes(), rtol=1e-7)  # a sample


def _model(data, bit_widths=(6,)):
    keras.utils.set_random_seed(0)
    layer = MixedPrecisionEmbedding(data.vocabulary_size, 4, num_groups=8, bit_widths=bit_widths)
    layer.adapt(data.train[0])
    model = keras.Sequential(
        [
            keras.Input(shape=(2,), dtype="int32"),
            layer,
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    return model, layer


def test_search_logs_the_clipped_share_per_group_and_epoch():
    data = synthetic_interactions(ids=300, edges=1000, clusters=5)
    model, layer = _model(data)
    search = PrecisionSearch("loss", verbose=0)
    history = model.fit(*data.train, epochs=2, batch_size=32, verbose=0, callbacks=[search])
    clipped = history.history["mpe_clipped"]
    assert len(clipped) == 2 and all(0.0 <= c <= 1.0 for c in clipped)
    assert len(search.clipped_shares[layer.name]) == 2
    per_group = search.clipped_shares[layer.name][-1]
    assert per_group.shape == (8,)
    # the logged share is the per-group shares weighted by the groups' lookups
    lookups = np.bincount(
        layer.id_to_group.numpy(), layer.frequencies.numpy(), minlength=layer.groups
    )
    seen = lookups > 0
    assert clipped[-1] == pytest.approx(
        float(np.dot(per_group[seen], lookups[seen]) / lookups[seen].sum())
    )


class _StepSizes(keras.callbacks.Callback):
    """Records the layer's step sizes and LSQ+'s value over its table after every
    batch (after the callbacks listed before it)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((self.layer.step_sizes.numpy(), self.layer.table_step_sizes()))


@pytest.mark.parametrize("rule", ["floor", "reset"])
def test_quantizer_range_sets_the_formula_every_few_steps_in_both_phases(rule):
    data = synthetic_interactions(ids=300, edges=200, clusters=5)  # 480 train rows
    model, layer = _model(data, bit_widths=(0, 2, 6))
    every = 3
    range_rule = QuantizerRange(rule, every=every)
    # the search runs it as its `quantizer_range`, the retrain as a callback of its own
    for callback in (PrecisionSearch("loss", verbose=0, quantizer_range=range_rule), range_rule):
        before, after = _StepSizes(layer), _StepSizes(layer)
        # 480 rows at batch 64: 8 steps per epoch, 2 epochs; the count runs over epochs
        model.fit(*data.train, epochs=2, batch_size=64, verbose=0,
                  callbacks=[before, callback, after])  # fmt: skip
        assert len(after.seen) == 16
        for step, ((old, fitted), (new, _)) in enumerate(zip(before.seen, after.seen), 1):
            if step % every:
                np.testing.assert_array_equal(new, old)
            # the layer's step sizes are rounded to 16 significant bits
            elif rule == "reset":
                np.testing.assert_allclose(new, fitted, rtol=2**-16)
            else:
                np.testing.assert_allclose(new, np.maximum(old, fitted), rtol=2**-16)
    assert layer.state == "retrain"


def test_the_search_floors_the_range_every_50_steps_by_default():
    default = PrecisionSearch().quantizer_range
    assert (default.rule, default.every) == ("floor", 50)
    assert PrecisionSearch(quantizer_range="reset").quantizer_range.rule == "reset"
    # without a rule the search leaves the step sizes to the optimizer
    data = synthetic_interactions(ids=300, edges=200, clusters=5)
    model, layer = _model(data, bit_widths=(0, 2, 6))
    layer._assign_step_sizes(np.array([1e-6, 1e-6], np.float32))  # far below the formula
    before, after = _StepSizes(layer), _StepSizes(layer)
    search = PrecisionSearch("loss", verbose=0, quantizer_range=None)
    model.fit(*data.train, epochs=1, batch_size=8, verbose=0,
              callbacks=[before, search, after])  # fmt: skip
    assert len(after.seen) == 60
    for (old, fitted), (new, _) in zip(before.seen, after.seen):
        np.testing.assert_array_equal(new, old)
        assert (new < fitted).all()


def test_quantizer_range_arguments():
    with pytest.raises(ValueError, match="rule='max'"):
        QuantizerRange("max")
    with pytest.raises(ValueError, match="every=0"):
        QuantizerRange(every=0)
    with pytest.raises(ValueError, match="every=2.5"):
        QuantizerRange(every=2.5)
    with pytest.raises(ValueError, match="quantizer_range='max'"):
        PrecisionSearch(quantizer_range="max")
    with pytest.raises(ValueError, match="quantizer_range=50"):
        PrecisionSearch(quantizer_range=50)
