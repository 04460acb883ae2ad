"""Calibration statistics: per linear layer, the Hessian H = X^T X of the inputs it sees on calibration text.

The statistics are collected through the golden model in float mode (the reference the compiler tries to
reproduce), by overriding its `linear` hook. Linear layers that read the same input share one Hessian
(wq/wk/wv read the attention norm's output, w_gate/w_up the FFN norm's output), so each is accumulated once.
This is the one-pass ("parallel") form: every layer's statistics come from the float model, not from the
already quantized predecessors.
"""

from __future__ import annotations

import sys

import numpy as np

from ..golden import GoldenModel
from ..model.loader import LoadedModel
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
