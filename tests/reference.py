"""Numpy references of the LSQ+ quantizer, its gradients and the MPE mixture."""

import re

import numpy as np


def quantize(w, alpha, beta, bits):
    """`clip(round((w - beta) / alpha)) * alpha + beta`, zeros for 0 bits (float32)."""
    w = np.asarray(w, np.float32)
    if bits == 0:
        return np.zeros_like(w)
    low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    v = (w - np.float32(beta)) / np.float32(alpha)
    return np.clip(np.round(v), low, high).astype(np.float32) * np.float32(alpha) + beta


def quantize_gradients(w, alpha, beta, bits, dy, grad_scale):
    """The LSQ+ straight-through gradients `(dL/dw, dL/dalpha, dL/dbeta)`."""
    if bits == 0:
        return np.zeros_like(w), 0.0, np.zeros(w.shape[-1], np.float32)
    low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    v = (np.asarray(w, np.float32) - np.float32(beta)) / np.float32(alpha)
    below, above = v < low, v > high
    outside = below | above
    dw = dy * ~outside
    dalpha = grad_scale * np.sum(dy * np.where(below, low, np.where(above, high, np.round(v) - v)))
    dbeta = grad_scale * np.sum(dy * outside, axis=0)
    return dw, dalpha, dbeta


def softmax(logits, temperature):
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mixture(w, probabilities, alphas, beta, bit_widths):
    """`sum_k p_k * quantize_k(w)` row by row; `probabilities` is `[N, K]`."""
    out = np.zeros_like(w, dtype=np.float32)
    for k, bits in enumerate(bit_widths):
        out += probabilities[:, k : k + 1] * quantize(w, alphas[k], beta, bits)
    return out


def hlo_types(hlo: str) -> set[str]:
    """The element types of an HLO module's shapes (`s64` in `s64[8,3]`), not the
    text of its metadata, whose source paths may hold any letters."""
    return set(re.findall(r"\b([a-z]+\d*)\[", hlo))
