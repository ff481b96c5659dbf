"""Choosing bit-widths and counting the bytes a packed table needs.

The packed layout (what `memory_report` counts and the packed export stores):

- payload: each group's codes, `rows * output_dim * bits` bits, packed into uint32
  words; every group starts on a word boundary, 0-bit groups store nothing;
- step sizes: one float32 per non-zero candidate bit-width;
- offset: `output_dim` float32;
- per group: its first row, its first word and its bit-width, one int32 each;
- when a group is not a contiguous range of ids: a permutation from id to row,
  `ceil(log2(input_dim))` bits per id packed into uint32 words.
"""

import math
from typing import Any

import numpy as np
import tensorflow as tf

GROUP_FIELDS = 3  # first row, first word, bit-width: one int32 each
MAX_BITS = 8


def check_bit_widths(bit_widths: Any) -> tuple[int, ...]:
    """Validates candidate bit-widths: a non-empty, strictly increasing sequence of
    integers in `[0, MAX_BITS]`. Returns them as a tuple of ints.

    Example:

    >>> check_bit_widths([0, 2, 4])
    (0, 2, 4)
    """
    try:
        values = tuple(bit_widths)
    except TypeError:
        values = None
    if (
        not values
        or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in values)
        or any(b < 0 or b > MAX_BITS for b in values)
        or any(a >= b for a, b in zip(values, values[1:]))
    ):
        raise ValueError(
            "`bit_widths` must be a non-empty, strictly increasing sequence of integers "
            f"in [0, {MAX_BITS}]. Received: bit_widths={bit_widths!r}"
        )
    return tuple(int(b) for b in values)


def selected_index(probabilities: Any) -> tf.Tensor:
    """The MPE choice: per group, the index of the largest candidate bit-width with
    probability >= 1/(2K), candidates ascending. TensorFlow ops, so that the search's
    forward pass can use it inside a compiled step.

    Args:
        probabilities: `[G, K]` per-group probabilities over the K candidates.

    Returns:
        int32 `[G]` indices into the candidates.

    Example:

    >>> selected_index(np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])).numpy()
    array([1, 2], dtype=int32)
    """
    probabilities = tf.convert_to_tensor(probabilities)
    k = probabilities.shape[-1]
    eligible = tf.cast(probabilities >= 1.0 / (2 * k), tf.int32)
    last_eligible = tf.argmax(tf.reverse(eligible, axis=[-1]), axis=-1, output_type=tf.int32)
    return k - 1 - last_eligible


def payload_words(
    rows_per_group: np.ndarray, bits_per_group: np.ndarray, output_dim: int
) -> np.ndarray:
    """uint32 words of codes each group takes (fractional bits allowed, for estimates).

    Example:

    >>> payload_words(np.array([3, 5]), np.array([0, 3]), 4).tolist()
    [0, 2]
    """
    bits = np.asarray(rows_per_group) * output_dim * np.asarray(bits_per_group)
    return np.ceil(bits / 32).astype(np.int64)


def permutation_bytes(input_dim: int) -> int:
    """Bytes of an id-to-row permutation packed at `ceil(log2(input_dim))` bits per id.

    Example:

    >>> permutation_bytes(1000)
    1252
    """
    bits_per_id = max(1, math.ceil(math.log2(input_dim)))
    return 4 * math.ceil(input_dim * bits_per_id / 32)


def memory_report(
    rows_per_group: np.ndarray,
    bits_per_group: np.ndarray,
    output_dim: int,
    num_step_sizes: int,
    needs_permutation: bool,
) -> dict:
    """Bytes a packed table takes, split into payload and overhead.

    Args:
        rows_per_group: `[G]` rows in each group.
        bits_per_group: `[G]` bits of each group (expected bits may be fractional).
        output_dim: the embedding dimension D.
        num_step_sizes: the number of non-zero candidate bit-widths.
        needs_permutation: whether an id-to-row permutation must be stored.

    Returns:
        A dict with `bits_per_group`, `rows_per_group`, `average_bits` (per stored
        value), `payload_bytes`, `overhead_bytes`, `total_bytes`, `float32_bytes`,
        `compression_ratio` (float32 bytes over total bytes) and
        `payload_compression_ratio` (float32 bytes over payload bytes).

    Example:

    >>> report = memory_report(np.array([50, 50]), np.array([0, 4]), 16, 6, False)
    >>> report["payload_bytes"], report["overhead_bytes"], report["total_bytes"]
    (400, 112, 512)
    """
    rows = np.asarray(rows_per_group, dtype=np.int64)
    bits = np.asarray(bits_per_group)
    input_dim = int(rows.sum())
    payload = 4 * int(payload_words(rows, bits, output_dim).sum())
    overhead = 4 * (num_step_sizes + output_dim + GROUP_FIELDS * rows.size)
    if needs_permutation:
        overhead += permutation_bytes(input_dim)
    total = payload + overhead
    float32_bytes = 4 * input_dim * output_dim
    return {
        "bits_per_group": bits,
        "rows_per_group": rows,
        "average_bits": float((rows * bits).sum() / input_dim),
        "payload_bytes": payload,
        "overhead_bytes": overhead,
        "total_bytes": total,
        "float32_bytes": float32_bytes,
        "compression_ratio": float32_bytes / total,
        "payload_compression_ratio": (float32_bytes / payload if payload else float("inf")),
    }
