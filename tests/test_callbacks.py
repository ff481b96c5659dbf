"""PrecisionSearch: the search fit, the precision choice, rewind, budget and resumption."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mpe import (
    MixedPrecisionEmbedding,
    PrecisionSearch,
    callbacks,
    precision,
    quantizers,
    search_backup,
)
from keras_mpe.backend import keras
from keras_mpe.datasets import synthetic_ctr


@pytest.fixture(scope="module")
def data():
    return synthetic_ctr(rows=6000, fields=4, ids_per_field=150, seed=3)


def _model(vocabulary: int, dim: int = 4, **layer_kwargs) -> tuple:
    """A functional model whose MPE layer sits inside a nested Sequential tower."""
    keras.utils.set_random_seed(0)
    layer = MixedPrecisionEmbedding(
        vocabulary, dim, num_groups=layer_kwargs.pop("num_groups", 16), name="mpe", **layer_kwargs
    )
    tower = keras.Sequential([layer, keras.layers.Flatten()], name="tower")
    inputs = keras.Input(shape=(4,), dtype="int32")
    hidden = keras.layers.Dense(16, activation="relu")(tower(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(
        keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")]
    )
    return model, layer


class Recorder(keras.callbacks.Callback):
    """Keeps the precision state at each epoch end and the temperature at each batch."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.epochs, self.temperatures = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.temperatures.append(float(self.layer.temperature.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(
            {
                "logits": self.layer.precision_logits.numpy().copy(),
                "log_step_sizes": self.layer.log_step_sizes.numpy().copy(),
                "relative_offset": self.layer.relative_offset.numpy().copy(),
                "val_auc": logs.get("val_auc"),
            }
        )


def test_search_restores_the_best_epoch_freezes_rewinds_and_resets(data):
    model, layer = _model(data.vocabulary_size, bit_penalty=1e-6)
    layer.adapt(data.train[0])
    initial_table = layer.embeddings.numpy().copy()
    old_optimizer = model.optimizer
    recorder = Recorder(layer)
    search = PrecisionSearch(monitor="val_auc", verbose=0)
    history = model.fit(
        *data.train,
        validation_data=data.validation,
        epochs=3,
        batch_size=128,
        verbose=0,
        callbacks=[recorder, search],
    ).history

    assert set(history) >= {"mpe_avg_bits", "mpe_compression", "val_auc"}
    best = int(np.argmax([e["val_auc"] for e in recorder.epochs]))
    assert search.best_epoch == best
    state = recorder.epochs[best]
    np.testing.assert_array_equal(layer.precision_logits.numpy(), state["logits"])
    np.testing.assert_array_equal(layer.log_step_sizes.numpy(), state["log_step_sizes"])
    np.testing.assert_array_equal(layer.relative_offset.numpy(), state["relative_offset"])
    # the MPE rule at the final temperature, computed here by hand
    scaled = state["logits"] / 3e-3
    probabilities = np.exp(scaled - scaled.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    threshold = 1 / (2 * len(layer.bit_widths))
    expected = [
        max(b for b, p in zip(layer.bit_widths, row) if p >= threshold) for row in probabilities
    ]
    np.testing.assert_array_equal(layer.group_bits.numpy(), expected)
    assert layer.state == "retrain"
    assert layer.temperature.numpy() == pytest.approx(3e-3)
    np.testing.assert_array_equal(layer.embeddings.numpy(), initial_table)  # rewound
    assert model.optimizer is not old_optimizer
    assert int(model.optimizer.iterations.numpy()) == 0
    assert search.reports["mpe"]["total_bytes"] == layer.memory_report()["total_bytes"]
    assert history["mpe_compression"][best] == pytest.approx(
        layer.memory_report()["compression_ratio"]
    )

    # the retrain fit: no recompile, frozen logits, moving table, no penalty
    logits = layer.precision_logits.numpy().copy()
    retrain = model.fit(*data.train, epochs=1, batch_size=128, verbose=0).history
    np.testing.assert_array_equal(layer.precision_logits.numpy(), logits)
    assert not np.array_equal(layer.embeddings.numpy(), initial_table)
    assert all(v is not layer.precision_logits for v in model.trainable_variables)
    predictions = model.predict(data.test[0], verbose=0)
    bce = keras.losses.BinaryCrossentropy()(data.test[1], predictions).numpy()
    evaluated = model.evaluate(*data.test, verbose=0, return_dict=True)["loss"]
    assert evaluated == pytest.approx(bce, rel=1e-4)  # no bit penalty in the loss
    assert np.isfinite(retrain["loss"]).all()


def test_temperature_anneals_geometrically_over_the_whole_search(data):
    model, layer = _model(data.vocabulary_size)
    recorder = Recorder(layer)
    search = PrecisionSearch(monitor="loss", initial_temperature=0.5, verbose=0)
    model.fit(*data.train, epochs=2, batch_size=1000, verbose=0, callbacks=[search, recorder])
    total = 2 * 5  # 2 epochs of ceil(4800 / 1000) steps
    expected = [0.5 * (3e-3 / 0.5) ** (step / total) for step in range(1, total + 1)]
    np.testing.assert_allclose(recorder.temperatures, expected, rtol=1e-5)


def test_logits_do_not_lock_in_within_the_first_epoch_at_the_defaults(data):
    """With the reference temperature fixed, Adam makes the distributions one-hot
    within the first epoch; the default schedule keeps them open."""
    max_probability = {}
    for initial_temperature in (None, 1.0):
        model, layer = _model(data.vocabulary_size, bit_penalty=1e-5)
        layer.adapt(data.train[0])
        recorder = Recorder(layer)
        model.fit(
            *data.train,
            epochs=3,
            batch_size=64,  # 75 steps per epoch
            verbose=0,
            callbacks=[
                PrecisionSearch("loss", initial_temperature=initial_temperature, verbose=0),
                recorder,
            ],
        )
        first = recorder.epochs[0]["logits"] / recorder.temperatures[74]
        probabilities = np.exp(first - first.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        max_probability[initial_temperature] = probabilities.max(axis=1)
    assert np.median(max_probability[None]) > 0.98  # locked in (0.993 when written)
    assert max_probability[1.0].max() < 0.5  # still exploring (0.24 when written)


def test_target_compression_is_met_within_ten_percent(data):
    model, layer = _model(data.vocabulary_size, dim=16, num_groups=32)
    layer.adapt(data.train[0])
    search = PrecisionSearch(monitor="val_auc", target_compression=12.0, verbose=0)
    model.fit(
        *data.train,
        validation_data=data.validation,
        epochs=2,
        batch_size=128,
        verbose=0,
        callbacks=[search],
    )
    ratio = layer.memory_report()["compression_ratio"]
    assert 12.0 <= ratio <= 13.2
    assert float(layer.bit_penalty.numpy()) > 0  # steered from 0


def _fit(layer, group_bits, target):
    report = layer.memory_report(np.asarray(group_bits))
    return precision.fit_to_budget(report, layer.bit_widths, layer.group_masses.numpy(), target)


def test_fit_to_budget_steps_rarest_groups_down_and_frequent_ones_up():
    layer = MixedPrecisionEmbedding(1000, 16, num_groups=4, bit_widths=(0, 2, 4, 8))
    layer.adapt(np.repeat(np.arange(1000), np.arange(1000) // 10 + 1))  # id 999 most frequent
    # 250 rows x 16 values per group; overhead 4 * (3 + 16 + 3 * 4) = 124 bytes
    assert layer.memory_report([0, 0, 0, 0])["overhead_bytes"] == 124
    down = _fit(layer, [8, 8, 8, 8], 8.0)
    # 64000 / 8 = 8000 bytes allowed; a 2-bit group takes 1000. Down, rarest first:
    # group 0 to 0 bits, group 1 to 0 bits ([0, 0, 8, 8]: 8124 bytes, 7.9x, still
    # short), group 2 to 4 bits ([0, 0, 4, 8]: 6124 bytes, 10.5x). Then up, most
    # frequent first, while above 8.8x and staying >= 8x: group 2 to 8 bits would give
    # 7.9x, group 1 to 2 bits gives 7124 bytes (9.0x); one step more would be 7.9x.
    np.testing.assert_array_equal(down, [0, 2, 4, 8])
    assert layer.memory_report(down)["total_bytes"] == 7124
    # from [0, 0, 0, 2] (56.9x) up: group 3 to 8 bits, group 2 to 4 bits, group 1 to 2
    up = _fit(layer, [0, 0, 0, 2], 8.0)
    np.testing.assert_array_equal(up, [0, 2, 4, 8])
    # already inside [8, 8.8]: nothing moves
    inside = np.array([0, 4, 2, 8])  # 2000 + 1000 + 4000 + 124 = 7124 bytes, 9.0x
    np.testing.assert_array_equal(_fit(layer, inside, 8.9), inside)


def test_backup_dir_makes_an_interrupted_search_select_the_same_bits(data, tmp_path, monkeypatch):
    def run(callbacks_, model_and_layer):
        model, layer = model_and_layer
        layer.adapt(data.train[0])
        model.fit(
            *data.train,
            validation_data=data.validation,
            epochs=3,
            batch_size=256,
            shuffle=False,
            verbose=0,
            callbacks=callbacks_,
        )
        return layer

    def search(directory=None):
        return PrecisionSearch("val_auc", backup_dir=directory, verbose=0)

    reference = run([search()], _model(data.vocabulary_size, bit_penalty=1e-5))

    class Crash(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 1 and batch == 4:
                raise RuntimeError("simulated crash")

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    backup, state = str(tmp_path / "backup"), str(tmp_path / "state")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(
            [keras.callbacks.BackupAndRestore(backup), search(state), Crash()],
            _model(data.vocabulary_size, bit_penalty=1e-5),
        )
    assert os.listdir(state)
    hashed_tables = []

    def fingerprint(array):
        if np.ndim(array) == 2:  # a table, not an id-to-group map
            hashed_tables.append(array.shape)
        return fingerprint_once(array)

    fingerprint_once = search_backup.fingerprint
    monkeypatch.setattr(search_backup, "fingerprint", fingerprint)
    resumed = run(
        [keras.callbacks.BackupAndRestore(backup), search(state)],
        _model(data.vocabulary_size, bit_penalty=1e-5),
    )
    # the model's initial table for the identity, then the backup's, each hashed once
    assert hashed_tables == [(data.vocabulary_size, 4)] * 2
    np.testing.assert_array_equal(resumed.group_bits.numpy(), reference.group_bits.numpy())
    np.testing.assert_allclose(resumed.embeddings.numpy(), reference.embeddings.numpy())
    assert not os.listdir(state)  # cleaned up at the end


def test_several_layers_get_their_own_log_entries(data):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,), dtype="int32")
    first = MixedPrecisionEmbedding(data.vocabulary_size, 4, num_groups=8, name="first")
    second = MixedPrecisionEmbedding(data.vocabulary_size, 2, num_groups=8, name="second")
    joined = keras.layers.Concatenate()(
        [keras.layers.Flatten()(first(inputs)), keras.layers.Flatten()(second(inputs))]
    )
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(joined))
    model.compile("adam", "binary_crossentropy")
    history = model.fit(
        *data.train, epochs=1, batch_size=500, verbose=0, callbacks=[PrecisionSearch("loss")]
    ).history
    for name in ("first", "second"):
        assert f"mpe_avg_bits_{name}" in history and f"mpe_compression_{name}" in history
    reports = [first.memory_report(), second.memory_report()]
    total = sum(r["float32_bytes"] for r in reports) / sum(r["total_bytes"] for r in reports)
    assert history["mpe_compression"][0] == pytest.approx(total)
    assert first.state == second.state == "retrain"


def _clipped_by_hand(layer) -> tuple[np.ndarray, float, float]:
    """A layer's per-group clipped shares, its share and its lookups at the bits the
    search would select now, in numpy from the layer's public state."""
    bits = layer.select_group_bits(layer.final_temperature)
    step_of_width = dict(zip(layer.bit_widths, layer.candidate_step_sizes().numpy()))
    frequencies = layer.frequencies.numpy().astype(np.float64)
    weights = frequencies if frequencies.any() else np.ones(layer.input_dim)
    group = layer.id_to_group.numpy()
    row_bits = bits[group]
    row_steps = np.array([step_of_width[b] for b in row_bits])[:, None]
    codes = (layer.embeddings.numpy().astype(np.float64) - layer.offset.numpy()) / row_steps
    half = 2.0 ** (row_bits[:, None] - 1.0)
    outside = ((codes < -half) | (codes > half - 1)).mean(axis=1) * (row_bits > 0)
    lookups = np.bincount(group, weights, minlength=layer.groups)
    clipped = np.bincount(group, weights * outside, minlength=layer.groups)
    kept = (bits > 0) & (lookups > 0)
    shares = np.where(kept, clipped / np.where(kept, lookups, 1), np.nan)
    share = clipped[kept].sum() / lookups[kept].sum() if kept.any() else 0.0
    return shares, share, lookups.sum()


def test_logged_clipped_shares_match_a_hand_computation_with_one_pass_per_table(data, monkeypatch):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,), dtype="int32")
    first = MixedPrecisionEmbedding(
        data.vocabulary_size, 4, num_groups=8, bit_widths=(0, 2, 4), name="first"
    )
    second = MixedPrecisionEmbedding(
        data.vocabulary_size, 2, num_groups=4, bit_widths=(2, 4), name="second"
    )
    first.adapt(data.train[0])  # frequency-weighted; `second` weighs all rows alike
    joined = keras.layers.Concatenate()(
        [keras.layers.Flatten()(first(inputs)), keras.layers.Flatten()(second(inputs))]
    )
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(joined))
    for layer in (first, second):  # narrow ranges, so that a good share is clipped
        mean_abs = float(np.abs(layer.embeddings.numpy()).mean())
        layer.set_quantizer([2 * mean_abs, 0.5 * mean_abs], np.zeros(layer.output_dim))
    model.compile("adam", "binary_crossentropy")

    class ByHand(keras.callbacks.Callback):
        """After the search's epoch end: its logs, and the same values by hand."""

        def __init__(self):
            super().__init__()
            self.logged, self.expected = [], []

        def on_epoch_end(self, epoch, logs=None):
            self.logged.append({k: v for k, v in logs.items() if k.startswith("mpe_clipped")})
            hand = {layer.name: _clipped_by_hand(layer) for layer in (first, second)}
            weight = {name: lookups * dims for name, (_, _, lookups), dims in
                      zip(hand, hand.values(), (4, 2))}  # fmt: skip
            overall = sum(hand[n][1] * weight[n] for n in hand) / sum(weight.values())
            self.expected.append((hand, overall, first.clipped_share(), second.clipped_share()))

    passes = []

    def clipped_share(*args):
        passes.append(np.shape(args[0]))
        return count_once(*args)

    count_once = quantizers.clipped_share
    monkeypatch.setattr(quantizers, "clipped_share", clipped_share)
    search, by_hand = PrecisionSearch("loss", verbose=0), ByHand()
    model.fit(*data.train, epochs=2, batch_size=500, verbose=0, callbacks=[search, by_hand])
    # the search's epoch end reads each table once (ByHand's clipped_share() calls: 2)
    assert passes == [(data.vocabulary_size, 4), (data.vocabulary_size, 2)] * 4
    for epoch, (logged, (hand, overall, first_share, second_share)) in enumerate(
        zip(by_hand.logged, by_hand.expected, strict=True)
    ):
        assert 0.05 < overall < 0.95  # neither nothing nor everything clipped
        assert logged["mpe_clipped"] == pytest.approx(overall, rel=1e-9)
        for name, layer_share in (("first", first_share), ("second", second_share)):
            shares, share, _ = hand[name]
            assert logged[f"mpe_clipped_{name}"] == pytest.approx(share, rel=1e-9)
            assert logged[f"mpe_clipped_{name}"] == pytest.approx(layer_share, rel=1e-12)
            np.testing.assert_allclose(search.clipped_shares[name][epoch], shares, rtol=1e-9)


def test_tensorboard_histograms(data, tmp_path):
    model, layer = _model(data.vocabulary_size)
    log_dir = str(tmp_path / "logs")
    model.fit(
        *data.train,
        epochs=2,
        batch_size=1000,
        verbose=0,
        callbacks=[PrecisionSearch("loss", log_dir=log_dir, verbose=0)],
    )
    tags = []
    for name in os.listdir(os.path.join(log_dir, "mpe")):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, "mpe", name)):
            tags += [(value.tag, event.step) for value in event.summary.value]
    assert sorted(tags) == [("mpe/expected_bits", 0), ("mpe/expected_bits", 1)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_compression": 1.0}, "`target_compression` must be a number > 1"),
        ({"target_compression": "8"}, "Received: target_compression='8'"),
        ({"mode": "up"}, "`mode` must be 'auto', 'min' or 'max'"),
        ({"initial_temperature": 0}, "`initial_temperature` must be a number > 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrecisionSearch(**kwargs)


def test_missing_monitor_names_the_available_keys(data):
    model, _ = _model(data.vocabulary_size)
    with pytest.raises(ValueError, match=r"'val_auc', which is not in the logs.*'auc', 'loss'"):
        model.fit(
            *data.train,
            epochs=1,
            batch_size=1000,
            verbose=0,
            callbacks=[PrecisionSearch("val_auc")],
        )


def test_errors_at_the_start_of_training(data):
    inputs = keras.Input(shape=(4,), dtype="int32")
    plain = keras.Model(
        inputs,
        keras.layers.Dense(1)(
            keras.layers.Flatten()(keras.layers.Embedding(data.vocabulary_size, 2)(inputs))
        ),
    )
    plain.compile("adam", "mse")
    with pytest.raises(ValueError, match="found no MixedPrecisionEmbedding"):
        plain.fit(*data.train, epochs=1, verbose=0, callbacks=[PrecisionSearch("loss")])

    model, layer = _model(data.vocabulary_size)
    with pytest.raises(ValueError, match="out of reach.*overhead of .* groups alone"):
        model.fit(
            *data.train,
            epochs=1,
            verbose=0,
            callbacks=[PrecisionSearch("loss", target_compression=1e6)],
        )
    layer.freeze_precision()
    with pytest.raises(ValueError, match="retrain state; PrecisionSearch runs the search"):
        model.fit(*data.train, epochs=1, verbose=0, callbacks=[PrecisionSearch("loss")])


def test_selection_during_the_search_ignores_the_current_temperature():
    """The logged selection uses the softmax at the layer's final temperature."""
    layer = MixedPrecisionEmbedding(50, 2, num_groups=5, final_temperature=0.5)
    layer.build()
    layer.precision_logits.assign(np.random.default_rng(0).normal(size=(5, 7)))
    layer.temperature.assign(10.0)  # a schedule's current value must not matter
    expected = tf.nn.softmax(layer.precision_logits.numpy() / 0.5).numpy()
    np.testing.assert_allclose(layer._probabilities(0.5).numpy(), expected, rtol=1e-5)
    threshold = 1 / (2 * 7)
    want = [max(b for b, p in zip(range(7), row) if p >= threshold) for row in expected]
    np.testing.assert_array_equal(callbacks._selection(layer), want)
