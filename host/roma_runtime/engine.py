"""The one API over every backend: sessions with their KV cache, streamed generation, chat conversations.

Used by the CLI, the notebooks and the bench. A token's way: tokenizer -> engine -> backend -> logits ->
sampler -> engine -> incremental detokenizer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .backends import check_backend, create_backend
from .errors import RomaError
from .generate import Sampler, SamplingParams, StopMatcher
from .model import LoadedModel, load_model
from .model.loader import DEFAULT_MODEL
from .tokenizer import Tokenizer


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "stop" (end token or stop string), "length", "context", "interrupted"
    reused_tokens: int = 0  # prompt tokens whose KV was already in the session
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0  # single-token forward passes after the prefill
    decode_seconds: float = 0.0

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


class Session:
    """One sequence: its KV cache and the token ids whose keys and values the cache holds."""

    def __init__(self, backend, capacity: int | None = None):
        self.cache = backend.new_cache(capacity)
        self.ids: list[int] = []

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def reset(self) -> None:
        self.cache.truncate(0)
        self.ids = []


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Generation:
    """Validates on creation (nothing changes if it refuses); iterate it to run and stream the text."""

    def __init__(self, engine: "Engine", session: Session, prompt_ids: list[int], params: SamplingParams,
                 on_done=None):
        self.sampler = Sampler(params)
        self.params = params
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
        self.engine, self.session, self.on_done = engine, session, on_done
        self.result = GenerationResult(prompt_ids=list(prompt_ids))
        self._started = False

    def __iter__(self):
        if self._started:
            raise RuntimeError("a generation runs once")
        self._started = True
        backend, session, res, p = self.engine.backend, self.session, self.result, self.params
        eos = self.engine.tokenizer.eos_ids
        decoder = self.engine.tokenizer.stream_decoder()
        stops = StopMatcher(p.stop)
        prompt = res.prompt_ids
        try:
            reuse = common_prefix(session.ids, prompt)
            reuse = min(reuse, len(prompt) - 1)  # the last prompt token must run to give logits
            session.cache.truncate(reuse)
            del session.ids[reuse:]
            res.reused_tokens = reuse
            t0 = time.perf_counter()
            logits = backend.forward(prompt[reuse:], session.cache)
            session.ids.extend(prompt[reuse:])
            res.prefill_tokens = len(prompt) - reuse
            res.prefill_seconds = time.perf_counter() - t0
            while True:
                token = self.sampler.sample(logits, prompt + res.ids)
                res.ids.append(token)
                if token in eos:
                    res.finish_reason = "stop"
                    break
                piece = stops.feed(decoder.feed(token))
                if piece:
                    res.text += piece
                    yield piece
                if stops.stopped:
                    res.finish_reason = "stop"
                    break
                if len(res.ids) >= p.max_tokens:
                    res.finish_reason = "length"
                    break
                if session.cache.length >= session.capacity:
                    res.finish_reason = "context"
                    break
                t0 = time.perf_counter()
                logits = backend.forward([token], session.cache)
                session.ids.append(token)
                res.decode_tokens += 1
                res.decode_seconds += time.perf_counter() - t0
            if not stops.stopped:
                tail = stops.feed(decoder.flush()) + ("" if stops.stopped else stops.flush())
                if tail:
                    res.text += tail
                    yield tail
        finally:
            if not res.finish_reason:
                res.finish_reason = "interrupted"
            if self.on_done:
                self.on_done(res)

    def run(self) -> GenerationResult:
        for _ in self:
            pass
        return self.result


class Conversation:
    """A chat: the messages so far and the session whose cache holds their tokens."""

    def __init__(self, engine: "Engine", system: str | None = None, capacity: int | None = None):
        self.engine = engine
        self.session = engine.new_session(capacity)
        self.system = system
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.session.reset()

    def send(self, text: str, params: SamplingParams | None = None) -> Generation:
        """Refuses (RomaError) before anything changes; the reply joins the conversation when it ends."""
        messages = self.messages + [{"role": "user", "content": text}]
        prompt_ids = self.engine.tokenizer.encode_chat(messages, add_generation_prompt=True)

        def done(result: GenerationResult):
            self.messages = messages + [{"role": "assistant", "content": result.text}]

        return Generation(self.engine, self.session, prompt_ids, params or SamplingParams(), on_done=done)


class Engine:
    def __init__(self, model=DEFAULT_MODEL, backend: str = "ref", numerics: str = "quant"):
        check_backend(backend)
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        self.tokenizer = Tokenizer.from_model(self.model)
        self.backend = create_backend(backend, self.model, numerics)

    @property
    def config(self):
        return self.model.config

    def new_session(self, capacity: int | None = None) -> Session:
        if capacity is not None and not 1 <= capacity <= self.config.context_length:
            raise RomaError(f"context of {capacity} tokens is outside 1..{self.config.context_length}, "
                            "the range this model supports")
        return Session(self.backend, capacity)

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                 session: Session | None = None, chat: bool = False) -> Generation:
        """A raw continuation of `prompt` (text or ids), or with chat=True a one-turn chat."""
        if isinstance(prompt, str):
            if chat:
                prompt = self.tokenizer.encode_chat([{"role": "user", "content": prompt}])
            else:
                prompt = self.tokenizer.encode(prompt)
        return Generation(self, session or self.new_session(), list(prompt), params or SamplingParams())

    def chat(self, system: str | None = None, capacity: int | None = None) -> Conversation:
        return Conversation(self, system, capacity)
