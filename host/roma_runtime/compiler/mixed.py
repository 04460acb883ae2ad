"""Mixed precision under a budget of average bits per weight (scales and minimums included).

Sensitivity is measured per tensor: every linear is quantized at each candidate width and its calibrated
output error is computed, relative to the layer's output energy:
    s(t, b) = tr(dW H dW^T) / tr(W H W^T)    with H = X^T X on calibration text
(the plain weight error when no Hessian is given). Tensors start at the narrowest width; the upgrade with the
largest drop in summed relative error per extra stored bit is taken greedily while it fits the budget.
"""

from __future__ import annotations

import numpy as np

from ..errors import RomaError
from ..model.weights import SUPPORTED_BITS
from .quantize import output_error, quantize_tensor


def bits_per_weight(bits: int, group: int) -> float:
    return bits + 32 / group


def sensitivities(tensors: dict, group: int, method: str, hessians=None, candidates=SUPPORTED_BITS,
                  progress=None) -> dict[str, dict[int, float]]:
    """tensors: name -> (Tensor, hessian key or None). Returns name -> {bits: relative output error}."""
    from ..model.weights import as_float

    out = {}
    names = list(tensors)
    it = progress(names) if progress else names
    for name in it:
        t, key = tensors[name]
        w = as_float(t)
        h = hessians[key] if (hessians is not None and key is not None) else None
        energy = float(np.sum((w.astype(np.float64) @ h) * w)) if h is not None else float(np.sum(w.astype(np.float64) ** 2))
        energy = energy or 1.0
        out[name] = {}
        for b in candidates:
            q, _ = quantize_tensor(t, b, group, method if h is not None else "rtn", h, name)
            out[name][b] = output_error(w, q, h) / energy
    return out


def assign_bits(sens: dict[str, dict[int, float]], sizes: dict[str, int], group: int, budget: float,
                candidates=SUPPORTED_BITS) -> dict[str, int]:
    """Greedy: everyone at the narrowest width, then upgrades by error drop per extra bit within budget."""
    cands = sorted(candidates)
    total = sum(sizes.values())
    lowest = bits_per_weight(cands[0], group)
    highest = bits_per_weight(cands[-1], group)
    if budget < lowest - 1e-9:
        raise RomaError(f"a budget of {budget} bits per weight is below the narrowest setting "
                        f"({cands[0]}-bit with group {group}: {lowest:.3f} bits per weight)",
                        hint=f"give --bits-budget of at least {lowest:.3f}")
    if budget > highest:
        budget = highest
    choice = {n: cands[0] for n in sens}
    spent = lowest * total
    limit = budget * total + 1e-6
    while True:
        best, best_gain = None, 0.0
        for n, b in choice.items():
            i = cands.index(b)
            if i + 1 == len(cands):
                continue
            nb = cands[i + 1]
            extra = (nb - b) * sizes[n]
            if spent + extra > limit:
                continue
            gain = (sens[n][b] - sens[n][nb]) / extra
            if best is None or gain > best_gain:
                best, best_gain = n, gain
        if best is None:
            break
        b = choice[best]
        nb = cands[cands.index(b) + 1]
        spent += (nb - b) * sizes[best]
        choice[best] = nb
    return choice


def average_bits(choice: dict[str, int], sizes: dict[str, int], group: int) -> float:
    total = sum(sizes[n] for n in choice)
    return sum(bits_per_weight(b, group) * sizes[n] for n, b in choice.items()) / total
