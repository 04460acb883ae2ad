"""The one API over every backend: sessions with their KV cache, streamed generation, chat conversations.

Used by the CLI, the servers, the notebooks and the bench. A token's way: tokenizer -> engine -> backend ->
logits -> sampler -> engine -> incremental detokenizer. Both ways of decoding (the host samples each token, or
the chip samples chunks of them: autonomous decode) run through one token loop (Generation._decode).

Statistics: a GenerationResult has its tokens and seconds (speed_line() words them); GenerationStats adds
results up: a Conversation's over its answers (with summary(), what the chat and the serial server report),
the HTTP server's over its requests (its /metrics).

LoRA: the engine owns the resident adapters (a lora.LoraSlots). Every session names its adapter
(`session.adapter`, None = the base model) and the engine makes that adapter the active one on the backend
before each forward pass of the session, so sessions with different adapters can interleave token by token.
A session's KV rows hold keys and values computed under one adapter (a `tag`: the adapter's name and which
load of it); when a session runs under another tag its cached prefix is dropped and recomputed, never mixed.

KV: sessions own their KV buffers; with a memory budget (kv_memory) the engine computes how many tokens fit
after the LoRA slots (kv.kv_capacity) and hands them out through a kv.KVPool. Sessions can be truncated
(rollback), saved to a file and restored (kv.py describes the file).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import kv
from .backends import check_backend, create_backend
from .errors import RomaError
from .generate import HostSampler, SamplingParams, StopMatcher
from .golden.sampler import OnChipParams, prng_next, seed_state
from .finetune import check_adapter_build, includes_compensation
from .lora import (DEFAULT_MAX_RANK, DEFAULT_SLOTS, Adapter, LoraSlots, check_slot_rank, concat, max_slot_rank,
                   read_peft_adapter)
from .model.loader import DEFAULT_MODEL, LoadedModel, build_source, load_model
from .tokenizer import Tokenizer


class Throughput:
    """Tokens per second from the counts and seconds a result dataclass holds; to_dict adds them."""

    prefill_tokens: int
    prefill_seconds: float
    decode_tokens: int
    decode_seconds: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tokens_per_s"] = self.prefill_tokens_per_s
        d["decode_tokens_per_s"] = self.decode_tokens_per_s
        return d

    def speed_line(self) -> str:
        """One line of timing for a finished generation (the result dataclass has ids, reused_tokens and
        finish_reason too): what the chat, the serial server and `roma generate` print after an answer."""
        parts = [f"{len(self.ids)} tokens"]
        if self.prefill_tokens:
            parts.append(f"prefill {self.prefill_tokens} at {self.prefill_tokens_per_s:.1f} tok/s")
        if self.decode_tokens:
            parts.append(f"decode {self.decode_tokens} at {self.decode_tokens_per_s:.1f} tok/s")
        if self.reused_tokens:
            parts.append(f"{self.reused_tokens} reused")
        if self.finish_reason and self.finish_reason != "stop":
            parts.append(self.finish_reason)
        return "[" + ", ".join(parts) + "]"


@dataclass
class GenerationResult(Throughput):
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "stop" (end token or stop string), "length", "context", "interrupted"
    reused_tokens: int = 0  # prompt tokens whose KV was already in the session
    dropped_tokens: int = 0  # cached tokens discarded because they were computed under another adapter
    adapter: str | None = None  # the LoRA adapter the generation ran under (None: the base model)
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0  # single-token forward passes after the prefill
    decode_seconds: float = 0.0



class Session:
    """One sequence: its KV cache, the token ids whose keys and values the cache holds (`ids`, always
    cache.length of them) and the LoRA adapter it runs under (`adapter`, None = the base model)."""

    def __init__(self, engine: "Engine", capacity: int | None = None, adapter: str | None = None):
        self.engine = engine
        self.cache = engine.backend.new_cache(capacity)
        self.ids: list[int] = []
        self._adapter = adapter
        self._kv_tag = engine._tag(adapter)  # the adapter (and which load of it) the cached rows were made under
        self._ticket = None  # the engine's KV pool reservation
        self.extra: dict = {}  # what a restored file carried besides the KV (e.g. a conversation's messages)

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    @property
    def length(self) -> int:
        return self.cache.length

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @adapter.setter
    def adapter(self, name: str | None) -> None:
        """Switch adapters (RomaError if `name` is not loaded; nothing changes then). The cached prefix is kept
        until the session next runs: if it was made under another adapter it is dropped then."""
        self.engine.check_adapter(name)
        self._adapter = name

    @property
    def kv_valid(self) -> bool:
        """True when the cached rows were computed under the session's current adapter (as loaded now)."""
        return self._kv_tag == self.engine._tag(self._adapter)

    @property
    def saved_length(self) -> int:
        """The tokens save() writes: all cached ones, or none when they were made under another adapter."""
        return self.cache.length if self.kv_valid else 0

    def reset(self) -> None:
        self.cache.truncate(0)
        self.ids = []

    def truncate(self, position: int) -> None:
        """Keep the first `position` tokens (and their KV); the next generation continues from there."""
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= len(self.ids):
            raise RomaError(f"cannot truncate a session of {len(self.ids)} tokens to {position!r}",
                            hint=f"give a position in 0..{len(self.ids)}")
        self.cache.truncate(position)
        del self.ids[position:]

    def rollback(self, n_tokens: int) -> None:
        """Forget the last `n_tokens` tokens."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or not 0 <= n_tokens <= len(self.ids):
            raise RomaError(f"cannot roll back {n_tokens!r} tokens of a session of {len(self.ids)}",
                            hint=f"give a count in 0..{len(self.ids)}")
        self.truncate(len(self.ids) - n_tokens)

    def save(self, path, extra: dict | None = None) -> Path:
        """Write ids, KV rows, model identity, numerics and adapter to `path` (see kv.py). `extra` is any
        JSON-ready dict stored alongside (a conversation stores its messages). Cached rows made under an
        adapter other than the session's current one are not saved (they would be recomputed anyway)."""
        return self.engine._save_session(self, path, extra)

    def close(self) -> None:
        """Give the KV positions back to the engine's pool; the session is unusable afterwards."""
        self.engine.kv_pool.release(self._ticket)
        self._ticket = None
        self.cache.truncate(0)
        self.ids = []


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


ON_CHIP_CHUNK = 16  # tokens per CMD_GENERATE call in autonomous decode: text still streams between calls


def on_chip_refusal(backend, params: SamplingParams) -> str | None:
    """Why a request cannot run as autonomous decode (CMD_GENERATE, on-chip sampling) on `backend`; None when
    it can. It needs a backend with `generate` (emu, board) and a repetition-penalty window that fits the
    chip's ring of recent ids (SAMPLER_RING). Everything else of SamplingParams maps onto the chip's sampler
    registers (golden.sampler.OnChipParams); top_k 0 or above the chip's pool (SAMPLER_K) draws from that pool
    (golden.sampler.effective_top_k)."""
    if not backend.autonomous:
        return f"backend {backend.name} has no autonomous decode (the emu and board backends do)"
    ring = backend.sampler_ring
    if params.repetition_penalty != 1.0 and params.repeat_last_n > ring:
        return (f"the repetition penalty looks at the last {params.repeat_last_n} tokens, but the chip's ring of "
                f"recent ids holds {ring}")
    return None


def check_on_chip(backend, params: SamplingParams) -> None:
    """RomaError saying why (on_chip_refusal) when the request cannot run as autonomous decode."""
    why = on_chip_refusal(backend, params)
    if why:
        raise RomaError(f"this generation cannot run on chip: {why}",
                        hint="drop --on-chip (the host samples each token), or change the sampling settings")


class Generation:
    """Validates on creation (nothing changes if it refuses); iterate it to run and stream the text.

    on_chip=True: autonomous decode. The prompt (but its last token) is prefilled with forward passes, then
    the backend's `generate` (CMD_GENERATE) runs the last prompt token and samples and feeds back up to
    `chunk` tokens per call on chip, stopping at the end token; the host only detokenizes and streams each
    chunk. End tokens other than the one the chip stops at, stop strings, max_tokens and the context are
    checked on the host after each call; tokens the chip ran past the end are cut from the session again, so
    session.ids and the KV cache are exactly what the per-token path leaves (the prompt plus every generated
    token but the last). Greedy gives the per-token path's tokens. Sampling uses the chip's sampler
    (golden/sampler.py): a seed reproduces its tokens, but they are not the host sampler's for that seed;
    its repetition penalty sees only the tokens generated in this generation (the chip's ring), not the
    prompt. When another sampling call ran on the chip between two chunks, the PRNG state is restored from
    the seed (the ring of recent ids is then lost, which matters only with a repetition penalty)."""

    def __init__(self, engine: "Engine", session: Session, prompt_ids: list[int], params: SamplingParams,
                 on_done=None, on_chip: bool = False, chunk: int = ON_CHIP_CHUNK):
        self.sampler = HostSampler(params)
        self.params = params
        self.on_chip = bool(on_chip)
        self.chunk = int(chunk)
        if self.on_chip:
            check_on_chip(engine.backend, params)
            if self.chunk < 1:
                raise RomaError(f"the on-chip chunk must be at least 1 token, not {chunk}")
            self.chip_params = OnChipParams.from_sampling(params)
        if not prompt_ids:
            raise RomaError("the prompt is empty")
        if len(prompt_ids) > session.capacity:
            raise RomaError(
                f"the prompt has {len(prompt_ids)} tokens but the context holds {session.capacity}",
                hint="shorten the prompt, start over (/reset in the chat), or allow a longer context (--context)",
            )
        vocab = engine.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise RomaError(f"the prompt has token ids outside 0..{vocab - 1}")
        engine.check_adapter(session.adapter)
        self.engine, self.session, self.on_done = engine, session, on_done
        self.result = GenerationResult(prompt_ids=list(prompt_ids))
        self._started = False

    def __iter__(self):
        if self._started:
            raise RuntimeError("a generation runs once")
        self._started = True
        session, res, engine = self.session, self.result, self.engine
        prompt = res.prompt_ids
        try:
            res.adapter = session.adapter
            engine._bind(session)
            if not session.kv_valid:  # rows made under another adapter: recompute rather than mix
                res.dropped_tokens = session.cache.length
                session.reset()
                session._kv_tag = engine._tag(session.adapter)
            reuse = common_prefix(session.ids, prompt)
            reuse = min(reuse, len(prompt) - 1)  # the last prompt token must run to give logits
            session.cache.truncate(reuse)
            del session.ids[reuse:]
            res.reused_tokens = reuse
            steps = self._on_chip_steps(reuse) if self.on_chip else self._host_steps(reuse)
            try:
                yield from self._decode(steps)
            finally:
                steps.close()
        finally:
            if not res.finish_reason:
                res.finish_reason = "interrupted"
            if self.on_done:
                self.on_done(res)

    def _decode(self, steps):
        """The one token loop of both paths: `steps` yields the tokens each forward pass (or CMD_GENERATE
        call) sampled and ends when the context is full; each token is recorded and streamed until an end
        token, a stop string or max_tokens, then the text held back for a possible stop string is let out."""
        res, eos = self.result, self.engine.tokenizer.eos_ids
        decoder = self.engine.tokenizer.stream_decoder()
        stops = StopMatcher(self.params.stop)
        for tokens in steps:
            for token in tokens:
                piece, end = self._take(token, eos, decoder, stops)
                if piece:
                    yield piece
                if end:
                    res.finish_reason = end
                    break
            if res.finish_reason:
                break
        else:
            res.finish_reason = "context"
        if not stops.stopped:
            tail = stops.feed(decoder.flush()) + ("" if stops.stopped else stops.flush())
            if tail:
                res.text += tail
                yield tail

    def _take(self, token: int, eos, decoder, stops) -> tuple[str, str]:
        """Record a sampled token: (the text it completes, why generation ends here: "stop" for an end token
        or a stop string, "length" at max_tokens, "" to go on)."""
        res = self.result
        res.ids.append(token)
        if token in eos:
            return "", "stop"
        piece = stops.feed(decoder.feed(token))
        res.text += piece
        if stops.stopped:
            return piece, "stop"
        return piece, "length" if len(res.ids) >= self.params.max_tokens else ""

    def _host_steps(self, reuse: int):
        """The host path's steps: prefill, then one token a step, sampled on the host from the logits of the
        last forward pass, which the next step feeds back. Ends when the KV cache is full."""
        backend, session, res, engine = self.engine.backend, self.session, self.result, self.engine
        prompt = res.prompt_ids
        t0 = time.perf_counter()
        logits = backend.forward(prompt[reuse:], session.cache)
        session.ids.extend(prompt[reuse:])
        res.prefill_tokens = len(prompt) - reuse
        res.prefill_seconds = time.perf_counter() - t0
        while True:
            token = self.sampler.sample(logits, prompt + res.ids)
            yield [token]
            if session.cache.length >= session.capacity:
                return
            t0 = time.perf_counter()
            engine._bind(session)  # another session may have run in between, under another adapter
            logits = backend.forward([token], session.cache)
            session.ids.append(token)
            res.decode_tokens += 1
            res.decode_seconds += time.perf_counter() - t0

    def _on_chip_steps(self, reuse: int):
        """Autonomous decode's steps (see the class): prefill but the last prompt token, then up to `chunk`
        tokens a CMD_GENERATE call. Ends when the KV cache is full; closing it cuts what the chip ran past."""
        backend, session, res, p, engine = self.engine.backend, self.session, self.result, self.params, self.engine
        prompt = res.prompt_ids
        cache, ids = session.cache, session.ids
        t0 = time.perf_counter()
        if len(prompt) - 1 > reuse:  # the last prompt token runs in the first CMD_GENERATE
            backend.forward(prompt[reuse:-1], cache)
            ids.extend(prompt[reuse:-1])
        res.prefill_tokens = len(prompt) - reuse
        res.prefill_seconds = time.perf_counter() - t0
        eos = self.engine.tokenizer.eos_ids
        eos_id = min(eos) if eos else None  # the chip stops at one id; the host checks them all
        seed = seed_state(p.seed)  # None: a seed from the OS, as the host sampler's default_rng(None)
        first, position, sampled = prompt[-1], len(prompt) - 1, 0
        max_tokens, capacity, chunk = p.max_tokens, session.capacity, self.chunk
        try:
            while True:
                n = min(chunk, max_tokens - len(res.ids), capacity - position)
                engine._bind(session)  # another session may have run in between, under another adapter
                if sampled == 0:
                    state = seed
                elif backend.sampler_owner is not self:
                    state = seed  # another sampling call ran on chip: restore the PRNG state
                    for _ in range(sampled):
                        state = prng_next(state)[0]
                else:
                    state = None  # continue the chip's PRNG and ring
                t0 = time.perf_counter()
                out = backend.generate(first, position, n, self.chip_params, state, eos_id, cache=cache,
                                       owner=self)
                res.decode_seconds += time.perf_counter() - t0
                if not out:
                    raise RomaError("the core's autonomous decode returned no tokens")
                ids.append(first)
                ids.extend(out[:-1])
                position += len(out)
                sampled += len(out)
                yield out
                if position >= capacity:
                    return
                first = out[-1]
        finally:
            # what the host path holds here: the prompt and every generated token but the last
            keep = len(prompt) + max(len(res.ids) - 1, 0)
            if res.ids and len(ids) > keep:
                session.truncate(keep)
            res.decode_tokens = max(len(ids) - len(prompt), 0)

    def run(self) -> GenerationResult:
        for _ in self:
            pass
        return self.result


@dataclass
class GenerationStats:
    """Counts over a run of generations (a conversation's answers since it began or was reset, a server's
    requests): how many, their prompt, reused and generated tokens, the prefill and decode passes' tokens and
    seconds, and the last one's result (None until the next answer after a conversation's reset or load)."""

    generations: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV was already in the session
    generated_tokens: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    last: GenerationResult | None = None

    def record(self, result: GenerationResult) -> None:
        self.generations += 1
        self.prompt_tokens += len(result.prompt_ids)
        self.reused_tokens += result.reused_tokens
        self.generated_tokens += len(result.ids)
        self.prefill_tokens += result.prefill_tokens
        self.prefill_seconds += result.prefill_seconds
        self.decode_tokens += result.decode_tokens
        self.decode_seconds += result.decode_seconds
        self.last = result


class Conversation:
    """A chat: the messages so far, the session whose cache holds their tokens, and its statistics."""

    def __init__(self, engine: "Engine", system: str | None = None, capacity: int | None = None,
                 adapter: str | None = None):
        self.engine = engine
        self.session = engine.new_session(capacity, adapter)
        self.system = system
        self.messages: list[dict] = []
        self.stats = GenerationStats()  # reset() starts it anew
        self.reset()

    @property
    def adapter(self) -> str | None:
        return self.session.adapter

    @adapter.setter
    def adapter(self, name: str | None) -> None:
        """Continue the conversation under another adapter (None: the base model); the next turn recomputes
        the KV of the conversation so far under it."""
        self.session.adapter = name

    def reset(self) -> None:
        """Forget the messages (but the system prompt), their KV cache and the statistics."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.session.reset()
        self.stats = GenerationStats()

    def summary(self) -> dict:
        """Where the conversation stands: context_tokens (in the KV cache), capacity, messages, turns,
        total_reused and adapter."""
        return {"context_tokens": self.session.length, "capacity": self.session.capacity,
                "messages": len(self.messages), "turns": self.stats.generations,
                "total_reused": self.stats.reused_tokens, "adapter": self.adapter}

    def send(self, text: str, params: SamplingParams | None = None, on_chip: bool = False) -> Generation:
        """Refuses (RomaError) before anything changes; the reply joins the conversation when it ends.
        on_chip: autonomous decode (Generation)."""
        messages = self.messages + [{"role": "user", "content": text}]
        prompt_ids = self.engine.tokenizer.encode_chat(messages, add_generation_prompt=True)

        def done(result: GenerationResult):
            self.messages = messages + [{"role": "assistant", "content": result.text}]
            self.stats.record(result)

        return Generation(self.engine, self.session, prompt_ids, params or SamplingParams(), on_done=done,
                          on_chip=on_chip)

    def lora(self, action: str = "list", name: str | None = None, folder: str | None = None) -> dict:
        """The chat's /lora (and the serial link's LORA request): action "list"; "use" adapter `name` (None:
        the base model) from the next turn; "load" the PEFT folder as `name` (None: the folder's name);
        "unload" `name` (the conversation goes on without it). RomaError when refused, nothing changed then.
        Returns {"adapters": [{name, slot, rank, targets, bytes}], "active", "done" (what was done, or None
        for "list"), "compensation_rank" (the build's always-on LoRA, or None)}."""
        engine = self.engine
        if name is not None and not isinstance(name, str):
            raise RomaError("the adapter name must be text")
        done = None
        if action == "use":
            self.adapter = name  # RomaError if it is not loaded
            done = (f"adapter {name} active; the conversation continues under it" if name else
                    "LoRA off: the base model continues the conversation")
        elif action == "load":
            if not isinstance(folder, str) or not folder:
                raise RomaError("/lora load needs an adapter folder", hint="/lora load [NAME=]DIR")
            (name, folder), = parse_lora_specs([f"{name}={folder}" if name else folder])
            slot = engine.load_lora(name, folder)
            done = f"loaded adapter {name} into slot {slot}; /lora {name} switches to it"
        elif action == "unload":
            if name is None:
                raise RomaError("/lora unload needs an adapter name")
            engine.unload_lora(name)  # RomaError if it is not loaded
            done = f"unloaded adapter {name}"
            if self.adapter == name:
                self.adapter = None
                done += "; the base model continues the conversation"
        elif action != "list":
            raise RomaError(f"unknown LoRA action {str(action)[:40]!r}", hint="list, use, load or unload")
        names = engine.lora_names()
        rows = [{"name": row["name"], "slot": row["slot"], "rank": row["max_rank"], "targets": list(row["targets"]),
                 "bytes": int(row["bytes"])} for row in (engine.lora.status() if engine.lora else [])
                if row["name"] in names]  # not the empty slots, nor the build's compensation
        comp = engine.compensation
        return {"adapters": rows, "active": self.adapter, "done": done,
                "compensation_rank": comp.max_rank if comp is not None else None}

    def save(self, path) -> Path:
        """The session and the messages in one file (Engine.restore_session reads it too)."""
        return self.session.save(path, {"kind": "conversation", "system": self.system,
                                        "messages": self.messages})

    def load(self, path) -> None:
        """Replace this conversation by a saved one, in this conversation's session. Everything is checked
        first (file, model, numerics, adapter, messages, size); a refusal leaves the conversation as it was."""
        saved = self.engine._read_session(path, self.session.capacity)
        extra = saved["meta"].get("extra") or {}
        messages = extra.get("messages")
        system = extra.get("system")
        ok = (extra.get("kind") == "conversation" and isinstance(messages, list)
              and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                      for m in messages) and (system is None or isinstance(system, str)))
        if not ok:
            raise RomaError(f"{path} holds a session but not a conversation (no messages)",
                            hint="give a file written by /save in the chat or by Conversation.save")
        try:
            self.engine._apply_session(self.session, saved)
        except BaseException:
            # the KV rows may be half written: forget them (the messages stay, and the next turn recomputes)
            self.session.reset()
            raise
        self.system = system
        self.messages = [dict(role=m["role"], content=m["content"]) for m in messages]
        self.stats.last = None


def _tokenizer_of(model: LoadedModel) -> Tokenizer:
    """The model's tokenizer; a build's is that of the model it was compiled from."""
    if model.format == "build":
        kind, path = build_source(model)
        return Tokenizer.from_hf_folder(path) if kind == "hf" else Tokenizer.from_gguf(path)
    return Tokenizer.from_model(model)


def _fingerprint(adapter, dtype: str, scale_dtype: str) -> str:
    """sha256 of an adapter's factors and the LoRA storage type: equal fingerprints, equal numerics."""
    h = hashlib.sha256(f"{dtype}/{scale_dtype}".encode())
    for key in sorted(adapter.factors, key=lambda k: (k[0], k[1])):
        a, b, scale = adapter.factors[key]
        h.update(f"{key[0]}:{key[1]}:{a.shape}:{b.shape}:{float(scale)!r}".encode())
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
        h.update(np.ascontiguousarray(b, np.float32).tobytes())
    return h.hexdigest()


COMPENSATION = "rom-compensation"  # the slot of a build's quantization-compensating LoRA
LORA_RESERVED = ("off", "load", "unload")  # words of the chat's /lora command, so no adapter's name


def parse_lora_specs(specs: list[str]) -> list[tuple[str, str]]:
    """[(name, folder)] from `[NAME=]DIR` strings (the CLI's --lora, the chat's and the serial server's /lora
    load), checked before any adapter loads: the folder exists, the name (NAME, else the folder's name) is one
    word and not reserved, no two are alike."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        try:
            spec.encode("utf-8")
        except UnicodeEncodeError:
            raise RomaError("an adapter folder's name contains a lone surrogate, which is not valid Unicode "
                            "text") from None
        name, folder = None, spec
        if "=" in spec and not Path(spec).expanduser().exists():
            left, right = spec.split("=", 1)
            if left and "/" not in left and os.sep not in left:
                name, folder = left, right
        if not folder or not Path(folder).expanduser().is_dir():
            raise RomaError(f"--lora {spec}: no adapter folder at '{folder}'",
                            hint="give the folder PEFT's save_pretrained wrote, optionally as NAME=DIR")
        if name is None:
            name = Path(folder).expanduser().resolve().name
        if not name.strip() or name.lower() in LORA_RESERVED or any(c.isspace() for c in name):
            raise RomaError(f"--lora {spec}: '{name}' cannot name an adapter",
                            hint=f"use NAME=DIR with a name without spaces, not one of {', '.join(LORA_RESERVED)}")
        if name in [n for n, _ in out]:
            raise RomaError(f"--lora {spec}: two adapters are named '{name}'", hint="name them apart with NAME=DIR")
        out.append((name, folder))
    return out


class Engine:
    """A model on a backend, with its tokenizer, resident LoRA adapters and KV memory.

    lora_slots / lora_rank / lora_dtype: the LoRA memory (slots of `lora_rank`, fp16 or int8); 0 slots means
    no LoRA. None: what the build's LoRA unit reserves (backend.lora_unit, the manifest's "lora_unit"), which
    also bounds what is asked; for a model that is not a build on the golden model, lora.DEFAULT_SLOTS slots of
    rank lora.DEFAULT_MAX_RANK, fp16. kv_memory: bytes of writable memory for LoRA slots plus KV cache; when given, the KV tokens that
    fit after the slots (`kv_budget`) are shared by all sessions (`kv_pool`) and bound their default context.
    """

    def __init__(self, model=DEFAULT_MODEL, backend: str | None = None, numerics: str = "quant", *,
                 lora_slots: int | None = None, lora_rank: int | None = None, lora_dtype: str | None = None,
                 kv_memory: int | None = None, build=None, bitstream=None, lora_any_build: bool = False):
        """backend: "ref", "emu" or "board"; None is the default (backends.check_backend: the board where a
        PYNQ board is present, else the emulated board; the golden model for float numerics). build: the
        compiled build the emu backend runs when `model` is not one (builds.default_build finds or compiles
        it; the engine never compiles). bitstream: the board backend's bitstream folder. lora_any_build:
        accept adapters that `roma finetune` trained for another base (with a warning) instead of refusing
        them."""
        backend = check_backend(backend, numerics)
        if lora_slots is not None and (isinstance(lora_slots, bool) or not isinstance(lora_slots, int)
                                       or lora_slots < 0):
            raise RomaError(f"the LoRA slot count must be a whole number >= 0, not {lora_slots!r}")
        if lora_rank is not None and (isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1):
            raise RomaError(f"the LoRA slot rank must be a positive integer, not {lora_rank!r}")
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.tokenizer = _tokenizer_of(self.model)
        self.backend = create_backend(backend, self.model, numerics, build=build, bitstream=bitstream)
        unit = self.backend.lora_unit  # the build's LoRA unit sizes the slots (None: a model without a build)
        if lora_slots is None:
            lora_slots = unit.slots if unit is not None else DEFAULT_SLOTS
        if lora_rank is None:
            lora_rank = unit.rank if unit is not None and unit.slots else DEFAULT_MAX_RANK
        if lora_dtype is None:
            lora_dtype = unit.dtype if unit is not None else "fp16"
        self.numerics = self.backend.numerics
        self.kv_dtype = kv.kv_dtype_name(self.backend.kv_dtype)
        # A build's compensating LoRA repairs its ROM base's quantization error, so it is always on: resident in
        # a slot of its own (which "no adapter" selects), and concatenated into every task adapter's slot.
        comp = self.model.compensation
        self.compensation = Adapter.from_factors(COMPENSATION, self.model, comp.factors) if comp else None
        if self.compensation is not None:
            lora_slots = max(lora_slots, 1)
        # hardware: its LoRA unit's slot count and rank, checked before LoraSlots refuses a rank beyond the model
        if lora_slots:
            from types import SimpleNamespace

            self.backend.check_lora(SimpleNamespace(capacity=lora_slots, slot_rank=lora_rank, dtype=lora_dtype,
                                                    config=self.config))
        if lora_slots:  # a slot rank beyond the model's width would only hold zeros, at the slot rank's cost
            check_slot_rank(lora_rank, self.config)
        self.lora = LoraSlots(self.config, lora_slots, lora_rank, lora_dtype, unit=unit) if lora_slots else None
        if self.compensation is not None:
            self.lora.load(COMPENSATION, self.compensation)
        self.lora_any_build = lora_any_build
        if self.lora is not None:
            self.backend.check_lora(self.lora)
        self._applied_lora = self.lora.version if self.lora else 0
        self._loads: dict[str, int] = {}  # adapter name -> serial number of its current load
        self._fingerprints: dict[str, str] = {}
        self._serial = 0
        self._identity: str | None = None
        self.kv_budget = None
        if kv_memory is not None:
            self.kv_budget = kv.KVBudget.compute(self.config, kv_memory, self.lora_bytes, self.kv_dtype)
        self.kv_pool = kv.KVPool(self.kv_budget.tokens if self.kv_budget else None)

    @property
    def config(self):
        return self.model.config

    @property
    def lora_bytes(self) -> int:
        """Writable memory the LoRA slots take (all slots, each at the slot rank)."""
        return self.lora.capacity * self.lora.slot_bytes if self.lora else 0

    @property
    def identity(self) -> str:
        """What a saved session records to tie itself to the model: the sha256 of the model file(s)
        (LoadedModel.identity(), ~0.1 s for SmolLM2's 98 MB, computed once), or for a compiler build the
        sha256 of its manifest, which holds the sha256 of every image."""
        if self._identity is None:
            m = self.model
            manifest = Path(m.source) / "manifest.json"
            if m.format == "build" and manifest.is_file():
                self._identity = "build:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
            else:
                self._identity = m.identity()
        return self._identity

    # --- LoRA ---------------------------------------------------------------------------------------------

    def _need_lora(self):
        if self.lora is None:
            unit = self.backend.lora_unit
            if unit is not None and not unit.slots:
                raise RomaError("this build has no LoRA unit (it was compiled with --lora-slots 0)",
                                hint="recompile the build with roma compile --lora-slots 1 (or more)")
            raise RomaError("this engine has no LoRA slots", hint="create it with lora_slots >= 1 (--lora-slots)")
        return self.lora

    def load_lora(self, name: str, folder_or_adapter) -> int:
        """Read (a PEFT folder) or take (a lora.Adapter), validate and pack, then place in a slot; loading a
        resident name replaces it. A refusal (RomaError) changes nothing: the resident and active adapters
        stay. Sessions whose KV was made under an earlier load of `name` recompute it. Returns the slot."""
        slots = self._need_lora()
        if name == COMPENSATION:
            raise RomaError(f"the adapter name '{COMPENSATION}' is reserved for the build's compensating LoRA")
        adapter, replaces_compensation = folder_or_adapter, False
        if not isinstance(adapter, Adapter):
            # An adapter trained by `roma finetune` fits the exact ROM base it was trained against; a distilled
            # one already holds the build's compensating LoRA.
            record = check_adapter_build(adapter, self.model, allow_other=self.lora_any_build)
            replaces_compensation = includes_compensation(record)
            if self.compensation is not None:
                adapter = read_peft_adapter(adapter, self.model, max_rank=max_slot_rank(self.config), name=name)
        if self.compensation is not None and not replaces_compensation:
            slots.check_fits(adapter)  # its own targets and rank, before the compensation's rank adds to it
            task_rank, adapter = adapter.max_rank, concat(self.compensation, adapter, name=name)
            if adapter.max_rank > slots.slot_rank:
                comp = self.compensation.max_rank
                raise RomaError(f"adapter '{name}' (rank {task_rank}) with the build's compensating LoRA (rank "
                                f"{comp}, always on) needs rank {adapter.max_rank}, above the LoRA slot rank "
                                f"{slots.slot_rank}",
                                hint=f"use an adapter of rank <= {slots.slot_rank - comp}, or recompile the build with "
                                     f"roma compile --lora-slot-rank {adapter.max_rank}")
        slot = slots.load(name, adapter)
        self._serial += 1
        self._loads[name] = self._serial
        self._fingerprints[name] = _fingerprint(slots.adapter(name), slots.dtype, slots.scale_dtype)
        return slot

    def unload_lora(self, name: str) -> None:
        """Free the adapter's slot. Sessions that name it are refused until they switch adapter."""
        self.check_adapter(name)
        self._need_lora().unload(name)
        self._loads.pop(name, None)
        self._fingerprints.pop(name, None)

    def lora_names(self) -> list[str]:
        """The task adapters loaded (not the build's compensating LoRA, which is part of the base)."""
        return [n for n in self.lora.names() if n != COMPENSATION] if self.lora else []

    def check_adapter(self, name: str | None) -> None:
        """RomaError unless `name` is None (the base model) or a loaded adapter."""
        if name is None:
            return
        if not isinstance(name, str):
            raise RomaError(f"an adapter is named by a string, not {name!r}")
        if name not in self.lora_names():
            loaded = ", ".join(self.lora_names()) or "none"
            raise RomaError(f"no LoRA adapter named '{name}' is loaded (loaded: {loaded})",
                            hint="load it first (--lora NAME=DIR; /lora load NAME=DIR in the chat; Engine.load_lora)")

    def _tag(self, name: str | None):
        """Identifies the weights a KV row is computed under: the base model, or one load of an adapter."""
        return None if name is None else (name, self._loads.get(name))

    def _bind(self, session: Session) -> None:
        """Make the session's adapter the active one on the backend (cheap when it already is)."""
        slots = self.lora
        if slots is None:
            return
        wanted = session.adapter
        if wanted is None and self.compensation is not None:
            wanted = COMPENSATION
        if slots.active != wanted:
            slots.activate(wanted)
        if self._applied_lora != slots.version:
            self.backend.set_lora(slots)
            self._applied_lora = slots.version

    # --- sessions -----------------------------------------------------------------------------------------

    @property
    def max_context(self) -> int:
        """The longest session: the context length, or the backend's limit (an on-chip KV cache) below it."""
        return min(self.config.context_length, self.backend.max_context)

    def new_session(self, capacity: int | None = None, adapter: str | None = None) -> Session:
        """A session of `capacity` KV positions (default: max_context, or with a memory budget what is free
        of it, at most max_context) running under `adapter` (None: the base model). A capacity above
        max_context but within the context is refused by the backend, naming its limit."""
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer))):
            raise RomaError(f"a context is a whole number of tokens, not {capacity!r}")
        if capacity is not None and not 1 <= capacity <= self.config.context_length:
            raise RomaError(f"context of {capacity} tokens is outside 1..{self.config.context_length}, "
                            "the range this model supports")
        self.check_adapter(adapter)
        if capacity is None and self.kv_pool.free is not None:
            capacity = min(self.max_context, self.kv_pool.free)
            if capacity < 1:
                self.kv_pool.check(1)
        # No session's KV cache may take more than kv.session_memory_limit(): the default one is cut to it (a
        # model that states a context of a million tokens does not get a 24 GB cache unasked), a longer one
        # asked for is refused, naming the limit.
        fits = kv.session_tokens(self.config, self.kv_dtype)
        if capacity is None and self.max_context > fits:
            capacity = fits
        elif capacity is not None and capacity > fits:
            kv.check_session_memory(self.config, int(capacity), self.kv_dtype)
        self.kv_pool.check(capacity or self.max_context)
        session = Session(self, capacity, adapter)
        session._ticket = self.kv_pool.reserve(session, session.capacity)
        return session

    def warm_up(self) -> None:
        """One untimed forward pass of one token in a scratch session of one position. A backend's first call
        pays one-time costs (on the emulated board about 0.5 s of first touches of its weight image and
        buffers) that would otherwise count against the first prompt's prefill speed."""
        session = self.new_session(1)
        try:
            self._bind(session)
            self.backend.forward([0], session.cache)
        finally:
            session.close()

    def _save_session(self, session: Session, path, extra: dict | None) -> Path:
        n = session.saved_length
        keys, values = kv.cache_rows(session.cache, n)
        adapter = None
        if session.adapter is not None:
            adapter = {"name": session.adapter, "fingerprint": self._fingerprints.get(session.adapter)}
        meta = {
            "model": {"name": self.config.name, "identity": self.identity, "config": self.config.to_dict()},
            "numerics": self.numerics, "backend": self.backend.name, "kv_dtype": self.kv_dtype,
            "capacity": session.capacity, "length": n, "adapter": adapter, "extra": extra or {},
        }
        return kv.write_session_file(path, meta, session.ids[:n], keys, values)

    def _read_session(self, path, capacity: int | None = None) -> dict:
        """Read and check a session file against this engine; nothing changes here. The metadata is checked
        (model, numerics, adapter, length) before any array of the file is inflated (kv.read_session_file)."""
        c = self.config

        def check(meta: dict) -> None:
            model = meta["model"]
            if model.get("identity") != self.identity:
                raise RomaError(
                    f"{path} was saved with another model ({model.get('name')}, identity "
                    f"{str(model.get('identity'))[:16]}...); this engine runs {c.name} (identity "
                    f"{self.identity[:16]}...)", hint="restore it with the model it was saved with (--model)")
            if meta["numerics"] != self.numerics or meta["kv_dtype"] != self.kv_dtype:
                raise RomaError(
                    f"{path} was saved with {meta['numerics']} numerics and a {meta['kv_dtype']} KV cache; this "
                    f"engine runs {self.numerics} numerics with a {self.kv_dtype} KV cache",
                    hint=f"restore it with --numerics {meta['numerics']}")
            adapter = meta.get("adapter")
            name = adapter["name"] if adapter is not None else None
            if name is not None:
                if name not in self.lora_names():
                    raise RomaError(f"{path} was saved under the LoRA adapter '{name}', which is not loaded",
                                    hint=f"load it first (--lora {name}=DIR, or /lora load {name}=DIR in the chat)")
                if adapter.get("fingerprint") != self._fingerprints.get(name):
                    raise RomaError(f"{path} was saved under a LoRA adapter '{name}' with other contents than the "
                                    f"'{name}' loaded now", hint="load the same adapter folder it was saved with")
            n = meta["length"]
            if capacity is not None and n > capacity:
                raise RomaError(f"{path} holds {n} tokens, more than this session's context of {capacity}",
                                hint="restore it into a longer context (--context)")
            if n > self.max_context:
                raise RomaError(f"{path} holds {n} tokens, more than the {self.max_context} a session of "
                                f"{c.name} holds here", hint="it was saved with a longer context than this engine runs")

        meta, ids, keys, values = kv.read_session_file(path, c, self.kv_dtype, check=check)
        n = len(ids)
        if n and (min(ids) < 0 or max(ids) >= c.vocab_size):
            raise RomaError(f"{path} holds token ids outside 0..{c.vocab_size - 1}")
        adapter = meta.get("adapter")
        name = adapter["name"] if adapter is not None else None
        return {"meta": meta, "ids": ids, "keys": keys, "values": values, "adapter": name}

    def _apply_session(self, session: Session, saved: dict) -> None:
        kv.write_cache_rows(session.cache, saved["keys"], saved["values"])
        session.ids = list(saved["ids"])
        session._adapter = saved["adapter"]
        session._kv_tag = self._tag(saved["adapter"])
        session.extra = saved["meta"].get("extra") or {}

    def restore_session(self, path, session: Session | None = None) -> Session:
        """A session saved by Session.save, restored into `session` (replacing its contents) or a new one of
        the saved capacity. Refused (RomaError, nothing changed) for another model, other numerics or KV type,
        an adapter that is not loaded or has other contents, or a session too small for the saved tokens."""
        saved = self._read_session(path, session.capacity if session is not None else None)
        if session is None:
            n = len(saved["ids"])
            capacity = min(int(saved["meta"].get("capacity") or n), self.max_context)
            if self.kv_pool.free is not None:
                capacity = min(capacity, self.kv_pool.free)
            session = self.new_session(max(capacity, n, 1), saved["adapter"])
        self._apply_session(session, saved)
        return session

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                 session: Session | None = None, chat: bool = False, adapter: str | None = None,
                 on_chip: bool = False) -> Generation:
        """A raw continuation of `prompt` (text or ids), or with chat=True a one-turn chat. Without a session
        a new one runs under `adapter`. on_chip: autonomous decode, the chip samples (see Generation);
        RomaError when the backend or the sampling settings do not allow it."""
        if isinstance(prompt, str):
            if chat:
                prompt = self.tokenizer.encode_chat([{"role": "user", "content": prompt}])
            else:
                prompt = self.tokenizer.encode(prompt)
        params = params or SamplingParams()
        if on_chip:  # refuse before a session is made
            check_on_chip(self.backend, params)
        if session is None:
            session = self.new_session(adapter=adapter)
        return Generation(self, session, list(prompt), params, on_chip=on_chip)

    def chat(self, system: str | None = None, capacity: int | None = None, adapter: str | None = None) -> Conversation:
        return Conversation(self, system, capacity, adapter)
