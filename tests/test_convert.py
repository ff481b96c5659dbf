"""`keras_mpe.convert`: a trained float model's Embedding tables made mixed precision."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import keras_mpe
from keras_mpe import MixedPrecisionEmbedding
from keras_mpe.backend import IS_KERAS_3, flatten_layers, keras
from keras_mpe.convert import ConversionError
from keras_mpe.precision import TARGET_TOLERANCE, allocate_bits, fit_to_budget, group_errors

ROWS, FIELDS, VOCABULARY, ITEMS = 400, 3, 200, 150


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = (rng.zipf(1.4, size=(ROWS, FIELDS)) % VOCABULARY).astype("int32")
    items = (rng.zipf(1.6, size=(ROWS, 1)) % ITEMS).astype("int32")
    labels = ((ids[:, 0] % 3 == 0) ^ (items[:, 0] % 2 == 0)).astype("float32")
    return [ids, items], labels


def _weights(model) -> list[np.ndarray]:
    return [np.array(w.numpy(), copy=True) for w in model.weights]


@functools.cache
def _trained_model():
    """A functional model: a nested Sequential holding an Embedding with `mask_zero`,
    a second Embedding with a mixed-precision dtype policy, BatchNorm and Dense;
    trained for 2 epochs. Cached: convert must leave it as it is."""
    keras.utils.set_random_seed(1)
    ids = keras.Input((FIELDS,), dtype="int32", name="ids")
    items = keras.Input((1,), dtype="int32", name="items")
    tower = keras.Sequential(
        [
            keras.Input((FIELDS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 8, mask_zero=True, name="ids_table"),
            keras.layers.GlobalAveragePooling1D(),
        ],
        name="tower",
    )
    item_table = keras.layers.Embedding(ITEMS, 8, name="item_table", dtype="mixed_float16")
    x = keras.layers.Concatenate()([tower(ids), keras.layers.Flatten()(item_table(items))])
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    x = keras.layers.BatchNormalization(name="norm")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="click")(x)
    model = keras.Model([ids, items], outputs, name="ctr")
    model.compile("adam", "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    x, y = _data()
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model


def _layer(model, name):
    return next(layer for layer in flatten_layers(model) if layer.name == name)


def _leaf_layers(model) -> dict:
    return {
        layer.name: layer
        for layer in flatten_layers(model, include_self=False)
        if not flatten_layers(layer, include_self=False)
    }


def test_epochs_0_replaces_the_tables_and_carries_everything_else_over():
    model = _trained_model()
    before = _weights(model)
    x, y = _data()
    converted = keras_mpe.convert(model, (x, y), target_compression=4, epochs=0, num_groups=8)

    assert converted is not model and converted.name == "ctr"
    for name in ("ids_table", "item_table"):
        original, layer = _layer(model, name), _layer(converted, name)
        assert isinstance(original, keras.layers.Embedding)  # the original keeps its own
        assert isinstance(layer, MixedPrecisionEmbedding) and layer.state == "retrain"
        assert (layer.input_dim, layer.output_dim) == (original.input_dim, original.output_dim)
        assert layer.mask_zero == original.mask_zero
        assert layer.dtype_policy.name == original.dtype_policy.name
        np.testing.assert_array_equal(layer.embeddings.numpy(), original.embeddings.numpy())
    assert _layer(converted, "ids_table").mask_zero is True
    assert _layer(converted, "item_table").dtype_policy.name == "mixed_float16"
    # the ids each table saw, through the nested Sequential too
    np.testing.assert_array_equal(
        _layer(converted, "ids_table").frequencies.numpy(),
        np.bincount(x[0].reshape(-1), minlength=VOCABULARY),
    )
    np.testing.assert_array_equal(
        _layer(converted, "item_table").frequencies.numpy(),
        np.bincount(x[1].reshape(-1), minlength=ITEMS),
    )
    # every other layer's weights bit for bit, the original untouched bit for bit
    originals, copies = _leaf_layers(model), _leaf_layers(converted)
    compared = 0
    for name, layer in originals.items():
        if name.endswith("_table") or not layer.weights:
            continue
        for a, b in zip(layer.get_weights(), copies[name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
            compared += 1
    assert compared == 2 + 4 + 2  # two Dense, BatchNorm
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)
    # compiled like the original, and close to it: 4x costs little
    scores = converted.evaluate(x, y, verbose=0, return_dict=True)
    assert scores["auc"] > model.evaluate(x, y, verbose=0, return_dict=True)["auc"] - 0.05


@pytest.mark.parametrize("target", [4.0, 8.0])
def test_epochs_0_meets_the_budget_with_less_error_than_a_frequency_threshold(target):
    model = _trained_model()
    converted = keras_mpe.convert(
        model, _data(), target_compression=target, epochs=0, num_groups=8, layers=["ids_table"]
    )
    layer = _layer(converted, "ids_table")
    ratio = layer.memory_report()["compression_ratio"]
    assert target <= ratio <= TARGET_TOLERANCE * target
    assert isinstance(_layer(converted, "item_table"), keras.layers.Embedding)  # not chosen
    # the allocation minimises the frequency-weighted error at the budget: no worse
    # than pruning the rarest groups with 4 bits elsewhere
    errors = group_errors(layer)
    chosen = layer.group_bits.numpy()
    threshold = fit_to_budget(
        layer.memory_report(np.full(layer.groups, 4)),
        layer.bit_widths,
        layer.group_masses.numpy(),
        target,
    )
    index = {b: k for k, b in enumerate(layer.bit_widths)}

    def total(bits):
        return sum(errors[g, index[int(b)]] for g, b in enumerate(bits))

    assert total(chosen) <= total(threshold)
    np.testing.assert_array_equal(allocate_bits(layer, target), chosen)


def test_step_sizes_and_offset_fit_the_trained_table():
    model = _trained_model()
    converted = keras_mpe.convert(model, _data(), target_compression=4, epochs=0, num_groups=8)
    layer = _layer(converted, "ids_table")
    fitted = group_errors(layer).sum(axis=0)
    # MPE's own start: alpha_b = 2 mean|W| / sqrt(2^(b-1)), offset 0
    table = layer.embeddings.numpy()
    bits = np.array([b for b in layer.bit_widths if b > 0], np.float32)
    alphas = 2 * np.abs(table).mean() / np.sqrt(2.0 ** (bits - 1))
    layer.log_step_sizes.assign(np.log(alphas) / layer.quantizer_learning_rate_scale)
    layer.relative_offset.assign(np.zeros(layer.output_dim, np.float32))
    default = group_errors(layer).sum(axis=0)
    assert fitted[0] == default[0]  # 0 bits: the rows' squared norms either way
    assert (fitted[1:] <= default[1:] * (1 + 1e-6)).all() and (fitted[1:] < default[1:]).any()


def test_default_fine_tune_keeps_the_post_training_bits_at_a_lower_learning_rate():
    model = _trained_model()
    x, y = _data()
    options = dict(target_compression=4, num_groups=8, batch_size=64)
    fast = keras_mpe.convert(model, (x, y), epochs=0, **options)
    tuned = keras_mpe.convert(model, (x, y), epochs=1, **options)
    compiled_rate = float(model.optimizer.get_config()["learning_rate"])
    assert np.isclose(float(tuned.optimizer.get_config()["learning_rate"]), 0.1 * compiled_rate)
    for name in ("ids_table", "item_table"):
        layer = _layer(tuned, name)
        assert layer.state == "retrain"
        np.testing.assert_array_equal(layer.group_bits.numpy(), _layer(fast, name).group_bits)
        assert not np.array_equal(layer.embeddings.numpy(), _layer(fast, name).embeddings)
    # one epoch of 400 rows in batches of 64
    assert int(tuned.optimizer.iterations.numpy()) == 7
    explicit = keras_mpe.convert(model, (x, y), epochs=1, learning_rate=0.5, **options)
    assert np.isclose(float(explicit.optimizer.get_config()["learning_rate"]), 0.5)


def test_search_and_retrain_then_export_serves_the_same_outputs(tmp_path):
    model = _trained_model()
    before = _weights(model)
    x, y = _data()
    converted = keras_mpe.convert(
        model, (x, y), target_compression=4, epochs=1, search=True, batch_size=64, num_groups=8
    )
    for name in ("ids_table", "item_table"):
        layer = _layer(converted, name)
        assert layer.state == "retrain"
        assert layer.memory_report()["compression_ratio"] >= 4
        # searched, rewound to the trained table, then fine-tuned for an epoch
        assert not np.array_equal(layer.embeddings.numpy(), _layer(model, name).embeddings)
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(_layer(model, "ids_table"), keras.layers.Embedding)

    keras_mpe.export_saved_model(converted, str(tmp_path))
    served = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    outputs = served(ids=tf.constant(x[0]), items=tf.constant(x[1]))["output_0"].numpy()
    expected = converted.predict(x, verbose=0)
    np.testing.assert_allclose(outputs, expected, atol=1e-3)  # float16 items table


def test_frozen_other_layers_keep_their_weights():
    model = _trained_model()
    converted = keras_mpe.convert(
        model,
        tf.data.Dataset.from_tensor_slices((tuple(_data()[0]), _data()[1])).batch(64),
        bit_penalty=1e-3,
        epochs=1,
        search=True,
        train_other_layers=False,
        num_groups=8,
    )
    originals, copies = _leaf_layers(model), _leaf_layers(converted)
    for name in ("hidden", "norm", "click"):
        for a, b in zip(originals[name].get_weights(), copies[name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert _layer(converted, "ids_table").state == "retrain"


def test_sequential_model_and_dataset_data():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FIELDS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 4, name="table"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile("adam", "mse")
    (ids, _), y = _data()
    model.fit(ids, y, epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((ids, y)).batch(50)
    converted = keras_mpe.convert(model, dataset, target_compression=8, epochs=0, num_groups=4)
    assert isinstance(converted, keras.Sequential)
    layer = converted.get_layer("table")
    assert isinstance(layer, MixedPrecisionEmbedding) and layer.state == "retrain"
    np.testing.assert_array_equal(
        layer.frequencies.numpy(), np.bincount(ids.reshape(-1), minlength=VOCABULARY)
    )
    assert converted.predict(ids[:5], verbose=0).shape == (5, 1)


class SubclassedModel(keras.Model):
    """A subclassed model: a tower (IntegerLookup then Embedding) and an Embedding
    attribute."""

    def __init__(self):
        super().__init__()
        self.tower = keras.Sequential(
            [
                keras.layers.IntegerLookup(vocabulary=np.arange(1, 30), name="lookup"),
                keras.layers.Embedding(30, 4, name="looked_up"),
            ],
            name="tower",
        )
        self.items = keras.layers.Embedding(ITEMS, 4, name="items")
        self.head = keras.layers.Dense(1)

    def call(self, features):
        x = tf.concat([self.tower(features["raw"]), self.items(features["item"])], axis=-1)
        return self.head(x)


def _subclassed_data():
    (ids, items), y = _data()
    return {"raw": ids[:, 0] + 1, "item": items[:, 0]}, y


def test_subclassed_model_with_model_fn():
    keras.utils.set_random_seed(0)
    model = SubclassedModel()
    model.compile("adam", "mse")
    x, y = _subclassed_data()
    model.fit(x, y, epochs=1, verbose=0)
    before = _weights(model)
    with pytest.raises(ConversionError, match="subclassed model .*model_fn"):
        keras_mpe.convert(model, (x, y), target_compression=4, epochs=0)

    converted = keras_mpe.convert(
        model, (x, y), target_compression=4, epochs=0, num_groups=4, model_fn=SubclassedModel
    )
    assert isinstance(converted.items, MixedPrecisionEmbedding)
    tower_table = converted.tower.layers[-1]
    assert isinstance(tower_table, MixedPrecisionEmbedding) and tower_table.name == "looked_up"
    # counted after the lookup: the ids the table sees
    looked_up = model.tower.layers[0](x["raw"]).numpy()
    np.testing.assert_array_equal(
        tower_table.frequencies.numpy(), np.bincount(looked_up, minlength=30)
    )
    np.testing.assert_array_equal(converted.head.kernel.numpy(), model.head.kernel.numpy())
    np.testing.assert_array_equal(
        tower_table.embeddings.numpy(), model.tower.layers[-1].embeddings.numpy()
    )
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)
    # the converted layers are the ones the model calls and finds (no stale Embedding)
    assert not [la for la in flatten_layers(converted) if isinstance(la, keras.layers.Embedding)]
    mpe_outputs = converted(x)
    converted.items.embeddings.assign(tf.zeros_like(converted.items.embeddings))
    assert not np.allclose(converted(x).numpy(), mpe_outputs.numpy())


def test_convert_errors_name_the_problem():
    model = _trained_model()
    data = _data()
    no_table = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ConversionError, match="no keras.layers.Embedding"):
        keras_mpe.convert(no_table, data, target_compression=4, epochs=0)
    (ids, items), y = data
    too_large = ids.copy()
    too_large[5, 1] = VOCABULARY
    with pytest.raises(
        ConversionError, match=f"id {VOCABULARY}, outside .*input_dim={VOCABULARY}"
    ):
        keras_mpe.convert(
            model, ([too_large, items], y), target_compression=4, epochs=0, num_groups=8
        )
    mpe = keras_mpe.convert(model, data, target_compression=4, epochs=0, num_groups=8)
    with pytest.raises(ConversionError, match="already holds MixedPrecisionEmbedding"):
        keras_mpe.convert(mpe, data, target_compression=4, epochs=0)
    bad = [
        ({"epochs": -1}, "`epochs` must be an integer >= 0. Received: epochs=-1"),
        ({"epochs": 1.5}, "`epochs` must be an integer"),
        ({"target_compression": 1}, "`target_compression` must be a number > 1"),
        ({"epochs": 0}, "`epochs=0` and `search=False` .* need `target_compression`"),
        ({"epochs": 1}, "`search=False` .* need `target_compression`"),
        ({"epochs": 1, "search": True}, "pass `target_compression` .* or a `bit_penalty`"),
        ({"search": 1, "target_compression": 4}, "`search` must be a bool"),
        ({"bit_penalty": -1.0, "epochs": 1}, "`bit_penalty` must be a finite number >= 0"),
        ({"learning_rate": 0, "target_compression": 4}, "`learning_rate` must be a finite"),
        ({"layers": ["nope"], "target_compression": 4}, "no Embedding of that name"),
        ({"layers": "ids_table", "target_compression": 4}, "`layers` must be a list"),
        ({"target_compression": 4, "model_fn": SubclassedModel}, "`model_fn` is for subclassed"),
        ({"target_compression": 4, "bit_widths": (0, 9)}, "`bit_widths` must be"),
    ]
    for arguments, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            keras_mpe.convert(model, data, **arguments)
    with pytest.raises(TypeError, match="`data` must be a batched tf.data.Dataset or a tuple"):
        keras_mpe.convert(model, ids, target_compression=4, epochs=0)
    with pytest.raises(ValueError, match="out of reach for layer 'item_table'.*num_groups"):
        keras_mpe.convert(model, data, target_compression=4, epochs=0)  # 128 groups
    inputs = keras.Input((FIELDS,), dtype="int32")
    table = keras.layers.Embedding(VOCABULARY, 8)
    uncompiled = keras.Model(inputs, keras.layers.Dense(1)(table(inputs)))
    with pytest.raises(ValueError, match="not compiled.*compile_options"):
        keras_mpe.convert(uncompiled, (ids, y), target_compression=4, epochs=1, num_groups=4)


@pytest.mark.skipif(IS_KERAS_3, reason="TFRS needs tf-keras (TF_USE_LEGACY_KERAS=1)")
def test_tfrs_ranking_model_converts_and_exports(tmp_path):
    import tensorflow_recommenders as tfrs

    users = [f"user{i}" for i in range(30)]

    class Ranking(tfrs.models.Model):
        def __init__(self):
            super().__init__()
            self.user_tower = tf.keras.Sequential(
                [
                    tf.keras.layers.StringLookup(vocabulary=users, name="user_lookup"),
                    tf.keras.layers.Embedding(len(users) + 1, 8, name="user_embedding"),
                ]
            )
            self.item_embedding = tf.keras.layers.Embedding(ITEMS, 8, name="item_embedding")
            self.ratings = tf.keras.Sequential(
                [tf.keras.layers.Dense(8, activation="relu"), tf.keras.layers.Dense(1)]
            )
            self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError())

        def call(self, features):
            return self.ratings(
                tf.concat(
                    [self.user_tower(features["user"]), self.item_embedding(features["item"])],
                    axis=1,
                )
            )

        def compute_loss(self, features, training=False):
            return self.task(labels=features["rating"], predictions=self(features))

    rng = np.random.default_rng(0)
    user_ids = rng.zipf(1.5, size=ROWS) % 35  # a few unknown users: the OOV id
    features = {
        "user": np.array([f"user{i}" for i in user_ids]),
        "item": rng.integers(0, ITEMS, size=ROWS),
        "rating": rng.normal(size=ROWS).astype(np.float32),
    }
    data = tf.data.Dataset.from_tensor_slices(features).batch(64)
    keras.utils.set_random_seed(0)
    model = Ranking()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    model.fit(data, epochs=1, verbose=0)
    before = _weights(model)

    converted = keras_mpe.convert(
        model, data, target_compression=4, epochs=1, search=True, num_groups=4, model_fn=Ranking
    )
    user_table = converted.user_tower.layers[-1]
    assert isinstance(user_table, MixedPrecisionEmbedding) and user_table.state == "retrain"
    assert isinstance(converted.item_embedding, MixedPrecisionEmbedding)
    looked_up = model.user_tower.layers[0](features["user"]).numpy()
    np.testing.assert_array_equal(
        user_table.frequencies.numpy(), np.bincount(looked_up, minlength=len(users) + 1)
    )
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)

    signature = {
        "user": tf.TensorSpec([None], tf.string),
        "item": tf.TensorSpec([None], tf.int64),
    }
    keras_mpe.export_saved_model(converted, str(tmp_path), input_signature=signature)
    inputs = {
        "user": tf.constant(features["user"][:20]),
        "item": tf.constant(features["item"][:20]),
    }
    served = tf.saved_model.load(str(tmp_path)).signatures["serving_default"](**inputs)
    np.testing.assert_allclose(served["output_0"].numpy(), converted(inputs).numpy(), atol=1e-5)


def test_command_line_converts_a_saved_model(tmp_path, capsys):
    from keras_mpe import cli

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FIELDS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, 8, name="table"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile("adam", "binary_crossentropy")
    (ids, _), y = _data()
    model.fit(ids, y, epochs=1, verbose=0)
    model_path = str(tmp_path / "model.keras")
    model.save(model_path)
    np.savez(tmp_path / "train.npz", ids=ids, y=y)
    out = tmp_path / "export"
    arguments = [model_path, str(tmp_path / "train.npz"), str(out), "--num-groups", "8"]
    convert = ["convert", *arguments, "--target-compression", "8", "--serving-table", "int8"]
    assert cli.main(convert) == 0
    assert "table 'table': 200 x 8, " in capsys.readouterr().out
    (report,) = keras_mpe.inspect(str(out)).values()
    assert 8 <= report["compression_ratio"] <= 8.8
    assert report["serving_table"] == "int8"

    np.savez(tmp_path / "bad.npz", ids=ids)
    bad = [model_path, str(tmp_path / "bad.npz"), str(tmp_path / "other")]
    assert cli.main(["convert", *bad]) == 1
    assert "keras-mpe convert: error: " in capsys.readouterr().err
