"""A TensorFlow Recommenders ranking model with MixedPrecisionEmbedding towers,
searched with PrecisionSearch and retrained."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mpe
from keras_mpe import MixedPrecisionEmbedding
from keras_mpe.backend import IS_KERAS_3

pytestmark = pytest.mark.skipif(
    IS_KERAS_3, reason="TFRS needs tf-keras (TF_USE_LEGACY_KERAS=1); that run covers it"
)


def _search_and_retrain():
    """A TFRS ranking model, searched for 3 epochs and retrained for 2: the model,
    the callback and both histories."""
    import tensorflow_recommenders as tfrs

    rng = np.random.default_rng(0)
    users = rng.integers(0, 60, size=512)
    items = rng.integers(0, 80, size=512)
    ratings = ((users % 5) + (items % 3)).astype(np.float32)

    class RankingModel(tfrs.models.Model):
        def __init__(self):
            super().__init__()
            self.user_embedding = tf.keras.Sequential(
                [MixedPrecisionEmbedding(60, 8, num_groups=6, bit_penalty=1e-3, name="user")]
            )
            self.item_embedding = tf.keras.Sequential(
                [MixedPrecisionEmbedding(80, 8, num_groups=8, bit_penalty=1e-3, name="item")]
            )
            self.ratings = tf.keras.Sequential(
                [tf.keras.layers.Dense(16, activation="relu"), tf.keras.layers.Dense(1)]
            )
            self.task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.MeanSquaredError(),
                metrics=[tf.keras.metrics.RootMeanSquaredError()],
            )

        def call(self, features):
            embedded = tf.concat(
                [
                    self.user_embedding(features["user"]),
                    self.item_embedding(features["item"]),
                ],
                axis=1,
            )
            return self.ratings(embedded)

        def compute_loss(self, features, training=False):
            return self.task(labels=features["rating"], predictions=self(features))

    data = tf.data.Dataset.from_tensor_slices(
        {"user": users, "item": items, "rating": ratings}
    ).batch(64)
    model = RankingModel()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    precision_search = keras_mpe.PrecisionSearch("root_mean_squared_error", verbose=0)
    search = model.fit(data, epochs=3, verbose=0, callbacks=[precision_search]).history
    retrain = model.fit(data, epochs=2, verbose=0).history
    return model, precision_search, search, retrain


def test_tfrs_ranking_model_searches_then_retrains():
    model, precision_search, search, retrain = _search_and_retrain()
    assert search["regularization_loss"][-1] > 0  # the bit penalty is in the loss
    assert search["total_loss"][-1] < search["total_loss"][0]
    assert len(search["mpe_avg_bits_user"]) == len(search["mpe_compression_item"]) == 3

    layers = [model.user_embedding.layers[0], model.item_embedding.layers[0]]
    assert all(layer.state == "retrain" for layer in layers)  # found inside the towers
    assert sorted(precision_search.reports) == ["item", "user"]
    assert retrain["regularization_loss"] == [0.0, 0.0]
    assert np.isfinite(retrain["root_mean_squared_error"]).all()


def test_tfrs_model_exports_as_is(tmp_path):
    model = _search_and_retrain()[0]
    features = {"user": np.array([0, 59, 7, 60, -1]), "item": np.array([3, 79, 0, 2, 80])}
    expected = model(features).numpy()
    signature = {name: tf.TensorSpec([None], tf.int64) for name in features}
    keras_mpe.export_saved_model(model, str(tmp_path), input_signature=signature)
    assert model.user_embedding.layers[0].state == "retrain"  # the model stays trainable

    loaded = tf.saved_model.load(str(tmp_path))
    for name in ("serving_default", "serving_xla"):
        served = loaded.signatures[name](**features)["output_0"].numpy()
        np.testing.assert_allclose(served, expected, atol=1e-6 * np.abs(expected).max())
    # Only what serving reads: two packed tables and the MLP; no float table, no
    # optimizer slot, no metric variable of the task.
    stored = dict(tf.train.list_variables(str(tmp_path / "variables" / "variables")))
    assert not any(shape[-1:] == [8] and shape[0] in (60, 80) for shape in stored.values())
    # per table a row table per non-zero candidate width (6), 3 group fields, the
    # step sizes and the offset
    assert sum(name.startswith("tables/") for name in stored) == 2 * (6 + 5)
    assert sum(name.startswith("weights/") for name in stored) == 4
