"""PackedEmbedding: the serving twin of a retrained layer, through its public seams."""

import os

import numpy as np
import pytest
import tensorflow as tf
from reference import hlo_types

from keras_mpe import MixedPrecisionEmbedding, PackedEmbedding, codec
from keras_mpe.backend import IS_KERAS_3, keras


def _retrained(ordered=True, mask_zero=False, seed=0):
    rng = np.random.default_rng(seed)
    layer = MixedPrecisionEmbedding(
        300, 12, num_groups=9, bit_widths=(0, 1, 2, 4, 8), mask_zero=mask_zero, name="items"
    )
    if ordered:
        layer.build()
    else:
        layer.adapt(rng.zipf(1.3, size=2000) % 300)
    layer.relative_offset.assign(rng.normal(scale=0.3, size=12).astype(np.float32))
    layer.freeze_precision(rng.choice([0, 1, 2, 4, 8], size=9).astype(np.int32))
    return layer


def _weight_names(layer):
    return [v.name.split("/")[-1].split(":")[0] for v in layer.weights]


@pytest.mark.parametrize("ordered", [True, False])
def test_outputs_equal_the_retrain_layer_bit_for_bit(ordered):
    layer = _retrained(ordered)
    packed = PackedEmbedding.from_layer(layer)
    ids = np.random.default_rng(1).integers(-3, 303, size=(50, 7)).astype(np.int32)
    expected = layer(ids).numpy()
    np.testing.assert_array_equal(packed(ids).numpy(), expected)
    for jit_compile in (False, True):
        served = tf.function(packed.__call__, jit_compile=jit_compile)(tf.constant(ids))
        np.testing.assert_array_equal(served.numpy(), expected)
    np.testing.assert_array_equal(packed(ids.astype(np.float32)).numpy(), expected)
    assert layer.state == "retrain"  # the source layer is left as it is


@pytest.mark.parametrize("ordered", [True, False])
def test_variables_are_exactly_the_packed_fields(ordered):
    layer = _retrained(ordered)
    table = layer.packed_table()
    packed = PackedEmbedding.from_layer(layer)
    assert _weight_names(packed) == list(table.arrays())
    assert not packed.trainable_weights
    for variable, (name, array) in zip(packed.weights, table.arrays().items()):
        assert variable.dtype == array.dtype.name, name
        np.testing.assert_array_equal(variable.numpy(), array, err_msg=name)
    stored = sum(v.numpy().nbytes for v in packed.weights)
    assert stored == layer.memory_report()["total_bytes"] == packed.memory_report()["total_bytes"]
    assert ("permutation" in _weight_names(packed)) is not ordered


@pytest.mark.parametrize("ordered", [True, False])
def test_keras_file_round_trip_is_exact(tmp_path, ordered):
    layer = _retrained(ordered, mask_zero=True)
    packed = PackedEmbedding.from_layer(layer)
    inputs = keras.Input(shape=(3,), dtype="int32")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(packed(inputs)))
    path = os.path.join(tmp_path, "packed.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    twin = loaded.get_layer("items")
    assert isinstance(twin, PackedEmbedding)
    assert twin.get_config() == packed.get_config()
    for original, restored in zip(packed.weights, twin.weights):
        np.testing.assert_array_equal(original.numpy(), restored.numpy())
    ids = np.random.default_rng(2).integers(0, 300, size=(16, 3)).astype(np.int32)
    ids[0, 0] = 0  # masked
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0))
    np.testing.assert_array_equal(twin.compute_mask(tf.constant(ids)).numpy(), ids != 0)


def test_carries_the_name_and_the_dtype_policy():
    layer = MixedPrecisionEmbedding(40, 4, num_groups=2, dtype="mixed_float16", name="users")
    layer.build()
    layer.freeze_precision([2, 6])
    packed = PackedEmbedding.from_layer(layer)
    ids = np.arange(40)
    assert packed.name == "users"
    assert packed(ids).dtype == layer(ids).dtype == tf.float16
    np.testing.assert_array_equal(packed(ids).numpy(), layer(ids).numpy())


def test_config_builds_an_equal_empty_layout():
    packed = PackedEmbedding.from_layer(_retrained(False))
    clone = PackedEmbedding.from_config(packed.get_config())
    clone.build()
    assert _weight_names(clone) == _weight_names(packed)
    assert [v.shape for v in clone.weights] == [v.shape for v in packed.weights]


def test_from_layer_refuses_what_it_cannot_pack():
    layer = MixedPrecisionEmbedding(20, 2, num_groups=2)
    layer.build()
    with pytest.raises(ValueError, match="search state; only a retrain-state layer"):
        PackedEmbedding.from_layer(layer)
    with pytest.raises(TypeError, match="`layer` must be a MixedPrecisionEmbedding.*Dense"):
        PackedEmbedding.from_layer(keras.layers.Dense(2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_dim": 0}, "`input_dim` must be a positive integer. Received: input_dim=0"),
        ({"groups": 2.5}, "`groups` must be a positive integer. Received: groups=2.5"),
        ({"width_rows": [-1, 0]}, r"`width_rows` values must be in \[0, 10\].*width_rows\[0\]=-1"),
        ({"width_rows": [1]}, r"`width_rows` must have shape \(2,\). Received shape \(1,\)"),
        ({"bit_widths": (4, 2)}, "`bit_widths` must be a non-empty, strictly increasing"),
        ({"permutation": 1}, "`permutation` must be a bool. Received: permutation=1"),
        ({"mask_zero": 1}, "`mask_zero` must be a bool. Received: mask_zero=1"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = {
        "input_dim": 10,
        "output_dim": 2,
        "bit_widths": (0, 2, 4),
        "groups": 2,
        "width_rows": [3, 0],
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PackedEmbedding(**arguments)


KWARGS = {
    "input_dim": 16,
    "output_dim": 4,
    "bit_widths": (0, 2, 4),
    "groups": 4,
    "width_rows": [6, 2],
}


@pytest.mark.skipif(not IS_KERAS_3, reason="Keras 3's harness; tf-keras runs its own")
def test_keras3_run_layer_test():
    from keras.src.testing import TestCase

    TestCase().run_layer_test(
        PackedEmbedding,
        init_kwargs=KWARGS,
        input_shape=(2, 3),
        input_dtype="int32",
        expected_output_shape=(2, 3, 4),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=7,
        supports_masking=False,
        run_training_check=False,
    )


@pytest.mark.skipif(IS_KERAS_3, reason="tf-keras' harness; Keras 3 runs its own")
def test_tf_keras_layer_test():
    from tf_keras.src.testing_infra import test_utils

    output = test_utils.layer_test(
        PackedEmbedding,
        kwargs=KWARGS,
        input_shape=(2, 3),
        input_dtype="int32",
        expected_output_dtype="float32",
        expected_output_shape=(None, 3, 4),
    )
    assert output.shape == (2, 3, 4)


def test_codec_layout_names_the_layer_variables():
    """The variables are `codec.array_specs`, the one description of the layout."""
    packed = PackedEmbedding.from_layer(_retrained(False))
    specs = codec.array_specs(
        packed.output_dim,
        packed.nonzero_bit_widths,
        packed.width_rows,
        packed.groups,
        codec.permutation_words(packed.input_dim),
    )
    assert _weight_names(packed) == list(specs)
    assert [(tuple(v.shape), tf.as_dtype(v.dtype).name) for v in packed.weights] == list(
        specs.values()
    )


@pytest.mark.parametrize("ordered", [True, False])
def test_xla_form_lowers_to_32_bit_types_only(ordered):
    """What a TPU server compiles: no 64-bit type in the HLO of a model serving
    through the twin (int32 ids in, float32 out)."""
    packed = PackedEmbedding.from_layer(_retrained(ordered))
    inputs = keras.Input(shape=(3,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(packed(inputs))))
    serve = tf.function(lambda ids: model(ids, training=False), jit_compile=True)
    ids = tf.constant(np.random.default_rng(3).integers(-2, 302, size=(8, 3)), tf.int32)
    hlo = serve.experimental_get_compiler_ir(ids)(stage="hlo")
    types = hlo_types(hlo)
    assert {"f32", "u32"} <= types and not {"s64", "u64", "f64"} & types, types
    # the Dense layer's sums may round differently under XLA
    np.testing.assert_allclose(serve(ids).numpy(), model(ids).numpy(), rtol=1e-5, atol=1e-7)
