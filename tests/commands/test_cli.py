"""The `roma` command line on the real SmolLM2-135M GGUF and its real tokenizer, run as subprocesses.

Each model load costs seconds, so every CLI run below happens once (module-scoped fixtures) and several tests
read its output. Greedy decoding throughout, so the answers are deterministic.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "host"
if str(HOST) not in sys.path:
    sys.path.insert(0, str(HOST))

MODEL = "smollm2-135m"
FRANCE = "What is the capital of France?"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(HOST), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["PYTHONIOENCODING"] = "utf-8"
    e.pop("NO_COLOR", None)
    return e


def roma(*args, stdin: bytes | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs `python -m roma_runtime.cli ARGS`; stdout and stderr as text (UTF-8)."""
    p = subprocess.run([sys.executable, "-m", "roma_runtime.cli", *map(str, args)], input=stdin,
                       capture_output=True, env=env(), cwd=str(REPO), timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8"))


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.stderr.startswith("error: ") or "\nerror: " in p.stderr or "error:" in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, (n, p.stderr)


@pytest.fixture(scope="module")
def tokenizer():
    from roma_runtime.tokenizer import Tokenizer

    return Tokenizer.from_gguf(MODEL)


def decoded(tok, ids: list[int]) -> str:
    """The text a generation shows for its ids: the final end token (if any) is not shown."""
    if ids and ids[-1] in tok.eos_ids:
        ids = ids[:-1]
    return tok.decode(ids)


# --- generate --json over a prompts file (one load, default quant numerics) ---------------------------------

RAW_PROMPTS = ["The capital of France is", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def generated_json(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    f.write_text("\n".join(json.dumps(p) for p in RAW_PROMPTS[:1]) + "\n\n" + json.dumps(RAW_PROMPTS[1]) + "\n",
                 encoding="utf-8")
    p = roma("generate", "--prompts-file", f, "--json", "--max-tokens", 6, "--model", MODEL)
    assert p.returncode == 0, p.stderr
    return p


def test_generate_json_one_line_per_prompt(generated_json):
    lines = generated_json.stdout.strip().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in records] == RAW_PROMPTS


def test_generate_json_fields(generated_json, tokenizer):
    for line in generated_json.stdout.strip().splitlines():
        r = json.loads(line)
        for key in ("prompt_ids", "ids", "text", "prefill_tokens_per_s", "decode_tokens_per_s", "finish_reason",
                    "backend", "model"):
            assert key in r, key
        assert r["backend"] == "emu" and r["model"] == MODEL and r["numerics"] == "quant"  # the default here
        assert r["prompt_ids"] == tokenizer.encode(r["prompt"])  # raw continuation: no chat template
        assert 1 <= len(r["ids"]) <= 6
        assert r["finish_reason"] in ("length", "stop")
        assert r["text"] == decoded(tokenizer, r["ids"])
        assert r["prefill_tokens_per_s"] > 0
        if len(r["ids"]) > 1:
            assert r["decode_tokens_per_s"] > 0
    assert "loading smollm2-135m on emu (quant)" in generated_json.stderr
    assert "Traceback" not in generated_json.stderr


# --- generate --chat, streamed text (float numerics: fast, and the float model answers this reliably) -------

LONG_LINE = " ".join(["word"] * 300)  # over the contexts below


@pytest.fixture(scope="module")
def chat_generation(tmp_path_factory):
    """Two chat prompts in one run: the first is answered, the second is over --context 128 and refused."""
    f = tmp_path_factory.mktemp("chat") / "prompts.jsonl"
    f.write_text(json.dumps(FRANCE) + "\n" + json.dumps(LONG_LINE) + "\n", encoding="utf-8")
    return roma("generate", "--prompts-file", f, "--chat", "--max-tokens", 20, "--numerics", "float",
                "--context", 128)


def test_generate_chat_answers_paris(chat_generation):
    p = chat_generation
    assert "Paris" in p.stdout
    assert "<|im_start|>" not in p.stdout  # only the answer is streamed, not the template
    assert "tok/s" in p.stderr and "tok/s" not in p.stdout


def test_generate_prompt_over_the_context_exits_2(chat_generation):
    assert_clean_error(chat_generation, "prompt on line 2", "context holds 128")


# --- chat over stdin (one load for all of it) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_run():
    script = b"\n".join([
        FRANCE.encode(),
        b"And what is the capital of Germany?",
        b"/stats",
        LONG_LINE.encode(),
        b"caf\xc3 au lait \xff",  # invalid UTF-8
        b"/nonsense",
        b"/stats",
        b"/reset",
        b"/stats",
        b"Hello!",
        b"/quit",
        b"this line comes after /quit and is never answered",
    ]) + b"\n"
    p = roma("chat", "--numerics", "float", "--context", 256, "--max-tokens", 20, stdin=script)
    assert p.returncode == 0, p.stderr
    return p


def stats_blocks(stdout: str) -> list[str]:
    return re.findall(r"^context: .*\n.*(?:\n.*total reused.*)?", stdout, flags=re.M)


def test_chat_answers_and_streams_to_stdout(chat_run):
    assert "Paris" in chat_run.stdout
    assert "Berlin" in chat_run.stdout
    assert "loading smollm2-135m on ref (float)" in chat_run.stderr
    assert "Traceback" not in chat_run.stderr
    assert "you>" not in chat_run.stdout  # no prompts when stdin is not a terminal
    assert "never answered" not in chat_run.stdout


def test_chat_reuses_the_kv_cache_of_earlier_turns(chat_run):
    first = stats_blocks(chat_run.stdout)[0]
    reused = int(re.search(r"reused (\d+) tokens", first).group(1))
    assert reused > 20  # the system prompt, the first question and the first answer
    used, capacity = map(int, re.search(r"context: (\d+) / (\d+)", first).groups())
    assert capacity == 256 and reused < used <= capacity
    assert re.search(r"prefill \d+ tokens at [\d.]+ tok/s, decode \d+ tokens at [\d.]+ tok/s", first)


def test_chat_refuses_a_prompt_over_the_context_and_goes_on(chat_run):
    assert "error: the prompt has" in chat_run.stderr and "context holds 256" in chat_run.stderr
    blocks = stats_blocks(chat_run.stdout)
    # /stats after the refused line and the bad bytes: the conversation is unchanged.
    assert blocks[0].splitlines()[0] == blocks[1].splitlines()[0]


def test_chat_reports_invalid_utf8_and_goes_on(chat_run):
    assert "error: that line is not valid UTF-8" in chat_run.stderr
    assert "error: unknown command /nonsense" in chat_run.stderr


def test_chat_reset_clears_the_context_and_the_chat_continues(chat_run):
    assert "(conversation cleared)" in chat_run.stdout
    before, after = stats_blocks(chat_run.stdout)[1:3]
    assert ", 2 turns" in before.splitlines()[0]
    assert after.startswith("context: 0 / 256 tokens") and ", 0 turns" in after.splitlines()[0]  # counts anew
    assert "last turn: none yet" in after
    # The answer after /reset is there, after the stats block.
    tail = chat_run.stdout.split(after, 1)[1].strip()
    assert tail and len(tail.split()) >= 2


def test_chat_prints_speed_lines_on_stderr(chat_run):
    speed = [line for line in chat_run.stderr.splitlines() if "tok/s" in line]
    assert len(speed) == 3  # three answers
    assert "reused" in speed[1]
    assert not [line for line in chat_run.stdout.splitlines() if line.startswith("[") and "tok/s" in line]


def test_chat_ctrl_c_stops_the_answer_and_the_chat_goes_on():
    """SIGINT while an answer streams: the answer stops, /stats still runs, /quit exits 0."""
    # stderr goes to a file: communicate() below would otherwise compete with any reader for the pipe.
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "roma_runtime.cli", "chat", "--numerics", "float",
                                 "--max-tokens", "400", "--context", "1024"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file,
                                env=env(), cwd=str(REPO))
        try:
            proc.stdin.write(b"Write a very long story about a dragon who learns to cook.\n")
            proc.stdin.flush()
            out = os.read(proc.stdout.fileno(), 4096)  # blocks until the answer starts streaming
            assert out
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            rest, _ = proc.communicate(b"/stats\n/quit\n", timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        err_file.seek(0)
        stderr = err_file.read().decode("utf-8")
    stdout = (out + rest).decode("utf-8")
    assert proc.returncode == 0, stderr
    assert "(answer stopped)" in stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stdout  # /stats names how the last turn ended
    generated = int(re.search(r"(\d+) generated", stdout).group(1))
    assert generated < 400


def test_chat_first_prefill_figure_leaves_out_the_warm_up():
    """The emulated board's first call pays one-time costs (0.5 s on SmolLM2): `roma chat` warms up at load, so
    the first prompt's prefill figure is like the same prompt's afterwards (it used to be 4-5 times lower)."""
    question = FRANCE.encode()
    p = roma("chat", "--backend", "emu", "--context", 256, "--max-tokens", 2,
             stdin=b"\n".join([question, b"/reset", question, b"/reset", question]) + b"\n")
    assert p.returncode == 0, p.stderr
    prefills = re.findall(r"prefill (\d+) at ([\d.]+) tok/s", p.stderr)
    rates = [float(rate) for _, rate in prefills]
    assert len(rates) == 3 and len({n for n, _ in prefills}) == 1, p.stderr  # the same prompt, prefilled whole each time
    assert rates[0] > 0.4 * min(rates[1:]), rates


class Terminal:
    """A real pty whose slave is the controlling terminal of a new session running `argv`: what a user's shell
    gives `make chat` (Ctrl-C typed on it signals the terminal's foreground process group)."""

    def __init__(self, argv, cwd):
        import fcntl
        import termios

        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env(), cwd=str(cwd),
                                     start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.seen = b""

    def expect(self, needle: bytes, after: int = 0, timeout: float = 120) -> int:
        """Reads until `needle` appears at or after offset `after` of all output; returns where it ends."""
        import select

        deadline = time.monotonic() + timeout
        while (i := self.seen.find(needle, after)) < 0:
            assert time.monotonic() < deadline, f"no {needle!r} in {self.seen[-2000:]!r}"
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # EIO: every slave end is closed
                    break
        return i + len(needle)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def test_make_chat_exits_0_on_quit_after_ctrl_c_stopped_an_answer(tmp_path):
    """`make chat` at a terminal: Ctrl-C stops an answer, the chat goes on, and /quit ends the chat and make
    with 0. Ctrl-C used to reach make too (the terminal's whole foreground group), which then died of SIGINT."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("needs make")
    (tmp_path / "Makefile").write_text(
        f"chat:\n\t@{sys.executable} -m roma_runtime.cli chat --numerics float --max-tokens 400 --context 1024\n")
    term = Terminal(["make", "-s", "chat"], tmp_path)
    try:
        end = term.expect(b"you> ")
        term.type(b"Write a very long story about a dragon who learns to cook.\n")
        term.expect(b"\n", term.expect(b"learns to cook."))
        time.sleep(1.0)  # the answer streams
        term.type(b"\x03")
        end = term.expect(b"you> ", term.expect(b"(answer stopped)"))
        term.type(b"/stats\n")
        term.expect(b"you> ", term.expect(b"interrupted", end))
        term.type(b"/quit\n")
        assert term.proc.wait(timeout=60) == 0, term.seen[-2000:]
        assert b"Interrupt" not in term.seen and b"Traceback" not in term.seen
    finally:
        term.close()


# --- tokenize and info --------------------------------------------------------------------------------------


def test_tokenize_json_ids(tokenizer):
    text = "Hello, world! 123 café"
    p = roma("tokenize", "--json", text)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["ids"] == tokenizer.encode(text)
    assert r["tokens"] == [tokenizer.token_text(i) for i in r["ids"]]
    assert "".join(r["pieces"]) == text


def test_tokenize_reads_stdin_and_refuses_bad_utf8(tokenizer):
    text = "Hello, world!"
    p = roma("tokenize", stdin=text.encode())
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(i) for i in tokenizer.encode(text)]
    assert_clean_error(roma("tokenize", stdin=b"bad \xff"), "not valid UTF-8")


def test_info_json_facts():
    p = roma("info", "--json")
    assert p.returncode == 0, p.stderr
    f = json.loads(p.stdout)
    c = f["config"]
    assert (c["n_layers"], c["dim"], c["vocab_size"]) == (30, 576, 49152)
    assert f["tokenizer"]["vocab_size"] == 49152 and f["tokenizer"]["eos_id"] == 2
    assert f["chat_template"] is True
    assert f["tensor_types"]["Q4_1"] > 0 and f["tensor_count"] == sum(f["tensor_types"].values())
    assert 130e6 < f["parameter_count"] < 140e6
    assert f["file"].endswith(".gguf") and f["file_size_bytes"] == os.path.getsize(f["file"])


# --- bad input: one message, exit 2, no traceback ----------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["generate", "Hi", "--temperature", "-1"], "temperature"),
    (["generate", "Hi", "--top-p", "0"], "top-p"),
    (["chat", "--min-p", "1.5"], "min-p"),
    (["chat", "--max-tokens", "0"], "max tokens"),
    (["generate", "Hi", "--repeat-penalty", "nan"], "finite"),
    (["generate", "Hi", "--stop", ""], "stop"),
    (["generate", "Hi", "--threads", "0"], "--threads must be at least 1"),
    (["chat", "--threads", "-2"], "--threads must be at least 1"),
])
def test_bad_sampling_values_exit_2(args, needle):
    assert_clean_error(roma(*args), needle)


def test_unknown_model_path_exits_2(tmp_path):
    assert_clean_error(roma("generate", "Hi", "--model", tmp_path / "nope.gguf"), "no model at")
    assert_clean_error(roma("info", "--model", tmp_path / "nope.gguf"), "no model at")
    assert_clean_error(roma("tokenize", "Hi", "--model", tmp_path / "nope.gguf"), "no model at")
    assert_clean_error(roma("chat", "--model", tmp_path / "nope.gguf", stdin=b""), "no model at")


def test_not_a_gguf_exits_2(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    assert_clean_error(roma("info", "--model", bad), "not a GGUF file")


def test_prompts_file_bad_line_names_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('"fine"\n\n"also fine"\nnot json\n', encoding="utf-8")
    assert_clean_error(roma("generate", "--prompts-file", f), "line 4", "not valid JSON")
    f.write_text('"fine"\n["a list"]\n', encoding="utf-8")
    assert_clean_error(roma("generate", "--prompts-file", f), "line 2", "not a string")
    f.write_bytes(b'"fine"\n"caf\xe9"\n')
    assert_clean_error(roma("generate", "--prompts-file", f), "line 2", "not valid UTF-8")
    assert_clean_error(roma("generate", "--prompts-file", tmp_path / "missing.jsonl"), "cannot read")
    assert_clean_error(roma("generate"), "no prompt")


def test_invalid_utf8_argument_exits_2():
    if sys.platform == "win32":
        pytest.skip("argv is text on Windows")
    p = subprocess.run([sys.executable, "-m", "roma_runtime.cli", "tokenize", b"bad \xff arg"],
                       capture_output=True, env=env(), cwd=str(REPO), timeout=120)
    assert p.returncode == 2
    err = p.stderr.decode("utf-8", errors="replace")
    assert "not valid UTF-8" in err and "Traceback" not in err


# --- LoRA on `roma generate`, `roma lora inspect`'s exit code (issue 22) --------------------------------------


@pytest.fixture(scope="module")
def tiny_adapter(tiny_models, tmp_path_factory):
    pytest.importorskip("peft")
    pytest.importorskip("torch")
    from tiny_models import write_peft_adapter

    return write_peft_adapter(tiny_models["hf"], tmp_path_factory.mktemp("cli-lora") / "a1", 3, r=8, lora_alpha=16,
                              target_modules=["q_proj", "v_proj", "down_proj"])


def test_generate_runs_under_a_lora_adapter_as_chat_does(tiny_models, tiny_adapter):
    from roma_runtime.engine import Engine
    from roma_runtime.generate import SamplingParams

    args = ["generate", "--chat", "Hello there!", "--model", tiny_models["q4_1"], "--backend", "ref",
            "--max-tokens", 8, "--json", "--threads", 1]
    plain = roma(*args)
    adapted = roma(*args, "--lora", f"a1={tiny_adapter}")
    assert plain.returncode == 0 and adapted.returncode == 0, plain.stderr + adapted.stderr
    plain, adapted = json.loads(plain.stdout), json.loads(adapted.stdout)
    assert plain["adapter"] is None and adapted["adapter"] == "a1"
    engine = Engine(str(tiny_models["q4_1"]), "ref", lora_slots=1)
    engine.load_lora("a1", str(tiny_adapter))
    want = engine.generate("Hello there!", SamplingParams(max_tokens=8), chat=True, adapter="a1").run()
    assert adapted["ids"] == want.ids and adapted["text"] == want.text
    assert adapted["ids"] != plain["ids"]  # the adapter changes the answer


def test_an_adapter_for_another_build_names_the_cli_option_that_loads_it_anyway(tiny_models, tiny_adapter, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_adapter, other)
    (other / "roma_build.json").write_text(json.dumps({
        "format": "roma-finetune", "base": {"kind": "model", "name": "another-model", "path": "/elsewhere.gguf",
                                            "model_sha256": "0" * 64}}))
    args = ["generate", "Hi", "--model", tiny_models["q4_1"], "--backend", "ref", "--max-tokens", 2,
            "--lora", f"x={other}"]
    refused = roma(*args)
    assert_clean_error(refused, "was trained against the model another-model", "--lora-any-build")
    assert "allow_other" not in refused.stderr
    anyway = roma(*args, "--lora-any-build")
    assert anyway.returncode == 0 and "warning:" in anyway.stderr, anyway.stderr


def test_lora_inspect_exits_1_when_a_check_fails(tiny_adapter):
    ok = roma("lora", "inspect", tiny_adapter)
    assert ok.returncode == 0 and "fits a rank-64 slot: yes" in ok.stdout
    failed = roma("lora", "inspect", tiny_adapter, "--slot-rank", 4)
    assert failed.returncode == 1 and "fits a rank-4 slot: NO" in failed.stdout
    assert "check failed: rank 8 is above the slot rank 4" in failed.stderr and "Traceback" not in failed.stderr
    failed = roma("lora", "inspect", tiny_adapter, "--slot-rank", 4, "--json")
    assert failed.returncode == 1 and json.loads(failed.stdout)["fits_slot_rank"] is False


def test_threads_sets_the_blas_thread_count_as_bench_does():
    import argparse

    from roma_runtime.bench import blas_threads
    from roma_runtime.commands.common import apply_threads

    before = blas_threads()
    if before["library"] is None:
        pytest.skip("numpy here has no OpenBLAS to set")
    try:
        apply_threads(argparse.Namespace(threads=1))
        assert blas_threads()["threads"] == 1
    finally:
        blas_threads(before["threads"])
