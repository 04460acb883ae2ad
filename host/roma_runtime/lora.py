"""LoRA adapters: read PEFT folders, validate them against the model and the hardware, pack them into the
LoRA memory format of the accelerator, and keep several resident in numbered slots with an atomic switch.

The numerics contract: per adapted linear, A (r x in) and B (out x r) in writable memory, fp16 or int8 with
per-row scales, and y += scale * B (A x) with scale = alpha / r (alpha / sqrt(r) for rsLoRA).

PEFT facts this module relies on (peft 0.21, checked against its source):
- adapter_model.safetensors names factors `base_model.model.<module>.lora_A.weight` ([r, in]) and
  `...lora_B.weight` ([out, r]); both are nn.Linear weights whatever `fan_in_fan_out` says. That flag only
  describes how the *base* weight is stored (GPT-2's Conv1D); PEFT forces it off for nn.Linear targets such as
  LLaMA's, so the factors need no transposition and the flag is recorded but changes nothing.
- scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; r and alpha per module come from
  rank_pattern / alpha_pattern, whose keys match the end of the module name (`(.*\\.)?(key)$`).
- Adapters are trained on the Hugging Face layout; our Q/K rows are in GGUF order (adjacent-pair RoPE), so the
  B factor of q_proj/k_proj gets its rows permuted the same way as the base weights (A is untouched: inputs
  are not permuted).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .artifact.lora_unit import LoraUnit
from .artifact.lora_image import PACK_DTYPES, SCALE_DTYPES, packed_size, read_image, write_image
from .errors import RomaError
from .model.config import ModelConfig, linear_shapes
from .model.loader import LoadedModel, permute_to_gguf_rope, read_json_object
from .model.safetensors_io import read_safetensors
from .model.weights import LayerWeights, LoraAdapter

LINEAR = LayerWeights.LINEAR  # ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
PEFT_NAMES = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo",
              "gate_proj": "w_gate", "up_proj": "w_up", "down_proj": "w_down"}
OUR_TO_PEFT = {v: k for k, v in PEFT_NAMES.items()}
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# The LoRA slots for a model that is not a build (the golden model holds any count and rank). A build's LoRA unit
# (artifact/lora_unit.py: the manifest's "lora_unit") sets them for every backend that runs the build.
DEFAULT_SLOTS = 4
DEFAULT_MAX_RANK = 64

_SUPPORTED = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
# LoRA variants whose inference is not y += s B(Ax) on the 7 linears (PEFT config keys; truthy = in use).
_VARIANT_KEYS = {
    "alora_invocation_tokens": "activated LoRA (aLoRA) switches the adapter on only after invocation tokens",
    "use_qalora": "QA-LoRA pools the inputs of A by groups",
    "layer_replication": "layer replication changes the base model's layer stack",
    "target_parameters": "target_parameters adapts raw parameters (MoE experts), not linear modules",
    "trainable_token_indices": "trainable tokens change rows of the embedding, which lives in ROM",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "arrow_config": "Arrow routes among several adapters per token",
    "kasa_config": "KaSA inserts a learned diagonal between A and B and modifies the base weights",
    "monteclora_config": "MonteCLoRA samples the factors",
}
# Initialisations that rewrite the base weights: the saved adapter only fits that modified base.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga")

Factor = tuple  # (A [r, in] fp32, B [out, r] fp32, scale float)


def _config_of(model) -> ModelConfig:
    if isinstance(model, LoadedModel):
        return model.config
    if isinstance(model, ModelConfig):
        return model
    raise TypeError(f"expected a LoadedModel or ModelConfig, not {type(model).__name__}")


# --- the adapter ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Adapter:
    """LoRA factors for one model: {(layer, linear): (A [r, in], B [out, r], scale)}, fp32, Q/K in GGUF order.

    `n_layers` and `shapes` ({linear: (out, in)}) describe the model the adapter is for; the rest is metadata.
    """

    name: str
    factors: dict[tuple[int, str], Factor]
    n_layers: int
    shapes: dict[str, tuple[int, int]]
    r: int | None = None  # the config's default rank (PEFT `r`)
    alpha: float | None = None  # the config's default lora_alpha
    rslora: bool = False
    source: str | None = None
    base_model: str | None = None
    peft_config: dict = field(default_factory=dict)

    @classmethod
    def from_factors(cls, name: str, model, factors: dict[tuple[int, str], Factor]) -> "Adapter":
        """An adapter made in code (LoftQ compensation, tests), validated against the model."""
        config = _config_of(model)
        a = cls(name, {k: _as_factor(*v) for k, v in factors.items()}, config.n_layers, linear_shapes(config))
        a.check_model(config)
        return a

    # facts
    @property
    def targets(self) -> tuple[str, ...]:
        present = {name for _, name in self.factors}
        return tuple(n for n in LINEAR if n in present)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({i for i, _ in self.factors}))

    @property
    def ranks(self) -> dict[tuple[int, str], int]:
        return {k: int(v[0].shape[0]) for k, v in sorted(self.factors.items(), key=_item_order)}

    @property
    def max_rank(self) -> int:
        return max((v[0].shape[0] for v in self.factors.values()), default=0)

    @property
    def parameter_count(self) -> int:
        return int(sum(a.size + b.size for a, b, _ in self.factors.values()))

    @property
    def bytes(self) -> int:
        """The factors at fp16, unpadded (the packed size at a slot rank is PackedLora.nbytes)."""
        return 2 * self.parameter_count

    def check_model(self, model) -> None:
        """RomaError unless every factor fits the model's linear shapes (an adapter made for another model)."""
        config = _config_of(model)
        shapes = linear_shapes(config)
        for (layer, name), (a, b, _) in sorted(self.factors.items(), key=_item_order):
            if not 0 <= layer < config.n_layers:
                raise RomaError(f"adapter '{self.name}' adapts layer {layer}, but {config.name} has "
                                f"{config.n_layers} layers", hint="use the adapter made for this model")
            out, inp = shapes[name]
            r = a.shape[0]
            if a.shape != (r, inp) or b.shape != (out, r):
                raise RomaError(
                    f"adapter '{self.name}' layer {layer} {name}: A {a.shape} / B {b.shape} do not fit "
                    f"{config.name}, which needs A ({r}, {inp}) and B ({out}, {r})",
                    hint="the adapter was made for another model; use one trained on this base model")

    def to_golden(self):
        """The golden model's LoraAdapter: exactly these fp32 factors (no storage rounding)."""
        return LoraAdapter(dict(self.factors))

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts: what `roma lora inspect` prints."""
        per_target = {}
        for name in self.targets:
            keys = [k for k in self.factors if k[1] == name]
            ranks = sorted({int(self.factors[k][0].shape[0]) for k in keys})
            scales = sorted({float(self.factors[k][2]) for k in keys})
            per_target[OUR_TO_PEFT[name]] = {"linear": name, "layers": sorted(k[0] for k in keys),
                                             "ranks": ranks, "scales": scales}
        return {
            "name": self.name,
            "source": self.source,
            "base_model": self.base_model,
            "r": self.r,
            "lora_alpha": self.alpha,
            "use_rslora": self.rslora,
            "fan_in_fan_out": bool(self.peft_config.get("fan_in_fan_out", False)),
            "rank_pattern": self.peft_config.get("rank_pattern") or {},
            "alpha_pattern": self.peft_config.get("alpha_pattern") or {},
            "targets": [OUR_TO_PEFT[n] for n in self.targets],
            "layers": list(self.layers),
            "max_rank": self.max_rank,
            "modules": len(self.factors),
            "parameter_count": self.parameter_count,
            "bytes_fp16": self.bytes,
            "per_target": per_target,
        }


def _order(key: tuple[int, str]) -> tuple[int, int]:
    return key[0], LINEAR.index(key[1])


def _item_order(item) -> tuple[int, int]:
    return _order(item[0])


def _as_factor(a, b, scale) -> Factor:
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise RomaError(f"LoRA factors must be A [r, in] and B [out, r]; got A {a.shape} and B {b.shape}")
    return a, b, float(scale)


# --- reading PEFT folders ---------------------------------------------------------------------------------

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                  r"lora_magnitude_vector|lora_diag)(?:\.(?!(?:weight|bias)$)(?P<adapter>[A-Za-z0-9_-]+))?"
                  r"(?:\.(?P<param>weight|bias))?$")
_LAYER_MODULE = re.compile(r"^(?:model\.)?layers\.(?P<layer>\d+)\.(?P<parent>self_attn|mlp)\.(?P<proj>\w+)$")


def _read_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise RomaError(f"{folder} has no adapter_config.json",
                        hint="give the folder that PEFT's save_pretrained wrote (adapter_config.json + "
                             "adapter_model.safetensors)")
    return read_json_object(path, hint="re-save the adapter with PEFT's save_pretrained")


def _number(cfg: dict, key: str, default=None, positive=True):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and not v > 0) or not math.isfinite(v):
        raise RomaError(f"adapter_config.json: {key} must be a positive number, not {v!r}")
    return v


def _check_config(cfg: dict, path: Path) -> None:
    """Refuse what the hardware cannot run, one clear message each."""
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise RomaError(f"{path}: peft_type {cfg.get('peft_type')} is not LoRA",
                        hint="ROMA's LoRA unit runs plain LoRA adapters (peft_type LORA)")
    if cfg.get("use_dora"):
        raise RomaError(f"{path}: the adapter uses DoRA (use_dora: true), which the LoRA unit cannot run: DoRA "
                        "rescales every output by a norm of the merged base weight, and the base lives in ROM",
                        hint="train a plain LoRA (use_dora=False)")
    if cfg.get("modules_to_save"):
        saved = cfg["modules_to_save"]
        saved = saved if isinstance(saved, list) else [saved]
        raise RomaError(f"{path}: the adapter saves full copies of {', '.join(map(str, saved))} "
                        "(modules_to_save); those weights live in ROM and cannot be replaced",
                        hint="train without modules_to_save (LoRA factors only)")
    if str(cfg.get("bias", "none")) != "none":
        raise RomaError(f"{path}: bias '{cfg.get('bias')}' trains biases of the base model, which has none in ROM",
                        hint="train with bias='none'")
    if cfg.get("lora_bias"):
        raise RomaError(f"{path}: lora_bias adds a bias to B, which the LoRA unit does not have",
                        hint="train with lora_bias=False")
    for key, why in _VARIANT_KEYS.items():
        if cfg.get(key):
            raise RomaError(f"{path}: {key} is set: {why}; the LoRA unit runs plain LoRA only",
                            hint="train a plain LoRA adapter")
    init = str(cfg.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_CHANGING_INITS):
        raise RomaError(f"{path}: init_lora_weights '{cfg['init_lora_weights']}' rewrote the base weights at "
                        "training start, so this adapter fits that modified base, not the one in ROM",
                        hint="convert it to a plain LoRA when saving (PEFT's save_pretrained with "
                             "path_initial_model_for_weight_conversion)")
    targets = cfg.get("target_modules")
    if targets is None or targets == "all-linear":
        return
    candidates = {f"model.layers.0.{PARENT[p]}.{p}": True for p in PEFT_NAMES}
    candidates.update({"model.embed_tokens": False, "lm_head": False})
    if isinstance(targets, str):
        try:
            rx = re.compile(targets)
        except re.error as e:
            raise RomaError(f"{path}: target_modules regex {targets!r} is invalid ({e})") from None
        hit = [c for c in candidates if rx.fullmatch(c)]
        bad = [c for c in hit if not candidates[c]]
    elif isinstance(targets, list):
        bad = [t for t in targets if str(t).rsplit(".", 1)[-1] not in PEFT_NAMES]
        hit = targets
    else:
        raise RomaError(f"{path}: target_modules must be a list or a regex string, not {targets!r}")
    if bad:
        raise RomaError(f"{path}: the adapter targets {', '.join(map(str, bad))}; the LoRA unit adapts only the 7 "
                        f"linears of each block ({_SUPPORTED}) — embeddings and the LM head live in ROM",
                        hint=f"retrain with target_modules among {_SUPPORTED} (or 'all-linear')")
    if not hit:
        raise RomaError(f"{path}: target_modules {targets!r} matches none of {_SUPPORTED}")


def _compile_patterns(patterns: dict, what: str, path: Path) -> list[tuple[re.Pattern, Any]]:
    """rank_pattern / alpha_pattern as compiled regexes (PEFT's `(.*\\.)?(key)$`), each value a positive number:
    RomaError for a key that is not a valid regex or a value that is not a positive number."""
    out = []
    for key, value in patterns.items():
        try:
            rx = re.compile(rf"(.*\.)?({key})$")
        except (re.error, RecursionError, OverflowError) as e:
            raise RomaError(f"{path}: {what} key {key!r} is not a valid regular expression ({e})",
                            hint="fix the key in adapter_config.json, or re-save the adapter with PEFT") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
            raise RomaError(f"{path}: {what} gives {key!r} the value {value!r}, not a positive number")
        out.append((rx, value))
    return out


def _pattern_value(patterns, module: str, default):
    """PEFT's rule: the first pattern key that matches the end of the module name (`(.*\\.)?(key)$`); `patterns`
    as _compile_patterns returns them."""
    for rx, value in patterns or ():
        if rx.match(module):
            return value
    return default


def _read_tensors(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise RomaError(f"{folder} holds adapter_model.bin (a pickled PyTorch file), which ROMA does not read: "
                            "unpickling can run arbitrary code",
                            hint="re-save it as safetensors: model.save_pretrained(dir, safe_serialization=True)")
        raise RomaError(f"{folder} has no adapter_model.safetensors",
                        hint="give the folder that PEFT's save_pretrained wrote")
    if path.stat().st_size < 8:
        raise RomaError(f"{path} is not a safetensors file (only {path.stat().st_size} bytes); is it truncated?")
    try:
        return path, read_safetensors(path)
    except RomaError:
        raise
    except Exception as e:  # a corrupt header can fail in many ways (bad offsets, shapes, dtypes)
        raise RomaError(f"{path} is not a readable safetensors file; is it truncated or corrupt? "
                        f"({type(e).__name__}: {e})") from None


def read_peft_adapter(folder: str | Path, model, max_rank: int = DEFAULT_MAX_RANK,
                      name: str | None = None) -> Adapter:
    """Read a PEFT LoRA folder for `model` (LoadedModel or ModelConfig); RomaError on anything the hardware
    cannot run or that does not fit the model. Factors come back in fp32, q/k B rows in GGUF order."""
    config = _config_of(model)
    adapter = _read_peft(Path(folder), name)
    shapes = linear_shapes(config)
    factors = {}
    for (layer, proj), (a, b, scale, key_a, key_b) in adapter.pop("raw").items():
        ours = PEFT_NAMES[proj]
        out, inp = shapes[ours]
        r = a.shape[0]
        if layer >= config.n_layers:
            raise RomaError(f"{key_a} adapts layer {layer}, but {config.name} has only {config.n_layers} layers",
                            hint="the adapter was made for another model; use one trained on this base model")
        if a.shape != (r, inp):
            raise RomaError(f"tensor {key_a} has shape {a.shape}, but {config.name}'s {proj} takes {inp} inputs: "
                            f"expected ({r}, {inp})",
                            hint="the adapter was made for another model; use one trained on this base model")
        if b.shape != (out, r):
            raise RomaError(f"tensor {key_b} has shape {b.shape}, but {config.name}'s {proj} has {out} outputs and "
                            f"the adapter rank is {r}: expected ({out}, {r})",
                            hint="the adapter was made for another model; use one trained on this base model")
        if r > max_rank:
            raise RomaError(f"layer {layer} {proj} has rank {r}, above the LoRA slot rank {max_rank}",
                            hint=f"use an adapter of rank <= {max_rank} (retrain with a smaller r, or truncate "
                                 "it by SVD of B A), or build the hardware with larger slots")
        if ours == "wq":
            b = permute_to_gguf_rope(b, config.n_heads)
        elif ours == "wk":
            b = permute_to_gguf_rope(b, config.n_kv_heads)
        factors[(layer, ours)] = (np.ascontiguousarray(a), np.ascontiguousarray(b), scale)
    return Adapter(factors=factors, n_layers=config.n_layers, shapes=shapes, **adapter)


def _read_peft(folder: Path, name: str | None) -> dict:
    """Config checks, tensor names, A/B pairing, rank/alpha per module; shapes are not checked here."""
    if not folder.is_dir():
        raise RomaError(f"no adapter folder at '{folder}'",
                        hint="give the folder that PEFT's save_pretrained wrote")
    cfg = _read_config(folder)
    cfg_path = folder / "adapter_config.json"
    _check_config(cfg, cfg_path)
    r_default = _number(cfg, "r", 8)
    alpha_default = _number(cfg, "lora_alpha", 8)
    rslora = bool(cfg.get("use_rslora", False))
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, dict) or not isinstance(alpha_pattern, dict):
        raise RomaError(f"{cfg_path}: rank_pattern and alpha_pattern must be JSON objects")
    rank_rules = _compile_patterns(rank_pattern, "rank_pattern", cfg_path)
    alpha_rules = _compile_patterns(alpha_pattern, "alpha_pattern", cfg_path)
    path, tensors = _read_tensors(folder)

    pairs: dict[tuple[int, str], dict[str, tuple[str, np.ndarray]]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        module = m.group("module") if m else key
        if m is None:
            raise RomaError(f"{path}: tensor {key} is not a LoRA factor; the adapter carries other weights",
                            hint="save only LoRA factors (no modules_to_save or extra parameters)")
        if m.group("kind") == "lora_magnitude_vector":
            raise RomaError(f"{path}: tensor {key} is a DoRA magnitude vector; DoRA is not supported",
                            hint="train a plain LoRA (use_dora=False)")
        lm = _LAYER_MODULE.match(module)
        if lm is None or lm.group("proj") not in PEFT_NAMES or PARENT[lm.group("proj")] != lm.group("parent"):
            raise RomaError(f"{path}: the adapter targets {module} (tensor {key}); the LoRA unit adapts only the 7 "
                            f"linears of each block ({_SUPPORTED}) — embeddings and the LM head live in ROM",
                            hint=f"retrain with target_modules among {_SUPPORTED} (or 'all-linear')")
        if m.group("kind") not in ("lora_A", "lora_B") or m.group("param") == "bias":
            raise RomaError(f"{path}: tensor {key} is not a plain LoRA factor (A or B weight)",
                            hint="train a plain LoRA without lora_bias or variants")
        slot = pairs.setdefault((int(lm.group("layer")), lm.group("proj")), {})
        side = m.group("kind")[-1]
        if side in slot:
            raise RomaError(f"{path}: two tensors for {module} lora_{side}: {slot[side][0]} and {key}",
                            hint="the file holds more than one adapter; save each adapter on its own")
        slot[side] = (key, value)
    if not pairs:
        raise RomaError(f"{path} holds no LoRA factors")

    raw = {}
    for (layer, proj), slot in sorted(pairs.items(), key=lambda kv: (kv[0][0], list(PEFT_NAMES).index(kv[0][1]))):
        module = f"model.layers.{layer}.{PARENT[proj]}.{proj}"
        for side, other in (("A", "B"), ("B", "A")):
            if side not in slot:
                raise RomaError(f"{path}: {module} has lora_{other} ({slot[other][0]}) but no lora_{side}",
                                hint="the file is incomplete; re-save the adapter")
        (key_a, a), (key_b, b) = slot["A"], slot["B"]
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        if a.ndim != 2 or b.ndim != 2:
            raise RomaError(f"{path}: {key_a} and {key_b} must be matrices, not shapes {a.shape} and {b.shape}")
        if a.shape[0] != b.shape[1]:
            raise RomaError(f"{path}: {key_a} has rank {a.shape[0]} but {key_b} has rank {b.shape[1]} "
                            f"(shapes {a.shape} and {b.shape})", hint="the file is inconsistent; re-save the adapter")
        for k, t in ((key_a, a), (key_b, b)):
            if not np.isfinite(t).all():
                raise RomaError(f"{path}: tensor {k} holds NaN or infinite values",
                                hint="the adapter is broken (diverged training?)")
        r = a.shape[0]
        r_cfg = _pattern_value(rank_rules, module, r_default)
        alpha = _pattern_value(alpha_rules, module, alpha_default)
        if r_cfg != r:
            raise RomaError(f"{path}: {key_a} has rank {r}, but adapter_config.json gives {module} rank {r_cfg}",
                            hint="the config does not belong to these tensors; re-save the adapter")
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        raw[(layer, proj)] = (a, b, float(scale), key_a, key_b)
    return {
        "raw": raw,
        "name": name or folder.resolve().name,
        "r": int(r_default),
        "alpha": float(alpha_default),
        "rslora": rslora,
        "source": str(folder),
        "base_model": cfg.get("base_model_name_or_path"),
        "peft_config": cfg,
    }


def inspect_peft_adapter(folder: str | Path, model=None, max_rank: int = DEFAULT_MAX_RANK) -> dict[str, Any]:
    """What `roma lora inspect` shows. Without a model only the folder is checked (not the shapes)."""
    folder = Path(folder)
    if model is not None:
        return read_peft_adapter(folder, model, max_rank).summary()
    info = _read_peft(folder, None)
    raw = info.pop("raw")
    # Shapes unknown without a model: summarise the factors in PEFT's own layout.
    factors = {(layer, PEFT_NAMES[p]): (a, b, s) for (layer, p), (a, b, s, _, _) in raw.items()}
    summary = Adapter(factors=factors, n_layers=0, shapes={}, **info).summary()
    too_big = [f"layer {k[0]} {OUR_TO_PEFT[k[1]]} (rank {v[0].shape[0]})" for k, v in factors.items()
               if v[0].shape[0] > max_rank]
    summary["fits_slot_rank"] = not too_big
    summary["slot_rank"] = max_rank
    return summary


# --- the LoRA memory format (artifact/lora_image.py) ------------------------------------------------------


@dataclass(eq=False)
class PackedLora:
    """An adapter in the accelerator's LoRA memory format (one slot's contents).

    Layout: artifact/lora_image.py.
    """

    name: str
    buffer: np.ndarray  # uint8
    dtype: str
    scale_dtype: str | None
    slot_rank: int
    n_layers: int

    @property
    def nbytes(self) -> int:
        return int(self.buffer.size)

    def to_bytes(self) -> bytes:
        return self.buffer.tobytes()

    def unpack(self) -> Adapter:
        return unpack(self.buffer, self.name)

    def to_golden(self):
        """The golden LoraAdapter with the factors as stored (fp16- or int8-rounded), read back from the buffer."""
        return self.unpack().to_golden()


MAX_SLOTS = 256


def max_slot_rank(config: ModelConfig) -> int:
    """The largest slot rank worth having: a linear's LoRA rank is at most its smaller side, at most the model
    width, so a larger slot would only hold zeros (and its memory: a slot's bytes grow with its rank)."""
    return max(min(out, inp) for out, inp in linear_shapes(config).values())


def check_slot_rank(slot_rank, config: ModelConfig) -> None:
    """RomaError unless 1 <= slot_rank <= max_slot_rank(config), naming the bound."""
    if isinstance(slot_rank, bool) or not isinstance(slot_rank, int) or slot_rank < 1:
        raise RomaError(f"the LoRA slot rank must be a positive integer, not {slot_rank!r}")
    bound = max_slot_rank(config)
    if slot_rank > bound:
        raise RomaError(f"a LoRA slot rank of {slot_rank} is above {config.name}'s largest useful rank {bound} "
                        f"(the model width: no linear has a higher rank), and each slot would take "
                        f"{slot_bytes(config, slot_rank) / (1 << 20):.0f} MiB",
                        hint=f"use --lora-rank {min(bound, DEFAULT_MAX_RANK)} (the default is {DEFAULT_MAX_RANK})")


def slot_bytes(model, slot_rank: int = DEFAULT_MAX_RANK, dtype: str = "fp16", scale_dtype: str = "fp16") -> int:
    """Size of one slot: an adapter on all 7 linears of every layer at the slot rank."""
    config = _config_of(model)
    return packed_size(config.n_layers, linear_shapes(config), list(LINEAR) * config.n_layers, slot_rank, dtype,
                       scale_dtype)


def pack(adapter: Adapter, dtype: str = "fp16", slot_rank: int = DEFAULT_MAX_RANK,
         scale_dtype: str = "fp16") -> PackedLora:
    """The adapter in the LoRA memory format (see PackedLora). RomaError if a rank exceeds the slot rank or a
    value does not fit fp16."""
    if type(slot_rank) is int and adapter.max_rank > slot_rank:  # the linear named as the adapter names it
        (layer, name), r = max(adapter.ranks.items(), key=lambda kv: kv[1])
        raise RomaError(f"adapter '{adapter.name}' layer {layer} {OUR_TO_PEFT[name]} has rank {r}, above the LoRA "
                        f"slot rank {slot_rank}", hint=f"use an adapter of rank <= {slot_rank}")
    buf = write_image(adapter.factors, adapter.n_layers, adapter.shapes, dtype, slot_rank, scale_dtype, adapter.name)
    return PackedLora(adapter.name, buf, dtype, None if dtype != "int8" else scale_dtype, slot_rank, adapter.n_layers)


def unpack(buffer, name: str = "packed") -> Adapter:
    """The inverse of pack: an Adapter with the stored (rounded) factors, unpadded, fp32."""
    factors, n_layers, shapes = read_image(buffer)
    return Adapter(name, factors, n_layers, shapes)


# --- combining adapters -----------------------------------------------------------------------------------


def concat(a: Adapter, b: Adapter, name: str | None = None) -> Adapter:
    """One adapter equal to applying both: per linear, A = [A_a; A_b] and B = [s_a B_a, s_b B_b] with scale 1
    (the scales are folded into B, so adapters with different alpha/r combine). Ranks add up; e.g. a task
    adapter plus a quantization-compensating (LoftQ) adapter of the ROM base."""
    if a.n_layers != b.n_layers or a.shapes != b.shapes:
        raise RomaError(f"adapters '{a.name}' and '{b.name}' are for different models and cannot be combined")
    factors = {}
    for key in sorted(set(a.factors) | set(b.factors), key=_order):
        parts = [f for f in (a.factors.get(key), b.factors.get(key)) if f is not None]
        A = np.concatenate([p[0] for p in parts], axis=0)
        B = np.concatenate([p[1] * np.float32(p[2]) for p in parts], axis=1)
        factors[key] = (A, B, 1.0)
    return Adapter(name or f"{a.name}+{b.name}", factors, a.n_layers, dict(a.shapes), rslora=False,
                   peft_config={"concat": [a.name, b.name]})


# --- resident adapters ------------------------------------------------------------------------------------


AdapterLike = Union[Adapter, str, Path]


@dataclass
class SlotEvent:
    op: str  # "load", "activate", "unload"
    name: str | None
    slot: int | None
    seconds: float
    nbytes: int = 0


class LoraSlots:
    """Adapters resident in numbered slots of the LoRA memory, one of them (or none) active.

    `load` reads, validates and packs before touching any slot, so a failed load changes nothing (including
    which adapter is active). `activate` is one assignment: the switch the hardware makes by writing the active
    slot register. Loading a name that is resident replaces it in its slot (and, if it is active, it stays
    active with the new contents). Every change increments `version`: a KV cache filled under another adapter
    (or none) is stale, so an Engine should compare versions and drop cached prefixes when it changes.
    """

    def __init__(self, model, capacity: int = DEFAULT_SLOTS, slot_rank: int = DEFAULT_MAX_RANK, dtype: str = "fp16",
                 scale_dtype: str = "fp16", unit: LoraUnit | None = None):
        """unit: the build's LoRA unit these slots live in (artifact/lora_unit.py), whose targets bound what an
        adapter may adapt and whose reservation the refusals name; None: a model without a build (every linear)."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise RomaError(f"the LoRA slot count must be a positive integer, not {capacity!r}")
        if capacity > MAX_SLOTS:
            raise RomaError(f"{capacity} LoRA slots asked; at most {MAX_SLOTS} are supported (MAX_SLOTS)",
                            hint=f"use --lora-slots {MAX_SLOTS} or fewer")
        if isinstance(slot_rank, bool) or not isinstance(slot_rank, int) or slot_rank < 1:
            raise RomaError(f"the LoRA slot rank must be a positive integer, not {slot_rank!r}")
        if dtype not in PACK_DTYPES:
            raise RomaError(f"unsupported LoRA storage type {dtype!r}", hint=f"use {' or '.join(PACK_DTYPES)}")
        if scale_dtype not in SCALE_DTYPES:
            raise RomaError(f"unsupported LoRA scale type {scale_dtype!r}", hint=f"use {' or '.join(SCALE_DTYPES)}")
        self.model = model
        self.config = _config_of(model)
        self.capacity = capacity
        self.slot_rank = slot_rank
        self.dtype = dtype
        self.scale_dtype = scale_dtype
        self.unit = unit
        self.targets = unit.targets if unit is not None else LINEAR
        self.slot_bytes = slot_bytes(self.config, slot_rank, dtype, scale_dtype)
        self._slots: list[tuple[str, PackedLora, Any, Adapter] | None] = [None] * capacity
        self._active: int | None = None
        self.version = 0
        self.events: list[SlotEvent] = []

    # queries
    def names(self) -> list[str]:
        return [s[0] for s in self._slots if s is not None]

    def slot_of(self, name: str) -> int:
        for i, s in enumerate(self._slots):
            if s is not None and s[0] == name:
                return i
        raise RomaError(f"no LoRA adapter named '{name}' is loaded",
                        hint=f"loaded: {', '.join(self.names()) or 'none'}")

    @property
    def active(self) -> str | None:
        return None if self._active is None else self._slots[self._active][0]

    @property
    def active_slot(self) -> int | None:
        return self._active

    def packed(self, name: str) -> PackedLora:
        return self._slots[self.slot_of(name)][1]

    def adapter(self, name: str) -> Adapter:
        return self._slots[self.slot_of(name)][3]

    def golden_adapter(self):
        """The golden LoraAdapter of the active slot (the packed, storage-rounded factors), or None."""
        return None if self._active is None else self._slots[self._active][2]

    def apply_to(self, golden) -> None:
        """Point a GoldenModel (anything with a `.lora`) at the active slot."""
        golden.lora = self.golden_adapter()

    @property
    def last_load_seconds(self) -> float | None:
        return next((e.seconds for e in reversed(self.events) if e.op == "load"), None)

    @property
    def last_swap_seconds(self) -> float | None:
        return next((e.seconds for e in reversed(self.events) if e.op == "activate"), None)

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for i, s in enumerate(self._slots):
            if s is None:
                rows.append({"slot": i, "name": None})
                continue
            name, packed, _, adapter = s
            rows.append({"slot": i, "name": name, "active": i == self._active, "bytes": packed.nbytes,
                         "max_rank": adapter.max_rank, "targets": [OUR_TO_PEFT[n] for n in adapter.targets],
                         "source": adapter.source})
        return rows

    # changes
    def load(self, name: str, adapter_or_folder: AdapterLike) -> int:
        """Validate and pack, then place in a slot (the same one when `name` is resident). Returns the slot."""
        t0 = time.perf_counter()
        if not isinstance(name, str) or not name.strip():
            raise RomaError(f"an adapter needs a non-empty name, not {name!r}")
        resident = next((i for i, s in enumerate(self._slots) if s is not None and s[0] == name), None)
        free = next((i for i, s in enumerate(self._slots) if s is None), None)
        target = resident if resident is not None else free
        if target is None:
            raise RomaError(f"all {self.capacity} LoRA slots are in use ({', '.join(self.names())})",
                            hint="unload an adapter first" + (
                                f" (this build's LoRA unit has {self.unit.describe()}; roma compile --lora-slots "
                                f"{self.capacity + 1} reserves more)" if self.unit is not None else ""))
        if isinstance(adapter_or_folder, Adapter):
            adapter = adapter_or_folder
            adapter.check_model(self.config)
        elif isinstance(adapter_or_folder, (str, Path)):
            adapter = read_peft_adapter(adapter_or_folder, self.config, max_rank=max_slot_rank(self.config),
                                        name=name)
        else:
            raise TypeError(f"expected an Adapter or a folder, not {type(adapter_or_folder).__name__}")
        self.check_fits(adapter)
        packed = pack(adapter, self.dtype, self.slot_rank, self.scale_dtype)
        packed.name = name
        golden = packed.to_golden()
        # Nothing above touched a slot; the commit is one assignment.
        self._slots[target] = (name, packed, golden, adapter)
        self.version += 1
        self.events.append(SlotEvent("load", name, target, time.perf_counter() - t0, packed.nbytes))
        return target

    def check_fits(self, adapter: Adapter) -> None:
        """RomaError unless the adapter fits these slots: its ranks at most the slot rank, its linears among the
        targets (the linears the build's LoRA unit has memory for), naming the reservation and what to do."""
        where = (f"this build's LoRA unit ({self.unit.describe()})" if self.unit is not None
                 else f"the LoRA slots (rank {self.slot_rank})")
        off = [n for n in adapter.targets if n not in self.targets]
        if off:
            want = " ".join(n for n in LINEAR if n in off or n in self.targets)
            raise RomaError(f"adapter '{adapter.name}' adapts {', '.join(OUR_TO_PEFT[n] for n in off)}, for which "
                            f"{where} has no memory",
                            hint=f"recompile the build with roma compile --lora-targets {want}, or use an adapter "
                                 f"of {', '.join(OUR_TO_PEFT[n] for n in self.targets)} only")
        if adapter.max_rank > self.slot_rank:
            (layer, lin), r = max(adapter.ranks.items(), key=lambda kv: kv[1])
            raise RomaError(f"adapter '{adapter.name}' layer {layer} {OUR_TO_PEFT[lin]} has rank {r}, above the "
                            f"LoRA slot rank {self.slot_rank} of {where}",
                            hint=(f"recompile the build with roma compile --lora-slot-rank {r}" if self.unit is not None
                                  else f"use --lora-rank {r}") + f", or use an adapter of rank <= {self.slot_rank}")

    def activate(self, name: str | None) -> None:
        """Make `name` the active adapter (None: no adapter). Atomic: one assignment after validation."""
        t0 = time.perf_counter()
        slot = None if name is None else self.slot_of(name)
        changed = slot != self._active
        self._active = slot
        if changed:
            self.version += 1
        self.events.append(SlotEvent("activate", name, slot, time.perf_counter() - t0))

    def unload(self, name: str) -> None:
        """Free the adapter's slot; if it is active, no adapter is active afterwards."""
        t0 = time.perf_counter()
        slot = self.slot_of(name)
        if self._active == slot:
            self._active = None
        self._slots[slot] = None
        self.version += 1
        self.events.append(SlotEvent("unload", name, slot, time.perf_counter() - t0))
