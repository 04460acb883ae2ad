"""Train LoRA adapters for the exact base a device holds: `roma finetune`.

The base of a QLoRA model is frozen in ROM, so an adapter only works as intended on the base it was trained
against. This module trains on that base: a transformers LlamaForCausalLM whose linear layers hold exactly the
dequantized ROM weights of a build (or the weights of an unquantized model), with norms and embeddings from the
same source, and PEFT LoRA factors on the chosen linears of each block. What it writes is a standard PEFT
adapter folder (save_pretrained, safetensors) plus `roma_build.json`, which names the base it was trained
against; `check_adapter_build` refuses the adapter on any other base unless told otherwise.

Layout facts:
- Our Q/K rows are in GGUF order (adjacent-pair RoPE); transformers wants the Hugging Face half-split order.
  The torch model gets Q/K rows converted back (`permute_to_hf_rope`, the inverse of permute_to_gguf_rope), so
  the PEFT adapter is in the Hugging Face layout and lora.read_peft_adapter maps its q/k B rows back.
- The build's compensating LoRA (LoftQ, factors in GGUF order, scale 1) can initialise a `--distill` run.
  Such an adapter holds the compensation and replaces it (the record says "includes_compensation"); any
  other adapter is added to it.

Data: JSONL of chat conversations ({"messages": [{"role", "content"}, ...]}, rendered with the model's chat
template; loss on the assistant turns only) or of documents ({"text": ...}, loss on every token), or a .txt
file (one document, cut into windows). `--distill` needs no data: it trains the adapter to make the quantized
base reproduce the float model's next-token distributions (KL) on docstrings (compiler/quantization/corpus.py: the stdlib's
calibration split, or that interleaved with torch's docstrings; never the evaluation split).

Training: AdamW on the LoRA factors only, gradient norm clipped at 1. The learning rate is constant or (`--schedule
cosine`) rises linearly over the first 5% of the run and then follows a half cosine down to zero at its end. The
run's end is --steps, or the --minutes budget when that comes first: with a time budget the schedule follows the
clock, so the decay lands on the last step whatever the machine's speed. The data order of step s is a function
of (seed, s) alone and every random draw happens before the first step, so a fixed seed reproduces a run limited
by --steps, and `--resume` from a checkpoint continues it exactly as if it had not stopped.

torch, transformers and peft are the optional `train` extra; they are imported only in here, lazily.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .artifact.build import MANIFEST, read_manifest, sha256_files
from .artifact.lora_unit import manifest_lora_unit
from .compiler.quantization.corpus import DISTILL_TEXTS, token_windows
from .errors import RomaError
from .lora import DEFAULT_MAX_RANK, OUR_TO_PEFT, PARENT, PEFT_NAMES
from .model.loader import LoadedModel, build_source, load_build, load_model, locate_model, model_files
from .model.weights import as_float
from .tokenizer import Tokenizer

RECORD = "roma_build.json"
RECORD_FORMAT = "roma-finetune"
RECORD_VERSION = 1
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT = "state.pt"
SNAPSHOTS = "snapshots"
IGNORE = -100
DEFAULT_STEPS = 200
SCHEDULES = ("constant", "cosine")
WARMUP_SHARE = 0.05  # --schedule cosine: share of the run spent warming up
INSTALL_HINT = "pip install 'roma-runtime[train]'"
EXAMPLES = Path(__file__).resolve().parent / "examples"


# --- optional dependencies ----------------------------------------------------------------------------------


def _train_deps():
    """(torch, transformers, peft), or a RomaError that says how to install them."""
    try:
        import peft
        import torch
        import transformers
    except ImportError as e:
        raise RomaError(f"roma finetune needs torch, transformers and peft ({e.name or e} is not installed)",
                        hint=INSTALL_HINT) from None
    return torch, transformers, peft


# --- options ------------------------------------------------------------------------------------------------


@dataclass
class FinetuneOptions:
    rank: int = 16
    alpha: float | None = None  # default 2 * rank (distill from a build LoRA: rank, i.e. scale 1)
    targets: tuple[str, ...] = tuple(PEFT_NAMES)  # PEFT names
    steps: int | None = None  # None: DEFAULT_STEPS, or with a --minutes budget as many as it allows
    lr: float = 2e-4
    schedule: str = "constant"  # or "cosine": linear warm-up, then a half cosine to zero at the run's end
    batch: int = 4
    seq_len: int = 512
    seed: int = 0
    save_every: int = 50
    distill: bool = False
    distill_tokens: int = 262144  # tokens of the distillation text to distill on (cycled; "stdlib" has ~190K)
    distill_text: str = "stdlib"  # compiler.quantization.corpus.DISTILL_TEXTS
    init_from_build_lora: bool = True  # --distill: start from the build's compensating LoRA when it has one
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    minutes: float | None = None  # time budget: stop (checkpointed) once training has taken this long
    keep_snapshots: bool = False  # keep the adapter of every checkpoint under snapshots/step-NNNNNN

    def identity(self) -> dict:
        """What must match between a checkpoint and a resumed run (the run's length and saving may change)."""
        d = asdict(self)
        for k in ("steps", "save_every", "minutes", "keep_snapshots"):
            d.pop(k)
        d["targets"] = list(d["targets"])
        return d


def parse_targets(targets) -> tuple[str, ...]:
    """PEFT module names (q_proj..down_proj) from names in either spelling, 'all' or 'all-linear'; refuses what
    the LoRA unit does not adapt (embeddings, the LM head, anything else)."""
    if targets is None:
        return tuple(PEFT_NAMES)
    if isinstance(targets, str):
        targets = [t for t in targets.replace(",", " ").split() if t]
    out: list[str] = []
    for t in targets:
        t = str(t).strip()
        if t in ("all", "all-linear"):
            names = list(PEFT_NAMES)
        elif t in PEFT_NAMES:
            names = [t]
        elif t in OUR_TO_PEFT:
            names = [OUR_TO_PEFT[t]]
        else:
            raise RomaError(f"--targets {t}: the LoRA unit adapts only the 7 linears of each block "
                            f"({', '.join(PEFT_NAMES)}); embeddings and the LM head live in ROM",
                            hint="choose among " + ", ".join(PEFT_NAMES) + " (or 'all')")
        out += [n for n in names if n not in out]
    if not out:
        raise RomaError("--targets names no linear layer", hint="choose among " + ", ".join(PEFT_NAMES))
    return tuple(n for n in PEFT_NAMES if n in out)


def _check_lora_unit(o: FinetuneOptions, unit, build) -> None:
    """RomaError unless the build's LoRA unit (artifact/lora_unit.py) can hold the adapter trained with these
    options: its rank at most the slot rank, its targets among the linears the unit has memory for."""
    if o.rank > unit.rank:
        raise RomaError(f"--rank {o.rank} is above the slot rank of the LoRA unit of {build} ({unit.describe()})",
                        hint=f"use --rank <= {unit.rank}, or recompile the build with --lora-slot-rank {o.rank}")
    off = [t for t in o.targets if PEFT_NAMES[t] not in unit.targets]
    if off:
        raise RomaError(f"--targets {' '.join(off)}: the LoRA unit of {build} has no memory for them "
                        f"({unit.describe()})",
                        hint=f"use --targets {' '.join(OUR_TO_PEFT[t] for t in unit.targets)}, or recompile the "
                             "build with --lora-targets")


def _check_options(o: FinetuneOptions, slot_rank: int = DEFAULT_MAX_RANK) -> None:
    if o.minutes is not None and not o.minutes > 0:
        raise RomaError(f"--minutes must be positive, not {o.minutes!r}")
    for name in ("rank", "steps", "batch", "seq_len", "save_every", "distill_tokens"):
        v = getattr(o, name)
        if name == "steps" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RomaError(f"--{name.replace('_', '-')} must be a positive integer, not {v!r}")
    if o.rank > slot_rank:
        raise RomaError(f"--rank {o.rank} is above the LoRA slot rank {slot_rank}: the hardware could not hold "
                        "the adapter", hint=f"use --rank <= {slot_rank}")
    if not (isinstance(o.lr, (int, float)) and math.isfinite(o.lr) and o.lr > 0):
        raise RomaError(f"--lr must be a positive number, not {o.lr!r}")

    if o.distill_text not in DISTILL_TEXTS:
        raise RomaError(f"--distill-text {o.distill_text!r} is not known",
                        hint="choose " + " or ".join(DISTILL_TEXTS))
    if o.schedule not in SCHEDULES:
        raise RomaError(f"--schedule {o.schedule!r} is not known", hint="choose " + " or ".join(SCHEDULES))
    if o.alpha is not None and not (math.isfinite(o.alpha) and o.alpha > 0):
        raise RomaError(f"--alpha must be a positive number, not {o.alpha!r}")
    o.targets = parse_targets(o.targets)


# --- the base: a build or a model ---------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    return sha256_files([path])


def _rom_sha256(manifest: dict) -> str:
    """A fingerprint of the frozen base a build holds: every weight matrix's image (by content, wherever the
    plan put it: ROM or the DDR image) and the norms. Builds of the same weights for different boards or
    placements have it equal, and so do manifests that differ only in timestamps or timings."""
    norms = manifest["norms"]["file"]
    parts = sorted((n, e["image_sha256"]) for n, e in manifest["tensors"].items())
    parts.append((norms, manifest["files"][norms]["sha256"]))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def base_fingerprint(build_or_model) -> dict:
    """What identifies a base: {"kind": "build", manifest_sha256, rom_sha256, model_sha256, name, path} for a
    build folder (or a LoadedModel of one), {"kind": "model", model_sha256, name, path} for a GGUF file or Hugging
    Face folder (or a LoadedModel of one)."""

    if isinstance(build_or_model, LoadedModel):
        m = build_or_model
        if m.format == "build":
            return _build_fingerprint(Path(m.source))
        return {"kind": "model", "name": m.config.name, "path": str(m.source), "model_sha256": m.identity()}
    kind, path = locate_model(build_or_model)
    if kind == "build":
        return _build_fingerprint(path)
    return {"kind": "model", "name": path.name, "path": str(path),
            "model_sha256": sha256_files(model_files(path))}  # the digest of LoadedModel.identity()


def _build_fingerprint(folder: Path) -> dict:
    manifest = read_manifest(folder)
    if manifest is None:
        raise RomaError(f"{folder} holds no {MANIFEST}; it is not a complete build",
                        hint="compile it with roma compile --out " + str(folder))
    q = manifest.get("quantization", {})
    return {"kind": "build", "name": manifest["model"]["name"], "path": str(folder),
            "manifest_sha256": _sha256_file(folder / MANIFEST), "rom_sha256": _rom_sha256(manifest),
            "model_sha256": manifest["model"].get("sha256"),
            "quantization": {k: q.get(k) for k in ("bits", "group", "method", "bits_budget", "lora_rank")}}


def read_record(adapter_dir: str | Path) -> dict | None:
    """The adapter's roma_build.json, or None for an adapter trained elsewhere."""
    path = Path(adapter_dir) / RECORD
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RomaError(f"{path} is not readable JSON ({e})", hint="retrain the adapter, or delete the file") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or not isinstance(rec.get("base"), dict):
        raise RomaError(f"{path} is not a roma finetune record")
    return rec


def check_adapter_build(adapter_dir: str | Path, build_or_model, *, allow_other: bool = False) -> dict | None:
    """Refuse an adapter trained by roma finetune on another base than `build_or_model` (a build folder, GGUF
    file, Hugging Face folder, or a LoadedModel of one). Returns the adapter's record (None when it has none:
    adapters trained elsewhere are not checked). With allow_other, a mismatch warns on stderr instead and the
    record comes back with "matches": False.

    Builds match on their ROM contents (rom_sha256: the images and norms); models on their file sha256. An
    adapter trained on the float model does not match a quantized build of it, nor the reverse."""
    rec = read_record(adapter_dir)
    if rec is None:
        return None
    trained, here = rec["base"], base_fingerprint(build_or_model)
    if trained.get("kind") == "build":
        same = here["kind"] == "build" and here["rom_sha256"] == trained.get("rom_sha256")
    else:
        same = here["kind"] == "model" and here["model_sha256"] == trained.get("model_sha256")
    rec = dict(rec, matches=same)
    if same:
        return rec

    def what(b):
        sha = b.get("rom_sha256") if b.get("kind") == "build" else b.get("model_sha256")
        desc = f"{b.get('kind')} {b.get('name')}"
        if b.get("kind") == "build" and b.get("quantization"):
            desc += f" ({b['quantization'].get('bits')}-bit G{b['quantization'].get('group')})"
        return f"{desc} at {b.get('path')} (sha256 {str(sha)[:12]}...)"

    message = (f"adapter {adapter_dir} was trained against the {what(trained)}, not against this {what(here)}; "
               "a LoRA trained on one frozen base does not fit another")
    if allow_other:
        print(f"warning: {message}", file=sys.stderr)
        return rec
    raise RomaError(message, hint=f"retrain it with roma finetune --{'build' if here['kind'] == 'build' else 'model'} "
                                  f"{here['path']}, or load it anyway with --lora-any-build (lora_any_build=True "
                                  "in the Python API)")


def _load_base(build: str | Path | None, model: str | Path | None):
    """(LoadedModel of the base, the build's compensating LoraAdapter or None, fingerprint, manifest or None)."""
    if (build is None) == (model is None):
        raise RomaError("give exactly one of --build (a roma compile folder) and --model (an unquantized base)")
    if build is not None:
        folder = Path(build)
        if not folder.is_dir():
            raise RomaError(f"no build folder at {folder}", hint="roma compile --out DIR writes one")
        if not (folder / MANIFEST).is_file():
            raise RomaError(f"{folder} holds no {MANIFEST}; it is not a complete build",
                            hint=f"compile it with roma compile --out {folder}")
        loaded = load_build(folder)
        comp = loaded.compensation
        return loaded, comp, _build_fingerprint(folder), loaded.metadata["roma.build"]

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if loaded.format == "build":
        loaded = load_build(loaded.source)
        comp = loaded.compensation
        return loaded, comp, _build_fingerprint(Path(loaded.source)), loaded.metadata["roma.build"]
    return loaded, None, base_fingerprint(loaded), None


_TOKENIZERS: dict[tuple, Any] = {}


def _tokenizer(loaded: LoadedModel):
    """The base's tokenizer (a build's is that of the model it was compiled from), cached per source file."""

    if loaded.format == "build":
        kind, path = build_source(loaded)
        make = (lambda: Tokenizer.from_hf_folder(path)) if kind == "hf" else (lambda: Tokenizer.from_gguf(path))
    elif loaded.format in ("gguf", "hf"):
        path = Path(loaded.source)
        make = lambda: Tokenizer.from_model(loaded)  # noqa: E731 (a GGUF's metadata is already read)
    else:
        return Tokenizer.from_model(loaded)
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _TOKENIZERS:
        if len(_TOKENIZERS) >= 4:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[key] = make()
    return _TOKENIZERS[key]


def _teacher_model(loaded: LoadedModel) -> LoadedModel:
    """The float model a build was compiled from (its weights dequantized are the distillation teacher)."""

    _, path = build_source(loaded)
    return load_model(path)


# --- the torch model ----------------------------------------------------------------------------------------


def permute_to_hf_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder Q or K rows from GGUF's adjacent RoPE pairs to Hugging Face's half-split layout (the inverse of
    model.loader.permute_to_gguf_rope)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_state_dict(loaded: LoadedModel) -> dict[str, np.ndarray]:
    """The model's weights, dequantized to fp32, under transformers' LLaMA names (Q/K rows in HF order)."""

    c, w = loaded.config, loaded.weights
    sd = {"model.embed_tokens.weight": as_float(w.token_embedding), "model.norm.weight": w.output_norm}
    if not c.tied_embeddings:
        sd["lm_head.weight"] = as_float(w.lm_head)
    for i, layer in enumerate(w.layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = layer.attn_norm
        sd[p + "post_attention_layernorm.weight"] = layer.ffn_norm
        for ours, proj in OUR_TO_PEFT.items():
            t = as_float(getattr(layer, ours))
            if ours == "wq":
                t = permute_to_hf_rope(t, c.n_heads)
            elif ours == "wk":
                t = permute_to_hf_rope(t, c.n_kv_heads)
            sd[f"{p}{PARENT[proj]}.{proj}.weight"] = t
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def to_transformers(loaded: LoadedModel):
    """A float32 transformers LlamaForCausalLM holding exactly this model's weights (a build's dequantized ROM
    weights), every parameter frozen, in eval mode."""
    torch, transformers, _ = _train_deps()
    c = loaded.config
    cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.context_length, rms_norm_eps=c.rms_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=c.tied_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._name_or_path = c.name
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    state = {k: torch.from_numpy(v.copy()) for k, v in hf_state_dict(loaded).items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (c.tied_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RomaError(f"internal: the torch model's weights do not line up (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    if c.tied_embeddings:
        model.tie_weights()
    # Buffers made on the meta device (RoPE frequencies) are computed again on the CPU.
    rotary = model.model.rotary_emb
    inv_freq, scaling = rotary.compute_default_rope_parameters(cfg, device=torch.device("cpu"))
    rotary.register_buffer("inv_freq", inv_freq, persistent=False)
    rotary.original_inv_freq = inv_freq
    rotary.attention_scaling = scaling
    model.requires_grad_(False)
    model.eval()
    return model


# --- data ---------------------------------------------------------------------------------------------------


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken


@dataclass
class Dataset:
    kind: str  # "chat", "text" or "distill"
    examples: list[Example]
    source: str
    sha256: str
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: int = 0
    notes: list[str] = field(default_factory=list)


def read_data_file(path: str | Path) -> tuple[str, list]:
    """("chat", [messages, ...]) or ("text", [document, ...]) from a JSONL or .txt file, checked line by line
    before anything is trained: a line that is not JSON, or a conversation without roles, is named."""
    path = Path(path)
    if not path.is_file():
        raise RomaError(f"no data file at {path}", hint="give a .jsonl file of {\"messages\": [...]} or "
                                                        "{\"text\": ...} lines, or a .txt file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RomaError(f"{path} is not UTF-8 text ({e})") from None
    if path.suffix.lower() == ".txt":
        if not text.strip():
            raise RomaError(f"{path} is empty")
        return "text", [text]
    chats, docs = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise RomaError(f"{where} is not JSON ({e})",
                            hint="each line must be one JSON object: {\"messages\": [...]} or {\"text\": ...}") \
                from None
        if not isinstance(obj, dict) or not ("messages" in obj or "text" in obj):
            raise RomaError(f"{where} has neither \"messages\" nor \"text\"",
                            hint="each line must be {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} or "
                                 "{\"text\": ...}")
        if "messages" in obj:
            msgs = obj["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise RomaError(f"{where}: \"messages\" must be a non-empty list")
            for k, m in enumerate(msgs):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m.get("role"):
                    raise RomaError(f"{where}: message {k + 1} has no role",
                                    hint="each message needs \"role\" (system, user or assistant) and \"content\"")
                if not isinstance(m.get("content"), str):
                    raise RomaError(f"{where}: message {k + 1} ({m['role']}) has no text \"content\"")
            if not any(m["role"] == "assistant" for m in msgs):
                raise RomaError(f"{where}: the conversation has no assistant message to learn from")
            chats.append([{"role": m["role"], "content": m["content"]} for m in msgs])
        else:
            if not isinstance(obj["text"], str) or not obj["text"].strip():
                raise RomaError(f"{where}: \"text\" must be a non-empty string")
            docs.append(obj["text"])
    if chats and docs:
        raise RomaError(f"{path} mixes conversations (\"messages\") and documents (\"text\")",
                        hint="use one kind per file")
    if not chats and not docs:
        raise RomaError(f"{path} holds no examples")
    return ("chat", chats) if chats else ("text", docs)


def chat_example(tokenizer, messages: list[dict]) -> Example:
    """Token ids of a conversation rendered with the chat template; labels only on what each assistant turn
    adds after the generation prompt (its content and its end-of-turn token)."""
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    spans, ids, labels, pos = [], [], [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(before) or not full.startswith(through) or len(through) < len(before):
            raise RomaError("the chat template does not render conversations prefix by prefix, so the assistant "
                            "turns cannot be located", hint="train on {\"text\": ...} documents instead")
        spans.append((len(before), len(through)))
    for start, end in spans:
        if start > pos:
            seg = tokenizer.encode(full[pos:start], add_special=False)
            ids += seg
            labels += [IGNORE] * len(seg)
        seg = tokenizer.encode(full[start:end], add_special=False)
        ids += seg
        labels += seg
        pos = end
    if pos < len(full):
        seg = tokenizer.encode(full[pos:], add_special=False)
        ids += seg
        labels += [IGNORE] * len(seg)
    return Example(ids, labels)


def build_dataset(path: str | Path, tokenizer, seq_len: int, parsed=None) -> Dataset:
    path = Path(path)
    kind, items = parsed or read_data_file(path)
    ds = Dataset(kind, [], str(path), _sha256_file(path))
    if kind == "chat":
        for messages in items:
            ex = chat_example(tokenizer, messages)
            if len(ex.ids) > seq_len:
                ds.truncated += 1
                ex = Example(ex.ids[:seq_len], ex.labels[:seq_len])
            if sum(1 for t in ex.labels[1:] if t != IGNORE) == 0:
                ds.dropped += 1
                continue
            ds.examples.append(ex)
    else:
        stream: list[int] = []
        for doc in items:
            stream += tokenizer.encode(doc, add_special=True)
            if tokenizer.eos_id is not None:
                stream.append(tokenizer.eos_id)
        for i in range(0, len(stream), seq_len):
            chunk = stream[i:i + seq_len]
            if len(chunk) >= 2:
                ds.examples.append(Example(chunk, list(chunk)))
    if not ds.examples:
        raise RomaError(f"{path}: no example keeps a token to learn from within --seq-len {seq_len}",
                        hint="raise --seq-len")
    if ds.truncated:
        ds.notes.append(f"{ds.truncated} conversations cut to --seq-len {seq_len}")
    if ds.dropped:
        ds.notes.append(f"{ds.dropped} conversations dropped: their assistant turns start beyond --seq-len")
    _count(ds)
    return ds


def distill_dataset(teacher: LoadedModel, tokens: int, seq_len: int, text: str) -> Dataset:
    """Windows of a distillation text (compiler.quantization.corpus.DISTILL_TEXTS), loss on every next token."""

    windows = token_windows(teacher, text, tokens, seq_len)
    h = hashlib.sha256(json.dumps(windows).encode()).hexdigest()
    ds = Dataset("distill", [Example(w, list(w)) for w in windows], f"docstrings/{text}", h)
    _count(ds)
    return ds


def _count(ds: Dataset) -> None:
    ds.tokens = sum(len(e.ids) for e in ds.examples)
    ds.trained_tokens = sum(sum(1 for t in e.labels[1:] if t != IGNORE) for e in ds.examples)


def batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The examples of step `step` (0-based): epochs of seeded permutations, a function of (seed, step) only."""
    out = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, at = divmod(k, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(order[at]))
    return out


def learning_rate(peak: float, schedule: str, progress: float) -> float:
    """The learning rate at `progress` (0 at the first step, 1 at the run's end) of a run with peak rate `peak`."""
    if schedule == "constant":
        return peak
    progress = min(max(progress, 0.0), 1.0)
    if progress < WARMUP_SHARE:  # the first step moves at 2% of the peak, not at zero
        return peak * max(progress / WARMUP_SHARE, 0.02)
    return peak * 0.5 * (1 + math.cos(math.pi * (progress - WARMUP_SHARE) / (1 - WARMUP_SHARE)))


def _collate(torch, examples: list[Example]):
    width = max(len(e.ids) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        labels[i, :len(e.ids)] = torch.tensor(e.labels)
        mask[i, :len(e.ids)] = 1
    return ids, labels, mask


# --- PEFT ---------------------------------------------------------------------------------------------------


def _lora_modules(pm, config, targets):
    """{(layer, our linear name): the PEFT LoRA layer} of a PEFT-wrapped LlamaForCausalLM."""
    layers = pm.base_model.model.model.layers
    out = {}
    for i in range(config.n_layers):
        for proj in targets:
            out[(i, PEFT_NAMES[proj])] = getattr(getattr(layers[i], PARENT[proj]), proj)
    return out


def _init_from_lora(torch, pm, config, targets, comp) -> list[str]:
    """Start the PEFT factors at the build's compensating LoRA (GGUF order, scale s): B_peft * scaling = s * B
    in HF row order. A rank below the compensating rank keeps its best rank-r part (SVD of s B A)."""
    notes = []
    modules = _lora_modules(pm, config, targets)
    dropped = sorted({name for (_, name) in comp.factors} - {n for (_, n) in modules})
    if dropped:
        notes.append("the build's compensating LoRA on " + ", ".join(OUR_TO_PEFT[n] for n in dropped)
                     + " is not among --targets and is left out")
    truncated = False
    with torch.no_grad():
        for key, mod in modules.items():
            f = comp.factors.get(key)
            if f is None:
                continue
            a, b, s = f
            b = b * np.float32(s)
            if key[1] == "wq":
                b = permute_to_hf_rope(b, config.n_heads)
            elif key[1] == "wk":
                b = permute_to_hf_rope(b, config.n_kv_heads)
            A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            r = A.shape[0]
            if a.shape[0] > r:
                u, sv, vt = np.linalg.svd(b.astype(np.float64) @ a.astype(np.float64), full_matrices=False)
                a = (np.sqrt(sv[:r])[:, None] * vt[:r]).astype(np.float32)
                b = (u[:, :r] * np.sqrt(sv[:r])[None, :]).astype(np.float32)
                truncated = True
            # Give A's row and B's column of each rank component equal norms (same product): Adam moves every
            # entry by about the learning rate, which would shake a factor of tiny entries hard (the
            # activation-weighted LoftQ factors differ by up to 13x in scale).
            na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0)
            both = (na > 0) & (nb > 0)
            k = np.sqrt(np.where(both, na / np.where(both, nb, 1), 1)).astype(np.float32)
            a, b = a / k[:, None], b * k[None, :]
            rc = a.shape[0]
            scaling = float(mod.scaling["default"])
            A[:rc] = torch.from_numpy(np.ascontiguousarray(a))
            B.zero_()
            B[:, :rc] = torch.from_numpy(np.ascontiguousarray(b / np.float32(scaling)))
    if truncated:
        notes.append("the build's compensating LoRA has a higher rank than --rank; its best rank-"
                     f"{next(iter(modules.values())).lora_A['default'].weight.shape[0]} part is the start")
    return notes


def make_peft(base, config, o: FinetuneOptions, comp=None):
    """PEFT LoRA on `base` (a to_transformers model), factors drawn from the seed (and the build's compensating
    LoRA for distillation)."""
    torch, _, peft = _train_deps()
    torch.manual_seed(o.seed)
    lc = peft.LoraConfig(r=o.rank, lora_alpha=o.alpha, target_modules=list(o.targets), lora_dropout=0.0,
                         bias="none", task_type="CAUSAL_LM")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 deprecations reached through PEFT
        pm = peft.get_peft_model(base, lc)
    notes = _init_from_lora(torch, pm, config, o.targets, comp) if comp is not None else []
    return pm, notes


# --- training -----------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    out: Path
    steps: int
    losses: list[float]
    seconds: float
    tokens_per_second: float
    resumed_from: int
    record: dict
    notes: list[str]


def _trainable(pm) -> dict[str, Any]:
    return {n: p for n, p in pm.named_parameters() if p.requires_grad}


def _write_checkpoint(torch, out: Path, pm, opt, step: int, losses: list[float], ident: dict,
                      seconds: float) -> None:
    folder = out / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "losses": list(losses), "identity": ident, "seconds": seconds,
             "lora": {n: p.detach().clone() for n, p in _trainable(pm).items()},
             "optimizer": opt.state_dict()}
    tmp = folder / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / CHECKPOINT)


def _read_checkpoint(torch, out: Path) -> dict | None:
    path = out / CHECKPOINT_DIR / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        raise RomaError(f"the checkpoint {path} is not readable ({type(e).__name__}: {e})",
                        hint="start over without --resume (pass --force)") from None


def _save_adapter(pm, out: Path, record: dict, snapshot: bool = False) -> None:
    """save_pretrained into a scratch folder, then each file replaces its old version (never a half file).
    snapshot: also keep a copy in snapshots/step-NNNNNN (a learning curve can be measured afterwards)."""
    import warnings

    tmp = out / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / RECORD).write_text(json.dumps(record, indent=1))
    if snapshot:
        keep = out / SNAPSHOTS / f"step-{record['training']['steps_done']:06d}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(tmp, keep)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == RECORD):  # the record last: it names a whole adapter
        os.replace(f, out / f.name)
    shutil.rmtree(tmp, ignore_errors=True)


def snapshots(adapter_dir: str | Path) -> list[Path]:
    """The kept adapters of a --keep-snapshots run, in training order."""
    return sorted(p for p in (Path(adapter_dir) / SNAPSHOTS).glob("step-*") if (p / RECORD).is_file())


def includes_compensation(record: dict | None) -> bool:
    """Whether an adapter was trained starting from its build's compensating LoRA, so that it replaces that
    LoRA rather than adding to it (a --distill adapter)."""
    return bool(record and record.get("training", {}).get("includes_compensation"))


def _prepare_out(out: Path, resume: bool, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RomaError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not force:
            raise RomaError(f"{out} is not empty (an earlier run?)",
                            hint="pass --resume to continue its last checkpoint, --force to start over, or "
                                 "choose another --out")
        for name in ("adapter_config.json", "adapter_model.safetensors", RECORD, "README.md"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        shutil.rmtree(out / SNAPSHOTS, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def finetune(out: str | Path, *, build: str | Path | None = None, model: str | Path | LoadedModel | None = None,
             data: str | Path | None = None, options: FinetuneOptions | None = None, resume: bool = False,
             force: bool = False, progress: bool = True,
             interrupt_after: int | None = None, log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Train a LoRA adapter for a build folder (or an unquantized model: a path, known name or LoadedModel)
    and write it to `out` (see the module doc). Returns a FinetuneResult; RomaError on bad input, raised before
    training starts (and before `out` is touched where the check does not need the model).

    interrupt_after: testing hook, raise KeyboardInterrupt once that many steps are done (after checkpointing
    as usual), as an interrupted run would stop."""
    o = FinetuneOptions(**asdict(options)) if options else FinetuneOptions()
    out = Path(out)
    log = log or (lambda s: print(s, file=sys.stderr))
    # --- everything a user can get wrong, before anything heavy happens
    _check_options(o)
    if build is None and model is None:
        raise RomaError("give --build (a roma compile folder) or --model (an unquantized base)")
    if build is not None and model is not None:
        raise RomaError("give either --build or --model, not both")
    if build is not None:
        if not Path(build).is_dir():
            raise RomaError(f"no build folder at {build}", hint="roma compile --out DIR writes one")
        if not (Path(build) / MANIFEST).is_file():
            raise RomaError(f"{build} holds no {MANIFEST}; it is not a complete build",
                            hint=f"compile it with roma compile --out {build}")
        _check_lora_unit(o, manifest_lora_unit(read_manifest(build)), build)
    if o.distill and build is None:
        raise RomaError("--distill needs --build: the adapter learns to repair the build's quantization error "
                        "against the float model it was compiled from")
    if data is None and not o.distill:
        raise RomaError("--data is needed (a .jsonl of conversations or documents, or a .txt file)",
                        hint="or --distill with --build, which trains on stdlib docstrings")
    parsed = read_data_file(data) if data is not None else None
    torch, transformers, peft = _train_deps()
    _prepare_out(out, resume, force)

    # --- the base, the data
    loaded, comp, fingerprint, manifest = _load_base(build, model)
    c = loaded.config
    if o.seq_len > c.context_length:
        raise RomaError(f"--seq-len {o.seq_len} exceeds the model's context of {c.context_length} tokens")
    if o.alpha is None:
        o.alpha = float(o.rank if (o.distill and comp is not None and o.init_from_build_lora) else 2 * o.rank)
    teacher = None
    if o.distill:
        teacher_loaded = _teacher_model(loaded)
        if data is not None:
            dataset = build_dataset(data, _tokenizer(loaded), o.seq_len, parsed)
        else:
            dataset = distill_dataset(teacher_loaded, o.distill_tokens, o.seq_len, o.distill_text)
        teacher = to_transformers(teacher_loaded)
    else:
        dataset = build_dataset(data, _tokenizer(loaded), o.seq_len, parsed)
    notes = list(dataset.notes)

    # --- model, optimizer, checkpoint
    ident = dict(o.identity(), base=fingerprint.get("rom_sha256") or fingerprint.get("model_sha256"),
                 data=dataset.sha256)
    ck = _read_checkpoint(torch, out) if resume else None
    if ck is not None:  # refuse another run's checkpoint before building anything
        diff = {k: (ck["identity"].get(k), v) for k, v in ident.items() if ck["identity"].get(k) != v}
        if diff:
            k, (was, now) = next(iter(diff.items()))
            raise RomaError(f"the checkpoint in {out} is of another run ({k} was {was!r}, now {now!r})",
                            hint="resume with the same base, data and options, or start over with --force")
    elif resume:
        log(f"roma finetune: no checkpoint in {out}; starting from step 0")
    init = comp if (o.distill and o.init_from_build_lora) else None
    limit = o.steps if o.steps is not None else (DEFAULT_STEPS if o.minutes is None else math.inf)
    pm, init_notes = make_peft(to_transformers(loaded), c, o, init)
    notes += init_notes
    params = _trainable(pm)
    opt = torch.optim.AdamW(list(params.values()), lr=o.lr, weight_decay=o.weight_decay)
    start, losses, before = 0, [], 0.0  # before: training seconds of the runs this one resumes
    if ck is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(ck["lora"][n])
        opt.load_state_dict(ck["optimizer"])
        start, losses, before = int(ck["step"]), list(ck["losses"]), float(ck.get("seconds", 0.0))
        if start >= limit:
            log(f"roma finetune: the checkpoint is at step {start}, which reaches --steps {limit}")

    def record(step: int, complete: bool, seconds: float) -> dict:
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "base": fingerprint,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "training": {**o.identity(), "steps": o.steps, "steps_done": step, "complete": complete,
                             "seconds": round(seconds, 3), "minutes_budget": o.minutes,
                             "includes_compensation": init is not None,
                             "data": {"kind": dataset.kind, "source": dataset.source, "sha256": dataset.sha256,
                                      "examples": len(dataset.examples), "tokens": dataset.tokens,
                                      "trained_tokens": dataset.trained_tokens},
                             "init": "build compensating LoRA" if init is not None else "peft default",
                             "final_loss": losses[-1] if losses else None}}

    # --- the loop
    pm.train()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=None if limit == math.inf else limit, initial=min(start, limit), desc="finetune",
                   unit="step", file=sys.stderr, dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    step = start

    def elapsed() -> float:
        return before + time.perf_counter() - t0

    budget = o.minutes * 60 if o.minutes else math.inf
    try:
        while step < limit and elapsed() < budget:
            batch = [dataset.examples[i] for i in batch_indices(len(dataset.examples), o.batch, o.seed, step)]
            ids, labels, mask = _collate(torch, batch)
            rate = learning_rate(o.lr, o.schedule, max(step / limit, elapsed() / budget))
            for group in opt.param_groups:
                group["lr"] = rate
            logits = pm(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            keep = target != IGNORE
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
                lp_s = torch.log_softmax(logits[keep].float(), dim=-1)
                lp_t = torch.log_softmax(t_logits[keep].float(), dim=-1)
                loss = (lp_t.exp() * (lp_t - lp_s)).sum(-1).mean()
            else:
                loss = torch.nn.functional.cross_entropy(logits[keep], target[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(params.values()), o.max_grad_norm)
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            seen += int(mask.sum())
            if bar is not None:
                tok_s = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{rate:.2e}", tok_s=f"{tok_s:,.0f}")
                bar.update(1)
            last = step == limit or elapsed() >= budget
            if step % o.save_every == 0 or last:
                _write_checkpoint(torch, out, pm, opt, step, losses, ident, elapsed())
                _save_adapter(pm, out, record(step, last, elapsed()), snapshot=o.keep_snapshots)
            if interrupt_after is not None and step - start >= interrupt_after and step < limit:
                raise KeyboardInterrupt
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if step == start:  # nothing to do (steps or time used up): make sure the adapter folder is there
        _save_adapter(pm, out, record(step, True, elapsed()))
    rec = record(step, True, elapsed())
    return FinetuneResult(out, step, losses, seconds, seen / max(seconds, 1e-9), start, rec, notes)


# --- measuring ----------------------------------------------------------------------------------------------


def torch_logits(model, ids) -> np.ndarray:
    """Logits [T, vocab] of a transformers (or PEFT) model for one sequence, fp32 numpy."""
    torch, _, _ = _train_deps()
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits[0].float().numpy()


def distill_metrics(student_logits: np.ndarray, teacher_logits: np.ndarray) -> dict:
    """Mean KL(teacher || student) of the next-token distributions, and top-1 agreement."""
    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ls, lt = log_softmax(student_logits), log_softmax(teacher_logits)
    kl = float((np.exp(lt) * (lt - ls)).sum(-1).mean())
    top1 = float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).mean())
    return {"kl": kl, "top1": top1}


def example_data(name: str = "answer_format") -> Path:
    """A dataset shipped with the runtime (host/roma_runtime/examples/<name>.jsonl)."""
    path = EXAMPLES / f"{name}.jsonl"
    if not path.is_file():
        known = sorted(p.stem for p in EXAMPLES.glob("*.jsonl"))
        raise RomaError(f"no example dataset '{name}'", hint=f"known: {', '.join(known) or 'none'}")
    return path
