"""Calibration statistics: per linear layer, the Hessian H = X^T X of the inputs it sees on calibration text.

The statistics are collected through the golden model in float mode (the reference the compiler tries to
reproduce), by overriding its `linear` hook. Linear layers that read the same input share one Hessian
(wq/wk/wv read the attention norm's output, w_gate/w_up the FFN norm's output), so each is accumulated once.
This is the one-pass ("parallel") form: every layer's statistics come from the float model. (The sequential
form, each layer's Hessian from inputs through the already quantized earlier layers, was measured on SmolLM2
3-bit G64 GPTQ at 73.8% top-1 against 74.2% for this one, so it is not kept.)

`LayerwiseForward` is the float forward one block at a time over many windows, for mixed precision's
measured sensitivities (mixed.py), which re-run only the layers after the one they lower.
"""

from __future__ import annotations

import sys

import numpy as np

from ..golden import GoldenModel
from ..golden.model import apply_rope, rms_norm, rope_tables, silu, softmax
from ..model.loader import LoadedModel
from ..model.weights import as_float
from .corpus import token_windows

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
    it = windows
    if progress:
        from tqdm import tqdm

        it = tqdm(windows, desc="calibrating", unit="window", file=sys.stderr, leave=False)
    total = 0
    for ids in it:
        collector.forward(ids, collector.new_cache(len(ids)))
        total += len(ids)
    return Hessians(collector.sums, total, len(windows))


# The linears of one block in the order their inputs become available, each stage sharing one input.
STAGES = (("attn_in", ("wq", "wk", "wv")), ("attn_out", ("wo",)), ("ffn_in", ("w_gate", "w_up")),
          ("ffn_mid", ("w_down",)))


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
        c = self.config
        lw = self.model.weights.layers[li]
        hd, grp = c.head_dim, c.n_heads // c.n_kv_heads
        scale = np.float32(1.0 / np.sqrt(hd))
        hs = [rms_norm(x, lw.attn_norm, c.rms_eps) for x in xs]
        qkv = weights("attn_in", STAGES[0][1], hs)
        attns = []
        for h, (cos, sin) in zip(hs, self.ropes):
            t = len(h)
            q = apply_rope((h @ qkv["wq"]).reshape(t, c.n_heads, hd), cos, sin)
            k = apply_rope((h @ qkv["wk"]).reshape(t, c.n_kv_heads, hd), cos, sin)
            v = (h @ qkv["wv"]).reshape(t, c.n_kv_heads, hd)
            scores = np.einsum("tkgd,skd->kgts", q.reshape(t, c.n_kv_heads, grp, hd), k) * scale
            causal = np.tril(np.ones((t, t), bool))
            probs = softmax(np.where(causal[None, None], scores, np.float32(-np.inf)))
            attns.append(np.einsum("kgts,skd->tkgd", probs, v).reshape(t, c.dim))
        wo = weights("attn_out", STAGES[1][1], attns)["wo"]
        xs = [x + a @ wo for x, a in zip(xs, attns)]
        hs = [rms_norm(x, lw.ffn_norm, c.rms_eps) for x in xs]
        gu = weights("ffn_in", STAGES[2][1], hs)
        mids = [silu(h @ gu["w_gate"]) * (h @ gu["w_up"]) for h in hs]
        down = weights("ffn_mid", STAGES[3][1], mids)["w_down"]
        return [x + m @ down for x, m in zip(xs, mids)]

    def logits(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        w = self.model.weights
        head = as_float(w.lm_head)
        return [rms_norm(x, w.output_norm, self.config.rms_eps) @ head.T for x in xs]
