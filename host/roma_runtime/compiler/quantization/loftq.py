"""A LoRA that compensates the quantization error of the ROM base (LoftQ, Li et al. 2023).

Alternating: Q = quant(W - B A); then B, A = the rank-r truncated SVD of W - dequant(Q). After the last
step the LoRA holds the best rank-r approximation of what the quantized base misses, so the base plus the
LoRA starts closer to W than the base alone; the LoRA is then a starting point for QLoRA training too.
The factors are split symmetrically (B = U sqrt(S), A = sqrt(S) V^T) with scale 1.

With calibration (the linear's input Hessian H = X^T X, as GPTQ uses), the low-rank step is activation
weighted: it minimises the output error ||(R - B A) X^T|| rather than ||R - B A||. With H = L L^T (Cholesky,
damped), that is the rank-r SVD of R L = U S V^T, mapped back: B = U sqrt(S), A = sqrt(S) V^T L^-1. Directions
the inputs never take cost nothing, so the rank goes where the activations are.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import RomaError
from ...model.weights import QuantizedMatrix

Quantizer = Callable[[np.ndarray], QuantizedMatrix]


DAMP = 0.01  # of the mean diagonal, added to H before the Cholesky factorisation (as GPTQ damps)


def damped(hessian: np.ndarray) -> np.ndarray:
    """H + DAMP * mean(diag H) * I, in float64 (a floor keeps an all-zero H invertible)."""
    h = np.asarray(hessian, np.float64)
    return h + DAMP * max(float(np.mean(np.diag(h))), 1e-12) * np.eye(len(h))


def input_factor(hessian: np.ndarray) -> np.ndarray:
    """L with L L^T = H + damping (float64)."""
    return np.linalg.cholesky(damped(hessian))


def low_rank(residual: np.ndarray, rank: int, input_chol: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(A [r, in], B [out, r]) with B @ A the best rank-r approximation of residual [out, in]; with input_chol
    (input_factor of the input Hessian) the best in the output error over the calibration inputs."""
    if input_chol is None:
        u, s, vt = np.linalg.svd(residual.astype(np.float32), full_matrices=False)
    else:
        u, s, vt = np.linalg.svd(residual.astype(np.float64) @ input_chol, full_matrices=False)
        vt = np.linalg.solve(input_chol.T, vt.T).T  # V^T L^-1, as (L^-T V)^T
    r = min(rank, len(s))
    root = np.sqrt(s[:r])
    b = (u[:, :r] * root[None, :]).astype(np.float32)
    a = (root[:, None] * vt[:r]).astype(np.float32)
    if r < rank:  # a matrix smaller than the rank: pad with zeros so every factor has the same rank
        a = np.concatenate([a, np.zeros((rank - r, a.shape[1]), np.float32)])
        b = np.concatenate([b, np.zeros((b.shape[0], rank - r), np.float32)], axis=1)
    return a.astype(np.float32), b.astype(np.float32)


def loftq(w: np.ndarray, quantizer: Quantizer, rank: int, iters: int = 2, store_dtype=np.float16,
          hessian: np.ndarray | None = None) -> tuple[QuantizedMatrix, np.ndarray, np.ndarray]:
    """Returns (quantized base, A [r, in], B [out, r]); factors rounded to store_dtype as they are stored.
    hessian: the input Hessian X^T X of calibration activations, for the activation-weighted low-rank step."""
    if rank <= 0:
        raise RomaError(f"LoRA rank must be positive, not {rank}")
    if iters < 1:
        raise RomaError(f"LoftQ needs at least one iteration, not {iters}")
    w = np.asarray(w, np.float32)
    a = np.zeros((rank, w.shape[1]), np.float32)
    b = np.zeros((w.shape[0], rank), np.float32)
    q = None
    chol = None if hessian is None else input_factor(hessian)
    for _ in range(iters):
        q = quantizer(w - b @ a)
        a, b = low_rank(w - q.dequantize(), rank, chol)
        a = a.astype(store_dtype).astype(np.float32)
        b = b.astype(store_dtype).astype(np.float32)
    return q, a, b
