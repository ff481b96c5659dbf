"""LSQ+ fake quantization with straight-through gradients, in plain TensorFlow ops.

Both Keras flavours share these functions: nothing here imports Keras.

For a bit-width ``b >= 1``, a step size ``alpha > 0`` and an offset ``beta``::

    low, high = -2**(b-1), 2**(b-1) - 1
    v = (w - beta) / alpha
    quantize(w) = clip(round(v), low, high) * alpha + beta

and ``quantize(w) = 0`` for ``b = 0``. The gradients are the LSQ+ straight-through
estimates, with ``grad_scale`` multiplying the step-size and offset gradients::

    dL/dw     = dy * [low <= v <= high]
    dL/dalpha = grad_scale * sum(dy * (low if v < low else high if v > high
                                       else round(v) - v))
    dL/dbeta  = grad_scale * sum(dy * [v < low or v > high])
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def lsq_grad_scale(bits: int, table_size: int) -> float:
    """The LSQ gradient scale `1 / sqrt(2**(bits-1) * table_size)`.

    Example:

    >>> round(lsq_grad_scale(3, 100), 4)
    0.05
    """
    if bits == 0:
        return 0.0
    return float(1.0 / np.sqrt(2.0 ** (bits - 1) * table_size))


def quantization_range(bits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The lowest and highest signed code of `bits`-bit quantization, as float32.

    Both are 0 for `bits = 0`.
    """
    half = tf.where(bits > 0, tf.pow(2.0, tf.cast(bits, tf.float32) - 1.0), 0.0)
    return -half, tf.maximum(half - 1.0, 0.0)


@tf.function(jit_compile=True)
def quantize_codes(
    values: tf.Tensor, step_size: tf.Tensor, offset: tf.Tensor, bits: tf.Tensor
) -> tf.Tensor:
    """Signed integer codes `clip(round((values - offset) / step_size))`, as float32.

    This is the one place the rounding happens: the fake quantizers and the packed
    export share it, so packed codes match training bit for bit. Like the other
    kernels here it is compiled with XLA, which fuses its element-wise steps.

    Example:

    >>> quantize_codes(tf.constant([[0.26, -9.0]]), 0.5, 0.0, 2).numpy()
    array([[ 1., -2.]], dtype=float32)
    """
    low, high = quantization_range(tf.convert_to_tensor(bits))
    return tf.clip_by_value(tf.round((values - offset) / step_size), low, high)


def _straight_through_terms(v, low, high, dy):
    """Pieces of the LSQ+ gradient for scaled values `v`: (dL/dw, alpha term, beta term)."""
    below = v < low
    above = v > high
    outside = tf.logical_or(below, above)
    dvalues = tf.where(outside, 0.0, dy)
    step_term = dy * tf.where(below, low, tf.where(above, high, tf.round(v) - v))
    offset_term = tf.where(outside, dy, 0.0)
    return dvalues, step_term, offset_term


def _sum_to_shape(gradient: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Sums `gradient` over the axes along which `like` was broadcast."""
    shape = tf.shape(like)
    axes, _ = tf.raw_ops.BroadcastGradientArgs(s0=shape, s1=tf.shape(gradient))
    return tf.reshape(tf.reduce_sum(gradient, axis=axes), shape)


@tf.function(jit_compile=True)
def _lsq_quantize(values, step_size, offset, bits, grad_scale):
    low, high = quantization_range(bits)
    keep = tf.cast(bits > 0, tf.float32)

    @tf.custom_gradient
    def quantize(values, step_size, offset):
        v = (values - offset) / step_size
        codes = tf.clip_by_value(tf.round(v), low, high)
        outputs = (codes * step_size + offset) * keep

        def grad(dy):
            dvalues, step_term, offset_term = _straight_through_terms(v, low, high, dy * keep)
            return (
                dvalues,
                _sum_to_shape(grad_scale * step_term, step_size),
                _sum_to_shape(grad_scale * offset_term, offset),
            )

        return outputs, grad

    return quantize(values, step_size, offset)


def lsq_quantize(
    values: tf.Tensor,
    step_size: tf.Tensor,
    offset: tf.Tensor,
    bits: tf.Tensor,
    grad_scale: tf.Tensor,
) -> tf.Tensor:
    """Fake-quantizes `values` with the LSQ+ quantizer and its custom gradient.

    Compiled with XLA, which fuses the element-wise steps of both directions.

    Args:
        values: float32 `[N, D]`, the rows to quantize.
        step_size: float32 step sizes broadcastable to `[N, D]` (a scalar, or `[N, 1]`
            for one step size per row). Ignored where `bits` is 0.
        offset: float32 `[D]`, the per-dimension offset `beta`.
        bits: int32 bit-widths broadcastable to `[N, D]`, each in `0..8`. 0 gives zeros.
        grad_scale: float32, broadcastable like `step_size`: the LSQ factor applied to
            the gradients of `step_size` and `offset`.

    Returns:
        float32 `[N, D]`. The gradients of `step_size` and `offset` come back in their
        own shapes; `bits` and `grad_scale` get none.

    Example:

    >>> lsq_quantize(tf.constant([[0.26, -9.0]]), 0.5, tf.zeros([2]), 2, 1.0).numpy()
    array([[ 0.5, -1. ]], dtype=float32)
    """
    return _lsq_quantize(
        tf.convert_to_tensor(values, tf.float32),
        tf.convert_to_tensor(step_size, tf.float32),
        tf.convert_to_tensor(offset, tf.float32),
        tf.convert_to_tensor(bits, tf.int32),
        tf.convert_to_tensor(grad_scale, tf.float32),
    )


@tf.function(jit_compile=True)
def _mixture_quantize(values, probabilities, step_sizes, offset, bit_widths, grad_scales):
    nonzero = [k for k, bits in enumerate(bit_widths) if bits > 0]

    @tf.custom_gradient
    def quantize(values, probabilities, step_sizes, offset):
        outputs = tf.zeros_like(values)
        scaled = {}
        for k in nonzero:
            low, high = quantization_range(tf.constant(bit_widths[k]))
            v = (values - offset) / step_sizes[k]
            quantized = tf.clip_by_value(tf.round(v), low, high) * step_sizes[k] + offset
            scaled[k] = (v, low, high, quantized)
            outputs += probabilities[:, k : k + 1] * quantized

        def grad(dy):
            dvalues = tf.zeros_like(values)
            dprobabilities = [tf.zeros_like(probabilities[:, 0])] * len(bit_widths)
            dstep_sizes = [tf.zeros([])] * len(bit_widths)
            doffset = tf.zeros_like(offset)
            for k in nonzero:
                v, low, high, quantized = scaled[k]
                p = probabilities[:, k : k + 1]
                dprobabilities[k] = tf.reduce_sum(dy * quantized, axis=1)
                d_k, step_term, offset_term = _straight_through_terms(v, low, high, dy * p)
                dvalues += d_k
                dstep_sizes[k] = grad_scales[k] * tf.reduce_sum(step_term)
                doffset += grad_scales[k] * tf.reduce_sum(offset_term, axis=0)
            return (
                dvalues,
                tf.stack(dprobabilities, axis=1),
                tf.stack(dstep_sizes),
                doffset,
            )

        return outputs, grad

    return quantize(values, probabilities, step_sizes, offset)


def mixture_quantize(
    values: tf.Tensor,
    probabilities: tf.Tensor,
    step_sizes: tf.Tensor,
    offset: tf.Tensor,
    bit_widths: Sequence[int],
    grad_scales: Sequence[float],
) -> tf.Tensor:
    """The expectation over bit-widths `sum_k p_k * quantize_k(values)`, in one op.

    One custom gradient covers the whole mixture and both directions are compiled
    with XLA, so each pass streams over the rows once instead of once per op and
    bit-width.

    Args:
        values: float32 `[N, D]`.
        probabilities: float32 `[N, K]`, each row's probability of each bit-width.
        step_sizes: float32 `[K]`, the step size of each bit-width (entries of
            0-bit widths are ignored).
        offset: float32 `[D]`.
        bit_widths: the K candidate bit-widths, Python ints.
        grad_scales: the K LSQ gradient scales, Python floats.

    Returns:
        float32 `[N, D]`.

    Example:

    >>> mixture_quantize(tf.constant([[0.26]]), tf.constant([[0.5, 0.5]]),
    ...                  tf.constant([1.0, 0.5]), tf.zeros([1]), (0, 2),
    ...                  (0.0, 1.0)).numpy()
    array([[0.25]], dtype=float32)
    """
    return _mixture_quantize(
        *(
            tf.convert_to_tensor(x, tf.float32)
            for x in (values, probabilities, step_sizes, offset)
        ),
        tuple(int(b) for b in bit_widths),
        tuple(float(s) for s in grad_scales),
    )


def small_table_gather(table: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """`tf.gather(table, indices)` for a small table, with a dense gradient.

    The gradient is a one-hot matrix product instead of a scatter-add: XLA on CPU
    runs scatter-adds of many repeated indices (every looked-up row hits one of a
    few groups) about a hundred times slower.

    Args:
        table: float32 `[T, ...]` with T small (groups, bit-widths).
        indices: int32 indices into the first axis of `table`, any shape.

    Returns:
        `indices.shape + table.shape[1:]`.

    Example:

    >>> small_table_gather(tf.constant([[1.0], [2.0]]), tf.constant([1, 1, 0])).numpy()
    array([[2.],
           [2.],
           [1.]], dtype=float32)
    """

    @tf.custom_gradient
    def gather(table):
        def grad(dy):
            rows = tf.shape(table)[0]
            one_hot = tf.reshape(tf.one_hot(indices, rows, dtype=dy.dtype), [-1, rows])
            flat_dy = tf.reshape(dy, [tf.shape(one_hot)[0], -1])
            return tf.reshape(tf.matmul(one_hot, flat_dy, transpose_a=True), tf.shape(table))

        return tf.gather(table, indices), grad

    return gather(tf.convert_to_tensor(table, tf.float32))
