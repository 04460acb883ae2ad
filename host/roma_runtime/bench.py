"""`roma bench`'s measurements: prefill and decode speed, time to first token, host overhead, LoRA swap time and,
where a backend counts them, FPGA cycles per stage; optionally against a peer (llama.cpp) on the same inputs.

What every figure means (all medians over `repeats` runs, with their min, max and standard deviation; each run
starts from an empty KV cache):
- prefill tokens/s: prompt tokens / the time of the forward pass over the whole prompt.
- decode tokens/s: single-token forward passes after the prefill / their time (the KV context grows from the
  prompt length to prompt + decode tokens).
- time to first token (TTFT): from asking for the generation to the first token being sampled (prefill plus
  the first sampling step).
- host overhead per token: the run's wall time minus the time inside the backend's forward passes, divided
  by the tokens generated: sampling, detokenizing, stop matching, adapter binding, Python. For llama.cpp, the
  time outside `Llama.eval` in a minimal greedy loop (reading the logits and an argmax).
- autonomous decode (backends with `generate`: emu, board): the same greedy runs with Engine.generate(...,
  on_chip=True), the chip sampling and feeding back ON_CHIP_CHUNK tokens per CMD_GENERATE call; host overhead
  per token is then the wall time minus the time inside the device calls (forward and generate), per
  generated token, next to the per-token (host-sampled) figure of the same prompt.
- LoRA swap: LoraSlots.activate plus the backend's set_lora, alternating between two resident rank-16
  adapters on all seven linears of every layer (made in code; on a build, on its LoRA unit's targets at most at
  its slot rank, and with one slot between the adapter and the base); load is read-validate-pack-place of one.

Fairness: both sides process the same token ids (ours are fed to llama.cpp), greedy, with the same thread
count (ours: the OpenBLAS threads numpy uses; llama.cpp: n_threads and n_threads_batch), and the runs are
interleaved (ours, peer, ours, peer, ...) so both see the same machine load; one untimed warm-up run of each
comes first. Every comparison is a ratio ours/peer of medians: for tokens/s above 1 means ours is faster,
for seconds below 1 means ours is faster.

Cycle accounting: a backend that counts cycles exposes `last_cycles()`, returning for its most recent
`forward` call a dict {stage name: cycles} (or None when it has none), and `clock_mhz`, its fabric clock.
The bench sums the counts of the prefill call and of the decode calls and derives an *estimate* of the
board's speed, tokens x clock / cycles: it assumes the stages run back to back with no stall the counters do
not see, and leaves out host time. The ref backend counts nothing, so the figures are "n/a" there.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, lora
from .artifact.hwh import PL_CLK_MHZ
from .cpu import cpu_model
from .backends.base import Wrapper
from .engine import ON_CHIP_CHUNK
from .errors import RomaError
from .generate import SamplingParams
from .llama_peer import LlamaCppRunner, PeerFailed, Run
from .lora import DEFAULT_MAX_RANK, LoraSlots
from .model.loader import build_source
from .progress import with_progress

PEERS = ("llama.cpp",)
MATPLOTLIB_PIP = "pip install matplotlib"
DEFAULT_LENGTHS = (64, 128, 256, 512)  # about a minute on the ref backend with 2 cores
ROMA_LENGTHS = (256, 512, 1024, 2048)  # what the ROMA paper reports
DEFAULT_DECODE_TOKENS = 32
DEFAULT_REPEATS = 3
LORA_RANK = 16
LORA_SWAPS = 50
FIGURES = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_s", "host_overhead_s_per_token")
HIGHER_IS_BETTER = {"prefill_tokens_per_s": True, "decode_tokens_per_s": True, "ttft_s": False,
                    "host_overhead_s_per_token": False}

# The prompt: this text's token ids, repeated until a prompt is long enough (plain prose, so the model's
# first-token prediction is a meaningful comparison between implementations).
BENCH_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. From the lamp room he could see the "
    "fishing boats returning to the harbour, their sails catching the last of the light. He wrote the weather "
    "in a worn notebook: the direction of the wind, the height of the waves, the colour of the sky. In winter "
    "the storms came from the north and the whole tower hummed with the wind. In summer the sea was calm and "
    "children swam near the rocks below. Over forty years he had never missed a night, and the ships that "
    "passed the point trusted the steady white beam that swept across the water. "
)


# --- settings -----------------------------------------------------------------------------------------------


def parse_lengths(text: str) -> list[int]:
    """'64,128,1K,2k' -> [64, 128, 1024, 2048]: positive, distinct, in the order given (then sorted)."""
    out: list[int] = []
    for part in str(text).split(","):
        item = part.strip()
        if not item:
            raise RomaError(f"--lengths '{text}' has an empty item", hint="give prompt lengths such as 64,128,1K")
        mult = 1
        if item[-1] in "kK":
            mult, item = 1024, item[:-1]
        try:
            n = int(item) * mult
        except ValueError:
            raise RomaError(f"--lengths: '{part.strip()}' is not a token count",
                            hint="give whole numbers, optionally with K (x1024): 256,512,1K,2K") from None
        if n < 1:
            raise RomaError(f"--lengths: a prompt needs at least 1 token (got {part.strip()})")
        if n in out:
            raise RomaError(f"--lengths: {n} is given twice")
        out.append(n)
    return sorted(out)


@dataclass
class BenchConfig:
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    decode_tokens: int = DEFAULT_DECODE_TOKENS
    repeats: int = DEFAULT_REPEATS
    threads: int | None = None  # None: every core this process may use
    peer: str | None = None
    lora: bool = True
    clock_mhz: float | None = None  # overrides the backend's clock for the cycle estimate
    warmup: bool = True

    def check(self, context: int | None = None) -> "BenchConfig":
        """RomaError on anything a run would trip over; `context` is the KV capacity the prompts must fit."""
        if not self.lengths:
            raise RomaError("no prompt lengths given", hint="--lengths 64,128,256")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise RomaError(f"--repeats must be at least 1 (got {self.repeats})")
        if isinstance(self.decode_tokens, bool) or not isinstance(self.decode_tokens, int) or self.decode_tokens < 0:
            raise RomaError(f"--decode-tokens must be 0 or more (got {self.decode_tokens})")
        if self.threads is not None and self.threads < 1:
            raise RomaError(f"--threads must be at least 1 (got {self.threads})")
        if self.peer is not None and self.peer not in PEERS:
            raise RomaError(f"unknown peer '{self.peer}' for --vs", hint=f"choose one of: {', '.join(PEERS)}")
        if self.clock_mhz is not None and not (self.clock_mhz > 0 and math.isfinite(self.clock_mhz)):
            raise RomaError(f"--clock-mhz must be a positive number (got {self.clock_mhz})")
        if context is not None:
            need = self.capacity
            if need > context:
                raise RomaError(
                    f"a {max(self.lengths)}-token prompt plus {self.decode_tokens} decoded tokens needs "
                    f"{need} KV positions, more than the context of {context}",
                    hint=f"use shorter --lengths or fewer --decode-tokens (prompts up to "
                         f"{max(context - self.decode_tokens - 1, 0)} tokens fit)")
        return self

    @property
    def capacity(self) -> int:
        """KV positions one run needs: the longest prompt, the decoded tokens and the last sampled one."""
        return max(self.lengths) + self.decode_tokens + 1

    @property
    def thread_count(self) -> int:
        return self.threads or usable_cores()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def backend_label(backend: str, numerics: str) -> str:
    """What the numbers are from, in words nobody mistakes for a board's."""
    if backend == "ref":
        return f"reference model: numpy golden model on this CPU, {numerics} numerics (not a board)"
    if backend == "emu":
        return f"emulated board: HLS C simulation on this CPU, {numerics} numerics (not a board)"
    if backend == "board":
        return f"PYNQ board, {numerics} numerics"
    return f"{backend}, {numerics} numerics"


def check_plot_path(path: str | None) -> Path | None:
    """Refuse a plot path we cannot write, and a missing matplotlib, before any measurement."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.suffix.lower() != ".png":
        raise RomaError(f"--plot {path}: the plot is written as PNG", hint="give a file name ending in .png")
    if not p.parent.is_dir():
        raise RomaError(f"--plot {path}: no folder {p.parent}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RomaError("--plot needs matplotlib, which is not installed", hint=MATPLOTLIB_PIP) from None
    return p


# --- threads ------------------------------------------------------------------------------------------------


def _openblas():
    """(library, setter, getter) of the OpenBLAS numpy loaded, or None."""
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            setter = getattr(lib, f"openblas_set_num_threads{suffix}", None)
            getter = getattr(lib, f"openblas_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                getter.restype = ctypes.c_int
                return path, setter, getter
    return None


def blas_threads(n: int | None = None) -> dict:
    """Set (when n is given) and report the BLAS thread count numpy's matmuls use."""
    found = _openblas()
    if found is None:
        return {"library": None, "threads": None, "controlled": False}
    path, setter, getter = found
    if n is not None:
        setter(ctypes.c_int(int(n)))
    return {"library": Path(path).name, "threads": int(getter()), "controlled": n is not None}


# --- one run ------------------------------------------------------------------------------------------------


def _add_cycles(total: dict | None, counts) -> dict | None:
    if not counts:
        return total
    total = dict(total or {})
    for stage, n in dict(counts).items():
        total[str(stage)] = total.get(str(stage), 0) + int(n)
    return total


class _TimedBackend(Wrapper):
    """Wraps the engine's backend: times every forward and generate and collects its cycle counts (None from a
    backend without a cycle estimate)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.calls: list[tuple[float, int, dict | None]] = []
        self.first_logits = None
        self.generate_done: list[float] = []  # when each autonomous-decode call returned

    def generate(self, first_id, position, n, sampling=None, seed=None, eos_id=None, *, cache, owner=None):
        t0 = time.perf_counter()
        ids = self.inner.generate(first_id, position, n, sampling, seed, eos_id, cache=cache, owner=owner)
        dt = time.perf_counter() - t0
        self.calls.append((dt, 1, self.inner.last_cycles()))
        self.generate_done.append(time.perf_counter())
        return ids

    def forward(self, ids, cache):
        t0 = time.perf_counter()
        logits = self.inner.forward(ids, cache)
        dt = time.perf_counter() - t0
        cycles = self.inner.last_cycles()
        if not self.calls:
            self.first_logits = logits
        self.calls.append((dt, len(ids), cycles))
        return logits


def _margin(logits) -> float | None:
    if logits is None:
        return None
    x = np.asarray(logits, dtype=np.float64).ravel()
    if x.size < 2:
        return None
    top = np.partition(x, -2)[-2:]
    return float(top[1] - top[0])


class OursRunner:
    """Greedy generations through Engine.generate, the runtime's real path, in one reused session.
    on_chip: autonomous decode (the chip samples; Engine.generate(..., on_chip=True))."""

    def __init__(self, engine, capacity: int, on_chip: bool = False):
        self.on_chip = on_chip
        self.engine = engine
        self.session = engine.new_session(capacity)
        self._params = SamplingParams
        self.label = engine.backend.name

    def run(self, ids: list[int], decode_tokens: int) -> Run:
        engine = self.engine
        self.session.reset()  # an empty cache every time: no prefix reuse
        timed = _TimedBackend(engine.backend)
        engine.backend = timed
        try:
            t_start = time.perf_counter()
            generation = engine.generate(list(ids), self._params(max_tokens=decode_tokens + 1),
                                         session=self.session, on_chip=self.on_chip)
            sample, first = generation.sampler.sample, []

            def timed_sample(logits, history):
                token = sample(logits, history)
                if not first:
                    first.append(time.perf_counter())
                return token

            generation.sampler.sample = timed_sample
            res = generation.run()
            wall = time.perf_counter() - t_start
            if timed.generate_done:  # on chip: the first token comes with the first CMD_GENERATE
                first[:] = [timed.generate_done[0]]
        finally:
            engine.backend = timed.inner
        calls = timed.calls
        prefill_cycles = _add_cycles(None, calls[0][2]) if calls else None
        decode_cycles = None
        for _, _, c in calls[1:]:
            decode_cycles = _add_cycles(decode_cycles, c)
        return Run(prompt_tokens=res.prefill_tokens, prefill_seconds=res.prefill_seconds,
                   decode_tokens=res.decode_tokens, decode_seconds=res.decode_seconds,
                   ttft_seconds=(first[0] - t_start) if first else wall, wall_seconds=wall,
                   forward_seconds=sum(c[0] for c in calls), ids=list(res.ids),
                   first_margin=_margin(timed.first_logits), prefill_cycles=prefill_cycles,
                   decode_cycles=decode_cycles)


# --- LoRA ---------------------------------------------------------------------------------------------------


def lora_adapters(config, rank: int = LORA_RANK, count: int = 2, seed: int = 0, targets=lora.LINEAR):
    """`count` rank-`rank` adapters on the `targets` linears (default all seven) of every layer, random small
    factors."""

    rng = np.random.default_rng(seed)
    shapes = lora.linear_shapes(config)
    adapters = []
    for k in range(count):
        factors = {}
        for layer in range(config.n_layers):
            for name in targets:
                out_dim, in_dim = shapes[name]
                a = (rng.standard_normal((rank, in_dim)) * 0.02).astype(np.float32)
                b = (rng.standard_normal((out_dim, rank)) * 0.02).astype(np.float32)
                factors[(layer, name)] = (a, b, 2.0)
        adapters.append(lora.Adapter.from_factors(f"bench-{k}", config, factors))
    return adapters


def measure_lora(engine, swaps: int = LORA_SWAPS, rank: int = LORA_RANK) -> dict | None:
    """Load two rank-16 adapters into LoraSlots and time switching between them, then restore the base. On a
    build, the slots are its LoRA unit's (backend.lora_unit): the adapters adapt its targets at a rank of at most
    its slot rank, and with one slot the swap is between the adapter and the base; None without a LoRA unit."""

    backend = engine.backend
    unit = backend.lora_unit
    if unit is not None and not unit.slots:
        return None
    targets = unit.targets if unit is not None else lora.LINEAR
    slot_rank = unit.rank if unit is not None else max(DEFAULT_MAX_RANK, rank)
    rank = min(rank, slot_rank)
    capacity = min(2, unit.slots) if unit is not None else 2
    slots = LoraSlots(engine.config, capacity, slot_rank, unit.dtype if unit is not None else "fp16", unit=unit)
    adapters = lora_adapters(engine.config, rank, count=capacity, targets=targets)
    for adapter in adapters:
        slots.load(adapter.name, adapter)
    loads = [e for e in slots.events if e.op == "load"]
    names = [a.name for a in adapters] + ([None] if capacity == 1 else [])
    swap_s = []
    for i in range(swaps):
        name = names[i % len(names)]
        t0 = time.perf_counter()
        slots.activate(name)
        backend.set_lora(slots)
        swap_s.append(time.perf_counter() - t0)
    activate_s = [e.seconds for e in slots.events if e.op == "activate"]
    slots.activate(None)
    backend.set_lora(slots)  # back to the base model
    return {
        "rank": rank, "targets": " ".join(targets),
        "layers": engine.config.n_layers, "slot_rank": slots.slot_rank, "dtype": slots.dtype,
        "adapter_bytes": loads[0].nbytes if loads else None,
        "load_s": statistics.median(e.seconds for e in loads) if loads else None,
        "swap_s": statistics.median(swap_s), "activate_s": statistics.median(activate_s),
        "swaps": swaps,
        "model": "swap = LoraSlots.activate (validate the name, write the active slot) + backend.set_lora; "
                 "load = validate + pack + place one adapter",
    }


# --- the bench ----------------------------------------------------------------------------------------------


def measure_autonomous(engine, cfg, prompt: list[int], per_token: list) -> dict | None:
    """Host overhead per token of autonomous decode on the first prompt length, next to the per-token path's
    runs of that prompt (`per_token`); None when the backend has no autonomous decode."""

    if not engine.backend.autonomous:
        return None
    runner = OursRunner(engine, cfg.capacity, on_chip=True)
    if cfg.warmup:
        runner.run(prompt, min(cfg.decode_tokens, 2))
    runs = [runner.run(prompt, cfg.decode_tokens) for _ in range(cfg.repeats)]
    key = "host_overhead_s_per_token"
    host = [r.figures[key] for r in per_token]
    # the CMD_GENERATE calls' cycles: every generated token's forward and its sampling on chip
    cycles, tokens = runs[0].decode_cycles, len(runs[0].ids)
    return {
        "prompt_tokens": len(prompt), "decode_tokens": cfg.decode_tokens, "chunk": ON_CHIP_CHUNK,
        "generated_tokens": tokens,
        "decode_cycles_per_token": {k: v / tokens for k, v in cycles.items()} if cycles and tokens else None,
        "host_overhead_s_per_token": _median([r.figures[key] for r in runs]),
        "host_sampled_overhead_s_per_token": _median(host) if host else None,
        "samples": [r.figures[key] for r in runs],
        "same_tokens": bool(per_token) and runs[0].ids == per_token[0].ids,
        "model": "(wall time - time inside the device calls: forward and CMD_GENERATE) / generated tokens; "
                 "on chip the chip samples and feeds back, the host detokenizes and streams each chunk",
    }


def bench_prompt(tokenizer, length: int) -> list[int]:
    """`length` token ids of BENCH_TEXT, repeated as needed."""
    unit = tokenizer.encode(BENCH_TEXT)
    if not unit:
        raise RomaError("the tokenizer encodes the bench text to nothing")
    reps = -(-length // len(unit))
    return (unit * reps)[:length]


def _spread(values) -> dict:
    """min, max and sample standard deviation (0 for one run), as llama-bench reports its spread."""
    values = list(values)
    return {"min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(ours, peer):
    if ours is None or peer is None or not peer > 0 or not ours > 0:
        return None
    return ours / peer


def _median_cycles(dicts: list[dict | None]) -> dict | None:
    dicts = [d for d in dicts if d]
    if not dicts:
        return None
    stages = list(dict.fromkeys(s for d in dicts for s in d))
    return {s: statistics.median(d.get(s, 0) for d in dicts) for s in stages}


def _clock(backend, override: float | None) -> tuple[float, str]:
    if override is not None:
        return float(override), "--clock-mhz"
    clock = backend.clock_mhz
    if clock:
        return float(clock), "the backend's clock"
    return float(PL_CLK_MHZ), "the overlay's default PL clock"


def _roofline(backend) -> dict | None:
    """The build's rooflines (`roma plan`'s estimate at nominal peak bandwidth: decode at its context, and a prefill of
    a prompt that long where the build has one), with and without the LoRA products they count (one active slot), for
    beside the counted cycles of runs with and without an adapter; None for a backend without a placed build."""
    manifest = getattr(getattr(backend, "overlay", None), "manifest", None) or {}
    est = (manifest.get("plan") or {}).get("estimate") or {}
    if not est.get("decode_tokens_per_s"):
        return None
    ctx, prefill = est.get("context_tokens"), est.get("prefill_breakdown_us")
    lora_us = (est.get("breakdown_us") or {}).get("lora", 0.0)
    without = {"decode_tokens_per_s": 1e6 / (est["us_per_token"] - lora_us),
               "prefill_tokens_per_s": ctx * 1e6 / (sum(prefill.values()) - prefill["lora"]) if prefill else None}
    return {"decode_tokens_per_s": est["decode_tokens_per_s"], "context_tokens": ctx,
            "prefill_tokens_per_s": est.get("prefill_tokens_per_s"), "without_lora": without}


def run_bench(engine, cfg: BenchConfig, *, backend: str = "ref", numerics: str | None = None,
              model_name: str | None = None, progress: bool = True, argv: list[str] | None = None) -> dict:
    """Measure; returns the report (JSON-ready) that format_table and write_plot read."""
    cfg.check(engine.max_context)  # the backend's longest session: the build's context, or its on-chip KV
    numerics = numerics or engine.numerics
    peer, peer_failure = None, None
    if cfg.peer is not None:
        try:
            peer = LlamaCppRunner(_gguf_path(engine), cfg.capacity, cfg.thread_count)
        except PeerFailed as e:  # our side is still measured; the error is raised after the report
            peer_failure = e
    previous = blas_threads()
    threads = blas_threads(cfg.thread_count)
    try:
        return _measure(engine, cfg, peer, peer_failure, backend, numerics, model_name, progress, argv, threads)
    finally:
        if previous["threads"]:
            blas_threads(previous["threads"])
        if peer is not None:
            peer.close()


def _gguf_path(engine) -> Path:
    """The GGUF llama.cpp runs: the model itself, or for a build (a 2-bit build, say) the GGUF it was compiled
    from, so a low-bit ROM base is compared with llama.cpp on the model it came from."""

    model = engine.model
    kind, path = build_source(model) if model.format == "build" else (model.format, Path(model.source))
    if kind != "gguf" or not Path(path).is_file():
        raise RomaError("--vs llama.cpp needs a GGUF model, or a build compiled from one (llama.cpp reads only GGUF)",
                        hint="give --model a .gguf file, a known model name, or a build of one")
    return Path(path)


def _measure(engine, cfg, peer, peer_failure, backend, numerics, model_name, progress, argv, threads) -> dict:
    def run_peer(ids, decode_tokens):
        """The peer's run, or None once it has failed (then the bench goes on with our side alone)."""
        nonlocal peer, peer_failure
        try:
            return peer.run(ids, decode_tokens)
        except PeerFailed as e:
            peer.close()
            peer, peer_failure = None, e

    ours = OursRunner(engine, cfg.capacity)
    prompts = {n: bench_prompt(engine.tokenizer, n) for n in cfg.lengths}
    if cfg.warmup:  # first calls allocate buffers and warm caches: not timed
        ours.run(prompts[cfg.lengths[0]], min(cfg.decode_tokens, 2))
        if peer is not None:
            run_peer(prompts[cfg.lengths[0]], min(cfg.decode_tokens, 2))
    samples = {n: {"ours": [], "peer": []} for n in cfg.lengths}
    sides = ("ours", "peer") if peer is not None else ("ours",)
    runs = [(n, side) for _ in range(cfg.repeats) for n in cfg.lengths for side in sides]
    decode_tokens = {}
    for n, side in with_progress(runs, "bench", progress, unit="runs"):
        if side == "ours":
            run = ours.run(prompts[n], cfg.decode_tokens)
            samples[n]["ours"].append(run)
            decode_tokens[n] = run.decode_tokens
        elif peer is not None:  # exactly as many decode steps as ours made (ours stops early only at an end token)
            samples[n]["peer"].append(run_peer(prompts[n], decode_tokens[n]))
    if peer is None:  # it failed part way: no half comparison
        for n in cfg.lengths:
            samples[n]["peer"] = []
    if progress and engine.backend.autonomous:
        print("bench: autonomous decode...", file=sys.stderr, flush=True)
    autonomous = measure_autonomous(engine, cfg, prompts[cfg.lengths[0]], samples[cfg.lengths[0]]["ours"])
    lora = None
    if cfg.lora:
        if progress:
            print("bench: LoRA swap...", file=sys.stderr, flush=True)
        lora = measure_lora(engine)
        if lora is not None:
            lora["peer"] = None
            lora["peer_note"] = "not measured for llama.cpp (its LoRA needs a GGUF adapter file)" if peer else None

    clock, clock_source = _clock(engine.backend, cfg.clock_mhz)
    if autonomous and autonomous["decode_cycles_per_token"]:
        autonomous["estimate_decode_tokens_per_s"] = clock * 1e6 / sum(autonomous["decode_cycles_per_token"].values())
    results, any_cycles = [], False
    for n in cfg.lengths:
        row = {"prompt_tokens": n}
        for side in ("ours", "peer"):
            runs = samples[n][side]
            if not runs:
                row[side] = None
                continue
            figs = {f: _median([r.figures[f] for r in runs]) for f in FIGURES}
            entry = {**figs, "prefill_tokens": runs[0].prompt_tokens, "decode_tokens": runs[0].decode_tokens,
                     "generated_tokens": len(runs[0].ids), "first_token": runs[0].ids[0] if runs[0].ids else None,
                     "ids": runs[0].ids,
                     "samples": {f: [r.figures[f] for r in runs] for f in FIGURES},
                     "spread": {f: _spread(r.figures[f] for r in runs) for f in FIGURES}}
            if side == "ours":
                entry["first_token_margin"] = runs[0].first_margin
                pc = _median_cycles([r.prefill_cycles for r in runs])
                dc = _median_cycles([r.decode_cycles for r in runs])
                entry["cycles"] = None
                if pc or dc:
                    any_cycles = True
                    dtok = runs[0].decode_tokens
                    entry["cycles"] = {
                        "prefill": pc,
                        "decode_per_token": {s: v / dtok for s, v in dc.items()} if dc and dtok else None,
                        "estimate_prefill_tokens_per_s": n * clock * 1e6 / sum(pc.values()) if pc and sum(pc.values()) else None,
                        "estimate_decode_tokens_per_s": dtok * clock * 1e6 / sum(dc.values()) if dc and dtok and sum(dc.values()) else None,
                    }
            row[side] = entry
        if row["peer"] is not None:
            row["ratio"] = {f: _ratio(row["ours"][f], row["peer"][f]) for f in FIGURES}
            row["same_token_count"] = (row["ours"]["generated_tokens"] == row["peer"]["generated_tokens"]
                                       and row["ours"]["prefill_tokens"] == row["peer"]["prefill_tokens"])
            row["first_token_agrees"] = row["ours"]["first_token"] == row["peer"]["first_token"]
        else:
            row["ratio"] = None
        results.append(row)

    c = engine.config
    report = {
        "kind": "roma-bench",
        "format": 1,
        "command": argv,
        "model": {"name": model_name or c.name, "config_name": c.name, "source": str(engine.model.source),
                  "format": engine.model.format, "context_length": c.context_length},
        "ours": {"backend": backend, "numerics": numerics, "name": engine.backend.name,
                 "label": backend_label(backend, numerics), "threads": threads},
        "peer": None if peer is None else {"name": peer.name, "label": peer.label, "version": peer.version,
                                           "settings": peer.settings, "system_info": peer.system_info()},
        "settings": {"lengths": cfg.lengths, "decode_tokens": cfg.decode_tokens, "repeats": cfg.repeats,
                     "threads": cfg.thread_count, "warmup": cfg.warmup, "statistic": "median",
                     "spread": "min, max and sample standard deviation of the runs (\"spread\" per figure)",
                     "sampling": "greedy", "prompt": "the bench text's token ids, repeated to each length",
                     "order": "interleaved per length: ours, peer, ours, peer, ..."},
        "figures": {
            "prefill_tokens_per_s": "prompt tokens / time of the prompt's forward pass",
            "decode_tokens_per_s": "single-token forward passes after the prompt / their time",
            "ttft_s": "from asking for the generation to the first sampled token",
            "host_overhead_s_per_token": "(wall time - time inside the backend's forward) / generated tokens",
            "ratio": "ours / peer (tokens/s: > 1 ours faster; seconds: < 1 ours faster)",
        },
        "results": results,
        "autonomous": autonomous,
        "lora": lora,
        "cycles": None if not any_cycles else {
            "clock_mhz": clock, "clock_source": clock_source, "label": "estimate",
            "roofline": _roofline(engine.backend),
            "model": "estimated board tokens/s = tokens x clock / (sum of the stage cycles the backend counted "
                     "for those tokens); assumes the stages run back to back with no stall the counters do not "
                     "see, and excludes host time. An estimate, not a measurement on a board.",
        },
        "cycles_note": None if any_cycles else f"n/a: backend {engine.backend.name} reports no cycle counts",
        "peer_error": None if peer_failure is None else {"error": peer_failure.message, "hint": peer_failure.hint},
        "machine": machine_facts(threads, peer),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return report


# --- facts --------------------------------------------------------------------------------------------------


def machine_facts(threads: dict | None = None, peer=None) -> dict:
    blas = None
    try:
        deps = np.show_config(mode="dicts").get("Build Dependencies", {})
        b = deps.get("blas") or {}
        blas = {k: b.get(k) for k in ("name", "version", "openblas configuration") if b.get(k) is not None}
    except Exception:  # older numpy: no dict mode
        blas = None
    facts = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "blas_threads": (threads or {}).get("threads"),
        "roma_runtime": __version__,
        "llama_cpp_python": peer.version if peer is not None else None,
    }
    try:
        with open("/proc/meminfo") as fh:
            kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        facts["memory_gib"] = round(kb / (1 << 20), 1)
    except (OSError, StopIteration, ValueError):
        pass
    return facts


# --- output -------------------------------------------------------------------------------------------------


def _num(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "tps":
        return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"
    if kind == "ms":
        return f"{value * 1e3:.2f}" if value < 10 else f"{value:.1f} s"
    if kind == "ratio":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


def _with_spread(entry: dict, key: str, kind: str) -> str:
    """A median and its standard deviation, as llama-bench prints them: "133.2 ± 1.5"."""
    spread = (entry.get("spread") or {}).get(key)
    if entry[key] is None or spread is None:
        return _num(entry[key], kind)
    if kind == "ms" and entry[key] >= 10:  # the median is printed in seconds: its deviation too
        return f"{_num(entry[key], kind)} ± {spread['stdev']:.1f}"
    return f"{_num(entry[key], kind)} ± {_num(spread['stdev'], kind)}"


_ROWS = (("prefill_tokens_per_s", "prefill tok/s", "tps"), ("decode_tokens_per_s", "decode tok/s", "tps"),
         ("ttft_s", "TTFT ms", "ms"), ("host_overhead_s_per_token", "host overhead ms/tok", "ms"))


def format_table(report: dict) -> str:
    """The report as aligned text."""
    s, ours, peer = report["settings"], report["ours"], report["peer"]
    m = report["machine"]
    lines = [
        f"roma bench: {report['model']['name']} ({Path(report['model']['source']).name})",
        f"ours: backend {ours['backend']} -- {ours['label']}",
    ]
    if peer:
        lines.append(f"peer: {peer['label']}")
    lines.append(f"machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores; threads {s['threads']} "
                 f"(BLAS {m.get('blas_threads') or 'n/a'}); numpy {m.get('numpy')}")
    lines.append(f"median ± standard deviation of {s['repeats']} run(s) per figure, greedy, {s['decode_tokens']} decode tokens after "
                 f"each prompt" + ("; runs interleaved ours/peer" if peer else ""))
    if peer:
        lines.append("ratio = ours / peer: tok/s above 1 means ours is faster; ms below 1 means ours is faster")
    lines.append("")
    head = ["prompt", "figure", "ours"] + ([peer["name"], "ratio"] if peer else [])
    rows = []
    for r in report["results"]:
        for i, (key, label, kind) in enumerate(_ROWS):
            row = [str(r["prompt_tokens"]) if i == 0 else "", label, _with_spread(r["ours"], key, kind)]
            if peer:
                row += [_with_spread(r["peer"], key, kind), _num(r["ratio"][key], "ratio")]
            rows.append(row)
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    right = [True, False] + [True] * (len(head) - 2)

    def fmt(row):
        return "  ".join(c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(row, widths, right)).rstrip()

    lines.append(fmt(head))
    lines.append(fmt(["-" * w for w in widths]))
    for i, row in enumerate(rows):
        if i and row[0]:
            lines.append("")
        lines.append(fmt(row))
    if peer:
        agree = [r["prompt_tokens"] for r in report["results"] if r.get("first_token_agrees")]
        lines.append("")
        lines.append(f"same first greedy token as {peer['name']} at prompt lengths: "
                     f"{', '.join(map(str, agree)) or 'none'} (of {', '.join(str(r['prompt_tokens']) for r in report['results'])})")
    auto = report.get("autonomous")
    if auto:
        host = auto.get("host_sampled_overhead_s_per_token")
        lines.append(f"host overhead per token, prompt {auto['prompt_tokens']}, {auto['generated_tokens']} tokens: "
                     f"autonomous decode (on chip, {auto['chunk']} tokens per call) "
                     f"{auto['host_overhead_s_per_token'] * 1e6:.1f} us, host-sampled "
                     + (f"{host * 1e6:.1f} us" if host is not None else "n/a")
                     + ("" if auto.get("same_tokens") else " (tokens differ!)"))
        if auto.get("estimate_decode_tokens_per_s"):
            per = auto["decode_cycles_per_token"]
            lines.append(f"  autonomous decode, FPGA cycles per token (forward and on-chip sampling; estimate at "
                         f"{report['cycles']['clock_mhz']:g} MHz {_num(auto['estimate_decode_tokens_per_s'], 'tps')} "
                         f"tok/s): sampler {per.get('sampler', 0):,.0f}, all stages {sum(per.values()):,.0f}")
    lora = report.get("lora")
    lines.append("")
    if lora:
        lines.append(f"LoRA swap (rank {lora['rank']} on {lora['targets']} x {lora['layers']} layers, "
                     f"{(lora['adapter_bytes'] or 0) / 1e6:.2f} MB {lora['dtype']}): swap "
                     f"{lora['swap_s'] * 1e6:.1f} us median of {lora['swaps']} (activate + set_lora), load "
                     f"{lora['load_s'] * 1e3:.1f} ms" + ("; llama.cpp: n/a" if peer else ""))
    else:
        lines.append("LoRA swap: not measured")
    cyc = report.get("cycles")
    if not cyc:
        lines.append(f"FPGA cycles per stage: {report.get('cycles_note') or 'n/a'}; estimated board tokens/s: n/a")
    else:
        lines.append(f"FPGA cycles per stage (counted by backend {ours['name']}):")
        for r in report["results"]:
            c = r["ours"].get("cycles")
            if not c:
                lines.append(f"  prompt {r['prompt_tokens']}: n/a")
                continue
            pre = ", ".join(f"{k} {v:,.0f}" for k, v in (c["prefill"] or {}).items()) or "n/a"
            dec = ", ".join(f"{k} {v:,.0f}" for k, v in (c["decode_per_token"] or {}).items()) or "n/a"
            lines.append(f"  prompt {r['prompt_tokens']}: prefill [{pre}]; decode per token [{dec}]")
            roof, name = _roofline_for(cyc, c, r["prompt_tokens"])
            beside = (f" ({name}: {roof['decode_tokens_per_s']:,.0f} at context "
                      f"{roof['context_tokens']}, {c['estimate_decode_tokens_per_s'] / roof['decode_tokens_per_s']:.0%} "
                      "of it)") if roof and c.get("estimate_decode_tokens_per_s") else ""
            prefill_beside = (f" ({name}: {roof['prefill_tokens_per_s']:,.0f} for a {r['prompt_tokens']}"
                              f"-token prompt, {c['estimate_prefill_tokens_per_s'] / roof['prefill_tokens_per_s']:.0%} "
                              "of it)") if (roof and roof.get("prefill_tokens_per_s")
                                            and c.get("estimate_prefill_tokens_per_s")) else ""
            lines.append(f"    estimate at {cyc['clock_mhz']:g} MHz: prefill "
                         f"{_num(c['estimate_prefill_tokens_per_s'], 'tps')} tok/s{prefill_beside}, decode "
                         f"{_num(c['estimate_decode_tokens_per_s'], 'tps')} tok/s{beside}")
        lines.append(f"  estimate model: {cyc['model']}")
    return "\n".join(lines)


def _roofline_for(cyc: dict, counted: dict, prompt_tokens: int) -> tuple[dict | None, str]:
    """The roofline a run's counted cycles stand beside: None unless the prompt is as long as its context (the decode
    roofline is at that context, the prefill one for a prompt that long); without the LoRA products for a run without
    an adapter."""
    roof = cyc.get("roofline")
    if not roof or roof["context_tokens"] != prompt_tokens:
        return None, ""
    with_lora = (counted.get("prefill") or {}).get("lora") or (counted.get("decode_per_token") or {}).get("lora")
    if not with_lora:
        return {**roof, **roof.get("without_lora", {})}, "roma plan's roofline without LoRA"
    return roof, "roma plan's roofline"


def plot_figure(report: dict):
    """Tokens/s against prompt length (log x): prefill and decode panels, ours and the peer; where the backend
    counts cycles, a third panel with where a decode token's cycles go, stage by stage, beside the roofline."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg writes the PNG

    lengths = [r["prompt_tokens"] for r in report["results"]]
    peer, cyc = report["peer"], report.get("cycles")
    counted = [(r["prompt_tokens"], (r["ours"].get("cycles") or {})) for r in report["results"]]
    counted = [(n, c) for n, c in counted if c.get("decode_per_token")]
    panels = 3 if cyc and counted else 2
    fig = Figure(figsize=(5.5 * panels, 4.4 if panels == 2 else 5.4), dpi=110)
    for i, (key, title, xlabel) in enumerate((
            ("prefill_tokens_per_s", "prefill", "prompt length (tokens)"),
            ("decode_tokens_per_s", "decode", "context at decode start (prompt tokens)"))):
        ax = fig.add_subplot(1, panels, i + 1)
        ax.plot(lengths, [r["ours"][key] or np.nan for r in report["results"]], "o-",
                label=f"ours ({report['ours']['backend']}, {report['ours']['numerics']})")
        if peer:
            ax.plot(lengths, [r["peer"][key] or np.nan for r in report["results"]], "s--", label=peer["name"])
        est_key = "estimate_prefill_tokens_per_s" if key.startswith("prefill") else "estimate_decode_tokens_per_s"
        est = [((r["ours"].get("cycles") or {}).get(est_key)) for r in report["results"]]
        if any(e for e in est):
            ax.plot(lengths, [e or np.nan for e in est], "^:", label="board estimate (from cycles)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{title} tokens/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if panels == 3:
        _stage_panel(fig.add_subplot(1, 3, 3), cyc, counted)
    who = report["ours"]["label"]
    vs = f"; peer: {peer['label']}" if peer else ""
    fig.suptitle(f"roma bench: {report['model']['name']} - ours: {who}{vs}", fontsize=9)
    fig.tight_layout()
    return fig


def _stage_panel(ax, cyc: dict, counted: list[tuple[int, dict]]) -> None:
    """One bar per prompt length: a decode token's counted cycles stacked stage by stage (largest stage first; stages
    that counted nothing left out), and beside the prompt as long as roma plan's context, its roofline's cycles a
    token at the same clock, as a line."""
    totals = None
    for _, c in counted:
        totals = _add_cycles(totals, c["decode_per_token"])
    stages = sorted((s for s in totals if totals[s] > 0), key=totals.get, reverse=True)
    rows = range(len(counted))
    left = np.zeros(len(counted))
    for i, stage in enumerate(stages):
        widths = np.array([c["decode_per_token"].get(stage, 0) for _, c in counted], float)
        ax.barh(rows, widths, left=left, color=f"C{i % 10}", hatch="//" if i >= 10 else None, label=stage)
        left += widths
    for row, (prompt, c) in enumerate(counted):
        roof, name = _roofline_for(cyc, c, prompt)
        if roof and roof.get("decode_tokens_per_s"):
            ax.plot([cyc["clock_mhz"] * 1e6 / roof["decode_tokens_per_s"]] * 2, [row - 0.45, row + 0.45], "k--",
                    lw=1.5, label=f"{name} (context {prompt})")
    ax.set_yticks(list(rows))
    ax.set_yticklabels([f"context {n}" for n, _ in counted])
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}K")
    ax.set_xlabel(f"FPGA cycles per decode token (estimate at {cyc['clock_mhz']:g} MHz)")
    ax.set_title("where a decode token's cycles go")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)


def write_plot(report: dict, path) -> Path:
    """The bench's figure (plot_figure) as a PNG."""
    path = Path(path)
    plot_figure(report).savefig(path, format="png")
    return path


def to_json(report: dict) -> str:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.integer,)):
            return int(x)
        if isinstance(x, (np.floating,)):
            return clean(float(x))
        return x

    return json.dumps(clean(report), ensure_ascii=False)


__all__ = ["BenchConfig", "run_bench", "format_table", "plot_figure", "write_plot", "to_json", "parse_lengths"]
