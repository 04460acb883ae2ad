"""Quality of a build against the float reference.

Reference: the golden model in float mode on the original model (every weight dequantized to fp32).
Candidate: the golden model in quant mode (the accelerator's numerics) on the build's ROM images, with the
build's compensating LoRA if it has one, as its LoRA unit stores it (fp16 or int8 codes: what the engine loads).
Two text sets:
- held-out text: the evaluation split of the stdlib docstrings (corpus.py; disjoint from calibration),
  in windows of `window` tokens, each a fresh sequence, prefilled with all logits;
- chat: a fixed set of prompts rendered with the model's chat template, each followed by the reference's own
  greedy answer (`chat_tokens` tokens); metrics over the answer positions (teacher forcing).
Metrics per set: perplexity of both models on the next tokens, mean KL(reference || candidate) of the
next-token distributions, and top-1 agreement (the candidate's argmax equals the reference's).
"""

from __future__ import annotations

import numpy as np

from .artifact.lora_unit import manifest_lora_unit
from .compiler.quantization.corpus import CHAT_PROMPTS, token_windows
from .errors import RomaError
from .finetune import check_adapter_build, includes_compensation
from .golden import GoldenModel
from .lora import Adapter, LoraSlots, concat, read_peft_adapter
from .model.loader import LoadedModel, load_build, load_model
from .progress import with_progress
from .tokenizer import Tokenizer


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _Accumulator:
    def __init__(self):
        self.n = 0
        self.nll_ref = 0.0
        self.nll_cand = 0.0
        self.kl = 0.0
        self.agree = 0

    def add(self, ref_logits: np.ndarray, cand_logits: np.ndarray, targets: np.ndarray) -> None:
        lr, lc = log_softmax(ref_logits), log_softmax(cand_logits)
        idx = np.arange(len(targets))
        self.nll_ref += float(-lr[idx, targets].sum())
        self.nll_cand += float(-lc[idx, targets].sum())
        self.kl += float((np.exp(lr) * (lr - lc)).sum())
        self.agree += int((ref_logits.argmax(-1) == cand_logits.argmax(-1)).sum())
        self.n += len(targets)

    def result(self) -> dict:
        n = max(self.n, 1)
        return {"tokens": self.n, "ppl_reference": float(np.exp(self.nll_ref / n)),
                "ppl_candidate": float(np.exp(self.nll_cand / n)), "kl": self.kl / n, "top1": self.agree / n}




def _all_logits(model: GoldenModel, ids: np.ndarray, memo: dict | None) -> np.ndarray:
    key = tuple(int(i) for i in ids)
    if memo is not None and key in memo:
        return memo[key]
    logits = model.forward(ids, model.new_cache(len(ids) + 1), all_logits=True)
    if memo is not None:
        memo[key] = logits
    return logits


def evaluate_models(reference: GoldenModel, candidate: GoldenModel, text_windows: list[list[int]],
                    chat_sequences: list[tuple[list[int], int]] = (), progress: bool = False,
                    memo: dict | None = None) -> dict:
    """text_windows: token windows; chat_sequences: (prompt + answer ids, prompt length). memo: a dict that keeps
    the reference's logits between calls (several candidates against one reference)."""
    text = _Accumulator()
    for ids in with_progress(text_windows, "eval text", progress, unit="windows"):
        ids = np.asarray(ids)
        r = _all_logits(reference, ids[:-1], memo)
        c = candidate.forward(ids[:-1], candidate.new_cache(len(ids)), all_logits=True)
        text.add(r, c, ids[1:])
    chat = _Accumulator()
    for ids, plen in with_progress(list(chat_sequences), "eval chat", progress, unit="answers"):
        ids = np.asarray(ids)
        r = _all_logits(reference, ids[:-1], memo)
        c = candidate.forward(ids[:-1], candidate.new_cache(len(ids)), all_logits=True)
        s = plen - 1  # logits at position s predict token s+1 = the first answer token
        chat.add(r[s:], c[s:], ids[plen:])
    out = {"text": text.result()}
    if chat.n:
        out["chat"] = chat.result()
    return out


def greedy_answer(model: GoldenModel, prompt: list[int], n: int, stop: set[int] = frozenset()) -> list[int]:
    cache = model.new_cache(len(prompt) + n + 1)
    logits = model.forward(prompt, cache)
    out = []
    for _ in range(n):
        tok = int(logits[-1].argmax())
        out.append(tok)
        if tok in stop:
            break
        logits = model.forward([tok], cache)
    return out


def chat_sequences(model: LoadedModel, reference: GoldenModel, answer_tokens: int = 32,
                   prompts=CHAT_PROMPTS, progress: bool = False) -> list[tuple[list[int], int]]:
    """Chat prompts (the model's template) followed by the reference's greedy answer; [] without a template."""
    try:
        tok = Tokenizer.from_model(model)
        if not tok.chat_template:
            return []
    except RomaError:
        return []
    stop = set(getattr(tok, "eos_ids", ()) or ())
    seqs = []
    for p in with_progress(list(prompts), "chat answers", progress, unit="prompts"):
        ids = tok.encode_chat([{"role": "user", "content": p}])
        ans = greedy_answer(reference, ids, answer_tokens, stop)
        if ans:
            seqs.append((ids + ans, len(ids)))
    return seqs


def eval_windows(model: LoadedModel, tokens: int, window: int = 256) -> list[list[int]]:
    """Held-out windows with exactly `tokens` next-token targets: windows of window+1 ids overlapping by one."""
    flat = token_windows(model, "evaluation", tokens + 1, window=tokens + 1)[0]
    if len(flat) < tokens + 1:
        raise RomaError(f"the evaluation text has only {len(flat) - 1} tokens, fewer than {tokens}")
    return [flat[i:i + window + 1] for i in range(0, tokens, window)]


def _adapter(loaded: LoadedModel, comp, folder, build_dir) -> Adapter | None:
    """What the engine runs on the build: the PEFT adapter in `folder` with the build's compensating LoRA (added, or
    in its place when it was distilled from it), or the compensating LoRA alone (no folder; None without one)."""
    comp = None if comp is None else Adapter.from_factors("compensation", loaded, comp.factors)
    if folder is None:
        return comp
    record = check_adapter_build(folder, build_dir)
    adapter = read_peft_adapter(folder, loaded)
    return adapter if comp is None or includes_compensation(record) else concat(comp, adapter)


def _as_stored(loaded: LoadedModel, adapter: Adapter, manifest: dict):
    """The golden LoraAdapter of `adapter` as the build's LoRA unit holds it: loaded into a slot of the unit as the
    engine loads it (its targets and rank checked, packed into fp16 or int8 codes); exactly its factors where the
    build has no unit."""
    unit = manifest_lora_unit(manifest)
    if unit is None or not unit.slots:
        return adapter.to_golden()
    slots = LoraSlots(loaded, 1, unit.rank, unit.dtype, unit=unit)
    slots.load(adapter.name, adapter)
    slots.activate(adapter.name)
    return slots.golden_adapter()


def evaluate_build(model: LoadedModel | str, build_dir, tokens: int = 2048, window: int = 256,
                   chat: bool = True, chat_tokens: int = 32, progress: bool = False, check_identity: bool = True,
                   reference: GoldenModel | None = None, lora: str | None = None, memo: dict | None = None,
                   without_lora: bool = False) -> dict:
    """lora: a PEFT adapter folder to run on the build, as the engine would: added to the build's compensating
    LoRA, or in its place when it was distilled from it (roma finetune --distill). memo: a dict kept between
    calls against the same reference (its logits and chat answers are computed once). without_lora: the ROM
    base alone, without the build's compensating LoRA."""

    if not isinstance(model, LoadedModel):
        model = load_model(model)
    loaded = load_build(build_dir)
    comp = loaded.compensation
    manifest = loaded.metadata["roma.build"]
    if check_identity and manifest["model"]["sha256"] != model.identity():
        raise RomaError(f"the build in {build_dir} was compiled from another model "
                        f"({manifest['model']['name']}, {manifest['model']['file']})",
                        hint="pass the --model the build was compiled from")
    ref = reference or GoldenModel(model, "float")
    cand = GoldenModel(loaded, "quant")
    adapter = None if without_lora else _adapter(loaded, comp, lora, build_dir)
    cand.lora = None if adapter is None else _as_stored(loaded, adapter, manifest)
    windows = eval_windows(model, tokens, window)
    seqs = []
    if chat:
        key = ("chat", chat_tokens)
        seqs = memo[key] if memo is not None and key in memo else chat_sequences(model, ref, chat_tokens,
                                                                                   progress=progress)
        if memo is not None:
            memo[key] = seqs
    result = evaluate_models(ref, cand, windows, seqs, progress=progress, memo=memo)
    q = manifest["quantization"]
    result["build"] = {"dir": str(build_dir), "bits": q["bits"], "group": q["group"], "method": q["method"],
                       "lora": None if lora is None else str(lora),
                       "lora_rank": q["lora_rank"], "bits_budget": q["bits_budget"],
                       "linear_bits_per_weight": q["linear_bits_per_weight"],
                       "all_bits_per_weight": q["all_bits_per_weight"]}
    return result
