"""Data for examples, tests and benchmarks.

`synthetic_ctr` makes click-through data with Zipf-like id frequencies and a planted
ground truth; whatever uses it must say that its figures come from synthetic data.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class CTRData:
    """A click-through data set split into train, validation and test parts.

    Attributes:
        train, validation, test: `(ids, labels)` pairs: int32 `[rows, fields]` ids, all
            fields sharing one id space of `vocabulary_size`, and float32 `[rows, 1]`
            labels in {0, 1}.
        vocabulary_size: the number of ids.
        description: what the data is, to print beside any figure.
    """

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    vocabulary_size: int
    description: str


def synthetic_ctr(
    rows: int = 60_000,
    fields: int = 8,
    ids_per_field: int = 2_000,
    zipf_exponent: float = 1.2,
    seed: int = 0,
) -> CTRData:
    """Synthetic click-through data with heavy-tailed id frequencies.

    Each field draws its ids from a Zipf-like law over its own `ids_per_field` ids
    (field `f` owns ids `f * ids_per_field ...`, ranked so that a smaller id is more
    frequent within the field). Each id has a planted effect drawn from N(0, 1); a
    row's click probability is `sigmoid(sum of its ids' effects / sqrt(fields))`.
    Split 80/10/10 in row order.

    Example:

    >>> data = synthetic_ctr(rows=1000, fields=3, ids_per_field=50)
    >>> data.train[0].shape, data.vocabulary_size
    ((800, 3), 150)
    """
    for name, value in (("rows", rows), ("fields", fields), ("ids_per_field", ids_per_field)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if rows < 10:
        raise ValueError(f"`rows` must be at least 10 to split 80/10/10. Received: rows={rows}")
    if not zipf_exponent > 0:
        raise ValueError(f"`zipf_exponent` must be > 0. Received: zipf_exponent={zipf_exponent}")
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, ids_per_field + 1)
    weights = ranks ** (-float(zipf_exponent))
    local = rng.choice(ids_per_field, size=(rows, fields), p=weights / weights.sum())
    ids = (local + np.arange(fields) * ids_per_field).astype(np.int32)
    effects = rng.normal(size=fields * ids_per_field)
    logits = effects[ids].sum(axis=1) / np.sqrt(fields)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float32)[:, None]
    cut_train, cut_val = int(rows * 0.8), int(rows * 0.9)
    return CTRData(
        train=(ids[:cut_train], labels[:cut_train]),
        validation=(ids[cut_train:cut_val], labels[cut_train:cut_val]),
        test=(ids[cut_val:], labels[cut_val:]),
        vocabulary_size=fields * ids_per_field,
        description=(
            f"SYNTHETIC click data: {rows} rows, {fields} fields x {ids_per_field} ids, "
            f"Zipf exponent {zipf_exponent}, seed {seed}"
        ),
    )
