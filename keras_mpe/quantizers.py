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
from typing import Any

import numpy as np
import tensorflow as tf

# When a quantizer is fitted to a trained table, the step size of each width is the
# best of these multiples of its initial step size (`initial_step_sizes`).
FIT_STEP_MULTIPLES = np.geomspace(0.05, 4.0, 48)


def lsq_grad_scale(bits: int, table_size: int) -> float:
    """The LSQ gradient scale `1 / sqrt(2**(bits-1) * table_size)`.

    Example:

    >>> round(lsq_grad_scale(3, 100), 4)
    0.05
    """
    if bits == 0:
        return 0.0
    return float(1.0 / np.sqrt(2.0 ** (bits - 1) * table_size))


def initial_step_sizes(mean_abs: Any, bit_widths: Sequence[int]) -> Any:
    """LSQ+'s initial step sizes `2 * mean|W| / sqrt(2**(b-1))` for non-zero `bit_widths`,
    from a table's mean |value| (a number or a scalar tensor).

    Example:

    >>> initial_step_sizes(0.5, (1, 3)).tolist()
    [1.0, 0.5]
    """
    bits = np.asarray(bit_widths, np.float64)
    return mean_abs * (2.0 / np.sqrt(2.0 ** (bits - 1.0)))


STEP_BITS = 16  # significant bits of a step size: code * step is exact in float32


def round_step_sizes(step_sizes: Any) -> tf.Tensor:
    """Float32 step sizes rounded to `STEP_BITS` significant bits (to nearest, ties to
    even), with a straight-through gradient.

    A code has at most 8 significant bits, so `code * step` is then exact in float32
    and `code * step + offset` rounds once whether it runs as a multiply and an add
    (TensorFlow's graph runtime) or as a fused multiply-add (XLA): training and the
    packed lookup give the same values bit for bit.

    Example:

    >>> float(round_step_sizes(0.1)), float(round_step_sizes(0.5))
    (0.10000038146972656, 0.5)
    """
    steps = tf.convert_to_tensor(step_sizes, tf.float32)
    bits = tf.bitcast(steps, tf.uint32)
    dropped = 23 - (STEP_BITS - 1)
    tie_to_even = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, dropped), 1)
    half = tf.constant(2 ** (dropped - 1) - 1, tf.uint32) + tie_to_even
    keep = tf.constant((0xFFFFFFFF >> dropped) << dropped, tf.uint32)
    rounded = tf.bitcast(tf.bitwise.bitwise_and(bits + half, keep), tf.float32)
    return steps + tf.stop_gradient(rounded - steps)


def fake_quantize_numpy(
    rows: np.ndarray, step_size: float, offset: np.ndarray, bits: int
) -> np.ndarray:
    """The values of LSQ+ fake quantization (the formula above), in numpy.

    Example:

    >>> fake_quantize_numpy(np.array([[0.26, -9.0]]), 0.5, np.zeros(2), 2).tolist()
    [[0.5, -1.0]]
    """
    if bits == 0:
        return np.zeros_like(rows)
    low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return np.clip(np.round((rows - offset) / step_size), low, high) * step_size + offset


def fit_to_rows(
    rows: np.ndarray, mean_abs: float, bit_widths: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Step sizes and an offset fitted to trained `rows` (a frequency-weighted sample
    of a table whose mean |value| is `mean_abs`), in numpy.

    For each non-zero width the step size is the multiple (from
    `FIT_STEP_MULTIPLES`) of its initial step size with the least mean squared
    quantization error over `rows`. The offset is 0 or the per-dimension mean of
    `rows`, whichever gives the smaller sum over the widths of the log errors.

    Returns:
        `(step_sizes, offset)`: float64 `[nonzero widths]` and float `[D]`.

    Example:

    >>> rows = np.random.default_rng(0).normal(1.0, 0.1, size=(500, 2))
    >>> steps, offset = fit_to_rows(rows, float(np.abs(rows).mean()), (0, 2, 4))
    >>> steps.shape, bool(offset[0] > 0.9)
    ((2,), True)
    """
    widths = [b for b in bit_widths if b > 0]
    best = None
    for offset in (np.zeros(rows.shape[1], np.float32), rows.mean(axis=0)):
        steps, errors = [], []
        for bits, initial in zip(widths, initial_step_sizes(mean_abs, widths), strict=True):
            candidates = [
                (
                    float(
                        np.mean((fake_quantize_numpy(rows, initial * m, offset, bits) - rows) ** 2)
                    ),
                    m,
                )
                for m in FIT_STEP_MULTIPLES
            ]
            error, multiple = min(candidates)
            steps.append(initial * multiple)
            errors.append(max(error, 1e-30))
        score = float(np.sum(np.log(errors)))
        if best is None or score < best[0]:
            best = (score, np.asarray(steps, np.float64), offset)
    return best[1], best[2]


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


def clipped_share(
    values: np.ndarray,
    step_size: np.ndarray,
    offset: np.ndarray,
    bits: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """Per row, the weighted share of its values that lie beyond the clip, in numpy.

    A value is clipped when `(value - offset) / step_size` is below the lowest or
    above the highest `bits`-bit code: there the quantizer passes it no gradient
    (see the module docstring). Rows at 0 bits are never clipped.

    Args:
        values: float `[N, D]`.
        step_size: float, broadcastable to `[N, D]` (scalar or `[N, 1]`).
        offset: float `[D]`.
        bits: int, broadcastable to `[N, D]`.
        weights: float `[N]`, each row's weight (e.g. its lookup count).

    Returns:
        float64 `[N]`: `weights * (share of the row's values clipped)`.

    Example:

    >>> clipped_share(np.array([[0.1, 2.0], [-3.0, 0.0]]), 1.0, np.zeros(2), 2,
    ...               np.array([1.0, 3.0])).tolist()
    [0.5, 1.5]
    """
    bits = np.asarray(bits)
    half = np.where(bits > 0, 2.0 ** (bits - 1.0), 0.0)
    v = (np.asarray(values, np.float64) - offset) / step_size
    outside = ((v < -half) | (v > half - 1.0)) & (bits > 0)
    return np.asarray(weights, np.float64) * outside.mean(axis=1)


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


def _lsq_values(values, step_size, offset, bits):
    """Forward of one LSQ+ quantizer (plain ops)."""
    codes = quantize_codes(values, step_size, offset, bits)
    return (codes * step_size + offset) * tf.cast(bits > 0, tf.float32)


def _lsq_gradients(dy, values, step_size, offset, bits, grad_scale):
    """`(dL/dvalues, dL/dstep_size, dL/doffset)` of one LSQ+ quantizer (plain ops)."""
    low, high = quantization_range(bits)
    v = (values - offset) / step_size
    dy = dy * tf.cast(bits > 0, tf.float32)
    dvalues, step_term, offset_term = _straight_through_terms(v, low, high, dy)
    return (
        dvalues,
        _sum_to_shape(grad_scale * step_term, step_size),
        _sum_to_shape(grad_scale * offset_term, offset),
    )


def _mixture_values(values, probabilities, step_sizes, offset, bit_widths):
    """Forward of the expectation over bit-widths (plain ops)."""
    outputs = tf.zeros_like(values)
    for k, bits in enumerate(bit_widths):
        if bits:
            quantized = _lsq_values(values, step_sizes[k], offset, tf.constant(bits))
            outputs += probabilities[:, k : k + 1] * quantized
    return outputs


def _width_scores(dy, values, step_sizes, offset, bit_widths):
    """`[N, K]`: per row, `sum_d dy * quantize_k(values)` for each candidate k, the
    gradient of the mixture with respect to the row's weight of candidate k."""
    scores = [tf.zeros_like(values[:, 0])] * len(bit_widths)
    for k, bits in enumerate(bit_widths):
        if bits:
            quantized = _lsq_values(values, step_sizes[k], offset, tf.constant(bits))
            scores[k] = tf.reduce_sum(dy * quantized, axis=1)
    return tf.stack(scores, axis=1)


def _mixture_gradients(dy, values, probabilities, step_sizes, offset, bit_widths, grad_scales):
    """`(dL/dvalues, dL/dprobabilities, dL/dstep_sizes, dL/doffset)` of the mixture."""
    dvalues = tf.zeros_like(values)
    dstep_sizes = [tf.zeros([])] * len(bit_widths)
    doffset = tf.zeros_like(offset)
    for k, bits in enumerate(bit_widths):
        if not bits:
            continue
        d_k, dstep_sizes[k], doffset_k = _lsq_gradients(
            dy * probabilities[:, k : k + 1],
            values,
            step_sizes[k],
            offset,
            tf.constant(bits),
            grad_scales[k],
        )
        dvalues += d_k
        doffset += doffset_k
    dprobabilities = _width_scores(dy, values, step_sizes, offset, bit_widths)
    return dvalues, dprobabilities, tf.stack(dstep_sizes), doffset


@tf.function(jit_compile=True)
def _lsq_quantize(values, step_size, offset, bits, grad_scale):
    @tf.custom_gradient
    def quantize(values, step_size, offset):
        def grad(dy):
            return _lsq_gradients(dy, values, step_size, offset, bits, grad_scale)

        return _lsq_values(values, step_size, offset, bits), grad

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
    @tf.custom_gradient
    def quantize(values, probabilities, step_sizes, offset):
        def grad(dy):
            return _mixture_gradients(
                dy, values, probabilities, step_sizes, offset, bit_widths, grad_scales
            )

        return _mixture_values(values, probabilities, step_sizes, offset, bit_widths), grad

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


@tf.function(jit_compile=True)
def _embedding_quantize(
    values,
    probabilities,
    step_sizes,
    offset,
    row_widths,
    frozen,
    bit_widths,
    grad_scales,
    search_forward,
):
    # row_widths holds each row's index into bit_widths: its frozen bit-width, or
    # while a "sample" search runs, the one drawn for it
    one_hot = tf.one_hot(row_widths, len(bit_widths))  # [N, K]
    # float32 bits: a GPU compares int32 in host memory
    row_bits = tf.gather(tf.constant(bit_widths, tf.float32), row_widths)[:, None]
    row_scale = tf.gather(tf.constant(grad_scales, tf.float32), row_widths)[:, None]

    @tf.custom_gradient
    def quantize(values, probabilities, step_sizes, offset):
        row_step = tf.linalg.matvec(one_hot, step_sizes)[:, None]

        def one_width_values():
            return _lsq_values(values, row_step, offset, row_bits)

        def mixture_values():
            return _mixture_values(values, probabilities, step_sizes, offset, bit_widths)

        def grad(dy):
            def one_width_gradients(dprobabilities):
                dvalues, drow_step, doffset = _lsq_gradients(
                    dy, values, row_step, offset, row_bits, row_scale
                )
                dstep_sizes = tf.linalg.matvec(one_hot, drow_step[:, 0], transpose_a=True)
                return dvalues, dprobabilities, dstep_sizes, doffset

            def retrain_gradients():
                return one_width_gradients(tf.zeros_like(probabilities))

            def search_gradients():
                if search_forward == "sample":
                    # the one-hot weights pass the values, step sizes and offset the
                    # gradients of the drawn width alone; only the weights' gradient
                    # needs every candidate
                    scores = _width_scores(dy, values, step_sizes, offset, bit_widths)
                    return one_width_gradients(scores)
                return _mixture_gradients(
                    dy, values, probabilities, step_sizes, offset, bit_widths, grad_scales
                )

            return tf.cond(frozen, retrain_gradients, search_gradients)

        if search_forward == "sample":
            return one_width_values(), grad
        return tf.cond(frozen, one_width_values, mixture_values), grad

    return quantize(values, probabilities, step_sizes, offset)


def embedding_quantize(
    values: tf.Tensor,
    probabilities: tf.Tensor,
    step_sizes: tf.Tensor,
    offset: tf.Tensor,
    row_widths: tf.Tensor,
    frozen: tf.Tensor,
    bit_widths: Sequence[int],
    grad_scales: Sequence[float],
    search_forward: str = "expectation",
) -> tf.Tensor:
    """The layer's kernel: the search's forward, or one quantizer per row once frozen.

    `frozen` is a runtime boolean, so a traced train step switches state without
    retracing. The switch sits inside one custom gradient: differentiating through a
    `tf.cond` instead would keep every intermediate of both branches alive and, under
    XLA, ran a training step about 20 times slower.

    With `search_forward="sample"` the search quantizes each row at its drawn width
    (`row_widths`) and `probabilities` are the one-hot weights of the drawn widths
    (with the probabilities' gradient): the output, and the gradients of `values`,
    `step_sizes` and `offset`, are those of the drawn width, and only the weights'
    gradient quantizes at every candidate. With `"expectation"` the search's output
    is `sum_k p_k * quantize_k(values)`.

    Args:
        values: float32 `[N, D]`, the looked-up rows.
        probabilities: float32 `[N, K]`, each row's weight of each bit-width
            (search state; gets zero gradient when frozen).
        step_sizes: float32 `[K]`, one step size per candidate (0-bit entries unused).
        offset: float32 `[D]`.
        row_widths: int32 `[N]`, each row's bit-width as an index into `bit_widths`:
            the frozen one, or in a `"sample"` search the drawn one.
        frozen: bool scalar, whether the layer is in the retrain state.
        bit_widths: the K candidate bit-widths, Python ints.
        grad_scales: the K LSQ gradient scales, Python floats.
        search_forward: `"sample"` or `"expectation"`, the layer's search forward.

    Returns:
        float32 `[N, D]`.

    Example:

    >>> args = (tf.constant([[0.26]]), tf.constant([[0.5, 0.5]]),
    ...         tf.constant([1.0, 0.5]), tf.zeros([1]), tf.constant([1]))
    >>> embedding_quantize(*args, tf.constant(False), (0, 2), (0.0, 1.0)).numpy()
    array([[0.25]], dtype=float32)
    >>> embedding_quantize(*args, tf.constant(True), (0, 2), (0.0, 1.0)).numpy()
    array([[0.5]], dtype=float32)
    >>> embedding_quantize(*args, tf.constant(False), (0, 2), (0.0, 1.0), "sample").numpy()
    array([[0.5]], dtype=float32)
    """
    return _embedding_quantize(
        *(
            tf.convert_to_tensor(x, tf.float32)
            for x in (values, probabilities, step_sizes, offset)
        ),
        tf.convert_to_tensor(row_widths, tf.int32),
        tf.convert_to_tensor(frozen, tf.bool),
        tuple(int(b) for b in bit_widths),
        tuple(float(s) for s in grad_scales),
        search_forward,
    )


def small_table_gather(table: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """`tf.gather(table, indices)` for a small table, with a dense gradient.

    Under XLA the gradient is a one-hot matrix product instead of a scatter-add:
    XLA on CPU runs scatter-adds of many repeated indices (every looked-up row hits
    one of a few groups) about a hundred times slower. Elsewhere it is a segment
    sum, which TensorFlow's own kernel does faster than the product.

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
            if tf.__internal__.get_enclosing_xla_context() is None:
                return tf.math.unsorted_segment_sum(dy, indices, rows)
            one_hot = tf.reshape(tf.one_hot(indices, rows, dtype=dy.dtype), [-1, rows])
            flat_dy = tf.reshape(dy, [tf.shape(one_hot)[0], -1])
            return tf.reshape(tf.matmul(one_hot, flat_dy, transpose_a=True), tf.shape(table))

        return tf.gather(table, indices), grad

    return gather(tf.convert_to_tensor(table, tf.float32))
