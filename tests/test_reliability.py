"""Issue 21, hostile files and killed processes: one test per numbered failure that reproduces it (and now
passes), the kill test, and the soak over the emulated board (long mode: ROMA_LONG=1). The serial server's
faults (item 2) are tested in test_serial.py; the property-based fuzzing of the readers is test_fuzz_readers.py."""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from fuzz_tools import LONG, SMALL_VOCAB, flip_bytes, npy_header, npz_bytes, rss_bytes, write_adapter, write_gguf
from roma_runtime.errors import RomaError

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                               reason="the emulated board needs g++ and make")


def roma(*args, env=None, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roma_runtime.cli", *map(str, args)], capture_output=True,
                          text=True, env=env or cli_env(), input=stdin, timeout=timeout)


def no_crash(proc: subprocess.CompletedProcess) -> None:
    """Exited by itself (0, or 2 for a refusal), with no traceback and no abort."""
    assert proc.returncode in (0, 2), (proc.returncode, proc.stderr[-2000:])
    for sign in ("Traceback", "munmap", "Aborted", "free()", "Segmentation"):
        assert sign not in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from tiny_models import write_tiny_hf

    root = tmp_path_factory.mktemp("reliability")
    hf = write_tiny_hf(root / "hf", vocab=SMALL_VOCAB, tied=False, seed=5)
    return {"root": root, "hf": hf, "gguf": write_gguf(hf, root / "small.gguf")}


def edited_build(build: Path, dest: Path, edit, seal: bool) -> Path:
    """A copy of a build whose manifest went through edit(manifest) (resealed when `seal`)."""
    from roma_runtime.artifact.build import MANIFEST, seal_manifest

    shutil.copytree(build, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    edit(manifest)
    (dest / MANIFEST).write_text(json.dumps(seal_manifest(manifest) if seal else manifest))
    return dest


def set_config(key, value):
    def edit(m):
        m["model"]["config"][key] = value
    return edit


# --- 1. heap corruption from a manifest ------------------------------------------------------------------------


@needs_gxx
def test_1_an_edited_manifest_is_refused_not_a_heap_corruption(tiny_build, tmp_path):
    """The issue's reproduction: n_layers 29 in a build's manifest, then roma generate on the emulated board
    aborted with munmap_chunk(): invalid pointer. The manifest's seal refuses the edit."""
    build = edited_build(tiny_build, tmp_path / "b29", set_config("n_layers", 29), seal=False)
    proc = roma("generate", "--backend", "emu", "--model", build, "--context", 16, "The capital of France is",
                "--max-tokens", 6)
    no_crash(proc)
    assert proc.returncode == 2 and "changed after the build wrote it" in proc.stderr


@pytest.mark.parametrize("key,value", [("n_layers", 29), ("n_layers", 1), ("vocab_size", 1000),
                                       ("n_kv_heads", 1), ("context_length", 10**7)])
def test_1_a_resealed_manifest_must_still_match_its_header(tiny_build, tmp_path, key, value):
    """An edit that recomputes the seal is refused too: the config must be the one roma_model.h was generated
    with (and within the bounds of model/config.py)."""
    from roma_runtime.model.loader import load_model

    build = edited_build(tiny_build, tmp_path / "b", set_config(key, value), seal=True)
    with pytest.raises(RomaError, match="manifest.json"):
        load_model(build)


@needs_gxx
@pytest.mark.parametrize("key,value", [("n_layers", 1), ("n_layers", 29), ("vocab_size", 1000)])
def test_1_the_emulated_core_refuses_other_dimensions_before_any_buffer(tiny_emu, tmp_path, key, value):
    """The last line of defence: a bitstream folder whose manifest (resealed) states other dimensions than the
    library was compiled with is refused by the library's own roma_model_dims, before a buffer is allocated."""
    from roma_runtime.artifact.build import MANIFEST, seal_manifest
    from roma_runtime.device import driver as drv
    from roma_runtime.device.emu import emu_device

    lib = tiny_emu.device.library
    c = tiny_emu.config
    assert lib.dims["n_layers"] == c.n_layers and lib.dims["vocab_size"] == c.vocab_size
    assert lib.dims["kv_dim"] == c.kv_dim and lib.dims["context"] == c.context_length
    bit = Path(tiny_emu.overlay.bitfile_name)
    folder = tmp_path / "overlay"
    shutil.copytree(bit.parent, folder, symlinks=True)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["model"]["config"][key] = value
    (folder / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    device = emu_device()  # shared with the session's other tests, whose buffers the collector may free meanwhile
    gc.collect()
    live = device.live_buffers
    try:
        with pytest.raises(RomaError, match="compiled with.*no buffer was made"):
            drv.RomaOverlay(str(folder / bit.name), device=device)
        assert device.live_buffers <= live  # none left behind
    finally:
        device.roma_owner = None  # the refused overlay was downloaded: the fixture's backend downloads its own again
    cache = tiny_emu.new_cache(8)
    assert np.isfinite(tiny_emu.forward([1, 2, 3], cache)).all()


# --- 3. roma chat survives a bad /load or /lora ----------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_files(tiny_models, tmp_path_factory):
    """A session saved by the tiny Q4_1 model (the CLI's identity: the same file), a truncated and a bit-flipped
    copy, a good adapter and one whose rank_pattern key is an invalid regex."""
    from roma_runtime.engine import Engine
    from roma_runtime.generate import SamplingParams

    root = tmp_path_factory.mktemp("chat-files")
    engine = Engine(tiny_models["q4_1"], "ref", lora_slots=0)
    conv = engine.chat()
    conv.send("Hello", SamplingParams(max_tokens=4)).run()
    good = conv.save(root / "good.npz")
    raw = good.read_bytes()
    (root / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    mid = len(raw) // 2
    (root / "flipped.npz").write_bytes(flip_bytes(raw, range(mid, mid + 64, 7), [0xA5] * 10))
    cfg = engine.config
    return {"root": root, "good": good, "truncated": root / "truncated.npz", "flipped": root / "flipped.npz",
            "adapter": write_adapter(root / "good-adapter", cfg, rank=4, seed=1),
            "bad_regex": write_adapter(root / "bad-regex", cfg, rank=4, seed=2,
                                       extra_config={"rank_pattern": {"(": 4}}),
            "config": cfg}


def test_3_readers_raise_roma_errors(chat_files):
    from roma_runtime.kv import read_session_file
    from roma_runtime.lora import read_peft_adapter

    for name in ("truncated", "flipped"):
        with pytest.raises(RomaError, match="session file"):
            read_session_file(chat_files[name])
    with pytest.raises(RomaError, match="rank_pattern key '\\(' is not a valid regular expression"):
        read_peft_adapter(chat_files["bad_regex"], chat_files["config"])


def test_3_roma_chat_keeps_the_conversation_and_the_adapter(tiny_models, chat_files):
    """The issue's reproduction: /load of a truncated or bit-flipped session file (zipfile.BadZipFile) and /lora
    of an adapter with an invalid rank_pattern regex (re.error) ended roma chat. Now each is one error line,
    and the conversation goes on under the adapter that was active."""
    lines = [f"/lora load good={chat_files['adapter']}", "/lora good", "Hello there",
             f"/load {chat_files['truncated']}", f"/load {chat_files['flipped']}",
             f"/lora load bad={chat_files['bad_regex']}", "/lora", "/stats", "How are you?", "/stats"]
    proc = roma("chat", "--backend", "ref", "--model", tiny_models["q4_1"], "--lora-slots", 2, "--max-tokens", 4,
                stdin="\n".join(lines) + "\n")
    no_crash(proc)
    assert proc.returncode == 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, proc.stderr
    assert "truncated.npz" in errors[0] and "flipped.npz" in errors[1] and "regular expression" in errors[2]
    out = proc.stdout
    assert "* good" in out  # still the active adapter after the refused /lora load
    stats = [line for line in out.splitlines() if line.startswith("context:")]
    assert "2 messages, 1 turns" in stats[0] and "4 messages, 2 turns" in stats[1]  # the conversation went on
    assert out.count("adapter: good") == 2


def test_3_a_refused_load_leaves_the_conversation(tiny_models, chat_files):
    from roma_runtime.engine import Engine
    from roma_runtime.generate import SamplingParams

    engine = Engine(tiny_models["q4_1"], "ref", lora_slots=0)
    conv = engine.chat()
    conv.send("Hi", SamplingParams(max_tokens=3)).run()
    before = (list(conv.messages), list(conv.session.ids), conv.session.length)
    for name in ("truncated", "flipped"):
        with pytest.raises(RomaError):
            conv.load(chat_files[name])
        assert (conv.messages, conv.session.ids, conv.session.length) == before
    conv.load(chat_files["good"])  # and a good file still loads
    assert conv.messages[0]["content"] == "Hello"


# --- 4. memory sized by untrusted files ------------------------------------------------------------------------


def write_zip(path: Path, members: dict) -> Path:
    """A deflated .npz written member by member as a stream: name -> bytes, or (bytes, zeros) for bytes followed
    by `zeros` zero bytes (megabytes of zeros deflate to kilobytes: a zip bomb, made without a big buffer)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in members.items():
            head, zeros = value if isinstance(value, tuple) else (value, 0)
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                f.write(head)
                for _ in range(zeros >> 20):
                    f.write(chunk)
                f.write(bytes(zeros % (1 << 20)))
    return path


def npy_bytes(array) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, np.asarray(array), allow_pickle=False)
    return b.getvalue()


@pytest.fixture(scope="module")
def engine(tiny_models):
    from roma_runtime.engine import Engine

    return Engine(tiny_models["q4_1"], "ref", lora_slots=0)


def engine_meta(engine, n: int) -> bytes:
    meta = {"format": "roma-session", "version": 1,
            "model": {"name": engine.config.name, "identity": engine.identity, "config": engine.config.to_dict()},
            "numerics": engine.numerics, "backend": "ref", "kv_dtype": engine.kv_dtype, "capacity": n, "length": n,
            "adapter": None, "extra": {"kind": "conversation", "system": None, "messages": []}}
    return json.dumps(meta).encode()


def peak_of(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_4_a_zip_bomb_is_refused_before_it_inflates(engine, tmp_path):
    """The issue: a 2.5 MB zip bomb took RSS from 1.09 to 3.19 GB before it was refused (np.load inflated the
    member first). Now each .npy header is read from the stream and checked (against the model, and against
    what the member's compressed bytes can hold) before its data is inflated, and only the stated bytes are."""
    from roma_runtime.kv import read_session_file

    c = engine.config
    # 1. the right shape, followed by 256 MiB of deflated zeros: read to its stated size, then refused
    n = 4
    shape = (c.n_layers, n, c.n_kv_heads, c.head_dim)
    tail = write_zip(tmp_path / "tail.npz", {
        "meta": npy_bytes(np.frombuffer(engine_meta(engine, n), np.uint8)), "ids": npy_bytes(np.ones(n, np.int64)),
        "keys": (npy_bytes(np.zeros(shape, np.float16)), 256 << 20), "values": npy_bytes(np.zeros(shape, np.float16))})
    # 2. a length of a million tokens and keys that claim them: 128 MiB from a few hundred KB
    n = 10**6
    shape = (c.n_layers, n, c.n_kv_heads, c.head_dim)
    claim = write_zip(tmp_path / "claim.npz", {
        "meta": npy_bytes(np.frombuffer(engine_meta(engine, n), np.uint8)),
        "ids": (npy_header((n,), "<i8"), 8 * n),
        "keys": (npy_header(shape), 2 * int(np.prod(shape))), "values": npy_header(shape)})
    for bomb in (tail, claim):
        assert bomb.stat().st_size < 2.5e6
        peak = peak_of(lambda: pytest.raises(RomaError, engine.restore_session, bomb))
        assert peak < 16 << 20, peak
    with pytest.raises(RomaError, match="bytes after its data"):
        engine.restore_session(tail)
    with pytest.raises(RomaError, match=f"{n} tokens, more than"):
        engine.restore_session(claim)
    # without a model to check against, the member's compressed size bounds what it may inflate to
    peak = peak_of(lambda: pytest.raises(RomaError, read_session_file, claim))
    assert peak < 16 << 20  # the 8 MB of ids at most


def test_4_a_header_claiming_tebibytes_is_refused_without_allocating(engine, tmp_path):
    """The issue: a session .npy header claiming 10.5 TiB raised MemoryError."""
    from roma_runtime.kv import read_session_file

    c = engine.config
    n = 8
    huge = npy_header((c.n_layers, n, c.n_kv_heads, c.head_dim * 2**30))  # 2 x 8 x 2 x 16 Gi fp16: 1 TiB
    path = tmp_path / "tib.npz"
    path.write_bytes(npz_bytes({"meta": np.frombuffer(engine_meta(engine, n), np.uint8), "ids": np.ones(n, np.int64),
                          "keys": huge, "values": huge}))
    for read in (lambda: engine.restore_session(path), lambda: read_session_file(path)):
        peak = peak_of(lambda: pytest.raises(RomaError, read))
        assert peak < 8 << 20


@pytest.mark.parametrize("source", ["gguf", "hf"])
def test_4_a_context_beyond_the_bound_is_refused_naming_it(small, tmp_path, source):
    """The issue: a GGUF context_length of 1e7 made the first session allocate 107 GiB (HF
    max_position_embeddings 1e9: 238 GiB). Now the context is bounded (MAX_CONTEXT), and named."""
    from roma_runtime.model.loader import load_model
    from roma_runtime.model.config import MAX_CONTEXT

    if source == "gguf":
        path = write_gguf(small["hf"], tmp_path / "ctx.gguf", meta={"context_length": 10**7})
    else:
        path = tmp_path / "hf"
        shutil.copytree(small["hf"], path)
        cfg = json.loads((path / "config.json").read_text())
        cfg["max_position_embeddings"] = 10**9
        (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RomaError, match=f"context length.*above the {MAX_CONTEXT}.*MAX_CONTEXT"):
        load_model(path)


def test_4_a_long_context_within_the_bound_gets_a_bounded_session(tiny_models, monkeypatch):
    """A context within MAX_CONTEXT still cannot make one session take more than the session memory limit: the
    default session is cut to it, a longer one asked for is refused naming the limit."""
    from roma_runtime.engine import Engine
    from roma_runtime.kv import kv_token_bytes
    from roma_runtime.model.loader import load_model
    from roma_runtime.model.config import MAX_CONTEXT

    import dataclasses

    model = load_model(tiny_models["q4_1"])  # with its tokenizer; the context of a long-context model
    model.config = dataclasses.replace(model.config, context_length=MAX_CONTEXT)
    monkeypatch.setenv("ROMA_SESSION_MEMORY_MB", "16")
    engine = Engine(model, "ref", lora_slots=0)
    fits = (16 << 20) // kv_token_bytes(model.config, engine.kv_dtype)
    peak = peak_of(lambda: engine.new_session())
    assert engine.new_session().capacity == fits < MAX_CONTEXT and peak < 40 << 20
    with pytest.raises(RomaError, match="more than the 0.02 GiB one session may take.*ROMA_SESSION_MEMORY_MB"):
        engine.new_session(MAX_CONTEXT)


def test_4_the_lora_slot_rank_is_bounded(tiny_models, small):
    """The issue: --lora-rank 15000 took 4.7 GB to load a 7 MB rank-8 adapter. A slot rank above the model's
    width is refused (before the backend is made), and a rank-8 adapter in a slot takes the slot's bytes."""
    from roma_runtime.engine import Engine
    from roma_runtime.lora import LoraSlots, read_peft_adapter
    from roma_runtime.model.loader import load_model

    t0 = time.perf_counter()
    with pytest.raises(RomaError, match="slot rank of 15000 is above .* largest useful rank 64"):
        Engine(tiny_models["q4_1"], "ref", lora_rank=15000)
    assert time.perf_counter() - t0 < 30
    config = load_model(small["gguf"]).config
    folder = write_adapter(small["root"] / "rank8", config, rank=8, targets=tuple(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    adapter = read_peft_adapter(folder, config)
    slots = LoraSlots(config, 1, 64)
    peak = peak_of(lambda: slots.load("r8", adapter))
    # the packed slot, its read-back (rank 8, fp32) and small change: not several slot-rank fp32 copies
    assert peak < slots.slot_bytes + 4 * adapter.parameter_count * 3 + (1 << 20)


# --- 5. tracebacks instead of errors ---------------------------------------------------------------------------


def patched_gguf(small, tmp_path, **kwargs) -> Path:
    return write_gguf(small["hf"], tmp_path / "bad.gguf", **kwargs)


@pytest.mark.parametrize("case", ["head_count 0", "head_count_kv 0", "attn_q shape", "0 layers", "heads string"])
def test_5_bad_gguf_files_are_refused(small, tmp_path, case):
    from roma_runtime.model.loader import load_model

    kwargs = {"head_count 0": dict(meta={"attention.head_count": 0}),
              "head_count_kv 0": dict(meta={"attention.head_count_kv": 0}),
              "attn_q shape": dict(shapes={"blk.0.attn_q.weight": np.ones((32, 64), np.float32)}),
              "0 layers": dict(meta={"block_count": 0}),
              "heads string": dict(meta={"attention.head_count": "four"})}[case]
    with pytest.raises(RomaError):
        load_model(patched_gguf(small, tmp_path, **kwargs))


HF_CASES = {
    "broken": "{\"model_type\": \"llama\", ",
    "empty": "",
    "list": "[1, 2, 3]",
    "missing key": {"drop": "num_hidden_layers"},
    "string heads": {"set": ("num_attention_heads", "4")},
    "zero kv heads": {"set": ("num_key_value_heads", 0)},
    "float layers": {"set": ("num_hidden_layers", 2.5)},
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_5_bad_hf_configs_are_refused(small, tmp_path, case):
    from roma_runtime.model.loader import load_model

    folder = tmp_path / "hf"
    shutil.copytree(small["hf"], folder)
    spec = HF_CASES[case]
    if isinstance(spec, str):
        (folder / "config.json").write_text(spec)
    else:
        cfg = json.loads((folder / "config.json").read_text())
        if "drop" in spec:
            del cfg[spec["drop"]]
        else:
            cfg[spec["set"][0]] = spec["set"][1]
        (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RomaError):
        load_model(folder)


def st_file(header, data: bytes = b"", length=None) -> bytes:
    text = json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


ST_CASES = {
    "empty file": b"",
    "header a list": st_file([1, 2]),
    "missing data_offsets": st_file({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)),
    "reversed data_offsets": st_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)),
    "size mismatch": st_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
    "past the end": st_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
    "negative shape": st_file({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
    "header length lies": st_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), 2**62),
    "entry a string": st_file({"a": "F32"}),
}


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_5_bad_safetensors_are_refused(small, tmp_path, case):
    from roma_runtime.model.loader import load_model
    from roma_runtime.model.safetensors_io import read_safetensors

    path = tmp_path / "x.safetensors"
    path.write_bytes(ST_CASES[case])
    with pytest.raises(RomaError):
        read_safetensors(path)
    folder = tmp_path / "hf"  # and as a model's weights
    shutil.copytree(small["hf"], folder)
    (folder / "model.safetensors").write_bytes(ST_CASES[case])
    with pytest.raises(RomaError):
        load_model(folder)


@pytest.mark.parametrize("drop", ["files", "tensors", "norms", "model"])
@pytest.mark.parametrize("seal", [False, True])
def test_5_a_manifest_without_a_section_is_refused(tiny_build, tmp_path, drop, seal):
    from roma_runtime.model.loader import load_model

    build = edited_build(tiny_build, tmp_path / "b", lambda m: m.pop(drop), seal=seal)
    with pytest.raises(RomaError, match="changed after|missing|not an object|malformed"):
        load_model(build)


@pytest.mark.parametrize("field,value", [("scales", []), ("scales", "q4"), ("bits", [4]), ("tiles", 0),
                                         ("image", "../blk.0.wq.bin"), ("shape", [64, 64, 1])])
def test_5_a_malformed_tensor_entry_is_refused(tiny_build, tmp_path, field, value):
    """Found by the long fuzz run: a list as a tensor's scale format reached a dict lookup (TypeError)."""
    from roma_runtime.model.loader import load_model

    def edit(m):
        m["tensors"]["blk.1.w_up"][field] = value

    with pytest.raises(RomaError, match="blk.1.w_up"):
        load_model(edited_build(tiny_build, tmp_path / "b", edit, seal=True))


SESSION_META = {
    "length a string": ("length", "abc"),
    "length negative": ("length", -3),
    "model a list": ("model", [1]),
    "adapter a number": ("adapter", 5),
    "extra a list": ("extra", []),
    "capacity a string": ("capacity", "x"),
    "kv_dtype unknown": ("kv_dtype", "fp8"),
    "numerics a number": ("numerics", 1),
    "version 2": ("version", 2),
}


@pytest.mark.parametrize("case", sorted(SESSION_META))
def test_5_session_files_with_mistyped_metadata_are_refused(engine, tmp_path, case):
    conv = engine.chat()
    path = conv.save(tmp_path / "ok.npz")
    with zipfile.ZipFile(path) as zf:
        arrays = {n[:-4]: np.load(io.BytesIO(zf.read(n)), allow_pickle=False) for n in zf.namelist()}
    meta = json.loads(arrays["meta"].tobytes())
    key, value = SESSION_META[case]
    meta[key] = value
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path.write_bytes(npz_bytes(arrays))
    with pytest.raises(RomaError):
        engine.restore_session(path)
    with pytest.raises(RomaError):
        conv.load(path)


@pytest.mark.parametrize("option,value,words", [("--seed", "-1", "--seed"), ("--seed", str(2**64), "--seed"),
                                                ("--kv-memory", "inf", "--kv-memory"),
                                                ("--kv-memory", "nan", "--kv-memory"),
                                                ("--lora-slots", "1000000000", "--lora-slots"),
                                                ("--context", "1000000000000", "--context")])
def test_5_bad_options_are_refused_before_the_model_loads(option, value, words, tmp_path):
    """--seed -1 was refused only after the model had loaded, --kv-memory inf with an OverflowError: both are
    checked before loading now (the model named here does not even exist)."""
    proc = roma("generate", "--model", tmp_path / "no-such-model", option, value, "Hi")
    no_crash(proc)
    assert proc.returncode == 2 and words in proc.stderr and "no model at" not in proc.stderr


# --- 6. accepted silently ---------------------------------------------------------------------------------------


def test_6_nan_scales_in_a_gguf_are_refused(small, tmp_path):
    """The issue: NaN scales were accepted (the model just emitted end-of-text)."""
    import gguf

    from roma_runtime.model.loader import load_model

    raw = bytearray(small["gguf"].read_bytes())
    reader = gguf.GGUFReader(str(small["gguf"]))
    t = next(t for t in reader.tensors if t.name == "blk.1.attn_v.weight")
    assert t.tensor_type.name == "Q4_1"
    raw[t.data_offset: t.data_offset + 2] = np.float16(np.nan).tobytes()  # the first block's scale d
    path = tmp_path / "nan.gguf"
    path.write_bytes(bytes(raw))
    with pytest.raises(RomaError, match="blk.1.attn_v.weight holds NaN or infinite scales"):
        load_model(path)


def test_6_a_zero_layer_gguf_is_refused(small, tmp_path):
    from roma_runtime.model.loader import load_model

    with pytest.raises(RomaError, match="layer count .* at least 1"):
        load_model(patched_gguf(small, tmp_path, meta={"block_count": 0}))


@pytest.mark.parametrize("seal", [False, True])
def test_6_a_manifest_with_one_kv_head_or_a_swapped_image_is_refused(tiny_build, tmp_path, seal):
    from roma_runtime.model.loader import load_model

    def swap(m):
        t = m["tensors"]
        t["blk.0.wq"]["image"], t["blk.0.wk"]["image"] = t["blk.0.wk"]["image"], t["blk.0.wq"]["image"]

    with pytest.raises(RomaError, match="changed after" if not seal else "n_kv_heads|roma_model.h|shape"):
        load_model(edited_build(tiny_build, tmp_path / "kv1", set_config("n_kv_heads", 1), seal))
    with pytest.raises(RomaError, match="changed after" if not seal else "names the images"):
        load_model(edited_build(tiny_build, tmp_path / "swap", swap, seal))


# --- 7. killed mid-compile ---------------------------------------------------------------------------------------


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def run_until(cmd_env, cache: Path, pattern: str, timeout: float = 240) -> bool:
    """Start `roma generate` on the emulated board and SIGKILL its process group once `pattern` exists under the
    cache (the compile's temporary); True when it was killed there."""
    proc = subprocess.Popen([sys.executable, "-m", "roma_runtime.cli", "generate", "--backend", "emu", "--model",
                             cmd_env["MODEL"], "Hello", "--max-tokens", "3"], env=cmd_env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list(cache.glob(pattern)):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.01)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@needs_gxx
def test_7_a_compile_killed_with_sigkill_breaks_nothing(tiny_models, tiny_emu, roma_cache, tmp_path):
    """The issue: SIGKILL during the first emulated-board compile left a .tmp build folder in the cache for ever.
    Killed while the default build is written (and in the long mode, again while the library compiles), the
    next run removes what the killed one left and answers. The default run starts from this session's compiled
    library (the same tiny build's), so that only the build is compiled again."""
    cache = tmp_path / "cache"
    if not LONG:
        shutil.copytree(roma_cache / "lib", cache / "lib")
    env = cli_env()
    env.update(ROMA_CACHE=str(cache), MODEL=str(tiny_models["q4_1"]))
    assert run_until(env, cache, "builds/.*.tmp"), "the run finished before it could be killed"
    left = temporaries(cache)
    assert left and all(p.name.startswith(".") for p in left)  # SIGKILL leaves the private build folder
    if LONG:
        assert run_until(env, cache, "lib/*/.*.tmp"), "the library compile finished before it could be killed"
    proc = subprocess.run([sys.executable, "-m", "roma_runtime.cli", "generate", "--backend", "emu", "--model",
                           env["MODEL"], "Hello", "--max-tokens", "3"], env=env, capture_output=True, text=True,
                          timeout=600)
    no_crash(proc)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]
    assert temporaries(cache) == [], temporaries(cache)
    assert len(list((cache / "builds").iterdir())) == 1


# --- the soak (long mode) ---------------------------------------------------------------------------------------


@needs_gxx
@pytest.mark.skipif(not LONG, reason="the soak runs in the long mode (ROMA_LONG=1)")
def test_soak_on_the_emulated_board(tiny_build, tiny_emu, small, tmp_path):
    """Sessions, adapters, save/restore and on-chip decode churned on the emulated board for a bounded time:
    the RSS stays flat after the warm-up and greedy output is reproducible throughout."""
    from roma_runtime.engine import Engine
    from roma_runtime.generate import SamplingParams
    from roma_runtime.model.loader import load_model

    engine = Engine(load_model(tiny_build), "emu", lora_slots=2, lora_rank=8)
    cfg = engine.config
    adapters = {name: write_adapter(tmp_path / name, cfg, rank=4, seed=i, std=0.2) for i, name in
                enumerate(["a", "b"])}
    for name, folder in adapters.items():
        engine.load_lora(name, folder)
    prompts = ["The capital of France is", "Once upon a time", "2 + 2 ="]
    p = SamplingParams(max_tokens=12)
    expected: dict = {}
    rss, tokens = [], 0
    seconds = float(os.environ.get("ROMA_SOAK_SECONDS", "120"))  # the bound: this long, at least 60 rounds
    t0 = time.perf_counter()
    i = -1
    while i < 59 or time.perf_counter() - t0 < seconds:
        i += 1
        prompt, adapter = prompts[i % 3], [None, "a", "b"][(i // 3) % 3]
        on_chip = i % 2 == 1
        session = engine.new_session(64, adapter)
        r = engine.generate(prompt, p, session=session, on_chip=on_chip).run()
        tokens += len(r.ids) + len(r.prompt_ids)
        key = (prompt, adapter)
        expected.setdefault(key, r.ids)
        assert r.ids == expected[key], (i, key)  # greedy: on chip and on the host alike
        path = session.save(tmp_path / "soak.npz")
        restored = engine.restore_session(path)
        assert restored.ids == session.ids
        more = engine.generate(restored.ids + [r.ids[-1]], p, session=restored).run()
        tokens += len(more.ids)
        session.close()
        restored.close()
        if i % 10 == 9:  # reload an adapter now and then: a new load, the same contents
            engine.load_lora("a", adapters["a"])
        if i % 15 == 14:  # and unload one, then load it back into the freed slot
            engine.unload_lora("b")
            engine.load_lora("b", adapters["b"])
        if i >= 10:
            rss.append(rss_bytes())
    drift = (max(rss[-10:]) - min(rss[:10])) / 2**20
    print(f"\nsoak: {i + 1} rounds, {tokens} tokens in {time.perf_counter() - t0:.0f} s, RSS "
          f"{rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB (drift {drift:+.1f} MiB)")
    assert drift < 32, f"RSS grew by {drift:.0f} MiB"
