"""The numerics contract of a ROM matmul, written once; the HLS kernels implement the same arithmetic.

Activations entering a ROM matmul are quantized per group of G inputs (G = the weight group size) to
symmetric int8 with an fp32 scale:
    scale = max|x_g| / 127,  inv = 1 / scale (0 when scale == 0),  x_q = clip(rint(x * inv), -127, 127)
all in fp32 with round-half-to-even, so C++ (std::nearbyint, no FMA contraction) gets the same integers.
For weight codes q (unsigned, b bits), group scale d and minimum m (fp16), the exact integer quantities are
    dot[o, g]  = sum_j q[o, g, j] * x_q[g, j]      (int32)
    xsum[g]    = sum_j x_q[g, j]                   (int32, the zero-point term)
and the output is y[o] = sum_g  a_scale[g] * (d[o, g] * dot[o, g] + m[o, g] * xsum[g])  in fp32, summed over
the groups in order (g = 0, 1, ...), each product and sum rounded to fp32: the order of brom_tile_gemv. So the
golden model and the core agree bit for bit on a ROM matmul, on every machine.
"""

from __future__ import annotations

import numpy as np

from ..model.weights import QuantizedMatrix

ACT_QMAX = 127
MAX_GROUP = 128  # (2^8 - 1) * 127 * 128 < 2^24: a group dot of uint8 codes is exact in fp32
ROW_BLOCK_VALUES = 1 << 18  # group dots held at once by quantized_matmul (1 MB of fp32: stays in cache)


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
    """A quantized matrix laid out for the golden model's forward pass: codes group-major as fp32.

    Why fp32 BLAS gives exact integers here, on any machine: every group dot product and every partial sum of
    it is an integer of magnitude at most (2^8 - 1) * 127 * 128 < 2^24, so each fp32 product and sum is exact
    whatever order, blocking or FMA use a BLAS kernel picks. The fp32 scaling that follows is written out in
    the core's own order (`quantized_matmul`), so the result does not depend on the BLAS library either.
    """

    def __init__(self, m: QuantizedMatrix):
        rows, cols = m.shape
        if m.group > MAX_GROUP:
            raise ValueError(f"exact fp32 group dots need groups of at most {MAX_GROUP} (got {m.group})")
        self.matrix = m
        self.rows, self.cols, self.group, self.bits = rows, cols, m.group, m.bits
        ng = cols // m.group
        grouped = m.codes.reshape(rows, ng, m.group)
        self.codes_t = np.ascontiguousarray(grouped.transpose(1, 2, 0), dtype=np.float32)  # [groups, G, rows]
        self.scales_t = np.ascontiguousarray(m.scales.astype(np.float32).T)  # [groups, rows]
        self.minimums_t = np.ascontiguousarray(m.minimums.astype(np.float32).T)


def _grouped(prepared: PreparedMatrix, xq: np.ndarray) -> np.ndarray:
    """int8 activations [T, K] as fp32 [groups, T, G] (small integers: exact)."""
    return xq.reshape(xq.shape[0], -1, prepared.group).astype(np.float32).transpose(1, 0, 2)


def _group_dots(prepared: PreparedMatrix, xg: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """xg [groups, T, G] (_grouped) -> (dot fp32 [groups, T, rows], xsum fp32 [groups, T]), both exact integers."""
    return np.matmul(xg, prepared.codes_t[:, :, rows]), xg.sum(axis=-1)


def group_dot(m: QuantizedMatrix | PreparedMatrix, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xq int8 [T, K] -> (dot int32 [T, rows, groups], xsum int32 [T, groups]): the exact integer part."""
    prepared = m if isinstance(m, PreparedMatrix) else PreparedMatrix(m)
    dot, xsum = _group_dots(prepared, _grouped(prepared, xq), slice(None))
    return dot.transpose(1, 2, 0).astype(np.int32), xsum.T.astype(np.int32)


def quantized_matmul(prepared: PreparedMatrix, x: np.ndarray) -> np.ndarray:
    """x fp32 [T, K] -> y fp32 [T, rows]: y[r] = sum over groups g, in order, of
    a_scale[g] * (d[r, g] * dot[r, g] + m[r, g] * xsum[g]), each step in fp32, as brom_tile_gemv computes it."""
    xq, a_scale = quantize_activations(x, prepared.group)
    xg = _grouped(prepared, xq)
    t = x.shape[0]
    y = np.empty((t, prepared.rows), np.float32)
    block = max(1, ROW_BLOCK_VALUES // (t * prepared.cols // prepared.group))  # bounds the dot buffer
    for r0 in range(0, prepared.rows, block):
        rows = slice(r0, r0 + block)
        terms, xsum = _group_dots(prepared, xg, rows)  # [groups, T, rows]: the dots, then the fp32 terms
        terms *= prepared.scales_t[:, None, rows]
        terms += prepared.minimums_t[:, None, rows] * xsum[..., None]
        terms *= a_scale.T[..., None]
        acc = terms[0]
        for term in terms[1:]:  # in group order, as the core accumulates
            acc += term
        y[:, rows] = acc
    return y
