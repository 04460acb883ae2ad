"""Sampling and stop handling: pure functions of logits and text, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import RomaError

MAX_SEED = (1 << 64) - 1  # seeds are 64-bit: the on-chip sampler's PRNG state is seeded from one


@dataclass
class SamplingParams:
    """temperature 0 means greedy. top_k 0 and top_p 1 and min_p 0 switch those filters off."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64  # how many recent tokens the repetition penalty looks at, as in llama.cpp
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def validate(self) -> "SamplingParams":
        checks = [
            (self.max_tokens >= 1, f"max tokens must be at least 1 (got {self.max_tokens})"),
            (self.temperature >= 0, f"temperature must be >= 0 (got {self.temperature})"),
            (self.top_k >= 0, f"top-k must be >= 0, 0 meaning off (got {self.top_k})"),
            (0 < self.top_p <= 1, f"top-p must be in (0, 1] (got {self.top_p})"),
            (0 <= self.min_p < 1, f"min-p must be in [0, 1) (got {self.min_p})"),
            (self.repeat_last_n >= 0, f"repeat-last-n must be >= 0 (got {self.repeat_last_n})"),
            (self.repetition_penalty > 0, f"repetition penalty must be > 0 (got {self.repetition_penalty})"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty"),
        ]
        if not np.isfinite([self.temperature, self.top_p, self.min_p, self.repetition_penalty]).all():
            raise RomaError("sampling values must be finite numbers")
        for ok, message in checks:
            if not ok:
                raise RomaError(message)
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed <= MAX_SEED):
            raise RomaError(f"the seed must be a whole number in 0..{MAX_SEED} (got {seed})",
                            hint="leave it out for a random seed")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingParams":
        """Validated SamplingParams from JSON (a dict of its fields, as `asdict` writes them): one RomaError
        for an unknown field or a wrong type as for a bad value."""
        if not isinstance(d, dict):
            raise RomaError("the sampling options must be a JSON object")
        kinds = {"max_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float),
                 "min_p": (int, float), "repetition_penalty": (int, float), "repeat_last_n": int,
                 "seed": (int, type(None)), "stop": list}
        unknown = sorted(set(d) - set(kinds))
        if unknown:
            raise RomaError(f"unknown sampling option {unknown[0]!r}",
                            hint="the other side runs an older roma; update it or leave that option out")
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, kinds[k]):
                raise RomaError(f"sampling option {k} has a wrong type ({type(v).__name__})")
        if not all(isinstance(x, str) for x in d.get("stop") or []):
            raise RomaError("stop strings must be text")
        return cls(**d).validate()


class HostSampler:
    """The host's sampler: turns logits into a token id, in float64 over the whole vocabulary, with numpy's
    seeded Generator (a seed reproduces a run). Autonomous decode samples on the chip instead, with the
    fixed-point-exact algorithm of golden/sampler.py (a pool of the K best, fp32, its own PRNG): the same
    filters in the same order, but other numerics and randomness, so the two stay separate (that module
    says how they relate)."""

    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        history = history[-p.repeat_last_n :] if p.repeat_last_n > 0 else []
        if p.repetition_penalty != 1.0 and history:
            # As in CTRL and llama.cpp: seen tokens' positive logits shrink, negative ones grow.
            logits = logits.copy()
            seen = np.unique(np.asarray(history, dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        order = np.argsort(-logits, kind="stable")
        if p.top_k:
            order = order[: p.top_k]
        z = logits[order].astype(np.float64) / p.temperature
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        keep = len(order)
        if p.top_p < 1.0:
            # Smallest prefix whose mass reaches top_p (the token that crosses it is kept).
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p) + 1))
        if p.min_p > 0:
            keep = min(keep, int(np.count_nonzero(probs >= p.min_p * probs[0])))
        probs = probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(keep, p=probs)])


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could still become one."""

    def __init__(self, stops: list[str]):
        self.stops = list(stops)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Returns the text that is safe to show now; sets `stopped` when a stop string appeared."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
