"""keras_mpe.optimizers: row-sparse LazyAdam and Adagrad, in the flavour of the pass."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mpe import MixedPrecisionEmbedding
from keras_mpe.backend import keras
from keras_mpe.optimizers import Adagrad, LazyAdam

ROWS, DIM = 6, 3
LR, BETA_1, BETA_2, EPSILON = 0.1, 0.9, 0.999, 1e-7
# per step, the ids of a batch (with repeats) and the gradient of each occurrence
STEPS = [
    ([0, 2, 2], [[1.0, -2.0, 0.5], [0.3, 0.1, -0.2], [0.7, 0.4, 0.1]]),
    ([4], [[-1.0, 0.5, 2.0]]),
    ([2, 5, 0, 0], [[0.2, 0.2, 0.2], [1.0, 1.0, -1.0], [-0.5, 0.0, 0.3], [0.1, 0.1, 0.1]]),
    ([4, 1], [[0.3, -0.3, 0.3], [2.0, 0.0, -1.0]]),
]


def _initial():
    return np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) / 10


def _summed(ids, values):
    """The gradient rows summed per id: `{id: float32 [DIM]}`."""
    summed = {}
    for i, value in zip(ids, np.asarray(values, np.float32), strict=True):
        summed[i] = summed.get(i, np.zeros(DIM, np.float32)) + value
    return summed


def _reference_lazy_adam(catch_up):
    table = _initial().astype(np.float64)
    m, v = np.zeros_like(table), np.zeros_like(table)
    last = np.zeros(ROWS, int)
    for t, (ids, values) in enumerate(STEPS, start=1):
        alpha = LR * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
        for i, g in _summed(ids, values).items():
            if catch_up:
                k = t - 1 - last[i]
                ratio = BETA_1 / np.sqrt(BETA_2)
                missed = sum(ratio**j for j in range(1, k + 1))
                table[i] -= alpha * missed * m[i] / (np.sqrt(v[i]) + EPSILON)
                m[i] *= BETA_1**k
                v[i] *= BETA_2**k
                last[i] = t
            m[i] += (g - m[i]) * (1 - BETA_1)
            v[i] += (g * g - v[i]) * (1 - BETA_2)
            table[i] -= alpha * m[i] / (np.sqrt(v[i]) + EPSILON)
    return table


def _reference_adagrad():
    table = _initial().astype(np.float64)
    accumulator = np.full_like(table, 0.1)
    for ids, values in STEPS:
        for i, g in _summed(ids, values).items():
            accumulator[i] += g * g
            table[i] -= LR * g / np.sqrt(accumulator[i] + EPSILON)
    return table


def _optimizer(name):
    if name == "adagrad":
        return Adagrad(LR, initial_accumulator_value=0.1, epsilon=EPSILON)
    return LazyAdam(LR, BETA_1, BETA_2, EPSILON, catch_up=name == "lazy_adam_catch_up")


def _apply(optimizer, table, ids, values):
    gradient = tf.IndexedSlices(
        tf.constant(values, tf.float32), tf.constant(ids, tf.int64), tf.constant([ROWS, DIM])
    )
    optimizer.apply_gradients([(gradient, table)])


@pytest.mark.parametrize(
    "name, reference",
    [
        ("lazy_adam", lambda: _reference_lazy_adam(False)),
        ("lazy_adam_catch_up", lambda: _reference_lazy_adam(True)),
        ("adagrad", _reference_adagrad),
    ],
)
def test_values_equal_a_numpy_reference_over_several_steps(name, reference):
    table = tf.Variable(_initial())
    optimizer = _optimizer(name)
    for ids, values in STEPS:
        _apply(optimizer, table, ids, values)
    np.testing.assert_allclose(table.numpy(), reference(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lazy_adam", "lazy_adam_catch_up", "adagrad"])
def test_repeated_ids_are_summed_once(name):
    repeated, summed = tf.Variable(_initial()), tf.Variable(_initial())
    first, second = _optimizer(name), _optimizer(name)
    for ids, values in STEPS:
        _apply(first, repeated, ids, values)
        rows = _summed(ids, values)
        _apply(second, summed, list(rows), np.stack(list(rows.values())))
    np.testing.assert_array_equal(repeated.numpy(), summed.numpy())


@pytest.mark.parametrize(
    "name, keras_class",
    [("lazy_adam", "Adam"), ("lazy_adam_catch_up", "Adam"), ("adagrad", "Adagrad")],
)
def test_a_dense_gradient_gets_the_flavours_own_update(name, keras_class):
    ours, theirs = tf.Variable(_initial()), tf.Variable(_initial())
    optimizer = _optimizer(name)
    config = {k: v for k, v in optimizer.get_config().items() if k != "catch_up"}
    reference = getattr(keras.optimizers, keras_class).from_config({**config, "name": "ref"})
    rng = np.random.default_rng(0)
    for _ in range(3):
        gradient = tf.constant(rng.normal(size=(ROWS, DIM)), tf.float32)
        optimizer.apply_gradients([(gradient, ours)])
        reference.apply_gradients([(gradient, theirs)])
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def _slots(optimizer, table_name):
    """The optimizer's variables shaped like the table (its moments or accumulator)."""
    return [
        v.numpy()
        for v in optimizer.variables
        if tuple(v.shape) == (ROWS * 100, DIM) and "iteration" not in v.name
    ]


@pytest.mark.parametrize("name", ["lazy_adam", "lazy_adam_catch_up", "adagrad"])
@pytest.mark.parametrize("layer", ["Embedding", "MixedPrecisionEmbedding"])
def test_only_the_looked_up_rows_change_slots_included(name, layer):
    rows = ROWS * 100
    if layer == "Embedding":
        embedding = keras.layers.Embedding(rows, DIM)
    else:
        embedding = MixedPrecisionEmbedding(rows, DIM, num_groups=4, bit_widths=(8,))
    inputs = keras.Input(shape=(4,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(embedding(inputs))))
    optimizer = _optimizer(name)
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(1)
    model.train_on_batch(rng.integers(0, rows, (8, 4)), np.ones((8, 1)))  # builds the slots
    for seed in (2, 3):
        ids = np.random.default_rng(seed).integers(0, rows, (8, 4)).astype(np.int32)
        before = [embedding.embeddings.numpy(), *_slots(optimizer, "embeddings")]
        model.train_on_batch(ids, np.full((8, 1), 5.0))
        after = [embedding.embeddings.numpy(), *_slots(optimizer, "embeddings")]
        looked_up = np.zeros(rows, bool)
        looked_up[ids.reshape(-1)] = True
        assert len(after) == 3 if name.startswith("lazy_adam") else 2
        for old, new in zip(before, after, strict=True):
            np.testing.assert_array_equal(new[~looked_up], old[~looked_up])
            assert (new[looked_up] != old[looked_up]).any(axis=1).mean() > 0.9


@pytest.mark.parametrize("name", ["lazy_adam", "lazy_adam_catch_up", "adagrad"])
def test_serialization_round_trip(name):
    optimizer = _optimizer(name)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is type(optimizer)
    assert restored.get_config() == optimizer.get_config()


def test_lazy_adam_refuses_amsgrad():
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
