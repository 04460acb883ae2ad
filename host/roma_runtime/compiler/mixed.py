"""Mixed precision under a budget of average bits per weight (scales and minimums included).

Sensitivity is measured, not modelled: on calibration text, one unit alone (a layer's attention linears
wq/wk/wv/wo, or its MLP linears w_gate/w_up/w_down) is quantized at a candidate width while every other weight
stays float, and the mean KL divergence of the next-token distributions from the float model's is recorded
(with the top-1 agreement, for the manifest). The forward re-runs only from the lowered layer on: the residual
stream at every layer's input is computed once. 8-bit codes are taken as lossless (KL 0, not measured).

Assignment: every unit at the narrowest width, then the upgrade (to any wider width) with the largest drop in
summed KL per extra stored bit is taken greedily while it fits the budget (KL is treated as additive over
units, which holds for small perturbations).
"""

from __future__ import annotations

import numpy as np

from ..errors import RomaError
from ..model.weights import SUPPORTED_BITS

UNITS = {"attn": ("wq", "wk", "wv", "wo"), "mlp": ("w_gate", "w_up", "w_down")}
LOSSLESS_BITS = 8


def unit_of(linear: str) -> str:
    return next(u for u, names in UNITS.items() if linear in names)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def measure_sensitivity(model, quantize, windows: list[list[int]], candidates=(2, 3, 4),
                        progress=None) -> dict[tuple[int, str], dict[int, dict]]:
    """(layer, unit) -> {bits: {"kl": ..., "top1": ...}} with that unit alone at `bits`.

    quantize(layer, linear, bits) -> the dequantized fp32 weight [out, in] at that width.
    """
    from .calibrate import LayerwiseForward

    fw = LayerwiseForward(model, windows)
    layers = model.config.n_layers
    floats = [{n: np.ascontiguousarray(np.asarray(getattr(model.weights.layers[li], n).dequantize()
                                                  if hasattr(getattr(model.weights.layers[li], n), "dequantize")
                                                  else getattr(model.weights.layers[li], n), np.float32).T)
               for names in UNITS.values() for n in names} for li in range(layers)]

    def fixed(weights):
        return lambda kind, names, inputs: weights

    states = [fw.inputs]
    for li in range(layers):
        states.append(fw.block(li, states[-1], fixed(floats[li])))
    ref = [_log_softmax(z) for z in fw.logits(states[-1])]
    ref_top = [r.argmax(-1) for r in ref]

    jobs = [(li, u, b) for li in range(layers) for u in UNITS for b in candidates]
    out: dict[tuple[int, str], dict[int, dict]] = {}
    for li, u, b in (progress(jobs) if progress else jobs):
        w = dict(floats[li])
        for n in UNITS[u]:
            w[n] = np.ascontiguousarray(np.asarray(quantize(li, n, b), np.float32).T)
        xs = fw.block(li, states[li], fixed(w))
        for lj in range(li + 1, layers):
            xs = fw.block(lj, xs, fixed(floats[lj]))
        kl = agree = count = 0.0
        for r, top, z in zip(ref, ref_top, fw.logits(xs)):
            lc = _log_softmax(z)
            kl += float((np.exp(r) * (r - lc)).sum())
            agree += float((lc.argmax(-1) == top).sum())
            count += len(top)
        out.setdefault((li, u), {})[b] = {"kl": kl / count, "top1": agree / count}
    for entry in out.values():
        entry[LOSSLESS_BITS] = {"kl": 0.0, "top1": 1.0}
    return out


def assign_bits(sens: dict, sizes: dict, overhead, budget: float, candidates=SUPPORTED_BITS) -> dict:
    """Greedy under the budget. sens: unit -> {bits: cost}; sizes: unit -> weights; overhead: the bits per
    weight a unit's scales and minimums take whatever its code width (a number, or unit -> number: with fp16
    scales 32 / group). Upgrades that do not lower the cost are never taken."""
    cands = sorted(candidates)
    extra_bits = overhead if isinstance(overhead, dict) else {n: overhead for n in sens}
    total = sum(sizes[n] for n in sens)
    lowest = average_bits({n: cands[0] for n in sens}, sizes, extra_bits)
    highest = average_bits({n: cands[-1] for n in sens}, sizes, extra_bits)
    if budget < lowest - 1e-9:
        raise RomaError(f"a budget of {budget} bits per weight is below the narrowest setting "
                        f"({cands[0]}-bit with its scales: {lowest:.3f} bits per weight)",
                        hint=f"give --bits-budget of at least {lowest:.3f}")
    budget = min(budget, highest)
    choice = {n: cands[0] for n in sens}
    spent = lowest * total
    limit = budget * total + 1e-6
    while True:
        best, best_gain = None, 0.0
        for n, b in choice.items():
            for nb in cands[cands.index(b) + 1:]:
                extra = (nb - b) * sizes[n]
                if spent + extra > limit:
                    continue
                gain = (sens[n][b] - sens[n][nb]) / extra
                if gain > best_gain:
                    best, best_gain = (n, nb), gain
        if best is None:
            break
        n, nb = best
        spent += (nb - choice[n]) * sizes[n]
        choice[n] = nb
    return choice


def average_bits(choice: dict, sizes: dict, overhead) -> float:
    extra_bits = overhead if isinstance(overhead, dict) else {n: overhead for n in choice}
    total = sum(sizes[n] for n in choice)
    return sum((b + extra_bits[n]) * sizes[n] for n, b in choice.items()) / total
