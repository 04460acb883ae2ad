"""Autonomous decode (CMD_GENERATE, on-chip sampling) through the engine, and the LoRA hot swap, on the
emulated board: the tiny Q4_1 build (tests/tiny_models.py) and one SmolLM2 prompt.

Autonomous decode must leave exactly what the per-token path leaves: the same greedy tokens, the same
session.ids, cache length and KV rows, the same finish reasons (end token, stop string, length, context),
also when the chip runs past a stop the host finds inside a chunk or the consumer stops iterating.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from roma_runtime import RomaError
from roma_runtime.engine import Engine
from roma_runtime.generate import SamplingParams
from roma_runtime.golden import GoldenModel
from roma_runtime.model.loader import load_build

pytest.importorskip("pynq")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                                reason="the emulated board needs g++ and make")

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def emu(tiny_models, tiny_build):
    return Engine(tiny_models["q4_1"], "emu", lora_slots=2, lora_rank=16, build=tiny_build)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)


def run_both(engine, ids, params, capacity=64, chunk=None, **gen):
    """(per-token result, its session), (on-chip result, its session)."""
    out = []
    for on_chip in (False, True):
        s = engine.new_session(capacity)
        g = engine.generate(ids, params, session=s, on_chip=on_chip, **gen)
        if on_chip and chunk:
            g.chunk = chunk
        out.append((g.run(), s))
    return out


def assert_same_state(engine, a, b):
    (ra, sa), (rb, sb) = a, b
    assert rb.ids == ra.ids and rb.text == ra.text and rb.finish_reason == ra.finish_reason
    assert sb.ids == sa.ids and sb.cache.length == sa.cache.length == len(sa.ids)
    assert sb.ids == ra.prompt_ids + ra.ids[:-1]  # the prompt and every generated token but the last
    assert rb.decode_tokens == ra.decode_tokens
    ka, va = sa.cache.read_rows(sa.cache.length)
    kb, vb = sb.cache.read_rows(sb.cache.length)
    assert np.array_equal(ka.view(np.uint16), kb.view(np.uint16))
    assert np.array_equal(va.view(np.uint16), vb.view(np.uint16))


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_greedy_on_chip_equals_per_token(emu, chunk):
    ids = emu.tokenizer.encode(PROMPT)
    a, b = run_both(emu, ids, greedy(21), chunk=chunk)
    assert a[0].finish_reason == "length" and len(a[0].ids) == 21
    assert_same_state(emu, a, b)


def test_context_end_and_continuing_a_session(emu):
    ids = emu.tokenizer.encode(PROMPT)
    a, b = run_both(emu, ids, greedy(100), capacity=len(ids) + 9)
    assert a[0].finish_reason == "context" and len(a[0].ids) == 10
    assert_same_state(emu, a, b)
    # a second turn in the same sessions (prefix reuse) stays identical too
    more = ids + a[0].ids[:4] + emu.tokenizer.encode(" and")
    ra = emu.generate(more, greedy(6), session=a[1]).run()
    rb = emu.generate(more, greedy(6), session=b[1], on_chip=True).run()
    assert rb.reused_tokens == ra.reused_tokens > 0
    assert_same_state(emu, (ra, a[1]), (rb, b[1]))


def test_end_tokens_inside_a_chunk(emu, monkeypatch):
    ids = emu.tokenizer.encode(PROMPT)
    plain = emu.generate(ids, greedy(20)).run().ids
    tok = emu.tokenizer
    # one end token: the chip stops at it; two: the chip stops at the lower id, the host finds the other
    for eos in ({plain[6]}, {plain[3], plain[9]}, {plain[8], min(set(range(10)) - set(plain))}):
        monkeypatch.setattr(type(tok), "eos_ids", property(lambda self, e=frozenset(eos): e))
        a, b = run_both(emu, ids, greedy(20))
        assert a[0].finish_reason == "stop"
        assert_same_state(emu, a, b)


def test_stop_string_found_inside_a_chunk(emu):
    ids = emu.tokenizer.encode(PROMPT)
    first = emu.generate(ids, greedy(12)).run()
    stop = emu.tokenizer.decode(first.ids[5:7]).strip() or emu.tokenizer.decode(first.ids[5:8])
    a, b = run_both(emu, ids, greedy(12, stop=[stop]))
    assert a[0].finish_reason == "stop" and len(a[0].ids) < 12
    assert_same_state(emu, a, b)


def test_interrupted_on_chip_generation_leaves_a_consistent_session(emu):
    ids = emu.tokenizer.encode(PROMPT)
    s = emu.new_session(64)
    g = emu.generate(ids, greedy(30), session=s, on_chip=True)
    it = iter(g)
    next(it)
    next(it)
    it.close()
    res = g.result
    assert res.finish_reason == "interrupted"
    assert s.cache.length == len(s.ids) == len(ids) + len(res.ids) - 1
    # continuing from that state equals a fresh per-token run of the same text
    more = ids + res.ids
    r1 = emu.generate(more, greedy(5), session=s, on_chip=True).run()
    assert r1.ids == emu.generate(more, greedy(5)).run().ids


def test_seeded_on_chip_sampling_reproduces_itself_and_survives_interleaving(emu):
    ids = emu.tokenizer.encode(PROMPT)
    p = SamplingParams(max_tokens=40, temperature=0.9, top_k=20, seed=7)
    a = emu.generate(ids, p, on_chip=True).run().ids
    assert emu.generate(ids, p, on_chip=True).run().ids == a
    assert emu.generate(ids, SamplingParams(max_tokens=40, temperature=0.9, top_k=20, seed=8),
                        on_chip=True).run().ids != a
    # two on-chip sampled generations interleaved chunk by chunk: each restores its PRNG state
    g1 = emu.generate(ids, p, on_chip=True)
    g2 = emu.generate(ids, SamplingParams(max_tokens=40, temperature=0.9, top_k=20, seed=8), on_chip=True)
    g1.chunk = g2.chunk = 4
    i1, i2 = iter(g1), iter(g2)
    for _ in range(200):
        n1, n2 = next(i1, None), next(i2, None)
        if n1 is None and n2 is None:
            break
    assert g1.result.ids == a
    # with a repetition penalty inside the chip's ring: still reproducible
    q = SamplingParams(max_tokens=24, temperature=0.8, repetition_penalty=1.3, repeat_last_n=64, seed=3)
    assert emu.generate(ids, q, on_chip=True).run().ids == emu.generate(ids, q, on_chip=True).run().ids


def test_on_chip_refusals(emu, tiny_models):
    ids = emu.tokenizer.encode(PROMPT)
    with pytest.raises(RomaError, match="ring of recent ids holds 64"):
        emu.generate(ids, SamplingParams(repetition_penalty=1.1, repeat_last_n=65), on_chip=True)
    ref = Engine(emu.model, "ref", "quant", lora_slots=0)
    with pytest.raises(RomaError, match="no autonomous decode"):
        ref.generate(ids, greedy(4), on_chip=True)
    # the per-token path is unchanged on ref
    assert ref.generate(ids, greedy(4)).run().finish_reason == "length"


def test_lora_hot_swap_is_a_register_write(emu):
    from roma_runtime.bench import lora_adapters

    backend = emu.backend
    adapters = lora_adapters(emu.config, rank=16)
    for a in adapters:
        emu.load_lora(a.name, a)
    ids = emu.tokenizer.encode(PROMPT)
    fresh = {}
    for name in (adapters[0].name, adapters[1].name, None):
        s = emu.new_session(64, adapter=name)
        emu._bind(s)
        fresh[name] = backend.forward(ids, s.cache)
    # How long a swap takes is the bench's to measure (roma bench reports it); what the test pins is that a
    # swap between resident adapters is one select command and writes no image.
    calls = backend.core.calls
    for i in range(20):
        emu.lora.activate(adapters[i % 2].name)
        backend.set_lora(emu.lora)
    assert backend.core.calls - calls == 20  # one CMD_SELECT_LORA per swap, no image written
    backend.set_lora(emu.lora)
    assert backend.core.calls - calls == 20  # nothing changed: nothing written
    # swapping gives the fresh runs' logits, bit for bit
    for name in (adapters[1].name, None, adapters[0].name, adapters[1].name):
        s = emu.new_session(64, adapter=name)
        emu._bind(s)
        assert np.array_equal(backend.forward(ids, s.cache), fresh[name]), name
    # reloading a name into its slot writes the new image (and its KV tag changes)
    emu.load_lora(adapters[0].name, adapters[1])
    s = emu.new_session(64, adapter=adapters[0].name)
    emu._bind(s)
    assert np.array_equal(backend.forward(ids, s.cache), fresh[adapters[1].name])
    # autonomous decode under an adapter equals the per-token path under it
    for name in (adapters[1].name, None):
        ra = emu.generate(ids, greedy(10), adapter=name).run()
        rb = emu.generate(ids, greedy(10), adapter=name, on_chip=True).run()
        assert ra.ids == rb.ids
    for a_ in adapters:
        emu.unload_lora(a_.name)


def test_bench_reports_host_overhead_in_both_modes(emu):
    from roma_runtime.bench import BenchConfig, format_table, run_bench

    cfg = BenchConfig(lengths=[8], decode_tokens=8, repeats=1, lora=False, warmup=False)
    report = run_bench(emu, cfg, backend="emu", progress=False)
    auto = report["autonomous"]
    assert auto["same_tokens"] and auto["generated_tokens"] == 9
    assert auto["host_overhead_s_per_token"] >= 0 and auto["host_sampled_overhead_s_per_token"] >= 0
    assert "autonomous decode (on chip" in format_table(report)


def test_smollm2_greedy_on_chip_equals_per_token(smollm2, smollm2_build):
    engine = Engine(smollm2, "emu", lora_slots=0, build=smollm2_build)
    ids = engine.tokenizer.encode("The capital of France is")
    a, b = run_both(engine, ids, greedy(6), capacity=32, chunk=4)
    assert_same_state(engine, a, b)
    # the rows the core wrote, joined from its KV ports (the default build's U250 splits them over two banks), are
    # the golden model's keys and values: layer 0's within an fp16 step (its inputs are the embedding's, exact;
    # float noise grows over the layers after it), where a mislaid run would be off entirely
    golden = GoldenModel(load_build(smollm2_build, verify=False), "quant")
    cache = golden.new_cache(32)
    golden.forward(ids, cache)
    keys, values = a[1].cache.read_rows(len(ids))
    for got, want in ((keys, cache.keys), (values, cache.values)):
        want = want[0, :len(ids)].astype(np.float32)
        assert np.abs(got[0].astype(np.float32) - want).max() <= 1e-3 * np.abs(want).max()
