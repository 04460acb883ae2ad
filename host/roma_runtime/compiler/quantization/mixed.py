"""Mixed precision under a budget of average bits per weight (scales and minimums included).

A setting is a code width and a group size; under the budget each linear tensor gets its own.

Sensitivity is measured, then scaled. The cost of a setting is the mean KL divergence of the next-token
distributions from the float model's when that tensor alone is quantized so, every other weight float, on
calibration text. It is measured end to end once per tensor, at the reference setting (REFERENCE_BITS at the
tensor's largest group), re-running the forward only from the tensor's layer on (the residual stream at every
layer's input is computed once). For the tensor's other settings it is scaled by their layer-output errors
tr(dW H dW^T), which need no forward: on SmolLM2 the ratio KL / output error stays within about +-30% over
widths 2-4 and groups 32-128 of one tensor while it spans 100x between tensors (wv and w_down high, wq and wo
low). So one forward per tensor prices every setting, and each of a layer's seven linears is chosen on its
own. 8-bit codes are taken as lossless (KL 0, not measured).

Assignment: every tensor at its cheapest setting, then the upgrade (to any dearer setting) with the largest
drop in summed KL per extra stored bit is taken greedily while it fits the budget (KL is treated as additive
over tensors, which holds for small perturbations).
"""

from __future__ import annotations

import numpy as np

from ...errors import RomaError
from ...model.weights import SUPPORTED_BITS, SUPPORTED_GROUPS, as_float
from .calibrate import LayerwiseForward
from .quantize import effective_group, output_error

REFERENCE_BITS = 3
LOSSLESS_BITS = 8


def mixed_settings(cols: int, group: int) -> list[tuple[int, int]]:
    """The (width, group) settings a linear with `cols` inputs may get under a bits budget: widths 2, 3, 4 at
    every supported group up to `group` that divides the row, and 8 (lossless) at the largest."""
    groups = sorted({effective_group(cols, g) for g in SUPPORTED_GROUPS if g <= group})
    return [(b, g) for b in SUPPORTED_BITS if b < LOSSLESS_BITS for g in groups] + [(LOSSLESS_BITS, groups[-1])]


def setting_name(setting: tuple[int, int]) -> str:
    """(3, 64) -> '3/64', as the manifest writes a setting."""
    return f"{setting[0]}/{setting[1]}"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def measure_sensitivity(model, quantize, hessians, windows: list[list[int]], settings: dict,
                        progress=None) -> dict[tuple[int, str], dict]:
    """(layer, linear) -> {"reference": {"bits", "group", "kl", "top1"} (measured end to end),
    "settings": {(bits, group): {"kl", "error"}}} with the KL of every setting scaled from the reference.

    quantize(layer, linear, bits, group) -> QuantizedMatrix; hessians[(layer, linear)]: X^T X of its inputs;
    settings: (layer, linear) -> the (bits, group) to price (bits 8 is lossless and not quantized).
    """

    fw = LayerwiseForward(model, windows)
    layers = model.config.n_layers
    floats = [{n: np.asarray(as_float(t), np.float32) for n, t in model.weights.layers[li].linears().items()}
              for li in range(layers)]
    as_input = [{n: np.ascontiguousarray(w.T) for n, w in f.items()} for f in floats]

    def fixed(weights):
        return lambda kind, names, inputs: weights

    states = [fw.inputs]
    for li in range(layers):
        states.append(fw.block(li, states[-1], fixed(as_input[li])))
    ref = [_log_softmax(z) for z in fw.logits(states[-1])]
    ref_top = [r.argmax(-1) for r in ref]

    out: dict[tuple[int, str], dict] = {}
    for key in (progress(list(settings)) if progress else list(settings)):
        li, lin = key
        reference = (REFERENCE_BITS, max(g for b, g in settings[key] if b == REFERENCE_BITS))
        priced = {}
        for setting in settings[key]:
            if setting[0] >= LOSSLESS_BITS:
                priced[setting] = {"error": 0.0}
                continue
            q = quantize(li, lin, *setting)
            priced[setting] = {"error": output_error(floats[li][lin], q, hessians[key])}
            if setting == reference:
                lowered = q
        w = dict(as_input[li])
        w[lin] = np.ascontiguousarray(lowered.dequantize().T)
        xs = fw.block(li, states[li], fixed(w))
        for lj in range(li + 1, layers):
            xs = fw.block(lj, xs, fixed(as_input[lj]))
        kl = agree = count = 0.0
        for r, top, z in zip(ref, ref_top, fw.logits(xs)):
            lc = _log_softmax(z)
            kl += float((np.exp(r) * (r - lc)).sum())
            agree += float((lc.argmax(-1) == top).sum())
            count += len(top)
        kl /= count
        per_error = kl / max(priced[reference]["error"], 1e-30)
        for entry in priced.values():
            entry["kl"] = entry["error"] * per_error
        out[key] = {"reference": {"bits": reference[0], "group": reference[1], "kl": kl, "top1": agree / count},
                    "settings": priced}
    return out


def assign_settings(sens: dict, cost: dict, budget: float) -> dict:
    """Greedy under the budget. sens: tensor -> {setting: KL}; cost: tensor -> (weights, {setting: bits per
    weight incl. scales}) over the same settings; the budget is the average over all the tensors' weights.
    Upgrades that do not lower the KL are never taken."""
    total = sum(size for size, _ in cost.values())
    choice = {n: min(cost[n][1], key=lambda s: (cost[n][1][s], sens[n][s])) for n in sens}
    lowest = average_bits(choice, cost)
    if budget < lowest - 1e-9:
        raise RomaError(f"a budget of {budget} bits per weight is below the narrowest setting "
                        f"(every tensor at its cheapest width and group: {lowest:.3f} bits per weight)",
                        hint=f"give --bits-budget of at least {lowest:.3f}")
    spent = lowest * total
    limit = budget * total + 1e-6
    while True:
        best, best_gain = None, 0.0
        for n, s in choice.items():
            size, bpw = cost[n]
            for ns, nb in bpw.items():
                extra = (nb - bpw[s]) * size
                if extra <= 0 or spent + extra > limit:
                    continue
                gain = (sens[n][s] - sens[n][ns]) / extra
                if gain > best_gain:
                    best, best_gain = (n, ns), gain
        if best is None:
            break
        n, ns = best
        size, bpw = cost[n]
        spent += (bpw[ns] - bpw[choice[n]]) * size
        choice[n] = ns
    return choice


def average_bits(choice: dict, cost: dict) -> float:
    total = sum(cost[n][0] for n in choice)
    return sum(cost[n][0] * cost[n][1][s] for n, s in choice.items()) / total
