"""Choosing bit-widths and counting the bytes a packed table needs.

`memory_report` counts the packed layout that `keras_mpe.codec` describes, array for
array (`keras_mpe.codec.payload_bytes` and `keras_mpe.codec.overhead_bytes`).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mpe import codec, quantizers

# a budget of R is met by a compression ratio in [R, TARGET_TOLERANCE * R]
TARGET_TOLERANCE = 1.1
# Rows per chunk when `group_errors` goes over a whole table.
ERROR_CHUNK_ROWS = 65_536


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


def memory_report(
    rows_per_group: np.ndarray,
    group_bits: np.ndarray,
    output_dim: int,
    num_step_sizes: int,
    needs_permutation: bool,
) -> dict:
    """Bytes a packed table takes, split into payload and overhead.

    Args:
        rows_per_group: `[G]` rows in each group.
        group_bits: `[G]` bits of each group (expected bits may be fractional).
        output_dim: the embedding dimension D.
        num_step_sizes: the number of non-zero candidate bit-widths.
        needs_permutation: whether an id-to-row permutation must be stored.

    Returns:
        A dict with `group_bits`, `rows_per_group`, `average_bits` (per stored
        value), `payload_bytes`, `padding_bytes` (the part of the payload that
        pads rows to whole bytes: 0 when D is a multiple of 8), `overhead_bytes`,
        `total_bytes`, `float32_bytes`,
        `compression_ratio` (float32 bytes over total bytes) and
        `payload_compression_ratio` (float32 bytes over payload bytes).

    Example:

    >>> report = memory_report(np.array([50, 50]), np.array([0, 4]), 16, 6, False)
    >>> report["payload_bytes"], report["overhead_bytes"], report["total_bytes"]
    (400, 112, 512)
    >>> memory_report(np.array([50, 50]), np.array([0, 3]), 10, 6, False)["padding_bytes"]
    62
    """
    rows = np.asarray(rows_per_group, dtype=np.int64)
    bits = np.asarray(group_bits)
    input_dim = int(rows.sum())
    payload = codec.payload_bytes(rows, bits, output_dim)
    overhead = codec.overhead_bytes(
        rows.size, output_dim, num_step_sizes, input_dim if needs_permutation else None
    )
    total = payload + overhead
    float32_bytes = 4 * input_dim * output_dim
    return {
        "group_bits": bits,
        "rows_per_group": rows,
        "average_bits": float((rows * bits).sum() / input_dim),
        "payload_bytes": payload,
        "padding_bytes": payload - codec.code_bytes(rows, bits, output_dim),
        "overhead_bytes": overhead,
        "total_bytes": total,
        "float32_bytes": float32_bytes,
        "compression_ratio": float32_bytes / total,
        "payload_compression_ratio": (float32_bytes / payload if payload else float("inf")),
    }


def check_reachable(layer: Any, target: float) -> None:
    """Raises a ValueError if `layer` (a `MixedPrecisionEmbedding`) cannot reach the
    compression ratio `target` even with every group at its lowest candidate width,
    where only the overhead of its groups is left."""
    lowest = np.full(layer.groups, min(layer.bit_widths))
    best = layer.memory_report(lowest)["compression_ratio"]
    if best < target:
        raise ValueError(
            f"`target_compression` {target} is out of reach for layer '{layer.name}' "
            f"({layer.input_dim} x {layer.output_dim}): with every group at {lowest[0]} "
            f"bits its compression is {best:.1f}x, the overhead of {layer.groups} groups "
            f"alone. Pass a smaller `num_groups` or target. Received: "
            f"target_compression={target!r}"
        )


def fit_to_budget(
    report: dict, candidates: Sequence[int], group_masses: np.ndarray, target: float
) -> np.ndarray:
    """Moves per-group bits one candidate at a time until the compression ratio (with
    overhead) is in `[target, TARGET_TOLERANCE * target]`: down from the rarest group
    (fewest lookups per row) while below the target, then up from the most frequent
    group while above the window, never below the target.

    Args:
        report: `memory_report` of the starting per-group bits (its `group_bits`,
            `rows_per_group`, `overhead_bytes` and `float32_bytes` are read).
        candidates: the candidate bit-widths, ascending.
        group_masses: `[G]` each group's lookups, in any common unit.
        target: the compression ratio to reach.

    Returns:
        int32 `[G]` per-group bits.

    Example:

    >>> report = memory_report(np.array([250] * 4), np.array([4] * 4), 16, 6, False)
    >>> fit_to_budget(report, (0, 1, 2, 3, 4, 5, 6), np.ones(4), target=16.0)
    array([0, 0, 3, 4], dtype=int32)
    """
    rows, overhead = report["rows_per_group"], report["overhead_bytes"]
    float32_bytes = report["float32_bytes"]
    output_dim = float32_bytes // (4 * int(rows.sum()))

    def ratio(bits: np.ndarray) -> float:
        return float32_bytes / (codec.payload_bytes(rows, bits, output_dim) + overhead)

    candidates = list(candidates)
    bits = np.asarray(report["group_bits"], np.int32).copy()
    order = np.argsort(np.asarray(group_masses) / np.maximum(rows, 1), kind="stable")
    for group in order:
        while ratio(bits) < target and bits[group] > candidates[0]:
            bits[group] = candidates[candidates.index(bits[group]) - 1]
    for group in order[::-1]:
        while ratio(bits) > TARGET_TOLERANCE * target and bits[group] < candidates[-1]:
            higher = bits.copy()
            higher[group] = candidates[candidates.index(bits[group]) + 1]
            if ratio(higher) < target:
                break
            bits = higher
    return bits


def group_errors(layer: Any) -> np.ndarray:
    """Per group and candidate width, the frequency-weighted squared quantization
    error of the layer's table at its step sizes and offset: `[groups, K]` float64.

    A 0-bit width looks up zeros, so its error is the rows' squared norm.
    """
    frequencies = layer.frequencies.numpy().astype(np.float64)
    id_to_group = layer.id_to_group.numpy()
    step_sizes = layer.candidate_step_sizes().numpy()
    offset = layer.offset.numpy()
    errors = np.zeros((layer.groups, len(layer.bit_widths)))
    for start in range(0, layer.input_dim, ERROR_CHUNK_ROWS):
        stop = min(start + ERROR_CHUNK_ROWS, layer.input_dim)
        rows = np.asarray(layer.embeddings[start:stop])
        weight, groups = frequencies[start:stop], id_to_group[start:stop]
        for k, bits in enumerate(layer.bit_widths):
            quantized = quantizers.fake_quantize_numpy(rows, step_sizes[k], offset, bits)
            squared = np.sum((quantized - rows) ** 2, axis=1)
            errors[:, k] += np.bincount(groups, weights=weight * squared, minlength=layer.groups)
    return errors


def allocate_bits(layer: Any, target_compression: float) -> np.ndarray:
    """Per-group bits from the table alone at a compression target (what `keras_mpe.convert`
    does with `epochs=0`): the Lagrangian allocation of `group_errors` under the byte budget,
    then `keras_mpe.precision.fit_to_budget`.

    Returns int32 `[groups]` bits from the layer's candidates.
    """
    errors = group_errors(layer)
    rows = np.bincount(layer.id_to_group.numpy(), minlength=layer.groups)
    widths = np.asarray(layer.bit_widths)
    cost = rows[:, None] * layer.output_dim * widths[None, :]  # payload bits

    def bits_at(penalty: float) -> np.ndarray:
        # ties go to the fewest bits
        return widths[np.argmin(errors + penalty * cost, axis=1)]

    def ratio(bits: np.ndarray) -> float:
        return layer.memory_report(bits)["compression_ratio"]

    check_reachable(layer, target_compression)
    scale = max(float(errors.max()), 1e-30) / max(float(cost[cost > 0].min()), 1.0)
    low, high = 0.0, scale
    while ratio(bits_at(high)) < target_compression:
        high *= 4.0
    for _ in range(80):
        middle = (low + high) / 2
        if ratio(bits_at(middle)) >= target_compression:
            high = middle
        else:
            low = middle
    bits = bits_at(high).astype(np.int32)
    return fit_to_budget(
        layer.memory_report(bits), layer.bit_widths, layer.group_masses.numpy(), target_compression
    )
