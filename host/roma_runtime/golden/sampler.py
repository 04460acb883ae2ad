"""The on-chip sampler: the executable spec of what hw/hls/include/roma/sampler.h computes, bit for bit.

Why a second sampler. In autonomous decode the accelerator samples N tokens by itself, so the host is not on
the critical path of every token. The hardware cannot sort a 49,152-entry vocabulary per token, so it samples
in a streaming pass over the logits plus a few loops over a small candidate pool:

  1. STREAM  (V / LANES cycles) every logit l[i] gets the repetition penalty when i is one of the recent ids
             (l * inv_penalty if l > 0, else l * penalty), and is inserted into a sorted register array of the
             K best candidates (an insertion network: K parallel comparisons and a shift per cycle). With
             LANES > 1, lane j sees ids j, j + LANES, ... and keeps its own K-list.
  2. MERGE   ((LANES - 1) * K cycles) the lanes' lists are inserted into lane 0's list.
             Candidates are ordered by the total order (value descending, id ascending): the pool is exactly
             the first min(K, V) entries of a stable descending sort, whatever LANES is. Ties -> lowest id.
  3. greedy  (temperature 0): token = pool[0], the argmax with ties to the lowest id (numpy argmax). A build with
             more ARGMAX lanes than list lanes (roma_model.h ARGMAX_LANES) finds it in a pass of its own that keeps
             only the best penalised logit per lane: the same token, in V / ARGMAX_LANES cycles.
  4. PROBS   for the kk = top_k (or K when top_k is 0 or above K) best candidates:
             z = (l - lmax) * inv_temperature, p = exp_f32(z)   (fp32; p[0] = 1 exactly)
  5. CUMSUM  cum[j] = cum[j-1] + p[j], sequentially in fp32 (the order is part of the contract).
  6. KEEP    keep_p = 1 + first j with cum[j] >= top_p * cum[kk-1]   (top-p: smallest prefix reaching top_p,
             the crossing token kept, as in generate.HostSampler), keep_m = first j with p[j] < min_p * p[0]
             (min-p, as a prefix), keep = min(kk, keep_p, keep_m) (at least 1).
  7. PICK    u = one uniform fp32 from the on-chip PRNG, r = u * cum[keep-1],
             token = pool[#{j < keep-1 : cum[j] <= r}]  (the first j with r < cum[j]; branch-free count).

The PRNG is xorshift64* with a 64-bit state held on chip and seeded by the host (`seed_state`). It advances
exactly once per token in every mode (greedy too, the draw is then unused), so the state after n tokens is
prng_next applied n times, whatever the sampling settings.

exp is not libm's: `exp_f32` (hw/hls/include/roma/fexp.h, the datapath's one exp) is a fixed sequence of fp32
multiplies and adds (Cody-Waite reduction by ln 2, a degree-7 Taylor polynomial, the power of two built in the
exponent field), so numpy, g++ C simulation and
synthesized fp32 cores (IEEE add/mul) give the same bits. hls::exp, std::exp and numpy's exp disagree in the
last bit, which would change sampled tokens. Candidates with z < Z_MIN (-86) get p = 0, so no subnormal
number ever arises: the result is the same whether the fp cores support subnormals or flush them.

Relation to the host `generate.HostSampler` (same SamplingParams, same distributions, different randomness):
  - The same filters in the same order: penalty (CTRL/llama.cpp style, over the last repeat_last_n tokens),
    temperature, top-k, then top-p and min-p on the renormalised top-k probabilities, then one draw.
  - Differences: the host sorts the whole vocabulary; the chip only ever considers its pool of K candidates.
    With top_k 0 (off) or top_k > K, the chip therefore behaves as top-k = K: tokens outside the K most
    likely have probability 0 instead of a (usually tiny) positive one. At temperature 1 on a peaked LM
    distribution the tail beyond the top 64 holds little mass, but at high temperature or on flat
    distributions it is noticeable; `effective_top_k` says what the chip will do.
  - Probabilities are fp32 here (float64 on the host), the penalty multiplies by a precomputed 1/penalty
    (the host divides), and the repetition window is at most N recent ids (the ring buffer size).
  - The host uses numpy's Generator; the chip its own xorshift64*. A seed therefore does NOT give the same
    tokens on both: seeds are not interchangeable between the host sampler and the on-chip sampler. Each is
    reproducible on its own: the same seed, logits and settings give the same tokens every time, and this
    module gives exactly the tokens the hardware gives.
Preconditions (the kernel's contract): logits are finite or -inf (no NaN, no +inf), at least one is finite,
and their differences are not subnormal-sized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..artifact.interface import HLS_DIR, load_constants

MASK64 = (1 << 64) - 1
_CORE = load_constants()  # roma_core.h: the sampler instance the core synthesizes
SAMPLER_K = _CORE["SAMPLER_K"]  # its pool (top-k maximum)
SAMPLER_RING = _CORE["SAMPLER_RING"]  # its ring of recent ids (the repetition penalty's window)

# ---- the PRNG: xorshift64* (Marsaglia's xorshift with shifts 12, 25, 27, then one 64-bit multiply) ----
XS_SHIFT_A, XS_SHIFT_B, XS_SHIFT_C = 12, 25, 27
XS_MULTIPLIER = 0x2545F4914F6CDD1D
SEED_ZERO_REPLACEMENT = 0x9E3779B97F4A7C15  # state 0 is a fixed point of xorshift: both sides replace it
UNIFORM_BITS = 24  # u = (output >> 40) * 2^-24: exact in fp32, in [0, 1 - 2^-24]


def prng_next(state: int) -> tuple[int, np.float32]:
    """One step of the on-chip PRNG: (new_state, uniform fp32 in [0, 1)). Exact integer ops:

        x = state (or SEED_ZERO_REPLACEMENT if state == 0)
        x ^= x >> 12;  x ^= (x << 25) mod 2^64;  x ^= x >> 27        (new state)
        out = (x * 0x2545F4914F6CDD1D) mod 2^64
        u = float32(out >> 40) * 2^-24
    """
    x = int(state) & MASK64
    if x == 0:
        x = SEED_ZERO_REPLACEMENT
    x ^= x >> XS_SHIFT_A
    x ^= (x << XS_SHIFT_B) & MASK64
    x ^= x >> XS_SHIFT_C
    out = (x * XS_MULTIPLIER) & MASK64
    u = np.float32(out >> (64 - UNIFORM_BITS)) * np.float32(2.0 ** -UNIFORM_BITS)
    return x, np.float32(u)


def seed_state(seed: int | None) -> int:
    """Host side: a user seed -> the 64-bit state written to the chip (a splitmix64 scramble, so small
    neighbouring seeds start far apart; never 0). None -> a seed from the OS."""
    if seed is None:
        seed = int(np.random.SeedSequence().entropy) & MASK64
    z = (int(seed) + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return z or SEED_ZERO_REPLACEMENT


# ---- exp in fp32 from + and * only ----
def _fexp_constants() -> dict[str, np.float32]:
    """fexp.h's `constexpr float NAME = LITERAL;` (hex-float literals, exact in fp32): the one copy of exp's
    constants, read from the HLS sources the package ships."""
    text = (HLS_DIR / "include" / "roma" / "fexp.h").read_text()
    found = re.findall(r"constexpr\s+float\s+([A-Z][A-Z0-9_]*)\s*=\s*([-+0-9.a-fA-FxXpP]+)f\s*;", text)
    return {name: np.float32(float.fromhex(v) if "x" in v.lower() else float(v)) for name, v in found}


_FEXP = _fexp_constants()
Z_MIN = _FEXP["Z_MIN"]  # below: p = 0 (keeps 2^n >= 2^-124 and the product normal)
LOG2E = _FEXP["LOG2E"]  # 1/ln 2
LN2_HI = _FEXP["LN2_HI"]  # 0.693145751953125: n * LN2_HI is exact for |n| < 2^9
LN2_LO = _FEXP["LN2_LO"]  # ln 2 - LN2_HI
# Taylor coefficients 1/k! for k = 7..0 (Horner order), each rounded to fp32 (1/2, 1, 1 are exact literals there)
EXP_COEFFS = tuple(_FEXP[f"EXP_C{k}"] for k in range(7, 2, -1)) + (np.float32(0.5), np.float32(1.0),
                                                                    np.float32(1.0))
F32_MAX = np.float32(np.finfo(np.float32).max)
NEG_INF = np.float32(-np.inf)


def exp_f32(z: np.ndarray) -> np.ndarray:
    """exp(z) for z <= 0 (fp32 array), exactly as fexp.h's exp_f32 evaluates it:

        z < Z_MIN (or -inf)  -> 0
        t = z * LOG2E;  n = floor(t + 0.5);  r = (z - n*LN2_HI) - n*LN2_LO
        e = Horner(1/7!, ..., 1/1!, 1/0!)(r);  p = e * 2^n   (2^n built as the fp32 bit pattern (n+127) << 23)
    Relative error ~2e-7 against the true exp."""
    z = np.asarray(z, dtype=np.float32)
    ok = z >= Z_MIN
    zc = np.where(ok, z, np.float32(0.0)).astype(np.float32)
    t = zc * LOG2E
    n = np.floor(t + np.float32(0.5)).astype(np.float32)
    r = (zc - n * LN2_HI) - n * LN2_LO
    e = np.full_like(r, EXP_COEFFS[0])
    for c in EXP_COEFFS[1:]:
        e = e * r + c
    scale = ((n.astype(np.int32) + 127) << 23).astype(np.uint32).view(np.float32)
    p = e * scale
    assert p.dtype == np.float32
    return np.where(ok, p, np.float32(0.0)).astype(np.float32)


# ---- parameters as the chip's registers hold them ----
@dataclass(frozen=True)
class OnChipParams:
    """The sampler's control registers (fp32 / int), derived on the host from SamplingParams.

    greedy          1 when temperature == 0
    inv_temperature float32(1 / temperature), clamped to [2^-60, largest fp32] (a tiny temperature is
                    near-greedy)
    top_k           0 = off (the chip then uses its pool of K)
    top_p, min_p    fp32; top_p 1 and min_p 0 switch them off (min_p below 2^-64 is flushed to 0)
    penalty, inv_penalty   fp32 repetition penalty and float32(1 / penalty)
    repeat_last_n   how many of the most recent ids (at most the ring size N) the penalty looks at
    """

    greedy: int = 1
    inv_temperature: np.float32 = np.float32(1.0)
    top_k: int = 0
    top_p: np.float32 = np.float32(1.0)
    min_p: np.float32 = np.float32(0.0)
    penalty: np.float32 = np.float32(1.0)
    inv_penalty: np.float32 = np.float32(1.0)
    repeat_last_n: int = 64

    @classmethod
    def from_sampling(cls, p) -> "OnChipParams":
        """From a generate.SamplingParams (validated)."""
        p.validate()
        greedy = 1 if p.temperature == 0 else 0
        # clamped to [2^-60, fp32 max]: never 0 (0 * -inf) nor inf (0 * inf) on chip
        inv_t = 1.0 if greedy else min(max(1.0 / float(p.temperature), 2.0 ** -60), float(F32_MAX))
        min_p = float(p.min_p) if p.min_p >= 2.0 ** -64 else 0.0
        pen = float(p.repetition_penalty)
        return cls(greedy=greedy, inv_temperature=np.float32(inv_t), top_k=int(p.top_k),
                   top_p=np.float32(p.top_p), min_p=np.float32(min_p), penalty=np.float32(pen),
                   inv_penalty=np.float32(np.float32(1.0) / np.float32(pen)),
                   repeat_last_n=int(p.repeat_last_n))


def _as_params(params) -> OnChipParams:
    return params if isinstance(params, OnChipParams) else OnChipParams.from_sampling(params)


def effective_top_k(top_k: int, k_max: int, vocab: int) -> int:
    """The number of candidates the chip draws from before top-p/min-p: top_k, or its pool when top_k is 0
    (off) or larger than the pool min(K, V)."""
    pool = min(k_max, vocab)
    return pool if top_k <= 0 else min(top_k, pool)


@dataclass
class SampleTrace:
    """Everything the kernel computes for one token (for tests and debugging)."""

    token: int
    state: int
    u: np.float32
    pool_ids: np.ndarray  # int64 [pool], best first
    pool_logits: np.ndarray  # fp32 [pool], penalised
    kk: int = 0
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # fp32 [kk], unnormalised
    cum: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # fp32 [kk]
    keep: int = 1
    r: np.float32 = np.float32(0.0)


@dataclass(frozen=True)
class OnChipSamplerSpec:
    """The compile-time parameters of one hardware sampler instance: sampler.h's template arguments.

    vocab V, k_max K (pool size, top-k maximum), ring N (recent ids for the penalty), lanes (logits per
    cycle; it changes timing only, never the token)."""

    vocab: int
    k_max: int = SAMPLER_K
    ring: int = SAMPLER_RING
    lanes: int = 1

    def __post_init__(self):
        if self.vocab < 1 or self.k_max < 1 or self.ring < 1 or self.lanes < 1 or self.vocab % self.lanes:
            raise ValueError(f"bad sampler shape {self}")

    @property
    def pool(self) -> int:
        return min(self.k_max, self.vocab)

    def active_recent(self, recent_ids, repeat_last_n: int) -> np.ndarray:
        """The ids the penalty applies to: the last min(repeat_last_n, N) of recent_ids (oldest first)."""
        recent = [int(i) for i in recent_ids][-self.ring:]  # the ring holds the last N ids
        n = min(max(int(repeat_last_n), 0), len(recent))
        return np.asarray(recent[len(recent) - n:], dtype=np.int64)

    def penalise(self, logits: np.ndarray, prm: OnChipParams, recent_ids) -> np.ndarray:
        l = np.array(logits, dtype=np.float32, copy=True)
        if l.shape != (self.vocab,):
            raise ValueError(f"logits must have shape ({self.vocab},), got {l.shape}")
        if np.isnan(l).any() or np.isposinf(l).any() or not np.isfinite(l).any():
            raise ValueError("logits must be finite or -inf, with at least one finite value")
        act = self.active_recent(recent_ids, prm.repeat_last_n)
        act = act[(act >= 0) & (act < self.vocab)]
        if act.size:
            seen = np.zeros(self.vocab, dtype=bool)
            seen[act] = True
            v = l[seen]
            l[seen] = np.where(v > 0, v * np.float32(prm.inv_penalty), v * np.float32(prm.penalty))
        return l

    def trace(self, logits, params, rng_state: int, recent_ids=()) -> SampleTrace:
        prm = _as_params(params)
        state, u = prng_next(rng_state)  # one draw per token, in every mode
        l = self.penalise(logits, prm, recent_ids)
        # The pool: the first min(K, V) of the order (value descending, id ascending). -l is exact and a
        # stable sort keeps ids ascending among equal values (+0.0 and -0.0 compare equal, as in C++).
        pool_ids = np.argsort(-l, kind="stable")[: self.pool]
        pool_logits = l[pool_ids]
        tr = SampleTrace(token=int(pool_ids[0]), state=state, u=u, pool_ids=pool_ids, pool_logits=pool_logits)
        if prm.greedy:
            return tr
        kk = effective_top_k(prm.top_k, self.k_max, self.vocab)
        lmax = pool_logits[0]
        z = (pool_logits[:kk] - lmax) * np.float32(prm.inv_temperature)
        p = exp_f32(z)
        cum = np.empty(kk, dtype=np.float32)
        acc = np.float32(0.0)
        for j in range(kk):  # sequential fp32 sum, the kernel's order
            acc = np.float32(acc + p[j])
            cum[j] = acc
        thr_p = np.float32(np.float32(prm.top_p) * cum[kk - 1])
        thr_m = np.float32(np.float32(prm.min_p) * p[0])
        reach = np.nonzero(cum >= thr_p)[0]
        keep_p = int(reach[0]) + 1 if reach.size else kk
        below = np.nonzero(p < thr_m)[0]
        keep_m = int(below[0]) if below.size else kk
        keep = max(1, min(kk, keep_p, keep_m))
        r = np.float32(u * cum[keep - 1])
        idx = int(np.count_nonzero(cum[: keep - 1] <= r))
        tr.token, tr.kk, tr.probs, tr.cum, tr.keep, tr.r = int(pool_ids[idx]), kk, p, cum, keep, r
        return tr

    def sample(self, logits, params, rng_state: int, recent_ids=()) -> tuple[int, int]:
        """-> (token, new_rng_state): exactly what the hardware returns for this state."""
        tr = self.trace(logits, params, rng_state, recent_ids)
        return tr.token, tr.state


def sample_on_chip(logits: np.ndarray, params, rng_state: int, recent_ids=(), *, k_max: int = SAMPLER_K,
                   ring: int = SAMPLER_RING) -> tuple[int, int]:
    """One on-chip sampling step: logits fp32 [V], params (OnChipParams or generate.SamplingParams), the
    64-bit PRNG state, the recent token ids (oldest first) -> (token, new_rng_state)."""
    logits = np.asarray(logits, dtype=np.float32)
    return OnChipSamplerSpec(logits.shape[-1], k_max, ring).sample(logits, params, rng_state, recent_ids)


class OnChipSampler:
    """Autonomous decode as the chip runs it: the PRNG state and the ring of recent ids carried across tokens.

    Each sampled token is pushed into the ring (the oldest id drops out after N tokens). `recent` seeds the
    ring with the prompt's last tokens, as the host would before starting autonomous decode."""

    def __init__(self, spec: OnChipSamplerSpec, params, seed: int | None = None, *, state: int | None = None,
                 recent=()):
        self.spec = spec
        self.params = _as_params(params)
        self.state = int(state) if state is not None else seed_state(seed)
        self.recent = [int(i) for i in recent][-spec.ring:]

    def sample(self, logits: np.ndarray) -> int:
        token, self.state = self.spec.sample(logits, self.params, self.state, self.recent)
        self.recent = (self.recent + [token])[-self.spec.ring:]
        return token
