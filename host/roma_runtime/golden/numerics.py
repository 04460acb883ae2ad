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
    """A quantized matrix laid out for fast exact group dot products in numpy.

    Codes are held as fp32 in [groups, G, rows] order: every partial sum of a group dot product is an
    integer below 2**24 (255 * 127 * 128 < 2**24), so BLAS in fp32 computes the int32 result exactly.
    """

    def __init__(self, m: QuantizedMatrix):
        rows, cols = m.shape
        self.rows, self.cols, self.group, self.bits = rows, cols, m.group, m.bits
        ng = cols // m.group
        self.codes_t = np.ascontiguousarray(
            m.codes.reshape(rows, ng, m.group).transpose(1, 2, 0), dtype=np.float32)
        self.scales = m.scales.astype(np.float32)  # [rows, ng]
        self.minimums = m.minimums.astype(np.float32)


def group_dot(prepared: PreparedMatrix, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xq int8 [T, K] -> (dot int32 [T, rows, groups], xsum int32 [T, groups]): the exact integer part."""
    t = xq.shape[0]
    ng, g = prepared.codes_t.shape[:2]
    xg = xq.reshape(t, ng, g).astype(np.float32).transpose(1, 0, 2)  # [ng, T, G]
    dot = np.matmul(xg, prepared.codes_t)  # [ng, T, rows], exact integers in fp32
    xsum = xq.reshape(t, ng, g).astype(np.int32).sum(axis=-1)
    return dot.transpose(1, 2, 0).astype(np.int32), xsum


def quantized_matmul(prepared: PreparedMatrix, x: np.ndarray) -> np.ndarray:
    """x fp32 [T, K] -> y fp32 [T, rows] through the contract's int8 x code path."""
    xq, a_scale = quantize_activations(x, prepared.group)
    dot, xsum = group_dot(prepared, xq)
    per_group = prepared.scales * dot.astype(np.float32) + prepared.minimums * xsum[:, None, :].astype(np.float32)
    return (per_group * a_scale[:, None, :]).sum(axis=-1, dtype=np.float32)
