"""Id frequencies and the frequency groups of MPE.

Groups are equal-sized slices of the ids sorted by ascending frequency, so group 0
holds the rarest ids. Ties in frequency rank the larger id as rarer, which makes ids
without counts (all frequencies 0) follow the convention of Keras' `StringLookup`:
id 0 is the most frequent, the last id the rarest.

Keras' vocabulary layers (`StringLookup`, `IntegerLookup`) number their vocabulary by
descending frequency after the OOV id (and the mask id) that the training data never
holds. When the ids that occur are in that order, ids that never occur keep their
place in id order rather than going to the rarest group, so that every group stays
one contiguous range of ids and a packed table needs no id-to-row permutation
(`groups_are_contiguous`). Ids never seen in training have nothing to learn, so the
group they join costs at most the bits of their own rows.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

_CHUNK = 1 << 20
# Inputs `count_frequencies` refuses (as `data` or as a dataset's elements), and what
# to pass instead.
_UNSUPPORTED = (
    ((tf.RaggedTensor, tf.RaggedTensorSpec), "count its `flat_values` instead"),
    ((tf.SparseTensor, tf.SparseTensorSpec), "count its `values` instead"),
    (Iterator, "wrap it in `tf.data.Dataset.from_generator`, or pass an array"),
    (dict, "pass the id feature alone, e.g. `data['user_id']`"),
)


def _integer_chunks(data: Any) -> Iterable[np.ndarray]:
    """Yields `data` as flat numpy integer arrays of at most about a million ids."""
    if isinstance(data, tf.data.Dataset):
        for element in data.as_numpy_iterator():
            if isinstance(element, (tuple, list, dict)):
                raise TypeError(
                    "`data` must be a tf.data.Dataset of id tensors. Received a dataset "
                    f"whose elements are {type(element).__name__}; map it to the ids "
                    "first, e.g. `dataset.map(lambda x, y: x['user_id'])`."
                )
            yield from _integer_chunks(np.asarray(element))
        return
    if isinstance(data, tf.Tensor):
        data = data.numpy()
    array = np.asarray(data)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`data` must hold integer ids. Received an array of dtype {array.dtype}.")
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield flat[start : start + _CHUNK]


def count_frequencies(data: Any, input_dim: int) -> np.ndarray:
    """Counts how often each id in `[0, input_dim)` occurs in `data`.

    Streams over `data` in chunks, so memory stays O(input_dim) whatever its size.

    Args:
        data: integer ids as a numpy array, a tensor or a `tf.data.Dataset` whose
            elements are id tensors (any shape, batched or not).
        input_dim: the number of ids.

    Returns:
        int64 `[input_dim]` counts.

    Raises:
        TypeError: `data` is a ragged or sparse tensor, a generator or iterator, or a
            dict; the message says what to pass instead.

    Example:

    >>> count_frequencies(np.array([[0, 2], [2, 2]]), 4)
    array([1, 0, 3, 0])
    """
    element = data.element_spec if isinstance(data, tf.data.Dataset) else data
    for kinds, instead in _UNSUPPORTED:
        if isinstance(element, kinds):
            of = f" of {type(element).__name__}" if element is not data else ""
            raise TypeError(
                "`data` must be a numpy array, a tensor or a tf.data.Dataset of integer ids. "
                f"Received: data of type {type(data).__name__}{of}; {instead}."
            )
    counts = np.zeros(input_dim, dtype=np.int64)
    spec = data.element_spec if isinstance(data, tf.data.Dataset) else None
    if isinstance(spec, tf.TensorSpec) and spec.shape.is_fully_defined():
        # small elements (e.g. one id each) in batches: no Python step per id
        data = data.batch(max(1, _CHUNK // max(1, spec.shape.num_elements())))
    # Count chunks together until they hold about input_dim ids: a bincount costs
    # O(input_dim) whatever its input, so that cost is paid once per input_dim ids.
    pending, pending_size = [], 0
    for chunk in _integer_chunks(data):
        if chunk.size == 0:
            continue
        low, high = chunk.min(), chunk.max()
        if low < 0 or high >= input_dim:
            bad = low if low < 0 else high
            raise ValueError(
                f"`data` holds id {bad}, outside [0, input_dim={input_dim}). "
                "Map out-of-vocabulary values to an id in range before `adapt()`."
            )
        pending.append(chunk)
        pending_size += chunk.size
        if pending_size >= max(_CHUNK, input_dim // 2):
            _add_counts(counts, pending)
            pending, pending_size = [], 0
    _add_counts(counts, pending)
    return counts


def _add_counts(counts: np.ndarray, chunks: list[np.ndarray]) -> None:
    """Adds the ids of `chunks` to `counts` in place."""
    if chunks:
        ids = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        found = np.bincount(ids)
        counts[: found.size] += found


def validate_frequencies(frequencies: Any, input_dim: int) -> np.ndarray:
    """Checks that `frequencies` are `input_dim` non-negative whole-number counts.

    Returns them as int64.

    Example:

    >>> validate_frequencies([3, 1.0, 0], 3)
    array([3, 1, 0])
    """
    array = np.asarray(frequencies)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(
            f"`frequencies` must be numbers, one per id. Received an array of dtype {array.dtype}."
        )
    if array.shape != (input_dim,):
        raise ValueError(
            f"`frequencies` must have shape (input_dim,) = ({input_dim},). "
            f"Received shape {array.shape}."
        )
    if np.issubdtype(array.dtype, np.integer):  # compared as integers: exact up to 2**64
        bad = (array < 0) | (array > np.iinfo(np.int64).max)
    else:
        bad = ~np.isfinite(array) | (array < 0) | (array != np.round(array)) | (array >= 2.0**63)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            "`frequencies` must be non-negative whole-number counts below 2**63. "
            f"Received frequencies[{index}]={array[index]}."
        )
    return array.astype(np.int64)


def group_sizes(input_dim: int, num_groups: int) -> np.ndarray:
    """Rows per group: `min(num_groups, input_dim)` equal groups, the last (most
    frequent) one taking the remainder.

    Example:

    >>> group_sizes(10, 3)
    array([3, 3, 4])
    >>> group_sizes(2, 128)
    array([1, 1])
    """
    count = min(num_groups, input_dim)
    sizes = np.full(count, input_dim // count, dtype=np.int64)
    sizes[-1] += input_dim % count
    return sizes


def frequency_groups(frequencies: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Assigns each id to a frequency group and weighs the groups.

    Args:
        frequencies: `[V]` id counts (all zeros: ids ranked by descending
            frequency, as `StringLookup` numbers them). When the ids with a positive
            count are ranked by descending count (`seen_ids_ranked`), the ids are
            ranked by id alone, so the groups are contiguous id ranges.
        num_groups: the number of groups wanted; `min(num_groups, V)` are made.

    Returns:
        `(id_to_group, group_masses)`: int32 `[V]` group of each id (0 = rarest) and
        float32 `[G]` masses `c_g`: the group's total count over the smallest positive
        group total. Groups with no counts at all get mass 1, like the lightest group,
        and so do all groups when no id has a count.

    Example:

    >>> frequency_groups(np.array([5.0, 1.0, 0.0, 2.0]), 2)
    (array([1, 0, 0, 1], dtype=int32), array([1., 7.], dtype=float32))
    >>> frequency_groups(np.array([0.0, 6.0, 2.0, 1.0]), 2)  # StringLookup's OOV id 0
    (array([1, 1, 0, 0], dtype=int32), array([1., 2.], dtype=float32))
    """
    input_dim = frequencies.shape[0]
    if seen_ids_ranked(frequencies):
        ascending = np.arange(input_dim - 1, -1, -1)
    else:  # ascending frequency, ties larger id first: a stable sort of the reversed counts
        ascending = input_dim - 1 - np.argsort(frequencies[::-1], kind="stable")
    sizes = group_sizes(input_dim, num_groups)
    id_to_group = np.empty(input_dim, dtype=np.int32)
    id_to_group[ascending] = np.repeat(np.arange(sizes.size, dtype=np.int32), sizes)
    totals = np.bincount(id_to_group, weights=frequencies, minlength=sizes.size)
    positive = totals[totals > 0]
    lightest = positive.min() if positive.size else 1.0
    masses = np.maximum(totals, lightest) / lightest
    return id_to_group, masses.astype(np.float32)


def seen_ids_ranked(frequencies: np.ndarray) -> bool:
    """Whether the ids with a positive count are numbered by descending count, as
    Keras' vocabulary layers number them (ids with count 0 may sit anywhere).

    Example:

    >>> seen_ids_ranked(np.array([0, 9, 4, 0, 4, 1]))  # StringLookup's OOV id 0
    True
    >>> seen_ids_ranked(np.array([0, 4, 9]))
    False
    """
    counts = frequencies[frequencies > 0]
    return bool(np.all(counts[1:] <= counts[:-1]))


def groups_are_contiguous(id_to_group: np.ndarray) -> bool:
    """Whether every group is one contiguous range of ids.

    Then a packed table needs no per-id index: a group is found from the id alone.

    Example:

    >>> groups_are_contiguous(np.array([1, 1, 0, 0]))
    True
    >>> groups_are_contiguous(np.array([1, 0, 1, 0]))
    False
    """
    id_to_group = np.asarray(id_to_group)
    return group_layout([id_to_group], int(id_to_group.max()) + 1)[1]


def group_layout(chunks: Iterable[np.ndarray], num_groups: int) -> tuple[np.ndarray, bool]:
    """The rows of each group and whether every group is one contiguous range of ids
    (`groups_are_contiguous`), from `id_to_group` given in consecutive chunks (e.g.
    read from a variable a chunk at a time).

    Example:

    >>> rows, contiguous = group_layout([np.array([1, 1]), np.array([0, 0, 1])], 3)
    >>> rows.tolist(), contiguous
    ([2, 3, 0], False)
    """
    rows = np.zeros(num_groups, np.int64)
    changes, last = 0, None
    for groups in chunks:
        rows += np.bincount(groups, minlength=num_groups)
        changes += int(np.count_nonzero(groups[1:] != groups[:-1]))
        changes += int(last is not None and groups[0] != last)
        last = groups[-1]
    return rows, bool(changes == np.count_nonzero(rows) - 1)
