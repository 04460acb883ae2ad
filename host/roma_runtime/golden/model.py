"""The golden LLaMA forward pass in numpy, in two modes.

- "float": every weight dequantized to fp32; the reference for quality and for agreement with transformers.
- "quant": the accelerator's contract: every linear layer is a ROM matmul (int8 group activations times the
  stored codes, exact int32 group dot products, fp32 scaling); KV cache in fp16 by default.
Norms, RoPE (GGUF adjacent pairs), softmax, SiLU and residuals are fp32 in both.

The quant path gives the same answer on every machine: its ROM matmuls are exact integers scaled in a fixed
order (numerics.py), and its exp, cos and sin are computed in fp64 and rounded to fp32, because numpy's own fp32
versions are SIMD code chosen per CPU and may differ by an ulp. At 2 bits one such ulp can move a greedy token.
"""

from __future__ import annotations

import numpy as np

from ..errors import RomaError
from ..model.loader import LoadedModel
from ..model.weights import LoraAdapter, QuantizedMatrix, as_float
from .numerics import PreparedMatrix, quantized_matmul

MODES = ("quant", "float")


class KVCache:
    """Keys and values of one sequence, [layer, position, kv_head, head_dim], filled up to `length`."""

    def __init__(self, n_layers: int, capacity: int, n_kv_heads: int, head_dim: int, dtype=np.float16):
        self.capacity = capacity
        self.dtype = np.dtype(dtype)
        self.keys = np.zeros((n_layers, capacity, n_kv_heads, head_dim), self.dtype)
        self.values = np.zeros_like(self.keys)
        self.length = 0

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length


def fp32_of_fp64(fn, x: np.ndarray) -> np.ndarray:
    """fn(x) evaluated in fp64 and rounded to fp32: the correctly rounded fp32 value (but for inputs within an
    fp64 ulp of a rounding boundary), the same on every CPU."""
    return fn(np.asarray(x, np.float64)).astype(np.float32)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps)))) * weight


def rope_tables(head_dim: int, theta: float, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    return fp32_of_fp64(np.cos, angles), fp32_of_fp64(np.sin, angles)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [T, heads, head_dim]; rotates adjacent pairs (2i, 2i+1) as ggml does for LLaMA."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + fp32_of_fp64(np.exp, -x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = fp32_of_fp64(np.exp, x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# The linears of a block in the order their inputs become available, each stage reading one input.
STAGES = (("attn_in", ("wq", "wk", "wv")), ("attn_out", ("wo",)), ("ffn_in", ("w_gate", "w_up")),
          ("ffn_mid", ("w_down",)))


def transformer_block(c, attn_norm, ffn_norm, xs: list[np.ndarray], ropes, context, stage) -> list[np.ndarray]:
    """One LLaMA block over several sequences (residual streams xs, each [T, dim]), stage by stage: the golden
    forward runs it on one sequence, calibration (compiler/quantization/calibrate.py) on many windows at once.

    stage(kind, names, inputs) -> {name: [output per sequence]} computes a stage's linears once every sequence's
    input to it is ready (calibration fits them on those inputs); ropes: (cos, sin) per sequence;
    context(i, k, v) -> (keys [S, kv, hd], values, causal [T, S]) is what sequence i attends over, given its new
    K/V rows (the golden forward appends them to its KV cache)."""
    hd, group = c.head_dim, c.n_heads // c.n_kv_heads
    scale = np.float32(1.0 / np.sqrt(hd))
    hs = [rms_norm(x, attn_norm, c.rms_eps) for x in xs]
    qkv = stage(*STAGES[0], hs)
    attns = []
    for i, (h, (cos, sin)) in enumerate(zip(hs, ropes)):
        t = len(h)
        q = apply_rope(qkv["wq"][i].reshape(t, c.n_heads, hd), cos, sin)
        k = apply_rope(qkv["wk"][i].reshape(t, c.n_kv_heads, hd), cos, sin)
        keys, values, causal = context(i, k, qkv["wv"][i].reshape(t, c.n_kv_heads, hd))
        scores = np.einsum("tkgd,skd->kgts", q.reshape(t, c.n_kv_heads, group, hd), keys) * scale
        probs = softmax(np.where(causal[None, None], scores, np.float32(-np.inf)))
        attns.append(np.einsum("kgts,skd->tkgd", probs, values).reshape(t, c.dim))
    xs = [x + o for x, o in zip(xs, stage(*STAGES[1], attns)["wo"])]
    hs = [rms_norm(x, ffn_norm, c.rms_eps) for x in xs]
    gate_up = stage(*STAGES[2], hs)
    mids = [silu(g) * u for g, u in zip(gate_up["w_gate"], gate_up["w_up"])]
    return [x + d for x, d in zip(xs, stage(*STAGES[3], mids)["w_down"])]


class GoldenModel:
    def __init__(self, model: LoadedModel, mode: str = "quant", kv_dtype=None):
        if mode not in MODES:
            raise RomaError(f"unknown golden-model mode '{mode}'", hint=f"choose one of {', '.join(MODES)}")
        self.config = model.config
        self.mode = mode
        self.kv_dtype = np.dtype(kv_dtype or (np.float16 if mode == "quant" else np.float32))
        w = model.weights
        self.embedding = as_float(w.token_embedding)
        self.output_norm = w.output_norm
        self.lm_head = self._linear(w.lm_head, "lm head")
        self.lora: LoraAdapter | None = None
        self.layers = []
        for i, layer in enumerate(w.layers):
            prepared = {name: self._linear(t, f"layer {i} {name}") for name, t in layer.linears().items()}
            prepared["attn_norm"], prepared["ffn_norm"] = layer.attn_norm, layer.ffn_norm
            self.layers.append(prepared)

    def _linear(self, t, what: str):
        if self.mode == "float":
            return np.ascontiguousarray(as_float(t).T)
        if not isinstance(t, QuantizedMatrix):
            raise RomaError(
                f"the quantized path needs quantized weights, but the {what} is float",
                hint="use a quantized GGUF (for example Q4_1), or the float path (--numerics float)",
            )
        return PreparedMatrix(t)

    def matmul(self, w, x: np.ndarray) -> np.ndarray:
        if self.mode == "float":
            return x @ w
        return quantized_matmul(w, x)

    def linear(self, layer: int, name: str, x: np.ndarray) -> np.ndarray:
        """A base-weight matmul plus, when an adapter is active and targets it, the LoRA term."""
        y = self.matmul(self.layers[layer][name], x)
        delta = self.lora.delta((layer, name), x) if self.lora is not None else None
        return y if delta is None else y + delta

    def new_cache(self, capacity: int | None = None) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, capacity or c.context_length, c.n_kv_heads, c.head_dim, self.kv_dtype)

    def forward(self, ids, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run `ids` at positions cache.length.. and append their K/V. Returns logits [T or 1, vocab]."""
        c = self.config
        ids = np.asarray(ids, dtype=np.int64)
        t = len(ids)
        start = cache.length
        if t == 0:
            raise ValueError("forward needs at least one token")
        if start + t > cache.capacity:
            raise RomaError(f"{start + t} tokens do not fit the KV cache of {cache.capacity} positions")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise RomaError(f"token id out of range 0..{c.vocab_size - 1}")
        positions = np.arange(start, start + t)
        ropes = [rope_tables(c.head_dim, c.rope_theta, positions)]
        causal = positions[:, None] >= np.arange(start + t)[None, :]  # [T, keys]

        def stage(li):
            return lambda kind, names, inputs: {n: [self.linear(li, n, inputs[0])] for n in names}

        def context(li):
            def keys_values(_, k, v):  # the new rows go into the cache; attention reads it up to them
                cache.keys[li, start : start + t] = k
                cache.values[li, start : start + t] = v
                keys = cache.keys[li, : start + t].astype(np.float32)  # [S, kv, hd]
                return keys, cache.values[li, : start + t].astype(np.float32), causal
            return keys_values

        x = self.embedding[ids]
        for li, lw in enumerate(self.layers):
            [x] = transformer_block(c, lw["attn_norm"], lw["ffn_norm"], [x], ropes, context(li), stage(li))
        cache.length = start + t
        x = rms_norm(x if all_logits else x[-1:], self.output_norm, c.rms_eps)
        return self.matmul(self.lm_head, x)
