"""A small retrained two-table model for the serving and inspect tests."""

import numpy as np

import keras_mpe
from keras_mpe.backend import keras

USERS, ITEMS, ITEMS_PER_ROW = 50, 300, 3


def two_table_model():
    """A functional model over the inputs `[user, items]`, int32 `[B, 1]` and `[B, 3]`.

    The user table's ids are ranked by frequency (contiguous groups, no permutation);
    the item table has frequencies that are not (it stores a packed permutation). Both
    are trained briefly, frozen at fixed bits and retrained.

    Returns:
        `(model, user_layer, item_layer)`.
    """
    rng = np.random.default_rng(0)
    user_layer = keras_mpe.MixedPrecisionEmbedding(
        USERS, 4, num_groups=5, bit_widths=(0, 1, 4, 8), name="user_table"
    )
    item_layer = keras_mpe.MixedPrecisionEmbedding(
        ITEMS,
        8,
        num_groups=6,
        bit_widths=(0, 2, 3, 5),
        frequencies=rng.integers(0, 50, size=ITEMS),
        name="item_table",
    )
    user = keras.Input(shape=(1,), dtype="int32", name="user")
    items = keras.Input(shape=(ITEMS_PER_ROW,), dtype="int32", name="items")
    x = keras.layers.Concatenate()(
        [keras.layers.Flatten()(user_layer(user)), keras.layers.Flatten()(item_layer(items))]
    )
    output = keras.layers.Dense(2)(keras.layers.Dense(16, "relu")(x))
    model = keras.Model([user, items], output)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    for _ in range(2):
        data = random_ids(rng, 256)
        model.fit([data["user"], data["items"]], rng.normal(size=(256, 2)), verbose=0)
        if user_layer.state == "search":
            user_layer.freeze_precision([8, 4, 1, 0, 4])
            item_layer.freeze_precision([0, 2, 3, 5, 3, 2])
    return model, user_layer, item_layer


def random_ids(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """int32 ids for `two_table_model`, a few of them out of range."""
    return {
        "user": rng.integers(-2, USERS + 2, size=(rows, 1)).astype(np.int32),
        "items": rng.integers(-3, ITEMS + 3, size=(rows, ITEMS_PER_ROW)).astype(np.int32),
    }
