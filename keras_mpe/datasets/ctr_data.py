"""`CTRData`, and the split and id rules that every data set shares.

Every data set here is split 80/10/10 into train, validation and test rows
(`split_rows`). The real data sets map each field's raw values to ids by descending
train frequency, with id 0 for the values too rare or absent from train
(`encode_field`).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_mpe import checks


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

    def ranked_by_frequency(self) -> "CTRData":
        """The same data with ids renumbered by descending train count (ties by id).

        Id 0 becomes the most frequent train id. Frequency groups are then contiguous
        id ranges, so a packed table stores no id permutation (see `memory_report`).

        Example:

        >>> data = CTRData(
        ...     train=(np.array([[2, 2], [2, 0]], np.int32), np.ones((2, 1), np.float32)),
        ...     validation=(np.array([[1, 0]], np.int32), np.ones((1, 1), np.float32)),
        ...     test=(np.array([[0, 2]], np.int32), np.ones((1, 1), np.float32)),
        ...     vocabulary_size=3,
        ...     description="toy",
        ... )
        >>> ranked = data.ranked_by_frequency()
        >>> ranked.train[0].tolist(), ranked.validation[0].tolist()
        ([[0, 0], [0, 1]], [[2, 1]])
        """
        rank = frequency_rank(self.train[0], self.vocabulary_size)

        def renumber(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            return rank[part[0]], part[1]

        return CTRData(
            train=renumber(self.train),
            validation=renumber(self.validation),
            test=renumber(self.test),
            vocabulary_size=self.vocabulary_size,
            description=f"{self.description}; ids ranked by train frequency",
        )


def frequency_rank(train_ids: np.ndarray, vocabulary_size: int) -> np.ndarray:
    """The new number of each id: its rank by descending train count, ties by id.

    Example:

    >>> frequency_rank(np.array([[2, 2], [2, 0]]), vocabulary_size=3).tolist()
    [1, 2, 0]
    """
    counts = np.bincount(train_ids.ravel(), minlength=vocabulary_size)
    rank = np.empty(vocabulary_size, np.int32)
    rank[np.lexsort((np.arange(vocabulary_size), -counts))] = np.arange(vocabulary_size)
    return rank


def split_rows(count: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of an 80/10/10 train/validation/test split: in row order, or by a
    random permutation of the rows when `seed` is given.

    Example:

    >>> [part.tolist() for part in split_rows(10)]
    [[0, 1, 2, 3, 4, 5, 6, 7], [8], [9]]
    """
    order = np.arange(count) if seed is None else np.random.default_rng(seed).permutation(count)
    cut_train, cut_val = int(count * 0.8), int(count * 0.9)
    return order[:cut_train], order[cut_train:cut_val], order[cut_val:]


def check_split_arguments(seed: Any, min_count: Any) -> None:
    """Checks the arguments the real data sets share: an integer `seed` for the split
    and a positive integer `min_count` for `encode_field`.

    Example:

    >>> check_split_arguments(seed=0.5, min_count=2)
    Traceback (most recent call last):
    ...
    ValueError: `seed` must be an integer. Received: seed=0.5
    """
    if not isinstance(seed, int | np.integer):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    checks.positive_int("min_count", min_count)


def encode_field(
    values: np.ndarray, train_rows: np.ndarray, min_count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps str values to ids by descending train frequency; rare/unseen values -> 0.

    Returns the ids of all rows, the train count of each id (entry 0 counts the train
    rows mapped to id 0) and the value of each id (entry 0 is `"[OOV]"`). Ties in count
    go by value.

    Example:

    >>> values = np.array(["b", "a", "b", "c", "a"])
    >>> ids, counts, vocabulary = encode_field(values, np.arange(4), min_count=1)
    >>> ids.tolist(), counts.tolist(), vocabulary.tolist()
    ([1, 2, 1, 3, 2], [0, 2, 1, 1], ['[OOV]', 'b', 'a', 'c'])
    """
    uniques, inverse = np.unique(values, return_inverse=True)
    train_counts = np.bincount(inverse[train_rows], minlength=len(uniques))
    kept = np.flatnonzero(train_counts >= min_count)
    # descending count, ties by value (uniques are sorted, so by index)
    kept = kept[np.lexsort((kept, -train_counts[kept]))]
    lookup = np.zeros(len(uniques), dtype=np.int32)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    ids = lookup[inverse]
    frequencies = np.bincount(ids[train_rows], minlength=len(kept) + 1).astype(np.int64)
    vocabulary = np.concatenate([np.array(["[OOV]"]), uniques[kept].astype(str)])
    return ids, frequencies, vocabulary


def clean_number(value: str) -> str:
    """`"1995.0"` -> `"1995"`, so that float-typed columns read as tokens.

    Example:

    >>> clean_number("1995.0"), clean_number("2.5"), clean_number("M")
    ('1995', '2.5', 'M')
    """
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else value
