"""roma bench: figures, JSON, plot, refusals, the cycle-accounting hook, and the llama.cpp comparison."""

from __future__ import annotations

import json
import math
import struct
import sys

import pytest

from roma_runtime import bench
from roma_runtime.cli import main

TINY = ["--lengths", "16,32", "--decode-tokens", "4", "--repeats", "1", "--no-progress"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_bench_ref_json_and_plot(capsys, tmp_path):
    png = tmp_path / "bench.png"
    code, out, err = run_cli(capsys, ["bench", *TINY, "--backend", "ref", "--json", "--plot", str(png)])
    assert code == 0, err
    report = json.loads(out)
    assert report["kind"] == "roma-bench"
    assert report["settings"]["lengths"] == [16, 32]
    assert report["ours"]["backend"] == "ref"
    assert "reference model" in report["ours"]["label"] and "not a board" in report["ours"]["label"]
    assert report["peer"] is None
    assert [r["prompt_tokens"] for r in report["results"]] == [16, 32]
    for r in report["results"]:
        ours = r["ours"]
        for figure in bench.FIGURES:
            assert positive(ours[figure]), (figure, ours[figure])
        assert ours["prefill_tokens"] == r["prompt_tokens"]
        assert ours["decode_tokens"] == 4 and ours["generated_tokens"] == 5
        assert r["ratio"] is None
        assert ours["cycles"] is None  # the ref backend counts no cycles
    assert report["cycles"] is None and "n/a" in report["cycles_note"]
    lora = report["lora"]
    assert lora["rank"] == 16 and positive(lora["swap_s"]) and positive(lora["load_s"])
    assert positive(lora["adapter_bytes"])
    m = report["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["usable_cores"] >= 1 and m["numpy"]
    assert report["settings"]["threads"] == m["usable_cores"]

    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 600 and height >= 300
    assert len(data) > 20_000  # two panels of axes, lines and text, not an empty canvas
    from matplotlib.image import imread

    pixels = imread(str(png))
    assert pixels.std() > 0.05  # drawn on, not one flat colour


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "64", "--context", "32"], "more than the context of 32"),
    (["--lengths", "9000"], "more than the context of 8192"),  # the model's own context, from its GGUF
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--vs", "vllm"], "unknown peer 'vllm'"),
    (["--lengths", "16,abc"], "not a token count"),
    (["--decode-tokens", "-1"], "--decode-tokens"),
    (["--plot", "out.jpg"], "PNG"),
])
def test_bench_refuses_bad_input(capsys, argv, message):
    code, out, err = run_cli(capsys, ["bench", "--no-progress", *argv])
    assert code == 2
    assert err.startswith("error:") and message in err
    assert out == ""


def test_bench_without_llama_cpp_names_the_pip_command(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    code, out, err = run_cli(capsys, ["bench", "--no-progress", "--vs", "llama.cpp", *TINY])
    assert code == 2
    assert err.startswith("error:") and 'pip install "llama-cpp-python==0.3.36"' in err


STUB_PEER = """
import os, signal
__version__ = "0.0-stub"
def llama_print_system_info():
    return b"AVX512 = 1 | AMX_INT8 = 1"
class Llama:
    n_batch = 512
    def __init__(self, **kwargs):
        self.ctx = None
    def n_vocab(self):
        return 49152
    def reset(self):
        pass
    def eval(self, ids):  # what ggml's AMX matmul does on a VM that does not enable the tile state
        os.kill(os.getpid(), signal.SIGILL)
"""


def test_bench_survives_a_peer_that_dies_of_sigill(capsys, monkeypatch, tmp_path):
    """llama.cpp runs in a child process: when it dies of an illegal instruction, our figures still print and
    the command ends with one error naming the cause and the fix (the test process itself lives on)."""
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text(STUB_PEER)
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned child starts with this sys.path
    code, out, err = run_cli(capsys, ["bench", *TINY, "--backend", "ref", "--no-lora", "--vs", "llama.cpp",
                                      "--json"])
    assert code == 2
    report = json.loads(out)
    assert report["peer"] is None and "SIGILL" in report["peer_error"]["error"]
    assert all(positive(r["ours"]["decode_tokens_per_s"]) and r["ratio"] is None for r in report["results"])
    assert err.startswith("error: llama.cpp died of an illegal instruction (SIGILL)")
    assert "python -m roma_runtime.llama_peer --install" in err and "Traceback" not in err


def test_peer_is_built_for_the_flags_the_cpu_lists_never_amx(monkeypatch):
    from roma_runtime import llama_peer

    monkeypatch.setattr(llama_peer.platform, "machine", lambda: "x86_64")
    xeon = {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
            "avx512_vnni", "avx512_bf16", "avx512vbmi", "amx_tile", "amx_int8", "amx_bf16"}
    args = llama_peer.cmake_args(xeon).split()
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX512=ON" in args and "-DGGML_AVX512_BF16=ON" in args
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(args)
    older = llama_peer.cmake_args({"avx", "avx2", "fma", "f16c", "avx512f"}).split()
    assert "-DGGML_AVX2=ON" in older and "-DGGML_AVX512=OFF" in older  # AVX-512 needs all five of its sets
    monkeypatch.setattr(llama_peer.platform, "machine", lambda: "aarch64")
    assert llama_peer.cmake_args(xeon) == ""  # an ARM board: llama.cpp's own native build


def test_parse_lengths():
    assert bench.parse_lengths("256,512,1K,2k") == [256, 512, 1024, 2048]
    assert bench.parse_lengths("128, 64") == [64, 128]
    for bad in ("", "0", "64,64", "1.5K", "-3"):
        with pytest.raises(bench.RomaError):
            bench.parse_lengths(bad)


class CountingBackend:
    """The ref backend plus the cycle-accounting hook a counting backend (emu) offers."""

    def __init__(self, inner):
        self.inner = inner
        self.clock_mhz = 250.0
        self._last = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, cache):
        self._last = {"linear": 1000 * len(ids), "attention": 10 * len(ids) * (cache.length + len(ids))}
        return self.inner.forward(ids, cache)

    def last_cycles(self):
        return self._last


@pytest.mark.slow
def test_bench_cycle_hook_gives_labelled_estimate(smollm2):
    from roma_runtime.engine import Engine

    engine = Engine(smollm2, "ref", "quant", lora_slots=0)
    engine.backend = CountingBackend(engine.backend)
    cfg = bench.BenchConfig(lengths=[8], decode_tokens=3, repeats=1, lora=False, warmup=False)
    report = bench.run_bench(engine, cfg, progress=False)
    cyc = report["cycles"]
    assert cyc["label"] == "estimate" and cyc["clock_mhz"] == 250.0 and "cycles" in cyc["model"]
    c = report["results"][0]["ours"]["cycles"]
    assert c["prefill"] == {"linear": 8000, "attention": 10 * 8 * 8}
    # decode steps at context 8, 9, 10: attention 10 * (9 + 10 + 11) over 3 tokens
    assert c["decode_per_token"] == {"linear": 1000, "attention": 100}
    assert c["estimate_prefill_tokens_per_s"] == pytest.approx(8 * 250e6 / 8640)
    assert c["estimate_decode_tokens_per_s"] == pytest.approx(3 * 250e6 / 3300)
    table = bench.format_table(report)
    assert "estimate at 250 MHz" in table and "linear 8,000" in table
    # beside the figures, roma plan's rooflines: without the LoRA products for a run without an adapter, with them
    # for one with; the prefill one only beside a prompt of its length
    roof = {"decode_tokens_per_s": 400_000.0, "context_tokens": 8, "prefill_tokens_per_s": 300_000.0,
            "without_lora": {"decode_tokens_per_s": 454_545.0, "prefill_tokens_per_s": 400_000.0}}
    report["cycles"]["roofline"] = roof

    def estimate_line():
        return next(x for x in bench.format_table(report).splitlines() if "estimate at" in x)

    assert ("tok/s (roma plan's roofline without LoRA: 400,000 for a 8-token prompt, 58% of it), decode"
            in estimate_line())
    assert estimate_line().endswith("(roma plan's roofline without LoRA: 454,545 at context 8, 50% of it)")
    c["prefill"]["lora"] = 640
    assert "tok/s (roma plan's roofline: 300,000 for a 8-token prompt, 77% of it), decode" in estimate_line()
    assert estimate_line().endswith("(roma plan's roofline: 400,000 at context 8, 57% of it)")
    report["cycles"]["roofline"] = {**roof, "context_tokens": 256}  # not this run's context: beside neither figure
    assert estimate_line().endswith("decode 227,273 tok/s") and "-token prompt" not in estimate_line()
    # the plot's third panel: the decode token's stages stacked, largest first, and beside the prompt as long as
    # the roofline's context, the roofline's cycles a token
    del c["prefill"]["lora"]
    c["decode_per_token"]["sampler"] = 0
    panel = bench.plot_figure(report).axes[2]
    assert panel.get_title() == "where a decode token's cycles go"
    bars = {b.get_label(): b for b in panel.containers}
    assert list(bars) == ["linear", "attention"]  # the sampler counted nothing
    assert [b.get_width() for b in bars["linear"]] == [1000] and [b.get_x() for b in bars["attention"]] == [1000]
    assert panel.get_lines() == []  # a roofline at context 256 is not beside a decode at context 8
    report["cycles"]["roofline"] = roof
    (line,) = bench.plot_figure(report).axes[2].get_lines()
    assert line.get_xdata()[0] == pytest.approx(250e6 / 454_545.0)  # without LoRA: this run has no adapter
    assert "without LoRA" in line.get_label()
    assert len(bench.plot_figure({**report, "cycles": None}).axes) == 2
    assert engine.backend.__class__ is CountingBackend  # the bench put the engine's backend back


@pytest.mark.slow
def test_bench_vs_llama_cpp(capsys):
    pytest.importorskip("llama_cpp", reason="--vs llama.cpp needs llama-cpp-python (pip install "
                                            "'roma-runtime[bench]' or llama-cpp-python==0.3.36)")
    code, out, err = run_cli(capsys, ["bench", *TINY, "--numerics", "float", "--no-lora", "--threads", "1",
                                      "--vs", "llama.cpp", "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["peer"]["name"] == "llama.cpp" and report["peer"]["settings"]["n_threads"] == 1
    assert report["settings"]["threads"] == 1
    for r in report["results"]:
        assert r["same_token_count"]
        assert r["peer"]["prefill_tokens"] == r["ours"]["prefill_tokens"] == r["prompt_tokens"]
        assert r["peer"]["decode_tokens"] == r["ours"]["decode_tokens"]
        for figure in bench.FIGURES:
            assert positive(r["peer"][figure]), figure
            assert positive(r["ratio"][figure]), figure
            assert r["ratio"][figure] == pytest.approx(r["ours"][figure] / r["peer"][figure])
        # Same ids, same Q4_1 weights: when our float path is sure of its first token (a clear top-1 margin),
        # llama.cpp's greedy choice (its own kernels and activation rounding) is the same token.
        if r["ours"]["first_token_margin"] > 1.0:
            assert r["peer"]["first_token"] == r["ours"]["first_token"]


def test_bench_reports_the_spread(capsys, tiny_models):
    """Each figure has its min, max and standard deviation next to the median, in the JSON and the table. (And
    stderr, not a terminal here, gets plain progress lines rather than a bar.)"""
    import statistics

    argv = ["bench", "--model", str(tiny_models["q4_1"]), "--lengths", "8", "--decode-tokens", "3",
            "--repeats", "3", "--no-lora"]
    code, out, err = run_cli(capsys, [*argv, "--json"])
    assert code == 0, err
    assert "\r" not in err and "bench: 3 runs in " in err
    report = json.loads(out)
    ours = report["results"][0]["ours"]
    for figure in bench.FIGURES:
        samples, spread = ours["samples"][figure], ours["spread"][figure]
        assert len(samples) == 3
        assert spread["min"] == min(samples) <= ours[figure] <= spread["max"] == max(samples)
        assert spread["stdev"] == pytest.approx(statistics.stdev(samples))
    table = bench.format_table(report)
    decode = next(line for line in table.splitlines() if "decode tok/s" in line)
    assert decode.split()[-3:] == [bench._num(ours["decode_tokens_per_s"], "tps"), "±",
                                   bench._num(ours["spread"]["decode_tokens_per_s"]["stdev"], "tps")]
    assert "median ± standard deviation of 3 run(s)" in table
