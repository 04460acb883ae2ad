"""Property-based fuzzing (hypothesis) of every reader of untrusted input: the GGUF and safetensors readers,
the PEFT adapter reader, the build manifest, the session file and the serial frame parser. Each gets arbitrary
bytes, byte flips and truncations of a real file (or frame stream), and structured mutations (a metadata value, a
header entry, a JSON path set to anything or removed, a frame's length field), and each input must end in a
correct load or one clean RomaError (frames or clean drops for the serial parser), within the time and memory
bounds of fuzz_tools (checked per input: wall time, tracemalloc's peak). A few hundred inputs in the default run;
ROMA_LONG=1 multiplies them by 25 (fuzz_tools.examples)."""

from __future__ import annotations

import copy
import json
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_tools import (LONG, SMALL_VOCAB, Tally, examples, flip_bytes, npy_header, npz_bytes, write_adapter,
                        write_gguf)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the GGUF writer, fed NaN on purpose

SETTINGS = dict(deadline=None, database=None, derandomize=not LONG, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# JSON values of every kind, nested a little: what a hostile or careless edit may put anywhere.
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**63])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)
FLIPS = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=12)

TALLIES: dict[str, Tally] = {}


def tally(reader: str) -> Tally:
    return TALLIES.setdefault(reader, Tally(reader))


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for t in TALLIES.values():
        row = t.report()
        print(f"\nfuzz {row['reader']}: {row['tried']} inputs, {row['loaded']} loaded, {row['refused']} refused "
              f"cleanly; slowest {row['max_seconds']} s, largest peak {row['max_peak_mib']} MiB")
        assert row["tried"] > 0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small random LLaMA (2 layers, width 64, GQA, vocabulary 256) as a HF folder, a Q4_1 GGUF and a build."""
    from tiny_models import write_tiny_hf

    root = tmp_path_factory.mktemp("fuzz-small")
    hf = write_tiny_hf(root / "hf", vocab=SMALL_VOCAB, tied=False, seed=3)
    gguf_path = write_gguf(hf, root / "small-q4_1.gguf")
    return {"root": root, "hf": hf, "gguf": gguf_path}


@pytest.fixture(scope="module")
def small_config(small):
    from roma_runtime.model.loader import load_model

    return load_model(small["gguf"]).config


def json_paths(obj, prefix=()):
    """Every path (tuple of keys/indices) into a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += json_paths(v, prefix + (i,))
    return out


def mutate_json(obj, path, value, delete: bool):
    """A deep copy of obj with the value at `path` replaced by `value` (or removed)."""
    obj = copy.deepcopy(obj)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


# --- GGUF -------------------------------------------------------------------------------------------------------


GGUF_KEYS = ["block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon", "vocab_size",
             "rope.dimension_count", "rope.scaling.type"]
GGUF_VALUES = (st.integers(-2**40, 2**40) | st.sampled_from([0, 1, 2, 3, 7, 10**7, 2**31, 2**32 - 1])
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6) | st.booleans())


def check_loaded(model, config=None):
    from roma_runtime.model.loader import check_weights

    model.config.validate()
    check_weights(model.source, model.config, model.weights)
    if config is not None:
        assert model.config == config


@settings(max_examples=examples(150), **SETTINGS)
@given(data=st.data())
def test_fuzz_gguf_reader(small, small_config, tmp_path_factory, data):
    from roma_runtime.model.loader import load_model

    base = small["gguf"].read_bytes()
    path = small["root"] / "fuzz.gguf"
    kind = data.draw(st.sampled_from(["bytes", "flips", "header-flips", "data-flips", "truncate", "metadata",
                                      "tensor"]))
    if kind == "bytes":
        path.write_bytes(data.draw(st.sampled_from([b"", b"GGUF", b"GGUF\x03\x00\x00\x00"])) + data.draw(st.binary(max_size=2048)))
    elif kind == "flips":
        path.write_bytes(flip_bytes(base, *zip(*data.draw(FLIPS))))
    elif kind == "header-flips":  # the metadata and the tensor directory: the first few KB
        flips = data.draw(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=6))
        path.write_bytes(flip_bytes(base, *zip(*flips)))
    elif kind == "data-flips":  # the tensor data (the last 3/4 of the file): most such files still load
        flips = data.draw(st.lists(st.tuples(st.integers(len(base) // 4, len(base) - 1), st.integers(0, 255)),
                                   min_size=1, max_size=40))
        path.write_bytes(flip_bytes(base, *zip(*flips)))
    elif kind == "truncate":
        path.write_bytes(base[:data.draw(st.integers(0, len(base) - 1))])
    elif kind == "metadata":
        meta = data.draw(st.dictionaries(st.sampled_from(GGUF_KEYS), GGUF_VALUES, min_size=1, max_size=3))
        drop = tuple(data.draw(st.lists(st.sampled_from(GGUF_KEYS[:9]), max_size=1)))
        try:
            write_gguf(small["hf"], path, meta=meta, drop=drop)
        except (ValueError, OverflowError, TypeError, struct.error):
            return  # the writer itself cannot write that value
    else:  # a tensor of another shape, or with NaN/inf values
        name = data.draw(st.sampled_from(["blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_down.weight",
                                          "token_embd.weight", "output_norm.weight", "blk.1.attn_norm.weight"]))
        rows = data.draw(st.sampled_from([1, 16, 32, 64, 96]))
        cols = data.draw(st.sampled_from([32, 64, 128]))
        arr = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
        if data.draw(st.booleans()):
            arr.flat[data.draw(st.integers(0, arr.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        if name.endswith("norm.weight") and data.draw(st.booleans()):
            arr = arr.reshape(-1)
        write_gguf(small["hf"], path, shapes={name: arr})
    with tally("gguf").run():
        model = load_model(path)
        check_loaded(model)


def test_gguf_reader_loads_the_real_file(small, small_config):
    from roma_runtime.model.loader import load_model

    check_loaded(load_model(small["gguf"]), small_config)


# --- safetensors ----------------------------------------------------------------------------------------------


def safetensors_bytes(header, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text) if length is None else length) + text + data


@pytest.fixture(scope="module")
def st_base(small):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    arrays = {"a": rng.standard_normal((4, 8)).astype(np.float32), "b": rng.standard_normal(16).astype(np.float16),
              "c": np.arange(6, dtype=np.int64).reshape(2, 3), "e": np.zeros((0, 3), np.float32)}
    path = small["root"] / "base.safetensors"
    save_file(arrays, str(path), metadata={"format": "np"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return {"raw": raw, "header": json.loads(raw[8:8 + n]), "data": raw[8 + n:], "arrays": arrays}


@settings(max_examples=examples(150), **SETTINGS)
@given(data=st.data())
def test_fuzz_safetensors_reader(small, st_base, data):
    from roma_runtime.model.safetensors_io import read_safetensors

    path = small["root"] / "fuzz.safetensors"
    raw, header = st_base["raw"], st_base["header"]
    kind = data.draw(st.sampled_from(["bytes", "flips", "data-flips", "truncate", "entry", "header", "length"]))
    if kind == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=512)))
    elif kind == "data-flips":  # the tensor data only: the file still loads
        start = len(raw) - len(st_base["data"])
        flips = data.draw(st.lists(st.tuples(st.integers(start, len(raw) - 1), st.integers(0, 255)), min_size=1,
                                   max_size=8))
        path.write_bytes(flip_bytes(raw, *zip(*flips)))
    elif kind == "flips":
        path.write_bytes(flip_bytes(raw, *zip(*data.draw(FLIPS))))
    elif kind == "truncate":
        path.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    elif kind == "entry":  # one field of one tensor's entry set to anything, or removed
        name = data.draw(st.sampled_from(["a", "b", "c", "e"]))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        value = data.draw(JSON | st.lists(st.integers(-2**65, 2**65), max_size=3)
                          | st.sampled_from(["F32", "BF16", "F16", "I8", "U8", "BOOL", "F64", "Q4"]))
        delete = data.draw(st.booleans()) and data.draw(st.booleans())
        path.write_bytes(safetensors_bytes(mutate_json(header, (name, field), value, delete), st_base["data"]))
    elif kind == "header":  # the whole header replaced by any JSON value
        path.write_bytes(safetensors_bytes(data.draw(JSON), st_base["data"]))
    else:  # the header length lies
        text = json.dumps(header).encode()
        length = data.draw(st.integers(0, 2**64 - 1) | st.integers(len(text) - 8, len(text) + 8).filter(lambda x: x >= 0))
        path.write_bytes(safetensors_bytes(text, st_base["data"], length))
    with tally("safetensors").run():
        tensors = read_safetensors(path)
        for name, arr in tensors.items():
            assert isinstance(arr, np.ndarray) and isinstance(name, str)


def test_safetensors_reader_loads_the_real_file(st_base, small):
    from roma_runtime.model.safetensors_io import read_safetensors

    path = small["root"] / "real.safetensors"
    path.write_bytes(st_base["raw"])
    got = read_safetensors(path)
    for name, arr in st_base["arrays"].items():
        assert np.array_equal(got[name], arr) and got[name].shape == arr.shape


# --- PEFT adapters --------------------------------------------------------------------------------------------


PEFT_KEYS = ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_rslora", "peft_type",
             "use_dora", "modules_to_save", "bias", "init_lora_weights", "fan_in_fan_out", "lora_bias",
             "layer_replication"]
REGEXES = st.sampled_from(["q_proj", "(", "[", "*", "a{2,1}", "(?P<x", "layers.0.self_attn.q_proj", ".*", "\\",
                           "model.layers.1.self_attn.v_proj", "(a)(b)\\3"]) | st.text(max_size=6)


@settings(max_examples=examples(120), **SETTINGS)
@given(data=st.data())
def test_fuzz_peft_adapter_reader(small, small_config, data):
    from roma_runtime.lora import LoraSlots, read_peft_adapter

    folder = small["root"] / "fuzz-adapter"
    shutil.rmtree(folder, ignore_errors=True)
    rank = data.draw(st.sampled_from([1, 4, 8, 64, 65]))
    write_adapter(folder, small_config, rank=rank, targets=data.draw(st.sampled_from(
        [("q_proj", "v_proj"), ("k_proj", "o_proj", "down_proj"), tuple(["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"])])))
    cfg_path, st_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    kind = data.draw(st.sampled_from(["config-key", "patterns", "config", "tensor-flips", "tensor-truncate",
                                      "tensors"]))
    cfg = json.loads(cfg_path.read_text())
    if kind == "config-key":
        key = data.draw(st.sampled_from(PEFT_KEYS))
        cfg_path.write_text(json.dumps(mutate_json(cfg, (key,), data.draw(JSON), data.draw(st.booleans()))))
    elif kind == "patterns":
        cfg["rank_pattern"] = data.draw(st.dictionaries(REGEXES, st.sampled_from([rank, 1, 0, -1, 2.5]) | JSON,
                                                        max_size=2))
        cfg["alpha_pattern"] = data.draw(st.dictionaries(REGEXES, st.floats(allow_nan=True) | JSON, max_size=2))
        cfg_path.write_text(json.dumps(cfg))
    elif kind == "config":
        cfg_path.write_bytes(data.draw(st.binary(max_size=64)) if data.draw(st.booleans())
                             else json.dumps(data.draw(JSON)).encode())
    elif kind == "tensor-flips":
        st_path.write_bytes(flip_bytes(st_path.read_bytes(), *zip(*data.draw(FLIPS))))
    elif kind == "tensor-truncate":
        raw = st_path.read_bytes()
        st_path.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    else:  # tensors of other shapes, names, values
        from safetensors.numpy import save_file

        from roma_runtime.model.safetensors_io import read_safetensors

        tensors = {k: np.array(v) for k, v in read_safetensors(st_path).items()}
        key = data.draw(st.sampled_from(sorted(tensors)))
        op = data.draw(st.sampled_from(["shape", "nan", "rename", "drop", "extra"]))
        if op == "shape":
            tensors[key] = np.zeros(data.draw(st.lists(st.integers(0, 70), min_size=1, max_size=3)), np.float32)
        elif op == "nan":
            tensors[key].flat[0] = np.nan
        elif op == "rename":
            tensors[data.draw(st.text(min_size=1, max_size=40))] = tensors.pop(key)
        elif op == "drop":
            del tensors[key]
        else:
            tensors[key.replace("lora_A", "lora_magnitude_vector")] = np.ones(4, np.float32)
        save_file(tensors, str(st_path))
    with tally("peft").run():
        adapter = read_peft_adapter(folder, small_config, max_rank=64)
        slots = LoraSlots(small_config, 1, 64)
        slots.load("fuzz", adapter)
        assert slots.packed("fuzz").nbytes <= slots.slot_bytes


# --- build manifests -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_build(small):
    from roma_runtime.compiler.build import compile_model

    out = small["root"] / "build"
    compile_model(small["gguf"], out, bits=4, group=32, progress=False)
    return out


@settings(max_examples=examples(120), **SETTINGS)
@given(data=st.data())
def test_fuzz_build_manifest(small_build, small_config, data):
    from roma_runtime.artifact.build import MANIFEST, seal_manifest
    from roma_runtime.model.loader import load_build

    path = small_build / MANIFEST
    original = path.read_text()
    manifest = json.loads(original)
    kind = data.draw(st.sampled_from(["path", "path-sealed", "path-sealed", "bytes", "drop-key", "image-swap"]))
    try:
        if kind in ("path", "path-sealed"):
            p = data.draw(st.sampled_from(json_paths(manifest)))
            value = data.draw(JSON | st.integers(-3, 100) | st.sampled_from(
                [1, 29, 1000, 0, "blk.0.wk.bin", "../manifest.json", None]))
            mutated = mutate_json(manifest, p, value, data.draw(st.booleans()) and data.draw(st.booleans()))
            if kind == "path-sealed":  # the seal recomputed: what an edit that knows the format does
                mutated = seal_manifest(mutated) if isinstance(mutated, dict) else mutated
            path.write_text(json.dumps(mutated))
        elif kind == "bytes":
            path.write_bytes(flip_bytes(original.encode(), *zip(*data.draw(FLIPS))))
        elif kind == "drop-key":
            key = data.draw(st.sampled_from(sorted(manifest)))
            path.write_text(json.dumps(seal_manifest({k: v for k, v in manifest.items() if k != key})))
        else:
            a, b = data.draw(st.sampled_from(["blk.0.wq", "blk.0.wk", "blk.1.w_down", "token_embd", "output"]),
                             ), data.draw(st.sampled_from(["blk.0.wv", "blk.1.wo", "output", "blk.0.w_up"]))
            mutated = copy.deepcopy(manifest)
            ta, tb = mutated["tensors"][a], mutated["tensors"][b]
            ta["image"], tb["image"] = tb["image"], ta["image"]
            path.write_text(json.dumps(seal_manifest(mutated)))
        with tally("build-manifest").run():
            model = load_build(small_build)
            # whatever was accepted describes the same model, to the last dimension
            assert {k: v for k, v in model.config.to_dict().items() if k != "name"} == \
                {k: v for k, v in small_config.to_dict().items() if k != "name"}
            check_loaded(model)
    finally:
        path.write_text(original)


def test_build_manifest_loads_the_real_build(small_build, small_config):
    from roma_runtime.model.loader import load_build

    model = load_build(small_build)
    assert model.config.n_layers == small_config.n_layers and model.config.dim == small_config.dim


# --- session files ---------------------------------------------------------------------------------------------


N_TOKENS = 8


def session_meta(config, n=N_TOKENS):
    return {"model": {"name": config.name, "identity": "x" * 64, "config": config.to_dict()}, "numerics": "quant",
            "backend": "ref (quant)", "kv_dtype": "fp16", "capacity": 32, "length": n,
            "adapter": None, "extra": {"kind": "conversation", "system": None,
                                       "messages": [{"role": "user", "content": "hi"}]}}


@pytest.fixture(scope="module")
def session_base(small, small_config):
    from roma_runtime.kv import SESSION_FORMAT, SESSION_VERSION, write_session_file

    c = small_config
    rng = np.random.default_rng(2)
    keys = rng.standard_normal((c.n_layers, N_TOKENS, c.n_kv_heads, c.head_dim)).astype(np.float16)
    values = rng.standard_normal(keys.shape).astype(np.float16)
    ids = list(range(1, N_TOKENS + 1))
    path = write_session_file(small["root"] / "base-session.npz", session_meta(c), ids, keys, values)
    meta = {"format": SESSION_FORMAT, "version": SESSION_VERSION, **session_meta(c)}
    return {"raw": path.read_bytes(), "meta": meta, "ids": ids, "keys": keys, "values": values}


@settings(max_examples=examples(150), **SETTINGS)
@given(data=st.data())
def test_fuzz_session_file(small, small_config, session_base, data):
    from roma_runtime.kv import read_session_file

    c = small_config
    path = small["root"] / "fuzz-session.npz"
    base = session_base
    arrays = {"meta": np.frombuffer(json.dumps(base["meta"]).encode(), np.uint8),
              "ids": np.asarray(base["ids"], np.int64), "keys": base["keys"], "values": base["values"]}
    kind = data.draw(st.sampled_from(["bytes", "flips", "truncate", "meta", "meta-json", "array", "bomb",
                                      "compressed"]))
    if kind == "bytes":
        path.write_bytes(data.draw(st.sampled_from([b"", b"PK\x03\x04"])) + data.draw(st.binary(max_size=1024)))
    elif kind == "flips":
        path.write_bytes(flip_bytes(base["raw"], *zip(*data.draw(FLIPS))))
    elif kind == "truncate":
        path.write_bytes(base["raw"][:data.draw(st.integers(0, len(base["raw"]) - 1))])
    elif kind == "meta":  # one metadata value set to anything, or removed
        p = data.draw(st.sampled_from(json_paths(base["meta"])))
        meta = mutate_json(base["meta"], p, data.draw(JSON), data.draw(st.booleans()) and data.draw(st.booleans()))
        path.write_bytes(npz_bytes({**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}))
    elif kind == "meta-json":  # metadata that is not the JSON object it should be
        blob = data.draw(st.binary(max_size=64)) if data.draw(st.booleans()) else json.dumps(data.draw(JSON)).encode()
        path.write_bytes(npz_bytes({**arrays, "meta": np.frombuffer(blob, np.uint8)}))
    elif kind == "array":  # one array of another shape or type, or missing
        name = data.draw(st.sampled_from(["ids", "keys", "values", "meta"]))
        shape = tuple(data.draw(st.lists(st.integers(0, 9), max_size=4)))
        dtype = data.draw(st.sampled_from([np.float16, np.float32, np.int64, np.uint8, np.int8, np.float64]))
        members = dict(arrays)
        if data.draw(st.booleans()):
            members[name] = np.zeros(shape, dtype)
        else:
            del members[name]
        path.write_bytes(npz_bytes(members))
    elif kind == "bomb":  # a member whose header claims far more than the file holds, stored or deflated
        name = data.draw(st.sampled_from(["keys", "values", "ids", "meta"]))
        claim = data.draw(st.sampled_from([(c.n_layers, 10**6, c.n_kv_heads, c.head_dim), (2**40,),
                                           (c.n_layers, N_TOKENS, c.n_kv_heads, c.head_dim * 10**5), (10**12, 8)]))
        raw = npy_header(claim, data.draw(st.sampled_from(["<f2", "|u1", "<i8"])))
        if data.draw(st.booleans()):
            raw += bytes(data.draw(st.integers(0, 1 << 22)))  # zeros: deflate squeezes megabytes into kilobytes
        path.write_bytes(npz_bytes({**arrays, name: raw}, compressed=True))
    else:  # the same session, deflated: still a good file
        path.write_bytes(npz_bytes(arrays, compressed=True))
    with tally("session").run():
        meta, ids, keys, values = read_session_file(path, c, "fp16", max_tokens=c.context_length)
        n = meta["length"]
        assert len(ids) == n and keys.shape == values.shape == (c.n_layers, n, c.n_kv_heads, c.head_dim)
        assert keys.dtype == np.float16


def test_session_file_loads_the_real_file(small, small_config, session_base):
    from roma_runtime.kv import read_session_file

    path = small["root"] / "real-session.npz"
    path.write_bytes(session_base["raw"])
    meta, ids, keys, values = read_session_file(path, small_config, "fp16")
    assert ids == session_base["ids"] and np.array_equal(keys, session_base["keys"])
    assert np.array_equal(values, session_base["values"]) and meta["extra"]["messages"][0]["content"] == "hi"


# --- serial frames -----------------------------------------------------------------------------------------------


FRAMES = st.builds(lambda t, seq, ref, payload: (t, seq, ref, payload), st.integers(1, 15), st.integers(0, 0xFFFF),
                   st.integers(0, 0xFFFF), st.binary(max_size=300) | st.sampled_from([b"", b'{"from": 1e400}']))


def encoded(frames) -> bytes:
    from roma_runtime.serial_link import encode_frame

    return b"".join(encode_frame(*f) for f in frames)


def lying_length(frame: bytes, length: int) -> bytes:
    """A frame whose LEN field says `length`, with the header check recomputed so that the header looks valid."""
    from roma_runtime.serial_link import _HEAD, _crc

    head = bytearray(frame[2:2 + _HEAD.size])
    head[-2:] = length.to_bytes(2, "big")
    return frame[:2] + bytes(head) + (_crc(head) & 0xFFFF).to_bytes(2, "big") + frame[2 + _HEAD.size + 2:]


def feed_all(parser, stream: bytes, cuts, gaps, seconds_per_byte: float):
    """Feeds `stream` in chunks (cut at `cuts`) with the clock advancing at line speed, plus `gaps` seconds before
    chunk i when given; then lets the clock run until every partial frame is given up. Checks after each feed
    that the parser holds less than one whole frame of the longest kind. Returns the frames out."""
    from roma_runtime.serial_link import MAX_PAYLOAD, OVERHEAD

    out, now, start = [], 0.0, 0
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)})
    for i, end in enumerate(bounds):
        chunk = stream[start:end]
        start = end
        now += len(chunk) * seconds_per_byte + (gaps[i % len(gaps)] if gaps else 0.0)
        out += parser.feed(chunk, now)
        assert len(parser.buf) < OVERHEAD + MAX_PAYLOAD, "the parser keeps at most one partial frame"
    for _ in range(len(parser.buf) + 2):  # each expiry gives up at most one false start
        now += 10.0
        out += parser.expire(now)
    assert len(parser.buf) <= 1, "a stream that stopped leaves nothing pending but a lone first SYNC byte"
    return out


@settings(max_examples=examples(150), **SETTINGS)
@given(data=st.data())
def test_fuzz_serial_frame_parser(data):
    """Arbitrary bytes and damaged real frames: frames or clean drops, every byte accounted for, and every frame
    out is one that was on the line, byte for byte."""
    from roma_runtime.serial_link import MAX_PAYLOAD, FrameParser, encode_frame

    real = encoded(data.draw(st.lists(FRAMES, min_size=1, max_size=6)))
    kind = data.draw(st.sampled_from(["bytes", "sync-bytes", "flips", "truncate", "splice", "lying-length",
                                      "huge-length"]))
    if kind == "bytes":
        stream = data.draw(st.binary(max_size=4096))
    elif kind == "sync-bytes":  # SYNC everywhere: many false starts to try and give up
        stream = b"".join(data.draw(st.lists(st.sampled_from([b"\xa5\x5a", b"\xa5", b"\x5a", b"\x00", b"\xff"]),
                                             max_size=800)))
    elif kind == "flips":
        stream = flip_bytes(real, *zip(*data.draw(FLIPS)))
    elif kind == "truncate":
        stream = real[:data.draw(st.integers(0, len(real) - 1))]
    elif kind == "splice":  # pieces of real frames in another order, repeated, with bytes between
        pieces = data.draw(st.lists(st.tuples(st.integers(0, len(real)), st.integers(0, 80), st.binary(max_size=8)),
                                    min_size=1, max_size=12))
        stream = b"".join(real[a:a + n] + junk for a, n, junk in pieces)
    elif kind == "lying-length":
        stream = lying_length(real, data.draw(st.integers(0, 0xFFFF))) + real
    else:  # a header at the protocol's limit, its payload cut short or never sent, real frames behind it
        head = encode_frame(2, 1, 0, bytes(MAX_PAYLOAD))[:data.draw(st.integers(10, 3000))]
        stream = head + real
    baud = data.draw(st.sampled_from([9600, 115200, 921600]))
    cuts = data.draw(st.lists(st.integers(0, 1 << 16), max_size=40))
    gaps = data.draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.3, 0.6, 5.0]), max_size=8))
    parser = FrameParser(baud)
    with tally("serial-frames").run():
        frames = feed_all(parser, stream, cuts, gaps, 10.0 / baud)
    out = [encode_frame(f.type, f.seq, f.ref, f.payload) for f in frames]
    assert all(f in stream for f in out), "a frame out is one that was on the line"
    assert parser.skipped_bytes + sum(map(len, out)) + len(parser.buf) == len(stream)
    if kind in ("bytes", "sync-bytes") and not frames:
        assert parser.skipped_bytes >= len(stream) - 1


@settings(max_examples=examples(100), **SETTINGS)
@given(frames=st.lists(FRAMES, min_size=1, max_size=8), noise=st.lists(st.binary(max_size=200), max_size=9),
       cuts=st.lists(st.integers(0, 1 << 16), max_size=30), baud=st.sampled_from([9600, 115200]))
def test_fuzz_serial_frames_recovered_from_noise(frames, noise, cuts, baud):
    """Valid frames with noise between them (on time, at line speed) all come out, in order: noise may cost the
    bytes it is made of, never a frame."""
    from roma_runtime.serial_link import FrameParser, encode_frame

    noise = noise or [b""]
    good = [encode_frame(*f) for f in frames]
    stream = b"".join(noise[i % len(noise)] + g for i, g in enumerate(good)) + noise[-1]
    parser = FrameParser(baud)
    with tally("serial-frames").run():
        out = [encode_frame(f.type, f.seq, f.ref, f.payload) for f in feed_all(parser, stream, cuts, [], 10.0 / baud)]
    it = iter(out)
    assert all(g in it for g in good), "every valid frame is recovered, in order"
    assert all(f in stream for f in out)
