"""roma finetune: LoRA trained with PEFT on transformers against a build's exact ROM weights, read back by the
runtime (lora.read_peft_adapter) and run on the golden float path. Tiny models only (tests/tiny_models.py): a
2-bit build of the tiny Q4_1 GGUF (SmolLM2's tokenizer and chat template) for task data, and a byte-vocabulary
tiny model for distillation (its 256-wide head keeps the KL steps cheap)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from roma_runtime import RomaError
from roma_runtime import finetune as F
from roma_runtime import lora as L
from roma_runtime.compiler.build import compile_model
from roma_runtime.model.loader import load_build
from roma_runtime.golden import GoldenModel
from roma_runtime.model.loader import load_model
from roma_runtime.model.loader import permute_to_gguf_rope

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

IDS = [1, 504, 3458, 282, 4649, 314, 90, 2000, 77, 12, 9000]
# Golden float path vs the torch model on the same fp32 weights (and factors): only summation order differs.
# Measured 1.7e-5 on logits of max 41.7 (4e-7 relative) for the base, similar with an adapter; 1e-4 of the
# largest logit, as in test_lora, leaves room for BLAS differences.
FLOAT_RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these matmuls are tiny, and on a shared CPU two threads spin against each other
    (measured 3x slower); restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TASK = dict(rank=8, steps=6, lr=1e-2, batch=4, seq_len=96, save_every=3, seed=3)


@pytest.fixture(scope="module")
def build2(tiny_models, tmp_path_factory):
    """The tiny Q4_1 model compiled to 2-bit G32 (RTN): a ROM base that differs from its source."""
    out = tmp_path_factory.mktemp("ft") / "b2"
    compile_model(tiny_models["q4_1"], out, bits=2, group=32, progress=False)
    return out


@pytest.fixture(scope="module")
def loaded2(build2):
    return load_build(build2)


@pytest.fixture(scope="module")
def trained(build2, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "task"
    result = F.finetune(out, build=build2, data=F.example_data(), options=F.FinetuneOptions(**TASK),
                        progress=False)
    return out, result


@pytest.fixture(scope="module")
def byte_build(tmp_path_factory):
    """A tiny float model with a byte vocabulary (no tokenizer: corpus text is encoded as bytes) and its 2-bit
    build with a rank-4 compensating LoRA."""
    from tiny_models import write_tiny_hf

    root = tmp_path_factory.mktemp("bytes")
    hf = write_tiny_hf(root / "hf", vocab=256, tied=False, seed=1)
    compile_model(hf, root / "b2", bits=2, group=32, lora_rank=4, progress=False)
    return hf, root / "b2"


def golden_logits(model, adapter=None, ids=IDS):
    g = GoldenModel(model, "float")
    g.lora = adapter
    return g.forward(ids, g.new_cache(len(ids) + 1), all_logits=True)


def golden_greedy(model, adapter, ids, n):
    g = GoldenModel(model, "float")
    g.lora = adapter
    cache = g.new_cache(len(ids) + n + 1)
    logits, out = g.forward(ids, cache), []
    for _ in range(n):
        out.append(int(logits[-1].argmax()))
        logits = g.forward([out[-1]], cache)
    return out


def torch_greedy(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(F.torch_logits(model, ids)[-1].argmax()))
    return ids[-n:]


def peft_model(loaded, folder):
    return peft.PeftModel.from_pretrained(F.to_transformers(loaded), str(folder)).eval()


# --- the torch model is our base ----------------------------------------------------------------------------


def test_rope_permutation_roundtrip():
    w = np.arange(8 * 4 * 3, dtype=np.float32).reshape(32, 3)
    np.testing.assert_array_equal(F.permute_to_hf_rope(permute_to_gguf_rope(w, 4), 4), w)
    np.testing.assert_array_equal(permute_to_gguf_rope(F.permute_to_hf_rope(w, 2), 2), w)


def test_torch_model_equals_golden_float(loaded2):
    ref = golden_logits(loaded2)
    ours = F.torch_logits(F.to_transformers(loaded2), IDS)
    assert np.abs(ours - ref).max() < FLOAT_RTOL * np.abs(ref).max(), np.abs(ours - ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


# --- data ---------------------------------------------------------------------------------------------------


def test_chat_loss_only_on_assistant_turns(loaded2):
    tok = F._tokenizer(loaded2)
    msgs = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Answer: yes\nConfidence: high"},
            {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Answer: no\nConfidence: low"}]
    ex = F.chat_example(tok, msgs)
    assert tok.decode(ex.ids) == tok.apply_chat_template(msgs, add_generation_prompt=False)
    learned = tok.decode([t for t in ex.labels if t != F.IGNORE])
    assert learned == "Answer: yes\nConfidence: high<|im_end|>\nAnswer: no\nConfidence: low<|im_end|>\n"


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("case,message", [
    ("not_json", r"line 2 is not JSON"),
    ("no_role", r"line 1: message 2 has no role"),
    ("no_assistant", r"line 1: the conversation has no assistant message"),
    ("neither", r"line 1 has neither \"messages\" nor \"text\""),
    ("no_manifest", r"holds no manifest.json; it is not a complete build"),
    ("target_embed", r"--targets embed_tokens: the LoRA unit adapts only the 7 linears"),
    ("target_head", r"--targets lm_head: the LoRA unit adapts only the 7 linears"),
    ("rank", r"--rank 65 is above the LoRA slot rank 64"),
    ("build_rank", r"--rank 17 is above the slot rank of the LoRA unit of .* \(1 slot of rank 16"),
    ("build_targets", r"--targets k_proj o_proj gate_proj up_proj down_proj: the LoRA unit of .* has no memory"),
    ("distill_model", r"--distill needs --build"),
    ("schedule", r"--schedule 'linear' is not known"),
    ("distill_text", r"--distill-text 'wiki' is not known"),
])
def test_bad_inputs_refused_before_training(build2, tiny_models, tmp_path, case, message):
    good = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    data = write(tmp_path / "d.jsonl", [good])
    kw = dict(build=build2, data=data, options=F.FinetuneOptions(steps=1))
    if case == "not_json":
        kw["data"] = write(tmp_path / "d.jsonl", [good, "{\"messages\": [", good])
    elif case == "no_role":
        kw["data"] = write(tmp_path / "d.jsonl", [json.dumps({"messages": [
            {"role": "user", "content": "Q"}, {"content": "A"}]})])
    elif case == "no_assistant":
        kw["data"] = write(tmp_path / "d.jsonl", [json.dumps({"messages": [{"role": "user", "content": "Q"}]})])
    elif case == "neither":
        kw["data"] = write(tmp_path / "d.jsonl", [json.dumps({"prompt": "Q"})])
    elif case == "no_manifest":
        half = tmp_path / "half"
        shutil.copytree(build2, half)
        (half / "manifest.json").unlink()
        kw["build"] = half
    elif case.startswith("target"):
        kw["options"] = F.FinetuneOptions(targets=["q_proj", "embed_tokens" if case == "target_embed" else "lm_head"])
    elif case == "rank":
        kw["options"] = F.FinetuneOptions(rank=65)
    elif case == "build_rank":  # build2's LoRA unit: the U250's default, one slot of rank 16
        kw["options"] = F.FinetuneOptions(rank=17)
    elif case == "build_targets":  # the default targets (all 7) on a build with LoRA memory for wq and wv only
        kw["build"] = tmp_path / "wq_wv"
        compile_model(tiny_models["q4_1"], kw["build"], lora_targets=["wq", "wv"], progress=False)
    elif case == "schedule":
        kw["options"] = F.FinetuneOptions(schedule="linear")
    elif case == "distill_text":
        kw["options"] = F.FinetuneOptions(distill_text="wiki")
    elif case == "distill_model":
        kw = dict(model=tiny_models["q4_1"], options=F.FinetuneOptions(distill=True))
    with pytest.raises(RomaError, match=message):
        F.finetune(tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_cosine_schedule_warms_up_then_decays_to_zero():
    peak = 1e-3
    rates = [F.learning_rate(peak, "cosine", p / 100) for p in range(101)]
    top = int(np.argmax(rates))
    assert 0 < rates[0] < 0.05 * peak and abs(rates[top] - peak) < 1e-12
    assert top == round(100 * F.WARMUP_SHARE)
    assert all(a < b for a, b in zip(rates[:top], rates[1:top + 1]))  # warm-up rises
    assert all(a > b for a, b in zip(rates[top:], rates[top + 1:]))  # then falls all the way
    assert rates[-1] == 0.0 and abs(rates[(top + 100) // 2 + 1] - peak / 2) < 0.05 * peak
    assert F.learning_rate(peak, "cosine", 1.7) == 0.0  # past the end (a resumed, over-budget run)
    assert all(F.learning_rate(peak, "constant", p / 10) == peak for p in range(11))


def test_a_time_budget_alone_is_not_capped_at_the_default_steps(build2, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "DEFAULT_STEPS", 2)
    data = write(tmp_path / "d.jsonl", [json.dumps({"text": "hello world, " * 20})])
    opts = dict(rank=4, lr=1e-3, batch=1, seq_len=32, save_every=1)
    assert F.finetune(tmp_path / "a", build=build2, data=data, options=F.FinetuneOptions(**opts),
                      progress=False).steps == 2
    with pytest.raises(KeyboardInterrupt):  # an hour's budget: only the interruption stops it
        F.finetune(tmp_path / "b", build=build2, data=data, options=F.FinetuneOptions(minutes=60, **opts),
                   progress=False, interrupt_after=4)
    assert F.read_record(tmp_path / "b")["training"]["steps_done"] == 4


def test_cli_refuses_bad_rank(build2, tmp_path, capsys):
    from roma_runtime.cli import main

    data = write(tmp_path / "d.jsonl", [json.dumps({"text": "hello world"})])
    assert main(["finetune", "--build", str(build2), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--rank", "128"]) == 2
    assert "above the LoRA slot rank 64" in capsys.readouterr().err


def test_missing_train_extra_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(RomaError, match=r"pip install 'roma-runtime\[train\]'"):
        F._train_deps()


# --- a trained adapter in the runtime -----------------------------------------------------------------------


def test_trained_adapter_matches_torch_on_golden_float(trained, loaded2):
    out, result = trained
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "roma_build.json"} <= names
    adapter = L.read_peft_adapter(out, loaded2)
    assert adapter.targets == L.LINEAR and adapter.max_rank == 8
    pm = peft_model(loaded2, out)
    ref = F.torch_logits(pm, IDS)
    ours = golden_logits(loaded2, adapter.to_golden())
    base = golden_logits(loaded2)
    assert np.abs(ours - base).max() > 1.0  # the adapter matters
    assert np.abs(ours - ref).max() < FLOAT_RTOL * np.abs(ref).max(), np.abs(ours - ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    prompt = F._tokenizer(loaded2).encode_chat([{"role": "user", "content": "What is the capital of Italy?"}])
    assert golden_greedy(loaded2, adapter.to_golden(), prompt, 8) == torch_greedy(pm, prompt, 8)


@pytest.mark.parametrize("backend", ["ref", "emu"])
def test_trained_adapter_on_the_runtime_matches_torch(trained, build2, loaded2, backend):
    """The adapter in an engine slot (fp16 factors, the accelerator's int8 activations; on emu the C simulation of
    roma_core) against the fp32 torch model it was trained in. Measured: 0.9% of the largest logit on both (the
    int8 activations are most of it, and emu equals ref); tolerance 3%, and the same greedy tokens."""
    from roma_runtime.engine import Engine

    out, _ = trained
    engine = Engine(build2, backend, "quant", lora_slots=1, lora_rank=8)
    engine.load_lora("task", out)
    pm = peft_model(loaded2, out)
    session = engine.new_session(64, adapter="task")
    engine._bind(session)
    got = engine.backend.forward(IDS, session.cache)
    ref = F.torch_logits(pm, IDS)[-1]
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 0.03, err
    prompt = F._tokenizer(loaded2).encode_chat([{"role": "user", "content": "What is the capital of Italy?"}])
    from roma_runtime.generate import SamplingParams

    ids = engine.generate(prompt, SamplingParams(max_tokens=8), adapter="task").run().ids
    assert len(ids) >= 4 and ids == torch_greedy(pm, prompt, len(ids))


def test_example_task_changes_answers(trained, loaded2):
    from roma_runtime.examples.answer_format import HELD_OUT, PAIRS

    out, result = trained
    assert len(result.losses) == TASK["steps"]
    assert np.mean(result.losses[-2:]) < 0.6 * np.mean(result.losses[:2]), result.losses
    tok = F._tokenizer(loaded2)
    adapter = L.read_peft_adapter(out, loaded2).to_golden()
    assert len(PAIRS) == sum(1 for _ in F.example_data().open())
    changed = 0
    for q in HELD_OUT[:3]:
        prompt = tok.encode_chat([{"role": "user", "content": q}])
        changed += golden_greedy(loaded2, adapter, prompt, 6) != golden_greedy(loaded2, None, prompt, 6)
    assert changed >= 2


def test_same_seed_and_resume_reproduce_the_run(trained, build2, tmp_path):
    from safetensors.numpy import load_file

    out, _ = trained
    want = load_file(str(out / "adapter_model.safetensors"))
    # an interrupted run leaves its last checkpoint and a usable adapter of that step
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        F.finetune(run, build=build2, data=F.example_data(), options=F.FinetuneOptions(**TASK), progress=False,
                   interrupt_after=3)
    rec = json.loads((run / "roma_build.json").read_text())
    assert rec["training"]["steps_done"] == 3 and rec["training"]["complete"] is False
    assert (run / "checkpoint" / "state.pt").is_file() and not (run / "checkpoint" / "state.pt.tmp").exists()
    L.read_peft_adapter(run, load_build(build2))
    with pytest.raises(RomaError, match="is not empty"):
        F.finetune(run, build=build2, data=F.example_data(), options=F.FinetuneOptions(**TASK), progress=False)
    with pytest.raises(RomaError, match=r"of another run \(lr was 0.01, now 0.02\)"):
        F.finetune(run, build=build2, data=F.example_data(), options=F.FinetuneOptions(**dict(TASK, lr=2e-2)),
                   resume=True, progress=False)
    result = F.finetune(run, build=build2, data=F.example_data(), options=F.FinetuneOptions(**TASK), resume=True,
                        progress=False)
    assert result.resumed_from == 3 and result.steps == TASK["steps"]
    got = load_file(str(run / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:  # the same seed, interrupted and resumed, gives the identical adapter
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert result.losses == trained[1].losses


def test_adapter_refused_on_another_base(trained, build2, byte_build, tiny_models, tmp_path):
    out, _ = trained
    rec = F.check_adapter_build(out, build2)
    assert rec["matches"] and rec["base"]["kind"] == "build"
    assert rec["base"]["manifest_sha256"] == F._sha256_file(build2 / "manifest.json")
    copy = tmp_path / "copy"  # the same ROM contents elsewhere is the same base
    shutil.copytree(build2, copy)
    assert F.check_adapter_build(out, copy)["matches"]
    assert F.check_adapter_build(out, load_build(copy))["matches"]
    streamed = tmp_path / "streamed"  # the same weights placed in DDR (another board's plan) too
    compile_model(tiny_models["q4_1"], streamed, bits=2, group=32, ddr="all", progress=False)
    assert (streamed / "ddr_weights.bin").is_file() and F.check_adapter_build(out, streamed)["matches"]
    with pytest.raises(RomaError, match="was trained against the build tiny-llama .2-bit G32."):
        F.check_adapter_build(out, byte_build[1])
    with pytest.raises(RomaError, match="not against this model"):
        F.check_adapter_build(out, tiny_models["q4_1"])  # the float source of the build is another base
    assert F.check_adapter_build(out, tiny_models["q4_1"], allow_other=True)["matches"] is False
    plain = tmp_path / "plain"  # an adapter trained elsewhere has no record and is not checked
    shutil.copytree(out, plain)
    (plain / "roma_build.json").unlink()
    assert F.check_adapter_build(plain, byte_build[1]) is None


# --- distillation -------------------------------------------------------------------------------------------


def test_distill_repairs_quantization_error(byte_build):
    from roma_runtime.compiler.quantization.corpus import token_windows

    hf, build = byte_build
    loaded = load_build(build)
    comp = loaded.compensation
    teacher = load_model(hf)
    # the start is the build's compensating LoRA, exactly
    o = F.FinetuneOptions(rank=8, alpha=8.0)
    pm, _ = F.make_peft(F.to_transformers(loaded), loaded.config, o, comp)
    ref = golden_logits(loaded, comp, [3, 70, 101, 200, 32, 9])
    got = F.torch_logits(pm, [3, 70, 101, 200, 32, 9])
    assert np.abs(got - ref).max() < FLOAT_RTOL * np.abs(ref).max()
    for mod in F._lora_modules(pm, loaded.config, o.targets).values():  # each component's factors balanced
        a, b = mod.lora_A["default"].weight.detach().numpy(), mod.lora_B["default"].weight.detach().numpy()
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0)
        used = nb > 0  # components beyond the build's rank start as PEFT's: B = 0
        assert used.any() and np.allclose(na[used], nb[used], rtol=1e-4)

    windows = token_windows(teacher, "evaluation", 1024, 128)  # held out: the training text is calibration

    def metrics(adapter):
        s = np.concatenate([golden_logits(loaded, adapter, w) for w in windows])
        t = np.concatenate([golden_logits(teacher, None, w) for w in windows])
        return F.distill_metrics(s, t)

    before, start = metrics(None), metrics(comp)
    out = build.parent / "distilled"
    result = F.finetune(out, build=build, options=F.FinetuneOptions(
        rank=8, steps=24, lr=3e-3, schedule="cosine", batch=8, seq_len=64, distill=True, distill_tokens=4096,
        save_every=100),
        progress=False)
    after = metrics(L.read_peft_adapter(out, loaded).to_golden())
    assert result.record["training"]["init"] == "build compensating LoRA"
    assert abs(result.losses[0] - start["kl"]) < 0.5 * start["kl"]  # it starts near the compensated build
    assert np.mean(result.losses[-4:]) < 0.8 * np.mean(result.losses[:4]), result.losses
    # measured: KL 1.84 (build) / 1.40 (with its LoRA) -> ~0.8; top-1 0.45 / 0.48 -> ~0.58
    assert after["kl"] < 0.8 * start["kl"] and after["kl"] < before["kl"], (before, start, after)
    assert after["top1"] > start["top1"] and after["top1"] > before["top1"], (before, start, after)


def test_unquantized_model_base_and_text_data(tiny_models, tmp_path):
    """--model: the float GGUF itself is the base; documents ({"text"}) train on every token."""
    model = load_model(tiny_models["f32"])
    data = write(tmp_path / "docs.jsonl", [json.dumps({"text": t}) for t in (
        "The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine.",
        "Every cloud has a silver lining, or so the saying goes.")])
    out = tmp_path / "adapter"
    result = F.finetune(out, model=model, data=data, progress=False, options=F.FinetuneOptions(
        rank=4, steps=3, lr=1e-2, batch=2, seq_len=32, targets="q_proj,v_proj,w_down"))
    assert result.record["base"]["kind"] == "model" and result.record["training"]["data"]["kind"] == "text"
    assert F.check_adapter_build(out, model)["matches"]
    adapter = L.read_peft_adapter(out, model)
    assert adapter.targets == ("wq", "wv", "w_down")
    ref = F.torch_logits(peft_model(model, out), IDS)
    ours = golden_logits(model, adapter.to_golden())
    assert np.abs(ours - ref).max() < FLOAT_RTOL * np.abs(ref).max()


def test_engine_loads_the_adapter_on_its_build_and_refuses_it_elsewhere(trained, build2, tiny_models):
    from roma_runtime.engine import Engine

    out, _ = trained
    own = Engine(build2, "ref", "quant", lora_slots=1)
    own.load_lora("task", out)
    assert own.lora_names() == ["task"]
    other = Engine(tiny_models["q4_1"], "ref", "quant", lora_slots=1)
    with pytest.raises(RomaError, match="not against this model"):
        other.load_lora("task", out)
    assert other.lora_names() == []  # the refusal changed nothing
    lenient = Engine(tiny_models["q4_1"], "ref", "quant", lora_slots=1, lora_any_build=True)
    lenient.load_lora("task", out)
    assert lenient.lora_names() == ["task"]


def test_distilled_adapter_replaces_the_build_compensation(tiny_models, tmp_path):
    """A --distill adapter starts from the build's compensating LoRA and so holds it: the engine and roma eval
    run it in place of that LoRA, not added to it. Also the time budget (--minutes) and the snapshots."""
    from roma_runtime.evaluation import eval_windows, evaluate_build, evaluate_models
    from roma_runtime.engine import Engine

    build = tmp_path / "b2r4"
    compile_model(tiny_models["q4_1"], build, bits=2, group=32, lora_rank=4, lora_slots=2, progress=False)
    out = tmp_path / "distilled"
    options = dict(rank=4, lr=1e-2, batch=1, seq_len=16, distill=True, distill_tokens=64, save_every=1,
                   keep_snapshots=True)
    first = F.finetune(out, build=build, options=F.FinetuneOptions(steps=50, minutes=1e-5, **options),
                       progress=False)
    assert first.steps == 1  # the budget ran out after the first step, which is saved
    rec = F.read_record(out)["training"]
    assert rec["steps_done"] == 1 and rec["includes_compensation"] and rec["minutes_budget"] == 1e-5
    F.finetune(out, build=build, options=F.FinetuneOptions(steps=3, **options), resume=True, progress=False)
    snaps = F.snapshots(out)
    assert [p.name for p in snaps] == ["step-000001", "step-000002", "step-000003"]
    seconds = [F.read_record(p)["training"]["seconds"] for p in snaps]
    assert seconds == sorted(seconds) and seconds[0] > 0

    model = load_build(build)
    adapter = L.read_peft_adapter(out, model)
    engine = Engine(build, "ref", "quant", lora_slots=2, lora_rank=8)
    engine.load_lora("distilled", out)
    session = engine.new_session(64, adapter="distilled")
    engine._bind(session)
    golden = GoldenModel(model, "quant")
    golden.lora = L.pack(adapter, engine.lora.dtype, slot_rank=engine.lora.slot_rank).to_golden()
    np.testing.assert_allclose(engine.backend.forward(IDS, session.cache), golden.forward(IDS, golden.new_cache(64))[-1],
                               rtol=0, atol=1e-5)

    source = load_model(tiny_models["q4_1"])
    reference = GoldenModel(source, "float")
    measured = evaluate_build(source, build, tokens=64, window=32, chat=False, lora=out,
                              reference=reference)
    candidate = GoldenModel(model, "quant")
    candidate.lora = golden.lora  # the adapter as the build's LoRA unit stores it: what the engine ran above
    alone = evaluate_models(reference, candidate, eval_windows(source, 64, 32))
    assert measured["text"] == alone["text"] and measured["build"]["lora"] == str(out)
