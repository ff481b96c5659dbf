"""Synthetic data with a planted truth, for tests, examples and benchmarks.

`synthetic_ctr` makes click-through data with Zipf-like id frequencies and a planted
ground truth; `synthetic_long_tail` a long-tailed table whose signal sits on a known
set of ids; `synthetic_interactions` two id fields whose only signal is their
interaction. Whatever uses them must say that its figures come from synthetic data.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_mpe import checks
from keras_mpe.datasets.ctr_data import CTRData, frequency_rank, split_rows


def _check_synthetic_arguments(zipf_exponent: float, **counts: Any) -> None:
    """Checks the arguments the synthetic generators share: positive integer counts
    (`rows` among them, at least 10 to split) and a positive Zipf exponent."""
    for name, value in counts.items():
        checks.positive_int(name, value)
    if counts["rows"] < 10:
        raise ValueError(
            f"`rows` must be at least 10 to split 80/10/10. Received: rows={counts['rows']}"
        )
    if not zipf_exponent > 0:
        raise ValueError(f"`zipf_exponent` must be > 0. Received: zipf_exponent={zipf_exponent}")


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
    _check_synthetic_arguments(
        zipf_exponent, rows=rows, fields=fields, ids_per_field=ids_per_field
    )
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, ids_per_field + 1)
    weights = ranks ** (-float(zipf_exponent))
    local = rng.choice(ids_per_field, size=(rows, fields), p=weights / weights.sum())
    ids = (local + np.arange(fields) * ids_per_field).astype(np.int32)
    effects = rng.normal(size=fields * ids_per_field)
    logits = effects[ids].sum(axis=1) / np.sqrt(fields)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float32)[:, None]
    train, validation, test = ((ids[p], labels[p]) for p in split_rows(rows))
    return CTRData(
        train=train,
        validation=validation,
        test=test,
        vocabulary_size=fields * ids_per_field,
        description=(
            f"SYNTHETIC click data: {rows} rows, {fields} fields x {ids_per_field} ids, "
            f"Zipf exponent {zipf_exponent}, seed {seed}"
        ),
    )


@dataclass
class PlantedLongTail:
    """`synthetic_long_tail`'s data and its planted answer.

    Attributes:
        data: the `CTRData` (ids ranked by train frequency: id 0 the most frequent).
        effects: float32 `[vocabulary_size]` planted effect of each id; 0 for the ids
            that carry no signal.
    """

    data: CTRData
    effects: np.ndarray

    def signal_mass_kept(self, kept: np.ndarray) -> float:
        """The share of the train lookups of signal-carrying ids that land on `kept`
        ids (a bool `[vocabulary_size]` mask, e.g. the rows with more than 0 bits).

        Example:

        >>> planted = synthetic_long_tail(rows=1000, vocabulary_size=500, signal_ranks=50)
        >>> planted.signal_mass_kept(np.ones(500, bool))
        1.0
        """
        kept = np.asarray(kept)
        if kept.dtype != bool or kept.shape != self.effects.shape:
            raise ValueError(
                f"`kept` must be a bool mask of shape {self.effects.shape}. Received an "
                f"array of dtype {kept.dtype} and shape {kept.shape}."
            )
        counts = np.bincount(self.data.train[0].ravel(), minlength=self.effects.size)
        signal = counts * (self.effects != 0)
        return float(signal[kept].sum() / signal.sum())


def synthetic_long_tail(
    rows: int = 1_000_000,
    fields: int = 4,
    vocabulary_size: int = 1_000_000,
    zipf_exponent: float = 1.05,
    signal_ranks: int = 50_000,
    signal_fraction: float = 0.3,
    seed: int = 0,
) -> PlantedLongTail:
    """Synthetic click data over a long-tailed table, with a planted answer.

    Every field draws its ids from one Zipf law over `vocabulary_size` ids (id `k`
    with probability proportional to `(k + 1) ** -zipf_exponent`). Only a random
    `signal_fraction` of the `signal_ranks` most likely ids carry signal, an effect
    drawn from N(0, 1); all other ids, the whole tail included, carry none. A row's
    click probability is `sigmoid(sum of its ids' effects)`. So the ideal allocation
    keeps bits for the groups that hold signal-carrying ids and prunes the rest;
    `signal_mass_kept` measures how much of the signal an allocation keeps. Split
    80/10/10 in row order; ids are then renumbered by descending train frequency (id 0
    the most frequent), and `effects` with them. Whatever uses it must say its figures
    are synthetic.

    Example:

    >>> planted = synthetic_long_tail(rows=1000, vocabulary_size=500, signal_ranks=50)
    >>> planted.data.train[0].shape, int((planted.effects != 0).sum())
    ((800, 4), 15)
    """
    _check_synthetic_arguments(
        zipf_exponent,
        rows=rows,
        fields=fields,
        vocabulary_size=vocabulary_size,
        signal_ranks=signal_ranks,
    )
    if signal_ranks > vocabulary_size:
        raise ValueError(
            f"`signal_ranks` must be at most vocabulary_size={vocabulary_size}. "
            f"Received: signal_ranks={signal_ranks}"
        )
    if not 0 < signal_fraction <= 1:
        raise ValueError(
            f"`signal_fraction` must be in (0, 1]. Received: signal_fraction={signal_fraction}"
        )
    rng = np.random.default_rng(seed)
    weights = np.arange(1, vocabulary_size + 1, dtype=np.float64) ** -float(zipf_exponent)
    cumulative = np.cumsum(weights / weights.sum())
    ids = np.searchsorted(cumulative, rng.random((rows, fields)) * cumulative[-1], side="right")
    ids = np.minimum(ids, vocabulary_size - 1).astype(np.int32)
    signal = rng.choice(
        signal_ranks, size=max(1, round(signal_ranks * signal_fraction)), replace=False
    )
    effects = np.zeros(vocabulary_size, np.float32)
    effects[signal] = rng.normal(size=signal.size)
    logits = effects[ids].sum(axis=1)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float32)[:, None]
    parts = split_rows(rows)
    # renumber by train frequency, so that the frequency groups are contiguous id
    # ranges (no id permutation in a packed table)
    rank = frequency_rank(ids[parts[0]], vocabulary_size)
    ids = rank[ids]
    effects[rank] = effects.copy()
    train, validation, test = ((ids[p], labels[p]) for p in parts)
    data = CTRData(
        train=train,
        validation=validation,
        test=test,
        vocabulary_size=vocabulary_size,
        description=(
            f"SYNTHETIC long tail: {rows} rows, {fields} fields over {vocabulary_size} ids, "
            f"Zipf exponent {zipf_exponent}, signal on {signal.size} random ids of the "
            f"{signal_ranks} most likely, seed {seed}; ids ranked by train frequency"
        ),
    )
    return PlantedLongTail(data, effects)


def synthetic_interactions(
    ids: int = 40_000,
    edges: int = 80_000,
    clusters: int = 50,
    negatives: int = 2,
    noise: float = 0.2,
    zipf_exponent: float = 1.0,
    seed: int = 0,
) -> CTRData:
    """Two id fields over one id space (say users and the users they trust) whose only
    signal is their interaction.

    Each id belongs to one of `clusters` random clusters. A positive edge draws its
    second id from a Zipf law over all ids (rank `k` with probability proportional to
    `k ** -zipf_exponent`) and its first id from the same law restricted to the
    second id's cluster, or, for a share `noise` of the edges, over all ids. Each edge
    gets `negatives` rows with the same first id and a second id drawn from the Zipf
    law alone (sampled negatives). So each id alone is as frequent among positives as
    among negatives, and only the pair (same cluster or not) predicts the label: a
    model with small embeddings starts on a plateau until its rows have grown. The
    rows are shuffled, split 80/10/10 and ids renumbered by train frequency. Whatever
    uses it must say its figures are synthetic.

    Example:

    >>> data = synthetic_interactions(ids=100, edges=300, clusters=5)
    >>> data.train[0].shape, data.vocabulary_size, float(data.train[1].mean()) < 0.5
    ((720, 2), 100, True)
    """
    _check_synthetic_arguments(
        zipf_exponent, rows=edges, ids=ids, clusters=clusters, negatives=negatives
    )
    if not (checks.is_number(noise) and 0 <= noise <= 1):
        raise ValueError(f"`noise` must be a number in [0, 1]. Received: noise={noise!r}")
    rng = np.random.default_rng(seed)
    law = np.arange(1, ids + 1, dtype=np.float64) ** -float(zipf_exponent)
    law /= law.sum()
    cluster = rng.integers(clusters, size=ids)
    second = rng.choice(ids, size=edges, p=law)
    first = rng.choice(ids, size=edges, p=law)  # kept for the noisy edges
    members = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[members], np.arange(clusters + 1))
    clean = rng.random(edges) >= noise
    for c in range(clusters):
        edge = clean & (cluster[second] == c)
        inside = members[starts[c] : starts[c + 1]]
        first[edge] = rng.choice(inside, size=int(edge.sum()), p=law[inside] / law[inside].sum())
    negative_first = np.repeat(first, negatives)
    rows = np.concatenate(
        [
            np.stack([first, second], axis=1),
            np.stack([negative_first, rng.choice(ids, size=negative_first.size, p=law)], 1),
        ]
    ).astype(np.int32)
    labels = np.concatenate([np.ones(edges), np.zeros(negative_first.size)])
    labels = labels[:, None].astype(np.float32)
    parts = split_rows(rows.shape[0], seed=seed)
    data = CTRData(
        train=(rows[parts[0]], labels[parts[0]]),
        validation=(rows[parts[1]], labels[parts[1]]),
        test=(rows[parts[2]], labels[parts[2]]),
        vocabulary_size=ids,
        description=(
            f"SYNTHETIC interactions: {edges} edges x (1 + {negatives} sampled negatives) "
            f"over {ids} ids in {clusters} clusters, {noise} of the edges random, Zipf "
            f"exponent {zipf_exponent}, seed {seed}"
        ),
    )
    return data.ranked_by_frequency()
