"""The LSQ+ fake quantizers against numpy references of values and gradients."""

import numpy as np
import pytest
import tensorflow as tf
from reference import mixture, quantize, quantize_gradients

from keras_mpe import quantizers

BITS = range(0, 9)


def _values(bits, alpha, beta, rng, rows=40, dim=6):
    """Values inside the clipping range (kept away from rounding ties) and outside it."""
    high = 2.0 ** (bits - 1) if bits else 1.0
    codes = rng.integers(-int(high), int(high), size=(rows, dim)).astype(np.float32)
    jitter = rng.uniform(-0.4, 0.4, size=(rows, dim)).astype(np.float32)
    w = (codes + jitter) * alpha + beta
    w[:5] = beta + alpha * (high + 3.3)  # above the range
    w[5:10] = beta - alpha * (high + 4.1)  # below the range
    return w.astype(np.float32)


@pytest.mark.parametrize("bits", BITS)
def test_lsq_quantize_matches_reference_values_and_gradients(bits):
    rng = np.random.default_rng(bits)
    alpha = np.float32(0.37)
    beta = rng.normal(size=6).astype(np.float32) * 0.1
    w = _values(bits, alpha, beta, rng)
    dy = rng.normal(size=w.shape).astype(np.float32)
    scale = 0.25
    w_t, alpha_t, beta_t = tf.constant(w), tf.constant(alpha), tf.constant(beta)
    with tf.GradientTape() as tape:
        tape.watch([w_t, alpha_t, beta_t])
        out = quantizers.lsq_quantize(w_t, alpha_t, beta_t, bits, scale)
        loss = tf.reduce_sum(out * dy)
    dw, dalpha, dbeta = tape.gradient(loss, [w_t, alpha_t, beta_t])

    np.testing.assert_allclose(out.numpy(), quantize(w, alpha, beta, bits), atol=1e-6)
    ref_dw, ref_dalpha, ref_dbeta = quantize_gradients(w, alpha, beta, bits, dy, scale)
    np.testing.assert_array_equal(dw.numpy(), ref_dw)
    np.testing.assert_allclose(dalpha.numpy(), ref_dalpha, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dbeta.numpy(), ref_dbeta, rtol=1e-5, atol=1e-6)
    if bits:
        # the test data really covers both sides of the clipping range
        assert (ref_dw == 0).sum() >= 60 and (ref_dw != 0).sum() >= 60


def test_lsq_quantize_per_row_bits_and_step_sizes():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 5)).astype(np.float32)
    bits = np.array([[0], [1], [3], [8]], np.int32)
    alphas = np.array([[1.0], [0.5], [0.2], [0.01]], np.float32)
    beta = np.full(5, 0.05, np.float32)
    scales = np.array([[0.0], [0.1], [0.2], [0.3]], np.float32)
    dy = rng.normal(size=w.shape).astype(np.float32)
    alpha_t = tf.constant(alphas)
    beta_t = tf.constant(beta)
    with tf.GradientTape() as tape:
        tape.watch([alpha_t, beta_t])
        out = quantizers.lsq_quantize(w, alpha_t, beta_t, bits, scales)
        loss = tf.reduce_sum(out * dy)
    dalpha, dbeta = tape.gradient(loss, [alpha_t, beta_t])
    ref_dbeta = np.zeros(5, np.float32)
    for row in range(4):
        b, a = int(bits[row, 0]), alphas[row, 0]
        np.testing.assert_allclose(
            out[row].numpy(), quantize(w[row : row + 1], a, beta, b)[0], atol=1e-6
        )
        _, ref_da, ref_db = quantize_gradients(
            w[row : row + 1], a, beta, b, dy[row : row + 1], scales[row, 0]
        )
        np.testing.assert_allclose(dalpha[row, 0].numpy(), ref_da, rtol=1e-5, atol=1e-6)
        ref_dbeta += ref_db
    np.testing.assert_allclose(dbeta.numpy(), ref_dbeta, rtol=1e-5, atol=1e-6)


def test_zero_bits_give_zeros_not_the_offset():
    out = quantizers.lsq_quantize(tf.ones([2, 3]), 0.5, tf.fill([3], 0.7), 0, 1.0)
    np.testing.assert_array_equal(out.numpy(), np.zeros((2, 3)))


def test_quantize_codes_are_the_rounded_clipped_values():
    codes = quantizers.quantize_codes(tf.constant([[-10.0, -0.26, 0.24, 0.76, 10.0]]), 0.5, 0.0, 3)
    np.testing.assert_array_equal(codes.numpy(), [[-4.0, -1.0, 0.0, 2.0, 3.0]])


def test_lsq_grad_scale_formula():
    assert quantizers.lsq_grad_scale(4, 1000) == pytest.approx(1 / np.sqrt(8 * 1000))
    assert quantizers.lsq_grad_scale(0, 1000) == 0.0


def test_mixture_matches_the_sum_of_single_quantizers():
    """Values and all four gradients of the fused mixture equal autodiff through
    `sum_k p_k * lsq_quantize_k`, whose pieces are checked against the formulas above."""
    rng = np.random.default_rng(3)
    bit_widths = (0, 1, 2, 4, 8)
    w = rng.normal(scale=0.5, size=(30, 7)).astype(np.float32)
    logits = rng.normal(size=(30, len(bit_widths))).astype(np.float32)
    alphas = np.array([1.0, 0.4, 0.3, 0.1, 0.01], np.float32)
    beta = rng.normal(scale=0.05, size=7).astype(np.float32)
    scales = [0.0, 0.5, 0.25, 0.125, 0.0625]
    dy = rng.normal(size=w.shape).astype(np.float32)

    def run(fn):
        variables = [
            tf.constant(w),
            tf.nn.softmax(logits),
            tf.constant(alphas),
            tf.constant(beta),
        ]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            out = fn(*variables)
            loss = tf.reduce_sum(out * dy)
        return out.numpy(), [g.numpy() for g in tape.gradient(loss, variables)]

    def composed(values, probabilities, step_sizes, offset):
        return tf.add_n(
            [
                probabilities[:, k : k + 1]
                * quantizers.lsq_quantize(values, step_sizes[k], offset, bits, scales[k])
                for k, bits in enumerate(bit_widths)
            ]
        )

    fused_out, fused_grads = run(lambda *a: quantizers.mixture_quantize(*a, bit_widths, scales))
    composed_out, composed_grads = run(composed)
    probabilities = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(
        fused_out, mixture(w, probabilities, alphas, beta, bit_widths), atol=1e-6
    )
    np.testing.assert_allclose(fused_out, composed_out, atol=1e-6)
    for fused, composed_grad in zip(fused_grads, composed_grads):
        np.testing.assert_allclose(fused, composed_grad, rtol=1e-5, atol=1e-5)


def test_quantizers_compile_under_xla():
    @tf.function(jit_compile=True)
    def step(w, p, alphas, beta):
        with tf.GradientTape() as tape:
            tape.watch([w, alphas])
            out = quantizers.mixture_quantize(w, p, alphas, beta, (0, 2, 4), (0.0, 0.5, 0.25))
            out += quantizers.lsq_quantize(w, alphas[1], beta, 2, 0.5)
            loss = tf.reduce_sum(out)
        return out, tape.gradient(loss, [w, alphas])

    w = tf.random.normal([8, 3])
    out, grads = step(w, tf.fill([8, 3], 1 / 3), tf.constant([1.0, 0.5, 0.1]), tf.zeros([3]))
    assert out.shape == (8, 3) and grads[0].shape == (8, 3) and grads[1].shape == (3,)
    assert np.isfinite(grads[1].numpy()).all() and grads[1].numpy()[0] == 0.0


@pytest.mark.parametrize("jit_compile", [None, False, True])  # eager, graph, XLA
def test_small_table_gather_sums_the_gradient_of_each_entry(jit_compile):
    table = tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    indices = tf.constant([[2, 0], [2, 2]])
    dy = tf.constant([[[1.0, 10.0], [2.0, 20.0]], [[3.0, 30.0], [4.0, 40.0]]])

    def run(table):
        with tf.GradientTape() as tape:
            tape.watch(table)
            out = quantizers.small_table_gather(table, indices)
            loss = tf.reduce_sum(out * dy)
        return out, tape.gradient(loss, table)

    if jit_compile is not None:
        run = tf.function(run, jit_compile=jit_compile)
    out, gradient = run(table)
    np.testing.assert_array_equal(out, tf.gather(table, indices))
    # entry 0 once (dy [2, 20]), entry 1 never, entry 2 three times
    np.testing.assert_array_equal(gradient, [[2.0, 20.0], [0.0, 0.0], [8.0, 80.0]])
