"""Weight quantizers into the numerics contract's form: per row, groups of G inputs, b-bit unsigned codes, an
fp16 scale d and an fp16 minimum m per group, w ~ d*q + m.

- `quantize_rtn`: round to nearest with the group's own min/max.
- `quantize_gptq`: GPTQ (Frantar et al. 2022): columns quantized one by one in their natural order, the error
  of each fed back into the not yet quantized columns through the Cholesky factor of the damped inverse
  Hessian H = X^T X of the layer's inputs; lazy batch updates in blocks of 128 columns; a group's scale and
  minimum are chosen from the (already updated) weights when its first column is reached.
- `quantize_tensor`: the compiler's entry point; a source already in the requested form (GGUF Q4_1 at 4/32,
  Q8_0 at 8/32) passes through bit for bit.

In both quantizers the codes are computed with the fp16-rounded scale and minimum, the values the hardware
uses, so the rounding of d and m is part of the error being minimised.
"""

from __future__ import annotations

import numpy as np

from ..errors import RomaError
from ..model.weights import SUPPORTED_BITS, SUPPORTED_GROUPS, QuantizedMatrix, Tensor, as_float

METHODS = ("rtn", "gptq")
FP16_MAX = 65504.0


def validate(bits: int, group: int, cols: int | None = None, name: str = "tensor") -> None:
    if bits not in SUPPORTED_BITS:
        raise RomaError(f"{name}: {bits}-bit weights are not supported",
                        hint=f"choose bits from {', '.join(map(str, SUPPORTED_BITS))}")
    if group not in SUPPORTED_GROUPS:
        raise RomaError(f"{name}: group size {group} is not supported",
                        hint=f"choose a group from {', '.join(map(str, SUPPORTED_GROUPS))}")
    if cols is not None and cols % group:
        raise RomaError(f"{name}: its {cols} input columns are not a multiple of the group size {group}",
                        hint="choose a group size that divides the tensor's input dimension")


def _check_weights(w: np.ndarray, name: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise RomaError(f"{name}: expected a matrix, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise RomaError(f"{name}: holds NaN or infinite weights")
    if np.abs(w).max(initial=0.0) > FP16_MAX / 2:
        raise RomaError(f"{name}: weights exceed the fp16 range of the group scales and minimums")
    return w


def group_params(wmin: np.ndarray, wmax: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """fp16 scale and minimum for groups with the given min and max (arrays of any shape).

    The minimum is rounded to fp16 first; the scale is then chosen so that the rounded minimum plus
    (2^b - 1) steps reaches the group's maximum, and rounded to fp16 itself.
    """
    qmax = (1 << bits) - 1
    m16 = wmin.astype(np.float16)
    d = (wmax.astype(np.float32) - m16.astype(np.float32)) / np.float32(qmax)
    d16 = np.maximum(d, 0).astype(np.float16)
    return d16, m16


def codes_for(w: np.ndarray, d16: np.ndarray, m16: np.ndarray, bits: int) -> np.ndarray:
    """Nearest codes for weights w given fp16 d and m broadcastable to w (d == 0 gives code 0)."""
    qmax = (1 << bits) - 1
    d = d16.astype(np.float32)
    m = m16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.rint((w - m) / np.where(d > 0, d, 1)), 0)
    return np.clip(q, 0, qmax).astype(np.uint8)


def quantize_rtn(w: np.ndarray, bits: int, group: int, name: str = "tensor") -> QuantizedMatrix:
    """Round to nearest, asymmetric, per group of `group` inputs of each row."""
    w = _check_weights(w, name)
    rows, cols = w.shape
    validate(bits, group, cols, name)
    g = w.reshape(rows, cols // group, group)
    d16, m16 = group_params(g.min(axis=-1), g.max(axis=-1), bits)
    codes = codes_for(g, d16[..., None], m16[..., None], bits)
    return QuantizedMatrix(codes.reshape(rows, cols), d16, m16, bits, group)


def quantize_gptq(w: np.ndarray, hessian: np.ndarray, bits: int, group: int, name: str = "tensor",
                  damp: float = 0.01, block: int = 128) -> QuantizedMatrix:
    """GPTQ with error feedback. `hessian` is X^T X [cols, cols] of the inputs the layer sees."""
    w = _check_weights(w, name)
    rows, cols = w.shape
    validate(bits, group, cols, name)
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (cols, cols):
        raise RomaError(f"{name}: Hessian shape {h.shape} does not match {cols} input columns")
    W = w.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    W[:, dead] = 0.0
    h[np.diag_indices(cols)] += damp * np.mean(np.diag(h))
    hinv = _inverse_cholesky_upper(h, name)

    block = max(group, (block // group) * group)
    codes = np.zeros((rows, cols), np.uint8)
    ng = cols // group
    scales = np.zeros((rows, ng), np.float16)
    mins = np.zeros((rows, ng), np.float16)
    d32 = m32 = None
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        H1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                gw = W1[:, i:i + group]
                d16, m16 = group_params(gw.min(axis=1), gw.max(axis=1), bits)
                scales[:, col // group], mins[:, col // group] = d16, m16
                d32, m32 = d16.astype(np.float64), m16.astype(np.float64)
            wc = W1[:, i]
            q = codes_for(wc, d16, m16, bits)
            codes[:, col] = q
            err = (wc - (d32 * q + m32)) / H1[i, i]
            W1[:, i + 1:] -= np.outer(err, H1[i, i + 1:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ hinv[i1:i2, i2:]
    return QuantizedMatrix(codes, scales, mins, bits, group)


def _inverse_cholesky_upper(h: np.ndarray, name: str) -> np.ndarray:
    """Upper Cholesky factor of H^-1 (as GPTQ uses it), adding damping until H is positive definite."""
    extra = 0.0
    scale = float(np.mean(np.diag(h)))
    for _ in range(8):
        try:
            hh = h if extra == 0 else h + extra * scale * np.eye(len(h))
            L = np.linalg.cholesky(hh)
            linv = np.linalg.inv(L)
            hinv = linv.T @ linv
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            extra = 0.01 if extra == 0 else extra * 10
    raise RomaError(f"{name}: the calibration Hessian is not positive definite even with damping")


def quantize_tensor(t: Tensor, bits: int, group: int, method: str = "rtn", hessian: np.ndarray | None = None,
                    name: str = "tensor") -> tuple[QuantizedMatrix, str]:
    """Quantize one tensor for the ROM; returns (matrix, how) with how in passthrough/rtn/gptq.

    A source already quantized with exactly these bits and group is passed through bit for bit.
    """
    if method not in METHODS:
        raise RomaError(f"unknown quantization method '{method}'", hint=f"choose one of {', '.join(METHODS)}")
    cols = t.shape[1]
    validate(bits, group, cols, name)
    if isinstance(t, QuantizedMatrix) and t.bits == bits and t.group == group:
        return t, "passthrough"
    w = as_float(t)
    if method == "gptq" and bits < 8:
        if hessian is None:
            raise RomaError(f"{name}: GPTQ needs calibration statistics (a Hessian) for this tensor")
        return quantize_gptq(w, hessian, bits, group, name), "gptq"
    return quantize_rtn(w, bits, group, name), "rtn"


def output_error(w: np.ndarray, q: QuantizedMatrix, hessian: np.ndarray | None = None) -> float:
    """The layer-output squared error tr(dW H dW^T) (or the plain weight error without a Hessian)."""
    dw = (q.dequantize() - np.asarray(w, np.float32)).astype(np.float64)
    if hessian is None:
        return float(np.sum(dw * dw))
    return float(np.sum((dw @ hessian) * dw))
