"""The table's gradient is row-sparse, and so is a step of a row-sparse optimizer.

Runs in the Keras flavour of the test pass (Keras 3, or tf-keras with
`TF_USE_LEGACY_KERAS=1`). SGD and Adagrad write an `IndexedSlices` gradient into
the table with scatter updates in both flavours, so a step changes the looked-up
rows only (whether the step's *cost* follows the looked-up rows too depends on the
optimizer's slots; benchmarks/README.md); Adam decays its moments everywhere, so a
later step moves rows that the batch did not look up.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_mpe
from keras_mpe import MixedPrecisionEmbedding
from keras_mpe.backend import IS_KERAS_3, keras

INPUT_DIM, DIM, FIELDS = 500, 4, 3


def _recording(optimizer_class):
    """`optimizer_class` that records the type of each variable's gradient."""

    class Recording(optimizer_class):
        gradient_types: dict = {}

        def update_step(self, gradient, variable, *args, **kwargs):
            Recording.gradient_types[variable.name] = type(gradient)
            return super().update_step(gradient, variable, *args, **kwargs)

    Recording.gradient_types = {}
    return Recording


def _model(layer, optimizer):
    inputs = keras.Input(shape=(FIELDS,), dtype="int32")
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _layer(state):
    layer = MixedPrecisionEmbedding(INPUT_DIM, DIM, num_groups=8, bit_widths=(2, 8))
    layer.build()
    if state == "retrain":
        layer.freeze_precision(np.full(layer.groups, 8))
    return layer


def _batch(seed):
    ids = np.random.default_rng(seed).integers(0, INPUT_DIM, size=(16, FIELDS)).astype(np.int32)
    return ids, np.full((16, 1), 5.0, np.float32)


@pytest.mark.parametrize("state", ["search", "retrain"])
def test_table_gradient_is_indexed_slices_over_the_looked_up_rows(state):
    layer = _layer(state)
    ids, _ = _batch(0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids, training=True) ** 2)
    gradient = tape.gradient(loss, layer.embeddings)
    assert isinstance(gradient, tf.IndexedSlices)
    assert set(np.asarray(gradient.indices).tolist()) == set(ids.reshape(-1).tolist())


@pytest.mark.parametrize("optimizer_class", ["SGD", "Adagrad"])
@pytest.mark.parametrize("state", ["search", "retrain"])
def test_row_sparse_step_changes_only_the_looked_up_rows(optimizer_class, state):
    layer = _layer(state)
    optimizer = _recording(getattr(keras.optimizers, optimizer_class))(learning_rate=0.1)
    model = _model(layer, optimizer)
    for seed in (1, 2):  # a second step must not move the first step's rows either
        before = layer.embeddings.numpy()
        ids, labels = _batch(seed)
        model.train_on_batch(ids, labels)
        after = layer.embeddings.numpy()
        looked_up = np.zeros(INPUT_DIM, bool)
        looked_up[ids.reshape(-1)] = True
        np.testing.assert_array_equal(after[~looked_up], before[~looked_up])
        # nearly all looked-up rows move (a row clipped at its width gets no gradient)
        assert (after[looked_up] != before[looked_up]).any(axis=1).mean() > 0.9
    table_gradients = [t for name, t in optimizer.gradient_types.items() if "embeddings" in name]
    assert table_gradients == [tf.IndexedSlices]


def test_adam_is_not_row_sparse():
    layer = _layer("retrain")
    model = _model(layer, _recording(keras.optimizers.Adam)(learning_rate=0.1))
    first, labels = _batch(1)
    model.train_on_batch(first, labels)
    before = layer.embeddings.numpy()
    second = np.full_like(first, np.setdiff1d(np.arange(INPUT_DIM), first)[0])
    model.train_on_batch(second, labels)
    only_first = np.setdiff1d(first, second)
    # Adam's first moment of a row looked up once decays but stays non-zero, so
    # the row keeps moving in steps that do not look it up
    assert (layer.embeddings.numpy()[only_first] != before[only_first]).all(axis=1).all()


@pytest.mark.skipif(not IS_KERAS_3, reason="keras.optimizers.MultiOptimizer is Keras 3's")
def test_keras_3_adam_with_sgd_for_the_table_is_row_sparse_through_the_search():
    layer = _layer("search")
    tables = {".*embeddings": keras.optimizers.SGD(0.1)}
    optimizer = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(keras.optimizers.Adam(0.01), tables)
    )
    model = _model(layer, optimizer)
    ids, labels = _batch(1)
    before = layer.embeddings.numpy()
    search = keras_mpe.PrecisionSearch(monitor="loss", verbose=0, rewind=False)
    model.fit(ids, labels, epochs=1, verbose=0, callbacks=[search])
    model.fit(ids, labels, epochs=1, verbose=0)  # retrain, with the fresh optimizer
    assert [type(o).__name__ for o in model.optimizer.optimizers] == ["SGD", "Adam"]
    after = layer.embeddings.numpy()
    looked_up = np.zeros(INPUT_DIM, bool)
    looked_up[ids.reshape(-1)] = True
    np.testing.assert_array_equal(after[~looked_up], before[~looked_up])
    assert (after[looked_up] != before[looked_up]).any(axis=1).mean() > 0.9


# optimizer -> whether its step has no op over the whole table, in this flavour
ROW_SPARSE = (
    {"SGD": True, "Adagrad": False, "Adam": False}
    if IS_KERAS_3
    else {"SGD": False, "Adagrad": True, "Adam": False}
)
ROW_SPARSE.update({"keras_mpe.LazyAdam": True, "keras_mpe.Adagrad": True})


def _optimizer_class(name):
    module, _, class_name = name.rpartition(".")
    return getattr(keras_mpe.optimizers if module else keras.optimizers, class_name)


@pytest.mark.parametrize("optimizer_class", sorted(ROW_SPARSE))
@pytest.mark.parametrize("state", ["search", "retrain"])
def test_which_train_steps_cost_follows_the_looked_up_rows(optimizer_class, state):
    # Keras 3's Adagrad adds epsilon to its whole accumulator and tf-keras's SGD
    # multiplies a whole momentum slot (even at momentum 0) in every step;
    # keras_mpe.optimizers update the looked-up rows only, in both flavours.
    layer = _layer(state)
    optimizer = _optimizer_class(optimizer_class)(0.1)
    model = _model(layer, optimizer)
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(ids, training=True) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    graph = step.get_concrete_function(tf.TensorSpec([None, FIELDS], tf.int32)).graph
    operations = graph.get_operations()
    operations += [op for f in graph._functions.values() for op in f.graph.get_operations()]
    whole_table = [
        op.type for op in operations if any(o.shape == (INPUT_DIM, DIM) for o in op.outputs)
    ]
    assert (whole_table == []) == ROW_SPARSE[optimizer_class], whole_table
