"""LoRA in the engine: adapters named per session, switched on the backend before each forward, KV dropped when
a session's adapter changes; and `roma chat --lora` with /lora, /save and /load. Real parts throughout: the
tiny random LLaMA (Q4_1 GGUF, quantized contract) with SmolLM2's real tokenizer, and adapters made by PEFT on
the same weights in transformers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env
from tiny_models import write_peft_adapter
from roma_runtime import RomaError
from roma_runtime.engine import Engine
from roma_runtime.generate import SamplingParams

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
P = SamplingParams(max_tokens=8)


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": write_peft_adapter(tiny_models["hf"], root / "a", 1, r=8, lora_alpha=16, target_modules=ALL),
        "b": write_peft_adapter(tiny_models["hf"], root / "b", 2, r=4, lora_alpha=8, use_rslora=True,
                          target_modules=["q_proj", "v_proj", "down_proj"]),
    }


@pytest.fixture(scope="module")
def engine(tiny_models, adapters):
    e = Engine(tiny_models["q4_1"], "ref", "quant", lora_slots=4, lora_rank=16)
    e.load_lora("a", adapters["a"])
    e.load_lora("b", adapters["b"])
    return e


def fresh(engine, prompt_ids, adapter, params=P):
    return engine.generate(list(prompt_ids), params, adapter=adapter).run()


def test_adapters_change_the_answer(engine):
    prompt = engine.tokenizer.encode("Hello there, how are")
    outs = {ad: fresh(engine, prompt, ad).ids for ad in (None, "a", "b")}
    assert len({tuple(v) for v in outs.values()}) == 3


def test_switching_adapters_in_one_chat_equals_fresh_runs(engine):
    chat = engine.chat(adapter="a")
    turns = [("a", "Hello!"), ("b", "Tell me more."), (None, "Why?"), ("a", "And then?"), ("a", "Thanks.")]
    for i, (adapter, text) in enumerate(turns):
        chat.adapter = adapter
        result = chat.send(text, P).run()
        assert result.adapter == adapter
        assert result.ids == fresh(engine, result.prompt_ids, adapter).ids, (i, adapter)
        switched = i > 0 and turns[i - 1][0] != adapter
        if switched:  # the prefix was computed under another adapter: dropped and recomputed, not mixed
            assert result.dropped_tokens > 0 and result.reused_tokens == 0
        elif i > 0:
            assert result.dropped_tokens == 0 and result.reused_tokens > 10
    assert [m["role"] for m in chat.messages].count("assistant") == len(turns)


def test_switching_back_before_running_keeps_the_cache(engine):
    chat = engine.chat(adapter="a")
    chat.send("Hello!", P).run()
    chat.adapter = "b"
    assert not chat.session.kv_valid
    chat.adapter = "a"  # never ran under b: the rows are still a's
    assert chat.session.kv_valid
    assert chat.send("More?", P).run().reused_tokens > 10


def test_interleaved_sessions_equal_each_run_alone(engine):
    adapters = [None, "a", "b", "a"]
    prompt_list = [engine.tokenizer.encode(f"Story number {i}: once upon a time") for i in range(4)]
    alone = [fresh(engine, p, ad, SamplingParams(max_tokens=12)).ids for p, ad in zip(prompt_list, adapters)]
    swaps_before = sum(e.op == "activate" for e in engine.lora.events)
    gens = [engine.generate(p, SamplingParams(max_tokens=12), adapter=ad) for p, ad in zip(prompt_list, adapters)]
    its = [iter(g) for g in gens]
    live = list(range(len(its)))
    while live:  # round robin, one streamed piece (usually one token) at a time
        for i in list(live):
            try:
                next(its[i])
            except StopIteration:
                live.remove(i)
    assert [g.result.ids for g in gens] == alone
    assert sum(e.op == "activate" for e in engine.lora.events) - swaps_before > 8  # they did interleave


def test_reloading_an_adapter_drops_kv_made_under_the_old_contents(engine, adapters):
    engine.load_lora("x", adapters["a"])
    session = engine.new_session(adapter="x")
    prompt = engine.tokenizer.encode("The quick brown fox")
    first = engine.generate(prompt, P, session=session).run()
    assert first.ids == fresh(engine, prompt, "a").ids
    engine.load_lora("x", adapters["b"])  # same name, other contents
    again = engine.generate(prompt, P, session=session).run()
    assert again.dropped_tokens > 0 and again.ids == fresh(engine, prompt, "b").ids
    engine.unload_lora("x")
    with pytest.raises(RomaError, match="no LoRA adapter named 'x'"):
        engine.generate(prompt, P, session=session)


def test_a_failed_load_changes_nothing(engine, adapters, tmp_path):
    prompt = engine.tokenizer.encode("The quick brown fox")
    before = fresh(engine, prompt, "a").ids
    version, names, status = engine.lora.version, engine.lora_names(), engine.lora.status()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "use_dora": true}')
    with pytest.raises(RomaError, match="DoRA"):
        engine.load_lora("a", bad)
    with pytest.raises(RomaError, match="rank 8, above the LoRA slot rank 4"):
        Engine(engine.model, "ref", lora_slots=1, lora_rank=4).load_lora("a", adapters["a"])
    assert (engine.lora.version, engine.lora_names(), engine.lora.status()) == (version, names, status)
    assert fresh(engine, prompt, "a").ids == before


def test_refused_prompt_leaves_the_session_unchanged(engine):
    chat = engine.chat(capacity=48, adapter="b")
    chat.send("Hi", SamplingParams(max_tokens=4)).run()
    chat.adapter = "a"
    s = chat.session
    before = (list(chat.messages), list(s.ids), s.cache.length, s.adapter, s.kv_valid)
    with pytest.raises(RomaError, match="context holds 48"):
        chat.send("word " * 60, P)
    with pytest.raises(RomaError, match="no LoRA adapter named 'nope'"):
        chat.adapter = "nope"
    assert (chat.messages, s.ids, s.cache.length, s.adapter, s.kv_valid) == before


def test_engine_without_lora_slots_refuses_adapters(tiny_models, engine, adapters):
    e = Engine(engine.model, "ref", lora_slots=0)
    with pytest.raises(RomaError, match="no LoRA slots"):
        e.load_lora("a", adapters["a"])
    with pytest.raises(RomaError, match="no LoRA adapter named 'a'"):
        e.new_session(adapter="a")


# --- the chat CLI -----------------------------------------------------------------------------------------


def roma_chat(args, lines, timeout=120):
    script = ("\n".join(lines) + "\n").encode()
    p = subprocess.run([sys.executable, "-m", "roma_runtime.cli", "chat", *map(str, args)], input=script,
                       capture_output=True, env=cli_env(), cwd=str(REPO), timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def test_chat_cli_lora_switching_and_save_load(tiny_models, adapters, engine, tmp_path):
    model = tiny_models["q4_1"]
    saved = tmp_path / "chat.npz"
    common = ["--model", model, "--max-tokens", 6, "--lora", f"A={adapters['a']}", "--lora",
              f"B={adapters['b']}", "--lora-rank", 16]
    rc, out, err = roma_chat(common, [
        "/lora",
        "Hello!",
        "/lora B",
        "Tell me more.",
        "/lora nope",
        "/stats",
        "/lora off",
        "Why?",
        "/lora A",
        "And then?",
        f"/save {saved}",
        "/quit",
    ])
    assert rc == 0 and "Traceback" not in err, err
    # the listing: both adapters, A (the first --lora) active
    assert "* A  slot 0, rank 8" in out and "  B  slot 1, rank 4" in out
    assert "error: no LoRA adapter named 'nope' is loaded (loaded: A, B)" in err
    assert "4 messages, 2 turns" in out and "adapter: B" in out  # /stats after the bad /lora: intact

    # The same conversation through the API: each answer under the adapter that was active.
    api = engine.chat()
    # the CLI names them A/B; the API engine names the same folders a/b
    expected = []
    for adapter, text in (("a", "Hello!"), ("b", "Tell me more."), (None, "Why?"), ("a", "And then?")):
        api.adapter = adapter
        expected.append(api.send(text, SamplingParams(max_tokens=6)).run())
    for r in expected:
        assert r.text.strip() and r.text in out, (r.text, out)
    assert f"(conversation saved to {saved}: 8 messages" in out

    # A new process continues the saved conversation (under A, active at /save).
    rc, out2, err2 = roma_chat(common, ["/lora off", f"/load {saved}", "/stats", "Thanks.", "/stats", "/quit"])
    assert rc == 0 and "Traceback" not in err2, err2
    assert "(conversation loaded from" in out2 and "8 messages" in out2 and "adapter A)" in out2
    cont = api.send("Thanks.", SamplingParams(max_tokens=6)).run()
    assert cont.text in out2
    # the restored KV is reused: everything but the new user turn
    last_stats = out2.rsplit("context:", 1)[1]
    reused = int(last_stats.split("reused ", 1)[1].split(" ", 1)[0])
    assert reused == cont.reused_tokens and reused > 20

    # Another model refuses the file and the chat goes on.
    rc, out3, err3 = roma_chat(["--model", tiny_models["f32"], "--numerics", "float", "--max-tokens", 3],
                               [f"/load {saved}", "/stats", "/quit"])
    assert rc == 0 and "error: " in err3 and "saved with another model" in err3
    assert "context: 0 /" in out3


def test_chat_lora_load_and_unload_in_the_local_chat(engine, adapters):
    """/lora load and /lora unload in the REPL run Conversation.lora, as the serial server's LORA does; a
    refused one prints one error and changes nothing."""
    import argparse
    import io

    from roma_runtime.commands.chat import ChatSession

    out, err = io.StringIO(), io.StringIO()
    repl = ChatSession(engine, argparse.Namespace(system=None, context=64, on_chip=False), P, out=out, err=err)
    try:
        for line in (f"/lora load c={adapters['b']}", "/lora c", "/lora", f"/lora load off={adapters['a']}",
                     "/lora unload c", "/lora unload c", "/lora"):
            assert repl.command(line)
    finally:
        repl.conversation.session.close()
        if "c" in engine.lora_names():
            engine.unload_lora("c")
    text = out.getvalue()
    assert "(loaded adapter c into slot 2; /lora c switches to it)" in text
    assert "(adapter c active; the conversation continues under it)" in text and "* c  slot 2, rank 4" in text
    assert "(unloaded adapter c; the base model continues the conversation)" in text
    assert text.rstrip().endswith("* off (base model)") and engine.lora_names() == ["a", "b"]
    assert err.getvalue().count("error:") == 2  # the reserved name and the second unload
    assert "'off' cannot name an adapter" in err.getvalue() and "no LoRA adapter named 'c'" in err.getvalue()


# --- a build's compensating LoRA is part of its base ------------------------------------------------------


@pytest.fixture(scope="module")
def compensated_build(tiny_models, tmp_path_factory):
    from roma_runtime.compiler.build import compile_model

    out = tmp_path_factory.mktemp("comp") / "b2r4"
    compile_model(tiny_models["q4_1"], out, bits=2, group=32, lora_rank=4, lora_slots=2, progress=False)
    return out


def test_build_compensation_is_always_on_and_joins_task_adapters(compensated_build):
    from roma_runtime.model.loader import load_build
    from roma_runtime.golden import GoldenModel
    from roma_runtime.lora import Adapter, concat, pack

    model = load_build(compensated_build)
    comp = model.compensation
    assert comp is not None
    comp_rank = max(a.shape[0] for a, _, _ in comp.factors.values())
    engine = Engine(compensated_build, "ref", "quant", lora_slots=2)
    ids = [1, 504, 3458, 282, 4649, 314]

    def engine_logits(adapter):
        session = engine.new_session(64, adapter=adapter)
        engine._bind(session)
        return engine.backend.golden.forward(ids, session.cache)[-1]

    golden = GoldenModel(model, "quant")  # the compensation as its slot stores it (the build's unit: int8 on a U250)
    golden.lora = pack(Adapter.from_factors("c", model, comp.factors), engine.lora.dtype,
                       slot_rank=engine.lora.slot_rank).to_golden()
    np.testing.assert_allclose(engine_logits(None), golden.forward(ids, golden.new_cache(64))[-1], rtol=0, atol=1e-5)

    rng = np.random.default_rng(3)
    task = Adapter.from_factors("task", model, {
        (layer, "wq"): (rng.standard_normal((2, 64)).astype(np.float32) * 0.1,
                        rng.standard_normal((64, 2)).astype(np.float32) * 0.1, 1.0) for layer in range(2)})
    engine.load_lora("task", task)
    assert engine.lora_names() == ["task"]  # the compensation is not a task adapter
    # The slot holds compensation and task concatenated, stored as the unit stores every slot.
    both = concat(Adapter.from_factors("c", model, comp.factors), task)
    golden.lora = pack(both, engine.lora.dtype, slot_rank=engine.lora.slot_rank).to_golden()
    expected = golden.forward(ids, golden.new_cache(64))[-1]
    np.testing.assert_allclose(engine_logits("task"), expected, rtol=0, atol=1e-5)
    assert np.abs(engine_logits("task") - engine_logits(None)).max() > 0.1  # the task adapter does something
    with pytest.raises(RomaError, match="reserved"):
        engine.load_lora("rom-compensation", task)
    # the slot holds the compensation's rank too: a task adapter that fits the slot rank alone may not
    r = engine.lora.slot_rank - comp_rank + 1
    wide = Adapter.from_factors("wide", model, {(0, "wq"): (np.ones((r, 64), np.float32), np.ones((64, r), np.float32),
                                                            1.0)})
    with pytest.raises(RomaError, match=rf"with the build's compensating LoRA \(rank {comp_rank}, always on\) needs "
                                        rf"rank {r + comp_rank}, above the LoRA slot rank") as e:
        engine.load_lora("wide", wide)
    assert f"--lora-slot-rank {r + comp_rank}" in e.value.hint and engine.lora_names() == ["task"]
