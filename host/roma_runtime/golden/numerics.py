"""The numerics contract of a ROM matmul, written once; the HLS kernels implement the same arithmetic.

Activations entering a ROM matmul are quantized per group of G inputs (G = the weight group size) to
symmetric int8 with an fp32 scale:
    scale = max|x_g| / 127,  inv = 1 / scale (0 when scale == 0),  x_q = clip(rint(x * inv), -127, 127)
all in fp32 with round-half-to-even, so C++ (std::nearbyint, no FMA contraction) gets the same integers.
For weight codes q (unsigned, b bits), group scale d and minimum m (fp16), the exact integer quantities are
    dot[o, g]  = sum_j q[o, g, j] * x_q[g, j]      (int32)
    xsum[g]    = sum_j x_q[g, j]                   (int32, the zero-point term)
and the output is y[o] = sum_g  a_scale[g] * (d[o, g] * dot[o, g] + m[o, g] * xsum[g])  in fp32.
"""

from __future__ import annotations

import numpy as np

from ..model.weights import QuantizedMatrix

ACT_QMAX = 127


def quantize_activations(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """x [..., K] fp32 -> (int8 codes [..., K], fp32 scales [..., K // group])."""
    x = np.asarray(x, dtype=np.float32)
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    amax = np.abs(grouped).max(axis=-1)
    scale = (amax / np.float32(ACT_QMAX)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(scale > 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
    q = np.clip(np.rint(grouped * inv[..., None]), -ACT_QMAX, ACT_QMAX).astype(np.int8)
    return q.reshape(x.shape), scale


class PreparedMatrix:
    """A quantized matrix laid out for the golden model's fast forward pass.

    sum_g a_scale[g] * d[o,g] * dot[o,g] regroups exactly (in real arithmetic) into
    sum_j (d[o,g(j)] * q[o,j]) * (a_scale[g(j)] * x_q[j]), one BLAS GEMV over d*q, which is exact in fp32
    (an 11-bit fp16 significand times an 8-bit code). Only fp32 rounding order differs from the per-group
    form, which the tests bound. The exact integers themselves come from `group_dot`.
    """

    def __init__(self, m: QuantizedMatrix):
        rows, cols = m.shape
        self.matrix = m
        self.rows, self.cols, self.group, self.bits = rows, cols, m.group, m.bits
        grouped = m.codes.reshape(rows, cols // m.group, m.group).astype(np.float32)
        scaled = grouped * m.scales.astype(np.float32)[..., None]
        self.scaled_codes_t = np.ascontiguousarray(scaled.reshape(rows, cols).T)  # [cols, rows]
        self.minimums_t = np.ascontiguousarray(m.minimums.astype(np.float32).T)  # [groups, rows]


def group_dot(m: QuantizedMatrix | PreparedMatrix, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xq int8 [T, K] -> (dot int32 [T, rows, groups], xsum int32 [T, groups]): the exact integer part."""
    if isinstance(m, PreparedMatrix):
        m = m.matrix
    rows, cols = m.shape
    t, ng = xq.shape[0], cols // m.group
    xg = xq.reshape(t, ng, m.group).astype(np.int32)
    dot = np.einsum("ogj,tgj->tog", m.codes.reshape(rows, ng, m.group).astype(np.int32), xg)
    return dot.astype(np.int32), xg.sum(axis=-1, dtype=np.int32)


def quantized_matmul(prepared: PreparedMatrix, x: np.ndarray) -> np.ndarray:
    """x fp32 [T, K] -> y fp32 [T, rows] through the contract's int8 x code path."""
    t = x.shape[0]
    xq, a_scale = quantize_activations(x, prepared.group)
    xg = xq.reshape(t, -1, prepared.group).astype(np.float32)
    x_dequant = (xg * a_scale[..., None]).reshape(t, prepared.cols)
    zero_point_term = (a_scale * xg.sum(axis=-1)) @ prepared.minimums_t
    return x_dequant @ prepared.scaled_codes_t + zero_point_term
