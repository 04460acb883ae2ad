"""The facts of a LLaMA-family model that the golden model, the compiler and the hardware all need.

Every config that comes from a file (GGUF metadata, a Hugging Face config.json, a build manifest, a saved
session) is checked here before anything is sized from it: whole positive dimensions, heads that divide the
width, and every size within the bounds below, each named in the refusal. A model beyond a bound is not one
this runtime (or the accelerator) is built for, and sizing buffers from a corrupt or hostile number would
allocate without limit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import RomaError

# Bounds on what a config may state. They are far above any model the accelerator targets (SmolLM2-135M:
# 30 layers, width 576, 49,152 tokens of vocabulary, 8,192 of context) and below what would make a buffer
# sized from them absurd (a KV cache of MAX_CONTEXT positions of SmolLM2 is 24 GB).
MAX_LAYERS = 1024
MAX_DIM = 1 << 16  # model width, FFN width
MAX_HEADS = 1024
MAX_VOCAB = 1 << 20  # 1,048,576 tokens
MAX_CONTEXT = 1 << 20  # 1,048,576 positions

_BOUNDS = {"n_layers": MAX_LAYERS, "dim": MAX_DIM, "ffn_dim": MAX_DIM, "n_heads": MAX_HEADS,
           "n_kv_heads": MAX_HEADS, "vocab_size": MAX_VOCAB, "context_length": MAX_CONTEXT}
_BOUND_NAMES = {"n_layers": "MAX_LAYERS", "dim": "MAX_DIM", "ffn_dim": "MAX_DIM", "n_heads": "MAX_HEADS",
                "n_kv_heads": "MAX_HEADS", "vocab_size": "MAX_VOCAB", "context_length": "MAX_CONTEXT"}
_WHAT = {"n_layers": "layer count", "dim": "model dimension", "ffn_dim": "FFN dimension", "n_heads": "head count",
         "n_kv_heads": "KV head count", "vocab_size": "vocabulary size", "context_length": "context length"}


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

    def validate(self, where: str | None = None) -> "ModelConfig":
        """RomaError (prefixed by `where`, the file it came from) unless every dimension is a whole number
        within its bound, the heads divide the width, and the RoPE base and norm epsilon are positive and
        finite. Returns self."""
        pre = f"{where}: " if where else ""
        hint = "the model file is damaged or describes a model this runtime does not run"
        for key, bound in _BOUNDS.items():
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise RomaError(f"{pre}the {_WHAT[key]} ({key}) must be a whole number, not {v!r}", hint=hint)
            if v < 1:
                raise RomaError(f"{pre}the {_WHAT[key]} ({key}) must be at least 1, not {v}", hint=hint)
            if v > bound:
                raise RomaError(f"{pre}the {_WHAT[key]} ({key}) {v} is above the {bound} this runtime supports "
                                f"({_BOUND_NAMES[key]})", hint=hint)
        if self.dim % self.n_heads:
            raise RomaError(f"{pre}model dimension {self.dim} is not a multiple of the head count {self.n_heads}",
                            hint=hint)
        if self.n_heads % self.n_kv_heads:
            raise RomaError(f"{pre}head count {self.n_heads} is not a multiple of the KV head count "
                            f"{self.n_kv_heads}", hint=hint)
        if self.head_dim % 2:
            raise RomaError(f"{pre}head dimension {self.head_dim} is odd; RoPE needs pairs", hint=hint)
        for key in ("rope_theta", "rms_eps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
                raise RomaError(f"{pre}{key} must be a positive finite number, not {v!r}", hint=hint)
        if not isinstance(self.tied_embeddings, bool):
            raise RomaError(f"{pre}tied_embeddings must be true or false, not {self.tied_embeddings!r}", hint=hint)
        if not isinstance(self.name, str):
            raise RomaError(f"{pre}the model name must be text, not {self.name!r}", hint=hint)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["head_dim"] = self.head_dim
        return d

    @classmethod
    def from_dict(cls, d, where: str | None = None) -> "ModelConfig":
        """The config a file recorded with to_dict (a build manifest, a session file), checked: RomaError for
        anything but an object with exactly these keys (head_dim optional, and consistent) and valid values."""
        pre = f"{where}: " if where else ""
        if not isinstance(d, dict):
            raise RomaError(f"{pre}the model config must be an object, not {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        extra = [k for k in d if k not in names and k != "head_dim"]
        if missing or extra:
            what = ", ".join([f"missing {k}" for k in missing] + [f"unknown {k!r}" for k in extra])
            raise RomaError(f"{pre}the model config is malformed ({what})")
        config = cls(**{n: d[n] for n in names}).validate(where)
        if "head_dim" in d and d["head_dim"] != config.head_dim:
            raise RomaError(f"{pre}the model config's head_dim {d['head_dim']!r} is not dim / n_heads "
                            f"({config.head_dim})")
        return config


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each of the 7 linears of a block (LayerWeights.LINEAR names)."""
    d, kv, f = config.dim, config.kv_dim, config.ffn_dim
    q = config.n_heads * config.head_dim
    return {"wq": (q, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, q),
            "w_gate": (f, d), "w_up": (f, d), "w_down": (d, f)}
