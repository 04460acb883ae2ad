"""The KV cache manager: capacity from the memory left after LoRA (ROMA's rank-vs-context trade-off), the
session pool, rollback, and sessions saved to a file and restored. On the tiny random LLaMA (Q4_1 GGUF, the
quantized contract) with SmolLM2's real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from roma_runtime import RomaError
from roma_runtime import kv
from roma_runtime.engine import Engine
from roma_runtime.generate import SamplingParams
from roma_runtime.lora import Adapter, slot_bytes
from roma_runtime.model.config import linear_shapes
from roma_runtime.model.config import ModelConfig

SMOLLM2 = ModelConfig("smollm2-135m", n_layers=30, dim=576, ffn_dim=1536, n_heads=9, n_kv_heads=3,
                      vocab_size=49152, context_length=8192, rope_theta=100000.0, rms_eps=1e-5,
                      tied_embeddings=True)
MIB = 1 << 20
P = SamplingParams(max_tokens=8)


# --- capacity arithmetic ----------------------------------------------------------------------------------


def test_kv_token_bytes():
    # n_layers * 2 (K, V) * kv_dim (3 heads * 64) * bytes
    assert kv.kv_token_bytes(SMOLLM2, "fp16") == 30 * 2 * 192 * 2 == 23040
    assert kv.kv_token_bytes(SMOLLM2, np.float32) == 46080
    assert kv.kv_token_bytes(SMOLLM2, "int8") == 11520


def test_higher_lora_rank_leaves_fewer_kv_tokens_exactly():
    memory = 256 * MIB
    expected = {8: 10801, 16: 9953, 32: 8257, 64: 4865}  # 4 slots; worked out by hand below
    tokens = {}
    for r, n in expected.items():
        # one slot: a 64-byte header + 30*7 32-byte directory entries (6784 bytes, 64-aligned), then per layer
        # r * (in + out) fp16 values for each linear: q 576+576, k 576+192, v 576+192, o 576+576,
        # gate/up 576+1536, down 1536+576 = 10176 (every block already a multiple of 64 bytes)
        one = 6784 + 30 * r * 2 * 10176
        assert slot_bytes(SMOLLM2, r) == one
        tokens[r] = kv.kv_capacity(SMOLLM2, memory, 4 * one, "fp16")
        assert tokens[r] == (memory - 4 * one) // 23040 == n
    ranks = sorted(tokens)
    assert all(tokens[a] > tokens[b] for a, b in zip(ranks, ranks[1:]))
    # int8 KV doubles the tokens of the same leftover memory
    assert kv.kv_capacity(SMOLLM2, memory, 0, "int8") == memory // 11520


def test_no_room_for_kv_is_refused():
    with pytest.raises(RomaError, match="less than one token of KV cache"):
        kv.kv_capacity(SMOLLM2, 100 * MIB, 4 * slot_bytes(SMOLLM2, 64))
    assert kv.kv_capacity(SMOLLM2, 23040, 0) == 1
    with pytest.raises(RomaError):
        kv.kv_capacity(SMOLLM2, 23039, 0)


# --- an engine with a memory budget -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_models):
    return Engine(tiny_models["q4_1"], "ref", "quant", lora_slots=2, lora_rank=8)


def random_adapter(model, name, seed, rank=4):
    rng = np.random.default_rng(seed)
    factors = {}
    for layer in range(model.config.n_layers):
        for lin, (out, inp) in linear_shapes(model.config).items():
            factors[(layer, lin)] = (rng.standard_normal((rank, inp)) * 0.1, rng.standard_normal((out, rank)) * 0.1,
                                     2.0)
    return Adapter.from_factors(name, model, factors)


def test_memory_budget_bounds_the_sessions(engine):
    c = engine.config  # tiny: 2 layers, kv_dim 32 -> 256 bytes per fp16 token
    per_token = kv.kv_token_bytes(c, "fp16")
    assert per_token == 2 * 2 * 32 * 2
    lora8 = 2 * slot_bytes(c, 8)
    memory = lora8 + 300 * per_token + 100  # 300 tokens and change
    e = Engine(engine.model, "ref", lora_slots=2, lora_rank=8, kv_memory=memory)
    assert e.kv_budget.tokens == 300 and e.kv_budget.lora_bytes == lora8
    first = e.new_session()  # the context length (256) bounds it, not the budget
    assert first.capacity == 256 and e.kv_pool.free == 44
    second = e.new_session()  # what is left
    assert second.capacity == 44
    with pytest.raises(RomaError, match="does not fit: 0 of the 300 KV tokens"):
        e.new_session(8)
    second.close()
    assert e.new_session(40).capacity == 40
    # Higher slot rank, same memory: fewer tokens, by exactly the extra LoRA bytes.
    e9 = Engine(engine.model, "ref", lora_slots=2, lora_rank=9, kv_memory=memory)
    assert e9.kv_budget.tokens == (memory - 2 * slot_bytes(c, 9)) // per_token < 300
    with pytest.raises(RomaError, match="less than one token"):
        Engine(engine.model, "ref", lora_slots=2, lora_rank=32, kv_memory=memory)


# --- rollback ---------------------------------------------------------------------------------------------


def test_rollback_then_regenerate_equals_a_fresh_run(engine):
    prompt = engine.tokenizer.encode("Once upon a time, in a land far away,")
    session = engine.new_session()
    first = engine.generate(prompt, P, session=session).run()
    assert len(session.ids) == len(prompt) + len(first.ids) - 1
    session.rollback(len(session.ids) - len(prompt) + 3)  # back into the prompt
    assert session.ids == prompt[:-3] and session.length == len(prompt) - 3
    other = prompt[:-3] + engine.tokenizer.encode(" there lived")
    regen = engine.generate(other, P, session=session).run()
    assert regen.reused_tokens == len(prompt) - 3
    assert regen.ids == engine.generate(other, P).run().ids
    session.truncate(len(prompt) - 3)  # back to the shared prefix: the original prompt gives the same answer
    again = engine.generate(prompt, P, session=session).run()
    assert again.ids == first.ids and again.reused_tokens == len(prompt) - 3 and again.prefill_tokens == 3
    with pytest.raises(RomaError, match="cannot truncate"):
        session.truncate(len(session.ids) + 1)
    with pytest.raises(RomaError, match="cannot roll back"):
        session.rollback(-1)


# --- save and restore -------------------------------------------------------------------------------------


def next_logits(engine, session, token):
    """The logits after `token`, leaving the session as it was."""
    engine._bind(session)
    logits = engine.backend.forward([token], session.cache)
    session.cache.truncate(session.cache.length - 1)
    return logits


def test_save_restore_round_trip(engine, tiny_models, tmp_path):
    engine.load_lora("r4", random_adapter(engine.model, "r4", 7))
    session = engine.new_session(capacity=128, adapter="r4")
    prompt = engine.tokenizer.encode("The weather today is")
    first = engine.generate(prompt, P, session=session).run()
    path = session.save(tmp_path / "s.npz")

    restored = engine.restore_session(path)
    assert restored.ids == session.ids and restored.length == session.length and restored.adapter == "r4"
    assert restored.capacity == 128
    np.testing.assert_array_equal(restored.cache.keys[:, : session.length], session.cache.keys[:, : session.length])
    # the same next-token logits and the same continuation
    token = first.ids[-1]
    a = next_logits(engine, session, token)
    b = next_logits(engine, restored, token)
    np.testing.assert_array_equal(a, b)
    held = len(session.ids)
    follow = session.ids + [token] + engine.tokenizer.encode(" and tomorrow")
    x = engine.generate(follow, P, session=session).run()
    y = engine.generate(follow, P, session=restored).run()
    assert x.ids == y.ids and x.reused_tokens == y.reused_tokens == held
    assert y.ids == engine.generate(follow, P, adapter="r4").run().ids

    # A second engine on the same model file restores it (with the same adapter loaded).
    other = Engine(tiny_models["q4_1"], "ref", "quant", lora_slots=1, lora_rank=8)
    with pytest.raises(RomaError, match="adapter 'r4', which is not loaded"):
        other.restore_session(path)
    other.load_lora("r4", random_adapter(engine.model, "r4", 8))  # same name, other factors
    with pytest.raises(RomaError, match="with other contents"):
        other.restore_session(path)
    other.load_lora("r4", random_adapter(engine.model, "r4", 7))
    again = other.restore_session(path)
    np.testing.assert_array_equal(next_logits(other, again, token), a)


def test_restore_is_refused_for_another_model_or_numerics(engine, tiny_models, tmp_path):
    session = engine.new_session()
    engine.generate(engine.tokenizer.encode("Hello world"), P, session=session).run()
    path = session.save(tmp_path / "base.npz")
    f32 = Engine(tiny_models["f32"], "ref", "float", lora_slots=0)  # the same weights, another file
    with pytest.raises(RomaError, match="saved with another model"):
        f32.restore_session(path)
    floats = Engine(engine.model, "ref", "float", lora_slots=0)  # the same model, other numerics
    with pytest.raises(RomaError, match="saved with quant numerics"):
        floats.restore_session(path)
    # refused restores into an existing session leave it as it was
    target = engine.new_session(capacity=4)
    target_before = (list(target.ids), target.length)
    with pytest.raises(RomaError, match="more than this session's context of 4"):
        engine.restore_session(path, session=target)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(RomaError, match="not a ROMA session file"):
        engine.restore_session(bad, session=target)
    assert (target.ids, target.length) == target_before


def test_stale_rows_are_not_saved(engine, tmp_path):
    if "r4" not in engine.lora_names():
        engine.load_lora("r4", random_adapter(engine.model, "r4", 7))
    session = engine.new_session()
    engine.generate(engine.tokenizer.encode("Hello world"), P, session=session).run()
    session.adapter = "r4"  # the rows were computed without it
    restored = engine.restore_session(session.save(tmp_path / "stale.npz"))
    assert restored.ids == [] and restored.length == 0 and restored.adapter == "r4"
