"""Weights in the numerics contract's form.

A quantized matrix holds, per output row, groups of `group` consecutive inputs as unsigned codes of `bits`
bits with an fp16 scale and an fp16 minimum per group: w = scale * code + minimum. GGUF Q4_1 is exactly
bits=4, group=32; Q4_0 and Q8_0 are the same form with minimum = -8*scale and -128*scale (exact in fp16,
a power-of-two multiple), so all three import without re-quantization.

`scale_format` is how the ROM stores the scales and minimums (compiler/quantization/quantize.py): "fp16" as they are, or
"q8", 8-bit steps of a power of two shared by the row (only values on that grid are allowed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUPS = (32, 64, 128)
SCALE_BITS = {"fp16": 32, "q8": 16}  # bits per group for its scale and minimum
ROW_SCALE_BITS = {"fp16": 0, "q8": 16}  # bits per row (q8: the two exponents)


@dataclass(frozen=True, eq=False)
class QuantizedMatrix:
    codes: np.ndarray  # uint8 [rows, cols], each < 2**bits
    scales: np.ndarray  # float16 [rows, cols // group]
    minimums: np.ndarray  # float16 [rows, cols // group]
    bits: int
    group: int
    scale_format: str = "fp16"

    def __post_init__(self):
        rows, cols = self.codes.shape
        if self.codes.dtype != np.uint8 or cols % self.group:
            raise ValueError(f"codes must be uint8 with a column count divisible by {self.group}")
        expected = (rows, cols // self.group)
        if self.scales.shape != expected or self.minimums.shape != expected:
            raise ValueError(f"scales and minimums must have shape {expected}")
        if self.scales.dtype != np.float16 or self.minimums.dtype != np.float16:
            raise ValueError("scales and minimums must be float16")
        if self.scale_format not in SCALE_BITS:
            raise ValueError(f"unknown scale format {self.scale_format!r}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    @property
    def bits_per_weight(self) -> float:
        """Storage cost including the scales and minimums."""
        return storage_bits_per_weight(self.bits, self.group, self.codes.shape[1], self.scale_format)

    def dequantize(self) -> np.ndarray:
        rows, cols = self.codes.shape
        grouped = self.codes.reshape(rows, cols // self.group, self.group).astype(np.float32)
        w = self.scales.astype(np.float32)[..., None] * grouped + self.minimums.astype(np.float32)[..., None]
        return w.reshape(rows, cols)

    @classmethod
    def from_ggml(cls, blocks: np.ndarray, type_name: str, shape: tuple[int, int]) -> "QuantizedMatrix":
        """Import raw GGUF blocks (uint8 [rows, bytes_per_row]) of Q4_0, Q4_1 or Q8_0 bit for bit."""
        rows, cols = shape
        with np.errstate(over="ignore", invalid="ignore"):  # a damaged scale becomes inf/NaN: the loader refuses it
            return cls._from_ggml(blocks, type_name, rows, cols)

    @classmethod
    def _from_ggml(cls, blocks: np.ndarray, type_name: str, rows: int, cols: int) -> "QuantizedMatrix":
        if type_name == "Q8_0":
            b = blocks.reshape(rows, cols // 32, 34)
            d = b[..., :2].copy().view(np.float16)[..., 0]
            codes = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
            return cls(codes.reshape(rows, cols), d, (d * np.float16(-128)).astype(np.float16), 8, 32)
        if type_name in ("Q4_0", "Q4_1"):
            nbytes = 18 if type_name == "Q4_0" else 20
            b = blocks.reshape(rows, cols // 32, nbytes)
            d = b[..., :2].copy().view(np.float16)[..., 0]
            if type_name == "Q4_1":
                m = b[..., 2:4].copy().view(np.float16)[..., 0]
            else:
                m = (d * np.float16(-8)).astype(np.float16)
            qs = b[..., nbytes - 16 :]
            # ggml packs element j in the low nibble and element j+16 in the high nibble of byte j.
            codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
            return cls(codes.reshape(rows, cols).astype(np.uint8), d, m, 4, 32)
        raise ValueError(f"not a block type this importer reads exactly: {type_name}")


def storage_bits_per_weight(bits: int, group: int, cols: int, scale_format: str = "fp16") -> float:
    return bits + SCALE_BITS[scale_format] / group + ROW_SCALE_BITS[scale_format] / cols


Tensor = Union[QuantizedMatrix, np.ndarray]


def as_float(t: Tensor) -> np.ndarray:
    return t.dequantize() if isinstance(t, QuantizedMatrix) else t


@dataclass(eq=False)
class LayerWeights:
    """One transformer block. Q and K rows are in GGUF order (RoPE on adjacent pairs)."""

    attn_norm: np.ndarray
    wq: Tensor
    wk: Tensor
    wv: Tensor
    wo: Tensor
    ffn_norm: np.ndarray
    w_gate: Tensor
    w_up: Tensor
    w_down: Tensor

    LINEAR = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

    def linears(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.LINEAR}


@dataclass(eq=False)
class ModelWeights:
    token_embedding: Tensor  # [vocab, dim]
    output_norm: np.ndarray
    output: Tensor | None  # [vocab, dim]; None when tied to the embedding
    layers: list[LayerWeights] = field(default_factory=list)

    @property
    def lm_head(self) -> Tensor:
        return self.token_embedding if self.output is None else self.output


class LoraAdapter:
    """LoRA factors per (layer index, linear name): y += scale * B (A x), A [r, in], B [out, r], fp32.

    Q/K factors are in GGUF row order, like the base weights they adapt.
    """

    def __init__(self, factors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, float]]):
        self.factors = {key: (np.asarray(a, np.float32), np.asarray(b, np.float32), float(s))
                        for key, (a, b, s) in factors.items()}

    def delta(self, key: tuple[int, str], x: np.ndarray) -> np.ndarray | None:
        f = self.factors.get(key)
        if f is None:
            return None
        a, b, s = f
        # fp64 products rounded to fp32: the same on every BLAS kernel (fp32 sums would follow its order)
        ax = (np.asarray(x, np.float64) @ a.T).astype(np.float32)
        return (ax.astype(np.float64) @ b.T).astype(np.float32) * np.float32(s)
