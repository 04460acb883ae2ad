"""llama.cpp, the speed peer of `roma bench --vs llama.cpp`, run in a child process.

llama-cpp-python compiles llama.cpp for the CPU it is installed on, and a native build can use instructions the
CPU advertises but the operating system or the virtual machine does not enable: on a Xeon whose VM does not
enable the AMX tile state, the first `eval` dies of SIGILL in ggml's AMX matmul. In-process that kills Python,
the bench and a pytest session with it. In a child, the bench gets an exit signal instead and turns it into one
error with the cause and the fix, and our own figures still print.

`python -m roma_runtime.llama_peer --install` builds llama-cpp-python for this machine without native
detection: with the x86 instruction sets /proc/cpuinfo lists (Linux lists those the kernel enabled), never AMX,
so the peer is as fast as this CPU honestly allows and runs wherever these flags hold. The wheel is cached per
flag set under the roma cache (a plain `pip install` could reuse a native wheel from pip's own cache). `make
test` installs the peer this way; `--cmake-args` prints the CMake options.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cpu import cpu_flags
from .device.library import cache_root
from .errors import RomaError
from .tempfiles import clean_stale, temp_path

LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP_PIP = f'pip install "llama-cpp-python=={LLAMA_CPP_VERSION}"'
# (ggml CMake option, the /proc/cpuinfo flags it compiles in). GGML_AVX512 means -mavx512{f,cd,vl,dq,bw}.
X86_OPTIONS = (
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
)
NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")  # needs per-process kernel permission and VM support


@dataclass
class Run:
    """The timings of one generation: a prompt, then `decode_tokens` single-token passes (ours in bench.py, or
    the peer's here)."""

    prompt_tokens: int
    prefill_seconds: float
    decode_tokens: int
    decode_seconds: float
    ttft_seconds: float
    wall_seconds: float
    forward_seconds: float
    ids: list[int]
    first_margin: float | None = None  # top-1 minus top-2 logit of the first token (ours only)
    prefill_cycles: dict | None = None
    decode_cycles: dict | None = None

    @property
    def figures(self) -> dict:
        return {
            "prefill_tokens_per_s": self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else None,
            "decode_tokens_per_s": self.decode_tokens / self.decode_seconds if self.decode_tokens and self.decode_seconds > 0 else None,
            "ttft_s": self.ttft_seconds,
            "host_overhead_s_per_token": max(self.wall_seconds - self.forward_seconds, 0.0) / max(len(self.ids), 1),
        }



class PeerFailed(RomaError):
    """llama.cpp's process died or could not load the model."""


def cmake_args(flags: set[str] | None = None) -> str:
    """CMAKE_ARGS for llama-cpp-python on this machine: no native detection on x86, each instruction set on
    that this CPU's flags list, AMX off. Elsewhere (ARM boards) llama.cpp's own native build is right."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    flags = cpu_flags() if flags is None else flags
    options = ["GGML_NATIVE=OFF"] + [f"{name}={'ON' if all(f in flags for f in need) else 'OFF'}"
                                      for name, need in X86_OPTIONS] + [f"{name}=OFF" for name in NEVER]
    return " ".join(f"-D{o}" for o in options)


def reinstall_command() -> str:
    return "python -m roma_runtime.llama_peer --install   (in a checkout: make peer)"


def install(cache: Path) -> Path:
    """Build llama-cpp-python with cmake_args() (once per flag set: the wheel is kept in `cache`) and install it
    into this Python, replacing any other build. Returns the wheel."""
    args = cmake_args()
    key = hashlib.sha256(f"{LLAMA_CPP_VERSION} {args}".encode()).hexdigest()[:16]
    folder = Path(cache) / "wheels" / f"llama-cpp-python-{key}"
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        print(f"building llama-cpp-python {LLAMA_CPP_VERSION} for this CPU ({args or 'native'}); "
              "this takes several minutes", file=sys.stderr, flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(folder.parent)  # a build killed half-way
        tmp = temp_path(folder)  # renamed into place only when complete
        try:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary",
                            "llama-cpp-python", "-w", str(tmp), f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
                           env={**os.environ, "CMAKE_ARGS": args}, check=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        wheels = sorted(folder.glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--force-reinstall", "--no-deps", str(wheels[-1])], check=True)
    subprocess.run(pip + [str(wheels[-1])], check=True)  # its dependencies
    return wheels[-1]


def check_installed() -> None:
    """A RomaError with the pip command when llama-cpp-python is not installed (without loading it here)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        found = False
    if not found:
        raise RomaError("--vs llama.cpp needs llama-cpp-python, which is not installed",
                        hint=f"{LLAMA_CPP_PIP}; on x86 better: {reinstall_command()}")


class LlamaCppRunner:
    """llama-cpp-python on the same GGUF, in a child process: our token ids in, greedy argmax out, the same
    thread count. The child times its own calls, so the pipe is not in the figures."""

    name = "llama.cpp"

    def __init__(self, gguf: Path, n_ctx: int, threads: int):
        check_installed()
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of our threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, str(gguf), n_ctx, threads), daemon=True,
                                        name="roma-llama-cpp-peer")
        self._process.start()
        child.close()
        info = self._call(None)
        self.version, self.settings, self._system_info = info["version"], info["settings"], info["system_info"]
        self.label = f"llama.cpp (llama-cpp-python {self.version}, CPU)"

    def system_info(self) -> str:
        return self._system_info

    def run(self, ids: list[int], decode_tokens: int):
        return Run(**self._call((list(map(int, ids)), int(decode_tokens))))

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def _call(self, request):
        try:
            if request is not None:
                self._conn.send(request)
            reply = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise _crash_error(self._process.exitcode) from None
        if isinstance(reply, Exception):
            raise PeerFailed(f"llama.cpp failed: {reply}",
                            hint="check the GGUF file and the llama-cpp-python install") from None
        return reply


def _crash_error(exitcode: int | None) -> PeerFailed:
    if exitcode is not None and exitcode < 0 and -exitcode == signal.SIGILL:
        return PeerFailed(
            "llama.cpp died of an illegal instruction (SIGILL): llama-cpp-python was compiled for an instruction "
            "set this CPU advertises but the operating system or virtual machine does not enable (AMX on some "
            "Xeon VMs, or a build copied from another machine)",
            hint=f"reinstall it without native CPU detection: {reinstall_command()}")
    what = f"signal {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0 else \
        f"exit code {exitcode}"
    return PeerFailed(f"llama.cpp's process ended unexpectedly ({what})",
                     hint=f"check the llama-cpp-python install; to rebuild it: {reinstall_command()}")


def _serve(conn, gguf: str, n_ctx: int, threads: int) -> None:
    """The child: load the model, answer run requests until None."""
    try:
        import llama_cpp

        llm = llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              logits_all=False, verbose=False)
    except Exception as e:  # reported to the parent as a clean error
        conn.send(RuntimeError(f"{type(e).__name__}: {e}"))
        return
    n_vocab = llm.n_vocab()
    info = llama_cpp.llama_print_system_info()
    conn.send({
        "version": getattr(llama_cpp, "__version__", "?"),
        "settings": {"n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads, "n_batch": llm.n_batch,
                     "n_ubatch": getattr(getattr(llm, "context_params", None), "n_ubatch", None)},
        "system_info": (info.decode(errors="replace") if isinstance(info, bytes) else str(info)).strip(),
    })

    def argmax() -> int:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    while (request := conn.recv()) is not None:
        ids, decode_tokens = request
        llm.reset()
        t_start = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t_start
        token = argmax()
        ttft = time.perf_counter() - t_start
        out, decode = [token], 0.0
        for _ in range(decode_tokens):
            t0 = time.perf_counter()
            llm.eval([token])
            decode += time.perf_counter() - t0
            token = argmax()
            out.append(token)
        conn.send({"prompt_tokens": len(ids), "prefill_seconds": prefill, "decode_tokens": decode_tokens,
                   "decode_seconds": decode, "ttft_seconds": ttft, "wall_seconds": time.perf_counter() - t_start,
                   "forward_seconds": prefill + decode, "ids": out})
    close = getattr(llm, "close", None)
    if callable(close):
        close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--cmake-args"]:
        print(cmake_args())
    elif sys.argv[1:] == ["--install"]:
        try:
            print(f"installed {install(cache_root())}")
        except subprocess.CalledProcessError as e:
            sys.exit(f"error: building or installing llama-cpp-python failed (pip exit code {e.returncode}); "
                     "pip's messages are above")
    else:
        sys.exit("usage: python -m roma_runtime.llama_peer --cmake-args | --install")
