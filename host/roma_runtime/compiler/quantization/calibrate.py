"""Calibration statistics: per linear layer, the Hessian H = X^T X of the inputs it sees on calibration text.

The statistics are collected through the golden model in float mode (the reference the compiler tries to
reproduce), by overriding its `linear` hook. Linear layers that read the same input share one Hessian
(wq/wk/wv read the attention norm's output, w_gate/w_up the FFN norm's output), so each is accumulated once.
`collect_hessians` is the one-pass ("parallel") form: every layer's statistics come from the float model. GPTQ
and mixed precision's sensitivity quantizer use it. (Sequential statistics, each layer's Hessian from inputs
through the already quantized earlier layers, measured no better for GPTQ on SmolLM2: 3-bit G64 73.8% against
74.2% top-1.)

GPTAQ (`--method gptaq`, `quantize_sequentially`; after GPTAQ, Li et al. 2025) is sequential and asymmetric: a
linear is fitted on the inputs X_q it will see in the already quantized model, and its target is the float
model's output W X_f on the float inputs X_f, which is, in least squares, the map W C^T H^-1 applied to X_q
(C = X_q^T X_f, H = X_q^T X_q). So each layer also corrects the drift its quantized predecessors left. That
map is estimated from the calibration text: with 32K tokens it gains on SmolLM2 (3.0-bit mixed, no LoRA: 76.7%
against 72.8% top-1 on 2,048 tokens), with 4K it overfits and loses (3-bit G64: 71.1% against 74.2%).

`LayerwiseForward` is the float forward one block at a time over many windows, for mixed precision's
measured sensitivities (mixed.py), which re-run only the layers after the one they lower, and for the
sequential calibration.
"""

from __future__ import annotations

import numpy as np

from ...golden import GoldenModel
from ...golden.model import rms_norm, rope_tables, transformer_block
from ...model.loader import LoadedModel
from ...model.weights import as_float
from ...progress import with_progress
from .corpus import token_windows
from .loftq import damped

# Which shared input each linear reads.
INPUT_OF = {"wq": "attn_in", "wk": "attn_in", "wv": "attn_in", "wo": "attn_out",
            "w_gate": "ffn_in", "w_up": "ffn_in", "w_down": "ffn_mid"}
_COLLECT = {"wq": "attn_in", "wo": "attn_out", "w_gate": "ffn_in", "w_down": "ffn_mid"}


class _Collector(GoldenModel):
    def __init__(self, model: LoadedModel):
        super().__init__(model, mode="float")
        self.sums: dict[tuple[int, str], np.ndarray] = {}
        self.tokens = 0

    def linear(self, layer: int, name: str, x: np.ndarray) -> np.ndarray:
        kind = _COLLECT.get(name)
        if kind is not None:
            xx = x.T @ x
            key = (layer, kind)
            if key in self.sums:
                self.sums[key] += xx
            else:
                self.sums[key] = xx.astype(np.float64)
        return super().linear(layer, name, x)


class Hessians:
    """H = X^T X per (layer, linear name), plus the number of calibration tokens behind them."""

    def __init__(self, sums: dict[tuple[int, str], np.ndarray], tokens: int, windows: int):
        self.sums = sums
        self.tokens = tokens
        self.windows = windows

    def __getitem__(self, key: tuple[int, str]) -> np.ndarray:
        layer, name = key
        return self.sums[(layer, INPUT_OF[name])]

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def collect_hessians(model: LoadedModel, n_tokens: int = 4096, window: int = 256,
                     progress: bool = False, windows: list[list[int]] | None = None) -> Hessians:
    """Run the float golden model over calibration text and accumulate X^T X at every linear's input."""
    if windows is None:
        windows = token_windows(model, "calibration", n_tokens, window)
    collector = _Collector(model)
    total = 0
    for ids in with_progress(windows, "calibrating", progress, unit="windows"):
        collector.forward(ids, collector.new_cache(len(ids)))
        total += len(ids)
    return Hessians(collector.sums, total, len(windows))


class LayerwiseForward:
    """golden.model's float forward over a set of windows, one block (and inside it one stage) at a time.

    `block(li, xs, weights)` advances the residual streams xs (one [T, dim] per window) through block li;
    weights(kind, names, inputs) returns {name: W^T [in, out]} for one stage, given that stage's inputs.
    """

    def __init__(self, model: LoadedModel, windows: list[list[int]]):
        self.config = c = model.config
        self.model = model
        emb = model.weights.token_embedding
        table = emb.dequantize() if hasattr(emb, "dequantize") else emb
        self.inputs = [np.asarray(table[np.asarray(ids)], np.float32) for ids in windows]
        self.ropes = [rope_tables(c.head_dim, c.rope_theta, np.arange(len(ids))) for ids in windows]

    def block(self, li: int, xs: list[np.ndarray], weights) -> list[np.ndarray]:
        lw = self.model.weights.layers[li]

        def stage(kind, names, inputs):
            w = weights(kind, names, inputs)
            return {n: [h @ w[n] for h in inputs] for n in names}

        def own_window(_, k, v):  # each window attends causally over itself
            return k, v, np.tril(np.ones((len(k), len(k)), bool))

        return transformer_block(self.config, lw.attn_norm, lw.ffn_norm, xs, self.ropes, own_window, stage)

    def logits(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        w = self.model.weights
        head = as_float(w.lm_head)
        return [rms_norm(x, w.output_norm, self.config.rms_eps) @ head.T for x in xs]


def drift_correction(hessian: np.ndarray, drift: np.ndarray) -> np.ndarray:
    """M [in, in] such that W + W M maps the quantized inputs X_q to the float outputs W X_f in least squares:
    W C^T H^-1, written W + W (C - H)^T (H + damping)^-1 so that the damping shrinks only the drift correction
    and the target is exactly W where the inputs agree. hessian: H = X_q^T X_q; drift: C - H = X_q^T (X_f - X_q).
    One M serves every linear that reads the same inputs."""

    return np.linalg.solve(damped(hessian), drift).T


def quantize_sequentially(model: LoadedModel, windows: list[list[int]], quantize, progress: bool = False) -> int:
    """Quantize every linear block by block, each on the inputs the quantized model so far gives it.

    quantize((layer, linear), target, hessian) fits one linear (target [out, in] = W + W drift_correction, hessian
    X_q^T X_q) and returns the weights the quantized model now computes with (its base plus any LoRA, [out, in]).
    Two streams run over the windows: the float model, and the model quantized up to the current stage.
    Returns the number of calibration tokens."""
    float_run, quant_run = LayerwiseForward(model, windows), LayerwiseForward(model, windows)
    xs_float, xs_quant = float_run.inputs, quant_run.inputs
    layers = model.weights.layers
    for li in with_progress(range(len(layers)), "calibrated quantization", progress, unit="layers"):
        floats = {n: as_float(t) for n, t in layers[li].linears().items()}
        float_inputs = {}

        def float_weights(kind, names, inputs):
            float_inputs[kind] = np.concatenate(inputs)
            return {n: floats[n].T for n in names}

        def quantized_weights(kind, names, inputs):
            xq = np.concatenate(inputs).astype(np.float64)
            hessian = xq.T @ xq
            correction = drift_correction(hessian, xq.T @ (float_inputs[kind].astype(np.float64) - xq))
            out = {}
            for n in names:
                target = (floats[n] + floats[n] @ correction).astype(np.float32)
                out[n] = np.ascontiguousarray(quantize((li, n), target, hessian).T, np.float32)
            return out

        xs_float = float_run.block(li, xs_float, float_weights)
        xs_quant = quant_run.block(li, xs_quant, quantized_weights)
    return sum(len(w) for w in windows)
