"""roma eval: metrics of a build against the float reference, on a tiny model."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest

from tiny_models import write_tiny_hf  # noqa: E402

from roma_runtime.compiler.build import compile_model  # noqa: E402
from roma_runtime.evaluation import _Accumulator, evaluate_build  # noqa: E402
from roma_runtime.errors import RomaError  # noqa: E402
from roma_runtime.model.loader import load_model  # noqa: E402


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaltiny")
    model = load_model(write_tiny_hf(d / "hf", vocab=512, seed=5))
    compile_model(model, d / "b8", bits=8, group=32, progress=False)
    compile_model(model, d / "b2", bits=2, group=64, progress=False)
    other = load_model(write_tiny_hf(d / "other", vocab=512, seed=6))
    return model, d, other


def test_accumulator_metrics_on_identical_and_different_logits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((10, 20)).astype(np.float32)
    targets = rng.integers(0, 20, 10)
    acc = _Accumulator()
    acc.add(logits, logits, targets)
    r = acc.result()
    assert r["kl"] == pytest.approx(0, abs=1e-12) and r["top1"] == 1.0
    assert r["ppl_reference"] == pytest.approx(r["ppl_candidate"])
    acc = _Accumulator()
    acc.add(logits, np.zeros_like(logits), targets)
    r = acc.result()
    assert r["ppl_candidate"] == pytest.approx(20.0, rel=1e-6) and r["kl"] > 0.1


def test_eval_orders_builds_by_quality(builds):
    model, d, _ = builds
    r8 = evaluate_build(model, d / "b8", tokens=120, window=60, chat=False)
    r2 = evaluate_build(model, d / "b2", tokens=120, window=60, chat=False)
    assert r8["text"]["tokens"] == 120 and r8["build"]["bits"] == 8
    assert r8["text"]["kl"] < r2["text"]["kl"] and r8["text"]["top1"] >= r2["text"]["top1"]
    assert r8["text"]["top1"] > 0.9
    assert r8["text"]["ppl_reference"] == pytest.approx(r2["text"]["ppl_reference"])


def test_eval_runs_the_compensating_lora_as_the_builds_lora_unit_stores_it(builds):
    """The same ROM and compensating factors in an fp16 and an int8 LoRA unit: the engine loads int8 codes into the
    second, and so must the evaluation (it ran the float factors for both)."""
    model, d, _ = builds
    for dtype in ("fp16", "int8"):
        compile_model(model, d / f"comp_{dtype}", bits=2, group=64, lora_rank=8, lora_dtype=dtype, progress=False)
    r = {t: evaluate_build(model, d / f"comp_{t}", tokens=120, window=60, chat=False)["text"] for t in ("fp16", "int8")}
    plain = evaluate_build(model, d / "comp_fp16", tokens=120, window=60, chat=False, without_lora=True)["text"]
    assert len({r["fp16"]["kl"], r["int8"]["kl"], plain["kl"]}) == 3


def test_eval_refuses_an_adapter_the_builds_lora_unit_cannot_hold(builds, tmp_path):
    """An adapter the engine would refuse (a linear the unit has no memory for) is refused by the evaluation too,
    with the engine's message, rather than measured as the device could never run it."""
    pytest.importorskip("peft")
    from tiny_models import write_peft_adapter

    model, d, _ = builds
    compile_model(model, d / "wqwv", bits=8, group=32, lora_targets=["wq", "wv"], progress=False)
    folder = write_peft_adapter(d / "hf", tmp_path / "down", 1, r=4, lora_alpha=8, target_modules=["down_proj"])
    with pytest.raises(RomaError, match="adapts down_proj, for which this build's LoRA unit .* has no memory"):
        evaluate_build(model, d / "wqwv", tokens=20, chat=False, lora=folder)


def test_eval_refuses_a_build_of_another_model(builds):
    _, d, other = builds
    with pytest.raises(RomaError, match="compiled from another model"):
        evaluate_build(other, d / "b8", tokens=20, chat=False)


def test_eval_command_json(builds, capsys):
    from roma_runtime.commands import eval as cmd

    model, d, _ = builds
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args(["--model", str(model.source), "--build", str(d / "b8"), "--tokens", "64",
                         "--window", "32", "--chat-tokens", "0", "--json"])
    assert cmd.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"]["tokens"] == 64 and "chat" not in out
    args = p.parse_args(["--model", str(model.source), "--build", str(d / "b2"), "--tokens", "64",
                         "--chat-tokens", "0"])
    assert cmd.run(args) == 0
    assert "top-1" in capsys.readouterr().out


def test_compile_and_eval_show_progress_lines_when_stderr_is_not_a_terminal(builds, tmp_path):
    """Run as a notebook or a log runs them (stderr a pipe): plain progress lines, no carriage-return bar, and a
    summary line at the end; --no-progress keeps stderr empty."""
    import re
    import subprocess

    from conftest import cli_env

    model, d, _ = builds

    def roma(*argv):
        p = subprocess.run([sys.executable, "-m", "roma_runtime.cli", *map(str, argv)], capture_output=True,
                           text=True, env=cli_env(), timeout=300)
        assert p.returncode == 0, p.stderr
        return p

    p = roma("compile", "--model", model.source, "--out", tmp_path / "b4", "--no-footprint")
    assert "\r" not in p.stderr and "\x1b" not in p.stderr
    lines = p.stderr.splitlines()
    steps = [int(m.group(1)) for m in map(re.compile(r"quantizing: (\d+)/(\d+) tensors \(\d+%\)").match, lines) if m]
    assert len(steps) >= 5 and steps == sorted(steps)  # about one line per tenth of the tensors
    assert re.search(r"^packing: \d+ tensors in [\d.]+ s$", p.stderr, re.M)
    assert re.fullmatch(r"compile: \S+ into .*b4, [\d.]+ bits/weight, ROM [\d.]+ MiB, in [\d.]+ s", lines[-1])
    assert p.stdout.startswith("built ")

    p = roma("eval", "--model", model.source, "--build", tmp_path / "b4", "--tokens", 128, "--window", 16,
             "--chat-tokens", 4)
    assert "\r" not in p.stderr
    assert re.search(r"^eval text: 4/8 windows \(50%\), [\d.]+ s$", p.stderr, re.M)
    assert re.search(r"^eval text: 8 windows in [\d.]+ s$", p.stderr, re.M)
    assert re.search(r"^eval chat: \d+ answers in [\d.]+ s$", p.stderr, re.M)
    assert re.fullmatch(r"eval: 128 tokens, perplexity [\d.]+ \(reference\) -> [\d.]+ \(build\), KL [\d.]+, "
                        r"top-1 [\d.]+%, in [\d.]+ s", p.stderr.splitlines()[-1])

    quiet = roma("eval", "--model", model.source, "--build", tmp_path / "b4", "--tokens", 32, "--window", 16,
                 "--chat-tokens", 0, "--no-progress")
    assert quiet.stderr == "" and "top-1" in quiet.stdout
