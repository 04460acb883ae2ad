"""The build's context (`roma compile --context N`): CONTEXT in roma_model.h (attention's score buffer, the KV port
depth and the token limits follow it) and the manifest's "context"; the refusals before anything is written; and
on the emulated board, sessions up to it run with the full-context build's logits bit for bit while a longer
one is refused, by the driver naming the limit and by the core on its own (ERR_CONTEXT).

The tiny model is the Q4_1 GGUF of conftest.tiny_models (context 256); the full-context build is the session's
default build (tiny_build), the short one the same compile with context=CTX.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from roma_runtime import RomaError
from roma_runtime.artifact.build import MANIFEST, seal_manifest, verify_build
from roma_runtime.builds import DEFAULT_BUILD
from roma_runtime.compiler.build import compile_model
from roma_runtime.generate import SamplingParams

CTX = 40  # the short build's context
IDS = [1, 504, 3575, 282, 4649, 314, 7, 1000]


@pytest.fixture(scope="module")
def short_build(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("context") / "build"
    compile_model(tiny_models["q4_1"], out, progress=False, context=CTX, **DEFAULT_BUILD)
    return out


def test_the_build_records_its_context(short_build, tiny_build, tiny_models, tmp_path):
    assert verify_build(short_build)["context"] == CTX and verify_build(tiny_build)["context"] == 256
    assert f"constexpr int CONTEXT = {CTX};" in (short_build / "roma_model.h").read_text()
    assert "constexpr int CONTEXT = 256;" in (tiny_build / "roma_model.h").read_text()
    # a manifest resealed with another context than its header's is refused
    edited = tmp_path / "edited"
    shutil.copytree(short_build, edited)
    manifest = json.loads((edited / MANIFEST).read_text())
    manifest["context"] = CTX + 1
    (edited / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(RomaError, match=f"context = {CTX + 1}, but roma_model.h was generated with CONTEXT = {CTX}"):
        verify_build(edited)


@pytest.mark.parametrize("options, message", [
    ({"context": 0}, r"--context 0 is outside 1\.\.256, the context length of"),
    ({"context": 257}, r"--context 257 is outside 1\.\.256"),
    ({"context": 16, "kv_onchip": 32}, "--kv-onchip 32 exceeds the build's context of 16 tokens"),
])
def test_a_bad_context_is_refused_before_anything_is_written(tiny_models, short_build, tmp_path, options, message):
    copy = tmp_path / "build"
    shutil.copytree(short_build, copy)
    with pytest.raises(RomaError, match=message):
        compile_model(tiny_models["q4_1"], copy, progress=False, force=True, **options, **DEFAULT_BUILD)
    assert verify_build(copy)["context"] == CTX  # the old build is untouched


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                    reason="the emulated board needs g++ and make")
def test_the_emulated_board_runs_up_to_its_context_and_refuses_past_it(short_build, tiny_emu):
    pytest.importorskip("pynq")
    from roma_runtime.backends.emulated import EmuBackend
    from roma_runtime.device.driver import KVBuffer
    from roma_runtime.engine import Engine

    want = tiny_emu.forward(IDS, tiny_emu.new_cache(CTX))
    short = EmuBackend(short_build, progress=False)
    assert short.max_context == short.core.context == CTX and short.device.library.dims["context"] == CTX
    cache = short.new_cache()
    assert cache.capacity == CTX
    assert np.array_equal(short.forward(IDS, cache), want)  # the context changes no arithmetic
    with pytest.raises(RomaError, match=f"context of {CTX + 1} tokens is longer than this build's context of "
                                        f"{CTX} tokens \\(compiled with --context {CTX}\\)") as e:
        short.new_cache(CTX + 1)
    assert f"--context {CTX}" in e.value.hint
    with pytest.raises(RomaError, match="ERR_CONTEXT"):  # the core refuses it on its own
        short.core.prefill(IDS, 0, kv=KVBuffer(short.core, CTX + 1))

    engine = Engine(short_build, "emu", lora_slots=0)
    assert engine.max_context == CTX
    used = engine.kv_pool.used
    with pytest.raises(RomaError, match=f"longer than this build's context of {CTX} tokens"):
        engine.new_session(CTX + 1)
    assert engine.kv_pool.used == used  # nothing reserved by the refusal
    with pytest.raises(RomaError, match=f"the prompt has {CTX + 1} tokens but the context holds {CTX}"):
        engine.generate(list(range(1, CTX + 2)), SamplingParams(max_tokens=1, temperature=0.0))
    # a generation asked for more than the context holds fills it (the last sampled token needs no KV row)
    result = engine.generate(IDS, SamplingParams(max_tokens=2 * CTX, temperature=0.0)).run()
    assert result.finish_reason == "context" and len(IDS) + len(result.ids) == CTX + 1
