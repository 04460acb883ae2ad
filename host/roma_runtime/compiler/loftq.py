"""A LoRA that compensates the quantization error of the ROM base (LoftQ, Li et al. 2023).

Alternating: Q = quant(W - B A); then B, A = the rank-r truncated SVD of W - dequant(Q). After the last
step the LoRA holds the best rank-r approximation of what the quantized base misses, so the base plus the
LoRA starts closer to W than the base alone; the LoRA is then a starting point for QLoRA training too.
The factors are split symmetrically (B = U sqrt(S), A = sqrt(S) V^T) with scale 1.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import RomaError
from ..model.weights import QuantizedMatrix

Quantizer = Callable[[np.ndarray], QuantizedMatrix]


def low_rank(residual: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(A [r, in], B [out, r]) with B @ A the best rank-r approximation of residual [out, in]."""
    u, s, vt = np.linalg.svd(residual.astype(np.float32), full_matrices=False)
    r = min(rank, len(s))
    root = np.sqrt(s[:r]).astype(np.float32)
    b = u[:, :r] * root[None, :]
    a = root[:, None] * vt[:r]
    if r < rank:  # a matrix smaller than the rank: pad with zeros so every factor has the same rank
        a = np.concatenate([a, np.zeros((rank - r, a.shape[1]), np.float32)])
        b = np.concatenate([b, np.zeros((b.shape[0], rank - r), np.float32)], axis=1)
    return a.astype(np.float32), b.astype(np.float32)


def loftq(w: np.ndarray, quantizer: Quantizer, rank: int, iters: int = 2,
          store_dtype=np.float16) -> tuple[QuantizedMatrix, np.ndarray, np.ndarray]:
    """Returns (quantized base, A [r, in], B [out, r]); factors rounded to store_dtype as they are stored."""
    if rank <= 0:
        raise RomaError(f"LoRA rank must be positive, not {rank}")
    if iters < 1:
        raise RomaError(f"LoftQ needs at least one iteration, not {iters}")
    w = np.asarray(w, np.float32)
    a = np.zeros((rank, w.shape[1]), np.float32)
    b = np.zeros((w.shape[0], rank), np.float32)
    q = None
    for _ in range(iters):
        q = quantizer(w - b @ a)
        a, b = low_rank(w - q.dequantize(), rank)
        a = a.astype(store_dtype).astype(np.float32)
        b = b.astype(store_dtype).astype(np.float32)
    return q, a, b
