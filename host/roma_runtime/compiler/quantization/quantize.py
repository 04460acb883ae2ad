"""Weight quantizers into the numerics contract's form: per row, groups of G inputs, b-bit unsigned codes, an
fp16 scale d and an fp16 minimum m per group, w ~ d*q + m.

Scale formats (how the ROM stores d and m; the values are fp16 in both):
- `fp16`: d and m as they are, 32 bits per group.
- `q8`: d = sd * 2^ed and m = sm * 2^em with an unsigned 8-bit sd and a signed 8-bit sm per group and the two
  exponents shared by the row (K-quant style): 16 bits per group and 16 per row. Every such value is an exact
  fp16 (8 significant bits, ed and em in [Q8_EXP_MIN, Q8_EXP_MAX]), so only the storage differs; the
  quantizers fit d and m on that grid.

- `fit_groups`: each group's scale and minimum by search (a grid of ranges shrunk about the group's centre,
  then weighted least-squares refits), minimising the squared error weighted per input by the Hessian
  diagonal (the input's activation energy, so outlier channels are fitted first) when calibrated, uniform
  otherwise. On SmolLM2 this alone lifts 3-bit G64 from 32% to 67% top-1 agreement (calibrated RTN).
- `quantize_rtn`: round to nearest with those scales and minimums.
- `quantize_gptq`: GPTQ (Frantar et al. 2022) with act-order and static groups: the groups' scales and
  minimums are fitted first on the original weights (as above), then columns are quantized in order of
  decreasing H_jj, the error of each fed back into the not yet quantized columns through the Cholesky factor
  of the damped inverse Hessian H = X^T X of the layer's inputs; lazy batch updates in blocks of 128 columns.
- `quantize_tensor`: the compiler's entry point; a source already in the requested form (GGUF Q4_1 at 4/32,
  Q8_0 at 8/32) passes through bit for bit.

In both quantizers the codes are computed with the fp16-rounded scale and minimum, the values the hardware
uses, so the rounding of d and m is part of the error being minimised.
"""

from __future__ import annotations

import numpy as np

from ...artifact.brom_image import q8_exponents
from ...errors import RomaError
from ...model.weights import SCALE_BITS, SUPPORTED_BITS, SUPPORTED_GROUPS, QuantizedMatrix, Tensor, as_float

METHODS = ("rtn", "gptq", "gptaq")  # gptaq: GPTQ calibrated sequentially and asymmetrically (build.py)
# Calibration tokens by method. GPTAQ estimates an input-by-input drift map from the text and overfits on little
# of it (SmolLM2, 3-bit G64: 71.1% top-1 with 4,096 tokens, 78.2% with 32,768; GPTQ 74.2% and 76.6%).
CALIB_TOKENS = {"rtn": 4096, "gptq": 4096, "gptaq": 32768}
SCALE_FORMATS = tuple(SCALE_BITS)  # fp16, q8
FP16_MAX = 65504.0


def validate(bits: int, group: int, cols: int | None = None, name: str = "tensor", scales: str = "fp16") -> None:
    if scales not in SCALE_FORMATS:
        raise RomaError(f"{name}: unknown scale format '{scales}'", hint=f"choose one of {', '.join(SCALE_FORMATS)}")
    if bits not in SUPPORTED_BITS:
        raise RomaError(f"{name}: {bits}-bit weights are not supported",
                        hint=f"choose bits from {', '.join(map(str, SUPPORTED_BITS))}")
    if group not in SUPPORTED_GROUPS:
        raise RomaError(f"{name}: group size {group} is not supported",
                        hint=f"choose a group from {', '.join(map(str, SUPPORTED_GROUPS))}")
    if cols is not None and cols % group:
        raise RomaError(f"{name}: its {cols} input columns are not a multiple of the group size {group}",
                        hint="choose a group size that divides the tensor's input dimension")


def effective_group(cols: int, group: int) -> int:
    """The group a tensor with `cols` inputs gets when `group` is requested: the largest supported group up to
    `group` that divides the row (576-wide rows at --group 128 get 64; 1536-wide rows keep 128).

    Padding a row to a multiple of the group instead would store zero codes and a half-empty last group:
    576 -> 640 inputs at 4-bit G128 costs 4.72 bits per real weight, more than G64's 4.5, for a coarser fit.
    """
    validate(8, group, name="--group")
    for g in sorted(SUPPORTED_GROUPS, reverse=True):
        if g <= group and cols % g == 0:
            return g
    raise RomaError(f"{cols} input columns are not a multiple of any supported group size",
                    hint=f"group sizes are {', '.join(map(str, SUPPORTED_GROUPS))}")


def _check_weights(w: np.ndarray, name: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise RomaError(f"{name}: expected a matrix, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise RomaError(f"{name}: holds NaN or infinite weights")
    if np.abs(w).max(initial=0.0) > FP16_MAX / 2:
        raise RomaError(f"{name}: weights exceed the fp16 range of the group scales and minimums")
    return w


def on_q8_grid(x: np.ndarray, exp: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """x rounded to the nearest multiple of 2^exp with lo..hi steps, as (exact) fp16; zero is +0 (what the
    packer's integer steps give back)."""
    step = np.ldexp(1.0, exp)
    return (np.clip(np.rint(np.asarray(x, np.float64) / step), lo, hi) * step + 0.0).astype(np.float16)


def group_params(wmin: np.ndarray, wmax: np.ndarray, bits: int, exps=None) -> tuple[np.ndarray, np.ndarray]:
    """fp16 scale and minimum for groups with the given min and max (arrays of any shape).

    The minimum is rounded first; the scale is then chosen so that the rounded minimum plus (2^b - 1) steps
    reaches the group's maximum, and rounded itself: to fp16, or with exps = (ed, em) (broadcastable) to the
    q8 grids.
    """
    qmax = (1 << bits) - 1
    m16 = wmin.astype(np.float16) if exps is None else on_q8_grid(wmin, exps[1], -128, 127)
    d = np.maximum((wmax.astype(np.float32) - m16.astype(np.float32)) / np.float32(qmax), 0)
    d16 = d.astype(np.float16) if exps is None else on_q8_grid(d, exps[0], 0, 255)
    return d16, m16


SHRINK = tuple(np.round(np.linspace(1.0, 0.6, 17), 3))  # candidate fractions of a group's half range
REFIT = 2  # least-squares refits of (scale, minimum) after the grid


def fit_groups(g: np.ndarray, bits: int, importance: np.ndarray | None = None,
               scales: str = "fp16") -> tuple[np.ndarray, np.ndarray]:
    """fp16 (scale, minimum) per group of g [rows, groups, group] minimising the importance-weighted squared
    error of the dequantized group: a grid of ranges shrunk about the group's centre, then REFIT rounds of
    weighted least squares for (d, m) with the codes fixed (each kept only where it lowers the error).
    importance broadcasts to g: the Hessian diagonal of each input (its activation energy) when calibrated.
    q8 scales: the row's exponents come from an fp16 fit, then the fit is repeated on their grids."""
    if scales == "q8":
        exps = q8_exponents(*fit_groups(g, bits, importance))
        return _fit_groups(g, bits, importance, exps)
    return _fit_groups(g, bits, importance, None)


def _fit_groups(g, bits, importance, exps):
    g = g.astype(np.float32)
    wmin, wmax = g.min(axis=-1), g.max(axis=-1)
    imp = np.ones(1, np.float32) if importance is None else np.asarray(importance, np.float32)
    best_err = best_d = best_m = None

    def consider(lo, hi):
        nonlocal best_err, best_d, best_m
        d16, m16 = group_params(lo, hi, bits, exps)
        q = codes_for(g, d16[..., None], m16[..., None], bits)
        e = d16.astype(np.float32)[..., None] * q + m16.astype(np.float32)[..., None] - g
        err = np.sum(e * e * imp, axis=-1)
        if best_err is None:
            best_err, best_d, best_m = err, d16, m16
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_d = np.where(better, d16, best_d)
            best_m = np.where(better, m16, best_m)

    c, r = (wmin + wmax) / 2, (wmax - wmin) / 2
    for p in SHRINK:
        consider(c - p * r, c + p * r)
    wi = np.broadcast_to(imp, g.shape)
    s0 = wi.sum(-1)
    t0 = (wi * g).sum(-1)
    for _ in range(REFIT):
        q = codes_for(g, best_d[..., None], best_m[..., None], bits).astype(np.float32)
        s1, s2, t1 = (wi * q).sum(-1), (wi * q * q).sum(-1), (wi * q * g).sum(-1)
        det = s0 * s2 - s1 * s1
        ok = det > 1e-12 * np.maximum(s0 * s2, 1e-30)
        d = np.maximum(np.where(ok, (s0 * t1 - s1 * t0) / np.where(ok, det, 1), best_d.astype(np.float32)), 0)
        m = np.where(ok, (t0 - d * s1) / np.maximum(s0, 1e-30), best_m.astype(np.float32))
        consider(m, m + d * ((1 << bits) - 1))
    return best_d, best_m


def codes_for(w: np.ndarray, d16: np.ndarray, m16: np.ndarray, bits: int) -> np.ndarray:
    """Nearest codes for weights w given fp16 d and m broadcastable to w (d == 0 gives code 0)."""
    qmax = (1 << bits) - 1
    d = d16.astype(np.float32)
    m = m16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.rint((w - m) / np.where(d > 0, d, 1)), 0)
    return np.clip(q, 0, qmax).astype(np.uint8)


def quantize_rtn(w: np.ndarray, bits: int, group: int, name: str = "tensor",
                 importance: np.ndarray | None = None, scales: str = "fp16") -> QuantizedMatrix:
    """Round to nearest, asymmetric, per group of `group` inputs of each row, with the scale/minimum search;
    importance [cols]: per-input weights of the error (the Hessian diagonal when calibrated)."""
    w = _check_weights(w, name)
    rows, cols = w.shape
    validate(bits, group, cols, name, scales)
    g = w.reshape(rows, cols // group, group)
    d16, m16 = fit_groups(g, bits, None if importance is None else
                          np.asarray(importance, np.float32).reshape(cols // group, group), scales)
    codes = codes_for(g, d16[..., None], m16[..., None], bits)
    return QuantizedMatrix(codes.reshape(rows, cols), d16, m16, bits, group, scales)


def quantize_gptq(w: np.ndarray, hessian: np.ndarray, bits: int, group: int, name: str = "tensor",
                  damp: float = 0.01, block: int = 128, scales: str = "fp16") -> QuantizedMatrix:
    """GPTQ with error feedback. `hessian` is X^T X [cols, cols] of the inputs the layer sees."""
    w = _check_weights(w, name)
    rows, cols = w.shape
    validate(bits, group, cols, name, scales)
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (cols, cols):
        raise RomaError(f"{name}: Hessian shape {h.shape} does not match {cols} input columns")
    W = w.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    W[:, dead] = 0.0
    h[np.diag_indices(cols)] += damp * np.mean(np.diag(h))

    ng = cols // group
    # Act-order with static groups: every group's scale and minimum from the original weights (searched,
    # weighted by the Hessian diagonal), then the columns quantized by decreasing H_jj.
    hdiag = np.diag(h).copy()
    d16s, m16s = fit_groups(W.reshape(rows, ng, group), bits, hdiag.reshape(ng, group), scales)
    perm = np.argsort(-hdiag, kind="stable")
    W = W[:, perm]
    h = h[np.ix_(perm, perm)]
    hinv = _inverse_cholesky_upper(h, name)
    block = max(group, (block // group) * group)
    codes = np.zeros((rows, cols), np.uint8)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        H1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            gi = perm[col] // group
            d16, m16 = d16s[:, gi], m16s[:, gi]
            d32, m32 = d16.astype(np.float64), m16.astype(np.float64)
            wc = W1[:, i]
            q = codes_for(wc, d16, m16, bits)
            codes[:, perm[col]] = q
            err = (wc - (d32 * q + m32)) / H1[i, i]
            W1[:, i + 1:] -= np.outer(err, H1[i, i + 1:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ hinv[i1:i2, i2:]
    return QuantizedMatrix(codes, d16s, m16s, bits, group, scales)


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
                    name: str = "tensor", scales: str = "fp16") -> tuple[QuantizedMatrix, str]:
    """Quantize one tensor for the ROM; returns (matrix, how) with how in passthrough/rtn/gptq/gptaq (gptaq is
    GPTQ itself here: its difference is which target and Hessian the build passes).

    A source already quantized with exactly these bits, group and scale format is passed through bit for bit.
    """
    if method not in METHODS:
        raise RomaError(f"unknown quantization method '{method}'", hint=f"choose one of {', '.join(METHODS)}")
    cols = t.shape[1]
    validate(bits, group, cols, name, scales)
    if isinstance(t, QuantizedMatrix) and (t.bits, t.group, t.scale_format) == (bits, group, scales):
        return t, "passthrough"
    w = as_float(t)
    if method in ("gptq", "gptaq") and bits < 8:
        if hessian is None:
            raise RomaError(f"{name}: GPTQ needs calibration statistics (a Hessian) for this tensor")
        return quantize_gptq(w, hessian, bits, group, name, scales=scales), method
    return quantize_rtn(w, bits, group, name, None if hessian is None else np.diag(hessian), scales), "rtn"


def output_error(w: np.ndarray, q: QuantizedMatrix, hessian: np.ndarray | None = None) -> float:
    """The layer-output squared error tr(dW H dW^T) (or the plain weight error without a Hessian)."""
    dw = (q.dequantize() - np.asarray(w, np.float32)).astype(np.float64)
    if hessian is None:
        return float(np.sum(dw * dw))
    return float(np.sum((dw @ hessian) * dw))
