"""The facts of a LLaMA-family model that the golden model, the compiler and the hardware all need."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    name: str
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def validate(self) -> None:
        from ..errors import RomaError

        if self.dim % self.n_heads:
            raise RomaError(f"model dimension {self.dim} is not a multiple of the head count {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise RomaError(f"head count {self.n_heads} is not a multiple of the KV head count {self.n_kv_heads}")
        if self.head_dim % 2:
            raise RomaError(f"head dimension {self.head_dim} is odd; RoPE needs pairs")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["head_dim"] = self.head_dim
        return d
