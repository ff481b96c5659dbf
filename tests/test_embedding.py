"""MixedPrecisionEmbedding: values, gradients, states, saving and errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
from reference import mixture, quantize, softmax

from keras_mpe import MixedPrecisionEmbedding, grouping, precision, table_files
from keras_mpe.backend import keras

BITS = (0, 1, 2, 3, 4, 5, 6)


def names(variables):
    """Variable names without scopes or suffixes, the same in both flavours."""
    return [v.name.split("/")[-1].split(":")[0] for v in variables]


def _layer(input_dim=40, output_dim=4, **kwargs):
    layer = MixedPrecisionEmbedding(input_dim, output_dim, **kwargs)
    layer.build()
    return layer


def _randomize_logits(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.precision_logits.assign(
        rng.normal(scale=0.01, size=layer.precision_logits.shape).astype(np.float32)
    )


def _search_reference(layer, ids):
    table = layer.embeddings.numpy()
    probabilities = softmax(layer.precision_logits.numpy(), layer.temperature.numpy())
    alphas = dict(zip([b for b in layer.bit_widths if b], layer.step_sizes.numpy()))
    groups = layer.id_to_group.numpy()[ids.reshape(-1)]
    out = mixture(
        table[ids.reshape(-1)],
        probabilities[groups],
        [alphas.get(b, 1.0) for b in layer.bit_widths],
        layer.offset.numpy(),
        layer.bit_widths,
    )
    return out.reshape(ids.shape + (layer.output_dim,))


def _retrain_reference(layer, ids, group_bits=None):
    """The layer's output with each group quantized at `group_bits` (by default
    its frozen `group_bits`)."""
    table = layer.embeddings.numpy()
    alphas = dict(zip([b for b in layer.bit_widths if b], layer.step_sizes.numpy()))
    group_bits = layer.group_bits.numpy() if group_bits is None else group_bits
    bits = np.asarray(group_bits)[layer.id_to_group.numpy()]
    rows = [
        quantize(table[i : i + 1], alphas.get(bits[i], 1.0), layer.offset.numpy(), bits[i])[0]
        for i in ids.reshape(-1)
    ]
    return np.stack(rows).reshape(ids.shape + (layer.output_dim,))


def test_public_api():
    import keras_mpe

    assert keras_mpe.MixedPrecisionEmbedding is MixedPrecisionEmbedding
    assert isinstance(keras_mpe.__version__, str)


def test_variables_and_initial_values():
    layer = _layer(
        100,
        8,
        num_groups=10,
        embeddings_initializer=keras.initializers.RandomNormal(0, 0.1, seed=1),
    )
    table = layer.embeddings.numpy()
    assert names(layer.trainable_weights) == [
        "embeddings",
        "log_step_sizes",
        "relative_offset",
        "precision_logits",
    ]
    mean_abs = np.abs(table).mean()
    expected = [2 * mean_abs / np.sqrt(2.0 ** (b - 1)) for b in range(1, 7)]
    # rounded to 16 significant bits (`quantizers.round_step_sizes`)
    np.testing.assert_allclose(layer.step_sizes.numpy(), expected, rtol=2**-16)
    np.testing.assert_allclose(layer.offset_scale.numpy(), mean_abs, rtol=1e-5)
    np.testing.assert_array_equal(layer.offset.numpy(), np.zeros(8))
    np.testing.assert_array_equal(layer.precision_logits.numpy(), np.zeros((10, 7)))
    assert layer.temperature.numpy() == pytest.approx(3e-3)
    assert layer.state == "search"
    # no frequencies: id 0 is the most frequent, so it sits in the last group
    assert layer.id_to_group.numpy()[0] == 9 and layer.id_to_group.numpy()[-1] == 0


def test_default_initializer_is_normal_with_stddev_0_003():
    table = _layer(2000, 16).embeddings.numpy()
    assert abs(table.mean()) < 3e-4 and table.std() == pytest.approx(0.003, rel=0.05)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)])
def test_search_output_matches_reference_for_any_input_shape(shape):
    layer = _layer(
        40, 4, num_groups=5, frequencies=np.arange(40) % 7, search_forward="expectation"
    )
    _randomize_logits(layer)
    ids = np.random.default_rng(1).integers(0, 40, size=shape)
    out = layer(ids)
    assert out.shape == shape + (4,)
    np.testing.assert_allclose(out.numpy(), _search_reference(layer, ids), atol=1e-6)


def test_retrain_output_matches_reference():
    layer = _layer(40, 4, num_groups=5)
    layer.freeze_precision([0, 1, 3, 6, 2])
    ids = np.arange(40).reshape(8, 5)
    np.testing.assert_allclose(layer(ids).numpy(), _retrain_reference(layer, ids), atol=1e-6)
    # the pruned group (0 = the rarest ids 32..39) looks up zeros
    np.testing.assert_array_equal(layer(np.arange(32, 40)).numpy(), np.zeros((8, 4)))


def test_uniform_precision_with_a_single_bit_width():
    layer = _layer(30, 3, bit_widths=(4,))
    ids = np.arange(30)
    expected = quantize(layer.embeddings.numpy(), layer.step_sizes.numpy()[0], 0.0, 4)
    np.testing.assert_allclose(layer(ids).numpy(), expected, atol=1e-6)
    assert layer.select_group_bits().tolist() == [4] * layer.groups


@pytest.mark.parametrize("bad_id", [-1, 40, 2**31 - 1])
def test_out_of_range_ids_look_up_zeros_and_pass_no_gradient(bad_id):
    layer = _layer(40, 4, num_groups=5)
    ids = tf.constant([[3, bad_id]], tf.int64)
    with tf.GradientTape() as tape:
        out = layer(ids)
        loss = tf.reduce_sum(out)
    np.testing.assert_array_equal(out.numpy()[0, 1], np.zeros(4))
    assert np.abs(out.numpy()[0, 0]).sum() > 0
    grad = tape.gradient(loss, layer.embeddings)
    dense = tf.convert_to_tensor(grad).numpy()
    assert np.count_nonzero(np.abs(dense).sum(axis=1)) <= 1  # only row 3, never row 0
    assert np.abs(dense[0]).sum() == 0


def test_int64_ids_beyond_int32_are_out_of_range_not_wrapped():
    layer = _layer(40, 4)
    out = layer(tf.constant([2**32 + 3], tf.int64))
    np.testing.assert_array_equal(out.numpy(), np.zeros((1, 4)))


@pytest.mark.parametrize("state", ["search", "retrain"])
def test_table_gradient_is_sparse_over_looked_up_rows(state):
    layer = _layer(1000, 4)
    if state == "retrain":
        layer.freeze_precision(np.full(layer.groups, 4))
    ids = tf.constant([[1, 5, 5], [7, 1, 2]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) ** 2)
    grad = tape.gradient(loss, layer.embeddings)
    assert isinstance(grad, tf.IndexedSlices)
    assert grad.values.shape == (6, 4)


def test_search_gradients_match_autodiff_of_the_reference_mixture():
    """Gradients of the table rows, step sizes, offset and logits against autodiff
    through the composition of single-width quantizers (checked by formula elsewhere)."""
    from keras_mpe import quantizers

    layer = _layer(40, 4, num_groups=5, bit_penalty=0.0, search_forward="expectation")
    _randomize_logits(layer, seed=3)
    layer.relative_offset.assign(
        np.array([0.001, -0.002, 0.0, 0.003]) / (layer.offset_scale * 10.0)
    )
    ids = np.array([[0, 5, 39], [20, 20, 11]])
    dy = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    variables = [
        layer.embeddings,
        layer.log_step_sizes,
        layer.relative_offset,
        layer.precision_logits,
    ]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * dy)
    got = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]

    scale = [quantizers.lsq_grad_scale(b, 160) for b in BITS]
    with tf.GradientTape() as tape:
        flat = ids.reshape(-1)
        rows = tf.gather(layer.embeddings, flat)
        probs = tf.gather(
            tf.nn.softmax(layer.precision_logits / layer.temperature),
            layer.id_to_group.numpy()[flat].astype(np.int32),
        )
        parts = [
            probs[:, k : k + 1]
            * quantizers.lsq_quantize(rows, layer.step_sizes[k - 1], layer.offset, b, scale[b])
            for k, b in enumerate(BITS)
            if b
        ]
        loss = tf.reduce_sum(tf.reshape(tf.add_n(parts), dy.shape) * dy)
    want = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
    for name, g, w in zip(["table", "step", "offset", "logits"], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=name)
    assert np.abs(got[3]).sum() > 0


def test_bit_penalty_is_added_as_a_loss_by_formula():
    frequencies = np.arange(40, dtype=float)[::-1] ** 2
    layer = _layer(40, 4, num_groups=4, bit_penalty=0.5, frequencies=frequencies)
    _randomize_logits(layer, seed=2)
    layer(np.array([1, 2]))
    probabilities = softmax(layer.precision_logits.numpy(), 3e-3)
    expected_bits = probabilities @ np.array(BITS, np.float32)
    np.testing.assert_allclose(layer.expected_bits(), expected_bits, rtol=1e-5)
    totals = [sum(frequencies[layer.id_to_group.numpy() == g]) for g in range(4)]
    masses = np.array(totals) / min(totals)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(
        float(layer.losses[0]), 0.5 * np.sum(expected_bits / masses), rtol=1e-5
    )
    layer.freeze_precision()
    layer(np.array([1, 2]))
    assert float(layer.losses[-1]) == 0.0


def test_select_bit_widths_uses_the_mpe_rule():
    layer = _layer(40, 4, num_groups=2, bit_widths=(0, 2, 4), final_temperature=1.0)
    # group 0: p = softmax([2, 0, -3]) -> (0.876, 0.118, 0.006): 0 and 2 pass 1/6? no,
    # only 0 does; group 1: uniform -> the largest width, 4
    layer.precision_logits.assign([[2.0, 0.0, -3.0], [0.0, 0.0, 0.0]])
    assert layer.select_group_bits().tolist() == [0, 4]


def test_adapt_regroups_by_counted_frequencies():
    layer = MixedPrecisionEmbedding(6, 2, num_groups=3)
    ids = np.array([5, 5, 5, 5, 4, 4, 4, 3, 3, 2])
    layer.adapt(tf.data.Dataset.from_tensor_slices(ids).batch(3))
    np.testing.assert_array_equal(layer.frequencies.numpy(), [0, 0, 1, 2, 3, 4])
    assert layer.id_to_group.numpy().tolist() == [0, 0, 1, 1, 2, 2]
    # group totals 0 (ids 1, 0), 3 (ids 2, 3), 7 (ids 4, 5); the empty one weighs 1
    np.testing.assert_allclose(layer.group_masses.numpy(), [1.0, 1.0, 7.0 / 3.0])


def test_fewer_ids_than_groups():
    layer = _layer(3, 2, num_groups=128)
    assert layer.groups == 3 and layer.precision_logits.shape == (3, 7)
    assert layer(np.array([0, 1, 2])).shape == (3, 2)


def test_mask_zero():
    layer = _layer(10, 2, mask_zero=True)
    mask = layer.compute_mask(tf.constant([[0, 3, 0]]))
    assert mask.numpy().tolist() == [[False, True, False]]
    assert _layer(10, 2).compute_mask(tf.constant([[0, 3]])) is None


def test_memory_report_in_both_states():
    layer = _layer(1024, 16, num_groups=4)
    report = layer.memory_report()
    np.testing.assert_allclose(report["group_bits"], [3.0] * 4)  # uniform over 0..6
    layer.freeze_precision([0, 0, 2, 4])
    report = layer.memory_report()
    assert report["rows_per_group"].tolist() == [256] * 4
    assert report["payload_bytes"] == 256 * 16 * 6 // 8
    assert report["overhead_bytes"] == 4 * (6 + 16 + 3 * 4)
    assert report["compression_ratio"] == pytest.approx(1024 * 16 * 4 / (3072 + 4 * 34))


def test_memory_report_counts_a_permutation_for_scattered_groups():
    frequencies = np.tile([5.0, 1.0], 50)  # frequent and rare ids alternate
    layer = _layer(100, 4, num_groups=2, frequencies=frequencies)
    contiguous = _layer(100, 4, num_groups=2)
    extra = layer.memory_report()["overhead_bytes"] - contiguous.memory_report()["overhead_bytes"]
    assert extra == 4 * int(np.ceil(100 * 7 / 32))


def _model(layer, fields=3):
    inputs = keras.Input(shape=(fields,), dtype="int32")
    x = keras.layers.Flatten()(layer(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def test_freeze_takes_effect_in_a_compiled_model_without_recompiling():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(64, 3))
    y = rng.normal(size=(64, 1)).astype(np.float32)
    layer = MixedPrecisionEmbedding(50, 4, num_groups=5, bit_penalty=0.1)
    model = _model(layer)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(ids, y, epochs=1, batch_size=16, verbose=0)
    mse = float(np.mean((model.predict(ids, verbose=0) - y) ** 2))
    penalty = 0.1 * float(np.sum(layer.expected_bits() / layer.group_masses.numpy()))
    assert model.evaluate(ids, y, verbose=0) == pytest.approx(mse + penalty, rel=1e-4)

    layer.freeze_precision([0, 2, 2, 4, 6])
    preds = model.predict(ids, verbose=0)
    np.testing.assert_allclose(
        model.evaluate(ids, y, verbose=0), np.mean((preds - y) ** 2), rtol=1e-4
    )
    embedded = _retrain_reference(layer, ids)
    dense = model.layers[-1]
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    np.testing.assert_allclose(preds, embedded.reshape(64, -1) @ kernel + bias, atol=1e-5)
    table = layer.embeddings.numpy().copy()
    model.fit(ids, y, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(table, layer.embeddings.numpy())
    assert layer.group_bits.numpy().tolist() == [0, 2, 2, 4, 6]


def test_freeze_removes_the_logits_from_the_trainable_variables():
    layer = MixedPrecisionEmbedding(50, 4, num_groups=5)
    model = _model(layer)
    assert "precision_logits" in names(model.trainable_variables)
    layer.freeze_precision()
    assert "precision_logits" not in names(model.trainable_variables)
    assert "precision_logits" in names(model.non_trainable_variables)
    logits = layer.precision_logits.numpy().copy()
    model.compile("adam", "mse")
    model.fit(np.zeros((8, 3), int), np.ones((8, 1)), verbose=0)
    np.testing.assert_array_equal(layer.precision_logits.numpy(), logits)


@pytest.mark.parametrize("state", ["search", "retrain"])
def test_training_step_under_xla(state):
    rng = np.random.default_rng(0)
    layer = MixedPrecisionEmbedding(60, 4, num_groups=6, bit_penalty=1e-3)
    model = _model(layer)
    if state == "retrain":
        layer.freeze_precision()
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=True)
    before = [
        v.numpy().copy() for v in (layer.embeddings, layer.step_sizes, layer.precision_logits)
    ]
    history = model.fit(
        rng.integers(0, 60, size=(32, 3)), rng.normal(size=(32, 1)), epochs=2, verbose=0
    )
    assert np.isfinite(history.history["loss"]).all()
    after = [v.numpy() for v in (layer.embeddings, layer.step_sizes, layer.precision_logits)]
    assert not np.array_equal(before[0], after[0])
    assert not np.array_equal(before[1], after[1])
    assert np.array_equal(before[2], after[2]) == (state == "retrain")


def test_sequential_functional_and_subclassed_models():
    ids = np.random.default_rng(0).integers(0, 20, size=(16, 2))
    y = np.ones((16, 1), np.float32)

    class Tower(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding = MixedPrecisionEmbedding(20, 3, num_groups=4)
            self.head = keras.layers.Dense(1)

        def call(self, inputs):
            return self.head(tf.reduce_sum(self.embedding(inputs), axis=1))

    sequential = keras.Sequential()
    sequential.add(keras.Input(shape=(2,), dtype="int32"))
    sequential.add(MixedPrecisionEmbedding(20, 3, num_groups=4))
    sequential.add(keras.layers.Flatten())
    sequential.add(keras.layers.Dense(1))
    for model in (
        sequential,
        _model(MixedPrecisionEmbedding(20, 3, num_groups=4), 2),
        Tower(),
    ):
        model.compile("adam", "mse")
        history = model.fit(ids, y, epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert model.predict(ids, verbose=0).shape == (16, 1)


def test_mixed_float16_policy():
    layer = MixedPrecisionEmbedding(20, 3, dtype="mixed_float16")
    out = layer(np.array([[1, 2]]))
    assert out.dtype == tf.float16
    assert layer.embeddings.dtype == tf.float32


def test_float32_ids_are_read_as_integers_and_fractional_ones_as_out_of_range():
    layer = _layer(10, 2)
    got = layer(tf.constant([1.0, 2.0, 2.5, -1.0, np.nan, np.inf, 10.0, 9.0])).numpy()
    want = layer(tf.constant([1, 2, -1, -1, -1, -1, 10, 9])).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.abs(want[:2]).sum() > 0 and np.abs(want[2:7]).sum() == 0


def test_ids_float32_cannot_hold_exactly_are_rejected():
    with pytest.raises(TypeError, match="Received inputs of dtype float16 for input_dim=10"):
        _layer(10, 2)(tf.constant([1.0, 2.0], tf.float16))
    with pytest.raises(TypeError, match="dtype float32 for input_dim=16777217"):
        MixedPrecisionEmbedding(2**24 + 1, 1, embeddings_initializer="ones")(tf.constant([1.0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"input_dim": 0},
            r"`input_dim` must be a positive integer. Received: input_dim=0",
        ),
        ({"input_dim": 2.5}, r"input_dim=2.5 \(of type float\)"),
        (
            {"output_dim": -3},
            r"`output_dim` must be a positive integer. Received: output_dim=-3",
        ),
        ({"output_dim": True}, r"output_dim=True \(of type bool\)"),
        (
            {"num_groups": 0},
            r"`num_groups` must be a positive integer. Received: num_groups=0",
        ),
        (
            {"bit_widths": ()},
            r"`bit_widths` must be a non-empty.*Received: bit_widths=\(\)",
        ),
        ({"bit_widths": (4, 2)}, r"strictly increasing.*Received: bit_widths=\(4, 2\)"),
        ({"bit_widths": (2, 2, 4)}, r"Received: bit_widths=\(2, 2, 4\)"),
        ({"bit_widths": (0, 9)}, r"in \[0, 8\].*Received: bit_widths=\(0, 9\)"),
        ({"bit_widths": (-1, 2)}, r"Received: bit_widths=\(-1, 2\)"),
        ({"bit_widths": (0,)}, r"at least one non-zero.*Received: bit_widths=\(0,\)"),
        ({"bit_widths": (1.5, 2)}, r"integers.*Received: bit_widths=\(1.5, 2\)"),
        (
            {"final_temperature": 0.0},
            r"`final_temperature` must be a finite number > 0. Received: final_temperature=0.0",
        ),
        (
            {"quantizer_learning_rate_scale": -2},
            r"`quantizer_learning_rate_scale` must be a finite number > 0. Received: "
            r"quantizer_learning_rate_scale=-2",
        ),
        (
            {"search_forward": "mean"},
            r"`search_forward` must be one of \('sample', 'expectation'\). Received: "
            r"search_forward='mean'",
        ),
        (
            {"bit_penalty": -1.0},
            r"`bit_penalty` must be a finite number >= 0. Received: bit_penalty=-1.0",
        ),
        (
            {"frequencies": [1.0] * 9},
            r"`frequencies` must have shape \(input_dim,\) = \(10,\)",
        ),
        ({"frequencies": [1.0] * 9 + [-1.0]}, r"frequencies\[9\]=-1.0"),
        ({"frequencies": [np.nan] * 10}, r"frequencies\[0\]=nan"),
        (
            {"mask_zero": "yes"},
            r"`mask_zero` must be a bool. Received: mask_zero='yes'",
        ),
    ],
)
def test_bad_arguments_raise_with_the_name_and_the_value(kwargs, message):
    arguments = {"input_dim": 10, "output_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        MixedPrecisionEmbedding(**arguments)


def test_freeze_rejects_bad_bit_widths():
    layer = _layer(10, 2, num_groups=2, bit_widths=(0, 2, 4))
    for bad in ([2], [2, 3], [2.0, 4.0]):
        with pytest.raises(ValueError, match=r"2 integers \(one per group\).*\(0, 2, 4\)"):
            layer.freeze_precision(bad)


def test_zero_initializer_is_rejected():
    with pytest.raises(ValueError, match="all-zero table"):
        _layer(10, 2, embeddings_initializer="zeros")


@pytest.mark.parametrize("state", ["search", "retrain"])
def test_keras_file_round_trip_keeps_everything(tmp_path, state):
    rng = np.random.default_rng(0)
    frequencies = rng.integers(0, 100, size=50).astype(float)
    layer = MixedPrecisionEmbedding(
        50,
        4,
        num_groups=5,
        bit_widths=(0, 2, 4),
        final_temperature=0.5,
        bit_penalty=0.01,
        frequencies=frequencies,
        mask_zero=True,
        name="mpe",
    )
    model = _model(layer)
    model.compile("adam", "mse")
    model.fit(rng.integers(0, 50, size=(32, 3)), rng.normal(size=(32, 1)), verbose=0)
    if state == "retrain":
        layer.freeze_precision([0, 2, 4, 4, 2])
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    twin = loaded.get_layer("mpe")
    assert twin.state == state
    assert twin.get_config() == layer.get_config()
    for original, restored in zip(layer.weights, twin.weights):
        assert names([original]) == names([restored])
        np.testing.assert_array_equal(original.numpy(), restored.numpy())
    np.testing.assert_array_equal(twin.frequencies.numpy(), frequencies)
    assert ("precision_logits" in names(twin.trainable_weights)) == (state == "search")
    ids = rng.integers(0, 50, size=(8, 3))
    np.testing.assert_array_equal(model.predict(ids, verbose=0), loaded.predict(ids, verbose=0))


def test_config_round_trip():
    layer = MixedPrecisionEmbedding(10, 2, num_groups=3, bit_widths=[1, 3], final_temperature=0.1)
    clone = MixedPrecisionEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.bit_widths == (1, 3)


def test_retrain_gradients_match_single_width_quantizers():
    from keras_mpe import quantizers

    layer = _layer(40, 4, num_groups=4, bit_widths=(0, 2, 3, 5))
    layer.freeze_precision([0, 5, 2, 3])
    layer.relative_offset.assign(
        np.array([0.001, -0.002, 0.0, 0.003]) / (layer.offset_scale * 10.0)
    )
    ids = np.array([0, 5, 39, 20, 20, 11, 30])
    dy = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    variables = [
        layer.embeddings,
        layer.log_step_sizes,
        layer.relative_offset,
        layer.precision_logits,
    ]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) * dy)
    got = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]

    bits = layer.group_bits.numpy()[layer.id_to_group.numpy()[ids]]
    position = {2: 0, 3: 1, 5: 2}
    with tf.GradientTape() as tape:
        rows = tf.gather(layer.embeddings, ids)
        parts = [
            quantizers.lsq_quantize(
                rows[i : i + 1],
                layer.step_sizes[position[b]] if b else 1.0,
                layer.offset,
                int(b),
                quantizers.lsq_grad_scale(int(b), 160),
            )
            for i, b in enumerate(bits)
        ]
        loss = tf.reduce_sum(tf.concat(parts, axis=0) * dy)
    want = tape.gradient(loss, variables[:3])
    for name, g, w in zip(["table", "step", "offset"], got, want, strict=False):
        np.testing.assert_allclose(
            g, tf.convert_to_tensor(w).numpy(), rtol=1e-5, atol=1e-7, err_msg=name
        )
    assert np.abs(got[1]).sum() > 0
    np.testing.assert_array_equal(got[3], np.zeros_like(got[3]))  # logits get nothing


def test_quantizer_learning_rate_scale_reparameterises_step_sizes_and_offset():
    """alpha = exp(s * u) and beta = s * scale * v: same values, gradients times s."""
    keras.utils.set_random_seed(3)  # a fixed table: no value sits on a rounding edge
    kwargs = {"num_groups": 4, "bit_widths": (0, 2, 4), "bit_penalty": 0.0}
    plain = _layer(40, 4, quantizer_learning_rate_scale=1.0, **kwargs)
    scaled = _layer(40, 4, **kwargs)  # the default scale, 10
    scaled.embeddings.assign(plain.embeddings)
    scaled.offset_scale.assign(plain.offset_scale)
    scaled.log_step_sizes.assign(plain.log_step_sizes / 10.0)
    np.testing.assert_allclose(scaled.step_sizes.numpy(), plain.step_sizes.numpy(), rtol=1e-5)
    ids = np.array([0, 5, 39, 20, 11])
    dy = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    gradients = []
    for layer in (plain, scaled):
        layer.freeze_precision([2, 4, 2, 4])
        layer.relative_offset.assign(
            [0.5, -0.2, 0.0, 0.3] / np.float32(layer.quantizer_learning_rate_scale)
        )
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) * dy)
        gradients.append(tape.gradient(loss, [layer.log_step_sizes, layer.relative_offset]))
    np.testing.assert_allclose(scaled(ids).numpy(), plain(ids).numpy(), rtol=1e-5, atol=1e-9)
    for got, want in zip(gradients[1], gradients[0], strict=True):
        np.testing.assert_allclose(got.numpy(), 10.0 * want.numpy(), rtol=1e-4, atol=1e-9)
    assert np.abs(gradients[0][0].numpy()).sum() > 0


def test_sampled_search_quantizes_each_group_at_one_drawn_width():
    layer = _layer(60, 4, num_groups=6, bit_widths=(0, 2, 4), final_temperature=1.0)
    _randomize_logits(layer)
    ids = np.arange(60)
    out = layer(ids, training=True).numpy()
    assert layer.sampling_seed.numpy()[1] == 1  # one draw
    groups = layer.id_to_group.numpy()
    at_width = {b: _retrain_reference(layer, ids, np.full(6, b)) for b in (0, 2, 4)}
    for group in range(6):
        rows = groups == group
        assert any(np.allclose(out[rows], at_width[b][rows], atol=1e-6) for b in (0, 2, 4))


def test_sampled_search_trains_the_table_and_quantizer_as_the_drawn_widths_would():
    sampled = _layer(60, 4, num_groups=6, bit_widths=(0, 2, 4), final_temperature=1.0)
    _randomize_logits(sampled)
    frozen = _layer(60, 4, num_groups=6, bit_widths=(0, 2, 4))
    frozen.set_weights(sampled.get_weights())
    ids = np.arange(60)
    dy = np.random.default_rng(5).normal(size=(60, 4)).astype(np.float32)
    sampled.sampling_seed.assign([7, 0])
    drawn = sampled._search_weights(training=True)[1].numpy()
    sampled.sampling_seed.assign([7, 0])  # the call below draws the same widths
    frozen.freeze_precision(np.array(sampled.bit_widths)[drawn])
    assert len(set(drawn)) > 1
    watched = ("embeddings", "log_step_sizes", "relative_offset")
    gradients = []
    for layer in (sampled, frozen):
        variables = [getattr(layer, name) for name in watched]
        with tf.GradientTape() as tape:
            out = layer(ids, training=True)
            loss = tf.reduce_sum(out * dy)
        gradients.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)])
        np.testing.assert_allclose(out.numpy(), _retrain_reference(frozen, ids), atol=1e-7)
    for name, ours, reference in zip(watched, *gradients):
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9, err_msg=name)
    # no value is clipped here, so the offset's LSQ+ gradient is zero; the others not
    assert np.abs(gradients[1][0]).max() > 0 and np.abs(gradients[1][1]).min() > 0


def test_sampled_search_gives_the_logits_the_expectation_gradient():
    sampled = _layer(60, 4, num_groups=6, bit_widths=(0, 2, 4), final_temperature=1.0)
    expectation = _layer(
        60,
        4,
        num_groups=6,
        bit_widths=(0, 2, 4),
        final_temperature=1.0,
        search_forward="expectation",
    )
    _randomize_logits(sampled)
    expectation.set_weights(sampled.get_weights())
    ids = np.arange(60)
    dy = np.random.default_rng(4).normal(size=(60, 4)).astype(np.float32)
    gradients = []
    for layer in (sampled, expectation):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids, training=True) * dy)
        gradients.append(tape.gradient(loss, layer.precision_logits).numpy())
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-5, atol=1e-9)
    assert np.abs(gradients[0]).max() > 0


def test_sampled_widths_follow_the_softmax_and_replay_from_the_seed():
    layer = _layer(2000, 1, num_groups=1000, bit_widths=(0, 4), final_temperature=0.5)
    # at temperature 0.5, p(4 bits) = 3 / (1 + 3)
    layer.precision_logits.assign(np.tile([0.0, 0.5 * np.log(3.0)], (1000, 1)))
    start = layer.sampling_seed.numpy()
    first = layer._search_weights(training=True)[0].numpy()
    second = layer._search_weights(training=True)[0].numpy()
    assert set(np.unique(first)) == {0.0, 1.0} and (first.sum(axis=1) == 1).all()
    assert abs(first[:, 1].mean() - 0.75) < 0.06
    assert (first != second).any()  # a new draw each call
    layer.sampling_seed.assign(start)
    np.testing.assert_array_equal(layer._search_weights(training=True)[0].numpy(), first)


@pytest.mark.parametrize("jit_compile", [None, False, True])  # eager, graph, XLA
def test_only_the_search_state_draws_widths(jit_compile):
    layer = _layer(60, 4, num_groups=6, bit_widths=(0, 2, 4))
    ids = np.arange(60)

    def train_call():
        return layer(ids, training=True)

    call = train_call if jit_compile is None else tf.function(train_call, jit_compile=jit_compile)
    call()
    assert layer.sampling_seed.numpy()[1] == 1  # one draw while searching
    layer.freeze_precision([0, 2, 4, 4, 2, 0])
    out = call().numpy()
    assert layer.sampling_seed.numpy()[1] == 1  # none once frozen
    np.testing.assert_allclose(
        out, _retrain_reference(layer, ids, np.array([0, 2, 4, 4, 2, 0])), atol=1e-6
    )


def test_sampled_search_scores_the_selected_widths_outside_training():
    layer = _layer(60, 4, num_groups=6, bit_widths=(0, 2, 4), final_temperature=3e-3)
    layer.precision_logits.assign(np.random.default_rng(5).normal(size=(6, 3)) * 0.01)
    layer.temperature.assign(1.0)  # selection is at the final temperature, 3e-3
    ids = np.arange(60)
    selected = layer.select_group_bits(3e-3)
    assert selected.tolist() != layer.select_group_bits().tolist()
    np.testing.assert_allclose(
        layer(ids).numpy(), _retrain_reference(layer, ids, selected), atol=1e-6
    )
    assert layer.sampling_seed.numpy()[1] == 0  # no draw


def test_adapt_after_freeze_is_refused():
    layer = _layer(10, 2, num_groups=2, bit_widths=(0, 2, 4))
    layer.freeze_precision([0, 4])
    before = layer.id_to_group.numpy().copy()
    with pytest.raises(ValueError, match="'.*' is in the retrain state.*adapt\\(\\)"):
        layer.adapt(np.array([9, 9, 9, 8]))
    np.testing.assert_array_equal(layer.id_to_group.numpy(), before)


def test_set_frequencies_groups_as_adapt_does_and_is_refused_after_freeze():
    counted, given = _layer(6, 2, num_groups=3), _layer(6, 2, num_groups=3)
    counted.adapt(np.array([5, 5, 5, 0, 0, 2]))
    given.set_frequencies([2, 0, 1, 0, 0, 3])
    np.testing.assert_array_equal(given.id_to_group.numpy(), counted.id_to_group.numpy())
    np.testing.assert_array_equal(given.group_masses.numpy(), counted.group_masses.numpy())
    with pytest.raises(ValueError, match=r"`frequencies` must have shape \(input_dim,\)"):
        given.set_frequencies([1, 2])
    given.freeze_precision([0, 2, 6])
    with pytest.raises(ValueError, match="retrain state.*set_frequencies\\(\\)"):
        given.set_frequencies([1] * 6)


def test_set_table_assigns_it_and_its_mean_abs_is_the_offset_unit():
    layer = _layer(3, 2)
    table = np.array([[0.5, -1.0], [0.0, 2.0], [1.5, -1.0]], np.float32)
    layer.set_table(table)
    np.testing.assert_array_equal(layer.embeddings.numpy(), table)
    assert float(layer.offset_scale.numpy()) == 1.0  # (0.5 + 1 + 0 + 2 + 1.5 + 1) / 6
    with pytest.raises(ValueError, match=r"`table` must have shape \(3, 2\).*\(2, 2\)"):
        layer.set_table(table[:2])
    for bad in (np.zeros((3, 2)), np.full((3, 2), np.nan)):
        with pytest.raises(ValueError, match="finite, non-zero mean"):
            layer.set_table(bad)


def test_set_quantizer_sets_the_step_sizes_and_offset_it_is_given():
    layer = _layer(3, 2, bit_widths=(0, 2, 4), quantizer_learning_rate_scale=10.0)
    layer.set_table(np.full((3, 2), 0.25, np.float32))
    layer.set_quantizer([0.3, 0.02], [0.1, -0.05])
    # the step sizes as `quantizers.round_step_sizes` rounds them (16 significant bits)
    np.testing.assert_allclose(layer.step_sizes.numpy(), [0.3, 0.02], rtol=2**-16)
    np.testing.assert_allclose(layer.offset.numpy(), [0.1, -0.05], rtol=1e-6)
    np.testing.assert_allclose(layer.candidate_step_sizes().numpy(), [1.0, 0.3, 0.02], rtol=2**-16)
    with pytest.raises(ValueError, match=r"`step_sizes` must have shape \(2,\)"):
        layer.set_quantizer([0.3], [0.0, 0.0])
    with pytest.raises(ValueError, match="`step_sizes` must be > 0"):
        layer.set_quantizer([0.3, -0.1], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"`offset` must be finite"):
        layer.set_quantizer([0.3, 0.1], [0.0, np.inf])


def test_from_embedding_keeps_shape_name_mask_and_table():
    embedding = keras.layers.Embedding(7, 3, mask_zero=True, name="items")
    embedding.build((None,))
    layer = MixedPrecisionEmbedding.from_embedding(embedding, num_groups=2)
    shape = (layer.input_dim, layer.output_dim)
    assert shape == (7, 3) and layer.mask_zero and layer.name == "items"
    np.testing.assert_array_equal(layer.embeddings.numpy(), np.asarray(embedding.embeddings))
    assert layer.groups == 2


def test_a_table_shared_by_two_inputs_adds_its_penalty_once():
    layer = MixedPrecisionEmbedding(50, 4, num_groups=5, bit_penalty=1.0, name="shared")
    first = keras.Input(shape=(2,), dtype="int32")
    second = keras.Input(shape=(2,), dtype="int32")
    both = keras.layers.Concatenate()(
        [keras.layers.Flatten()(layer(first)), keras.layers.Flatten()(layer(second))]
    )
    model = keras.Model([first, second], keras.layers.Dense(1, use_bias=False)(both))
    model.layers[-1].set_weights([np.zeros((16, 1), np.float32)])  # the model predicts 0
    model.compile("sgd", "mse")
    ids = [np.zeros((3, 2), np.int32), np.ones((3, 2), np.int32)]
    penalty = float(layer._penalty())
    assert penalty == pytest.approx(15.0)  # 1.0 * (3 expected bits / mass 1) * 5 groups
    assert model.evaluate(ids, np.zeros((3, 1)), verbose=0) == pytest.approx(penalty)


@pytest.mark.parametrize(
    "frequencies, match",
    [
        (
            np.array([2**63, 1, 0], np.uint64),
            r"below 2\*\*63.*frequencies\[0\]=9223372036854775808",
        ),
        ([1e19, 1.0, 0.0], r"below 2\*\*63. Received frequencies\[0\]=1e\+19"),
    ],
)
def test_frequencies_beyond_int64_are_refused(frequencies, match):
    with pytest.raises(ValueError, match=match):
        MixedPrecisionEmbedding(3, 2, num_groups=2, frequencies=frequencies)


def test_config_and_clone_keep_the_frequencies():
    frequencies = np.arange(20)[::-1] * 3
    layer = MixedPrecisionEmbedding(20, 2, num_groups=4, frequencies=frequencies, name="mpe")
    inputs = keras.Input(shape=(1,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    clone = keras.models.clone_model(model).get_layer("mpe")
    np.testing.assert_array_equal(clone.frequencies.numpy(), frequencies)
    np.testing.assert_array_equal(clone.id_to_group.numpy(), layer.id_to_group.numpy())
    adapted = _layer(20, 2, num_groups=4)
    adapted.adapt(np.array([19, 19, 18]))
    rebuilt = MixedPrecisionEmbedding.from_config(adapted.get_config())
    rebuilt.build()
    np.testing.assert_array_equal(rebuilt.id_to_group.numpy(), adapted.id_to_group.numpy())


@pytest.mark.parametrize("bits", [[-8, 2, 2, 2], [0, 2, 2, 7], [0, np.nan, 2, 2]])
def test_memory_report_refuses_bits_outside_the_candidates_range(bits):
    layer = _layer(100, 4, num_groups=4, bit_widths=(0, 2, 6))
    with pytest.raises(ValueError, match="`group_bits` must"):
        layer.memory_report(group_bits=bits)


def test_h5_round_trip_of_the_retrain_state(tmp_path):
    layer = MixedPrecisionEmbedding(50, 4, num_groups=5, name="mpe")
    model = _model(layer)
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 50, size=(32, 3)), rng.normal(size=(32, 1)), verbose=0)
    layer.freeze_precision([0, 2, 4, 6, 2])
    path = os.path.join(tmp_path, "model.h5")
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert loaded.get_layer("mpe").state == "retrain"
    ids = rng.integers(0, 50, size=(8, 3))
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0))


def test_methods_of_an_unbuilt_layer_build_it_first():
    """As `adapt()` does: the variables depend on the constructor arguments only."""
    layer = MixedPrecisionEmbedding(40, 4, num_groups=4, bit_widths=(0, 2, 4))
    assert layer.state == "search" and not layer.built
    np.testing.assert_allclose(layer.expected_bits(), [2.0] * 4)  # uniform over 0, 2, 4
    fresh = MixedPrecisionEmbedding(40, 4, num_groups=4, bit_widths=(0, 2, 4))
    assert fresh.select_group_bits().tolist() == [4, 4, 4, 4]
    other = MixedPrecisionEmbedding(40, 4, num_groups=4, bit_widths=(0, 2, 4))
    # 4 groups of 10 rows x 4 values at 2 expected bits: a byte per row
    assert other.memory_report()["payload_bytes"] == 4 * 10
    frozen = MixedPrecisionEmbedding(40, 4, num_groups=4, bit_widths=(0, 2, 4))
    frozen.freeze_precision([0, 2, 4, 4])
    assert frozen.state == "retrain"


def test_search_state_round_trips_and_the_search_knobs_are_checked():
    layer = MixedPrecisionEmbedding(8, 2, num_groups=2, bit_widths=(0, 2, 4))
    state = layer.search_state()
    assert sorted(state) == ["log_step_sizes", "precision_logits", "relative_offset"]
    changed = {name: value + 0.25 for name, value in state.items()}
    layer.set_search_state(changed)
    for name, value in layer.search_state().items():
        np.testing.assert_array_equal(value, changed[name])
    with pytest.raises(ValueError, match="must have the keys"):
        layer.set_search_state({"precision_logits": state["precision_logits"]})
    layer.set_temperature(0.5)
    layer.set_bit_penalty(0.0)
    assert float(layer.temperature.numpy()) == 0.5 and float(layer.bit_penalty.numpy()) == 0.0
    with pytest.raises(ValueError, match="temperature"):
        layer.set_temperature(0.0)
    with pytest.raises(ValueError, match="bit_penalty"):
        layer.set_bit_penalty(-1.0)


@pytest.mark.parametrize(
    "id_to_group",
    [
        [0, 0, 0, 1, 1, 1, 2, 2, 3],  # contiguous, a change at a chunk's edge
        [0, 0, 0, 1, 1, 1, 0, 2, 3],  # group 0 comes back in the next chunk
        [3, 3, 3, 3, 3, 3, 2, 1, 0],  # a group over two chunks
        [1, 1, 1, 1, 1, 1, 1, 1, 1],  # one group has every id
    ],
)
def test_memory_report_reads_the_groups_in_chunks(monkeypatch, id_to_group):
    monkeypatch.setattr(table_files, "CHUNK_BYTES", 24)  # 3 int64 ids per chunk
    layer = _layer(9, 2, num_groups=4, bit_widths=(0, 2, 4))
    layer.id_to_group.assign(np.array(id_to_group, np.int64))
    bits = [2, 4, 0, 2]
    expected = precision.memory_report(
        rows_per_group=np.bincount(id_to_group, minlength=4),
        group_bits=bits,
        output_dim=2,
        num_step_sizes=2,
        needs_permutation=not grouping.groups_are_contiguous(np.array(id_to_group)),
    )
    np.testing.assert_equal(layer.memory_report(bits), expected)
