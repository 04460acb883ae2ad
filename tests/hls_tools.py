"""Building and running the HLS C-simulation testbenches (hw/hls) from pytest: one helper for every test_hls_*.

    build_tb(out, "tb_NAME")            make -C hw/hls BUILD=out out/tb_NAME (asserts success, returns out)
    run_tb(out, "tb_NAME", data)        run out/tb_NAME data -> (exit code, mismatches, compared, output)
    make(out, target, ...)              any Makefile target with this interpreter as PYTHON
    csim(out)                           make out/tb_brom_tile, then `make csim` (without the model case)
    load_generator("NAME")              hw/hls/tb/gen_NAME.py as a module
    compile_synth(tmp, source, ...)     g++ a snippet on the synthesis path (__SYNTHESIS__ defined, -Werror)
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HLS = ROOT / "hw" / "hls"

HAS_GXX = shutil.which("g++") is not None and shutil.which("make") is not None
needs_gxx = pytest.mark.skipif(not HAS_GXX, reason="the C++ testbench needs g++ and make (apt-get install g++ make)")


def load_generator(name: str):
    """hw/hls/tb/gen_<name>.py as a module (it is a script, not a package member)."""
    path = HLS / "tb" / f"gen_{name}.py"
    spec = importlib.util.spec_from_file_location(f"gen_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make(build: Path, *targets: str, timeout: float = 600, nice: bool = False,
         **variables) -> subprocess.CompletedProcess:
    """make -C hw/hls BUILD=build PYTHON=<this interpreter> [VAR=value ...] targets, host/ on PYTHONPATH; with
    nice=True at a lower priority, it and its compilers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "host"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = (["nice", "-n", "10"] if nice else []) + ["make", "-C", str(HLS), f"BUILD={build}",
                                                     f"PYTHON={sys.executable}"]
    args += [f"{k}={v}" for k, v in variables.items()] + list(targets)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def build_tb(build: Path, name: str, no_warnings: bool = False, nice: bool = False) -> Path:
    """Builds build/<name> (a tb/<name>.cpp testbench); asserts that it compiled. Returns build. In the session's
    shared folder (conftest's hls_build) it may be up to date already, compiled by `make csim`, whose test
    checks the warnings of every testbench it compiles."""
    r = make(build, f"{build}/{name}", nice=nice)
    assert r.returncode == 0, f"building {name} failed:\n{r.stdout}\n{r.stderr}"
    if no_warnings:
        assert "warning" not in r.stderr, r.stderr
    return build


def csim(build: Path) -> subprocess.CompletedProcess:
    """`make csim` without the model case (GEN_FLAGS=--no-model): it generates the golden data and compiles and runs
    every testbench, tb_brom_tile compiled before on its own (its many kernel instances draw GCC's
    -Wmaybe-uninitialized at -O1), so that the run's warnings are the other testbenches'. At a lower priority
    (nice): the session runs it in the background (conftest's hls_csim_in_background)."""
    build_tb(build, "tb_brom_tile", nice=True)
    return make(build, "csim", timeout=900, nice=True, GEN_FLAGS="--no-model")


def summary_pattern(name: str) -> re.Pattern:
    return re.compile(rf"{name}: (\d+) mismatches of (\d+)")


def run_tb(build: Path, name: str, data: Path, timeout: float = 120) -> tuple[int, int, int, str]:
    """Runs build/<name> on a golden-data folder -> (exit code, mismatches, compared, stdout + stderr)."""
    r = subprocess.run([str(build / name), str(data)], capture_output=True, text=True, timeout=timeout)
    m = summary_pattern(name).search(r.stdout)
    assert m, f"no summary line:\n{r.stdout}\n{r.stderr}"
    return r.returncode, int(m.group(1)), int(m.group(2)), r.stdout + r.stderr


def compile_synth(tmp_path: Path, source: str, *, run: bool = False, link: bool = True, extra=(),
                  opt: str = "-O1", input: bytes | None = None, wextra: bool = True):
    """Compiles `source` with __SYNTHESIS__ defined and -Werror (the synthesis path of the headers).

    link=False stops at an object file. With run=True the executable is run (stdin `input`) and its
    CompletedProcess returned; otherwise the compiler's."""
    (tmp_path / "top.cpp").write_text(source)
    out = tmp_path / ("top" if link else "top.o")
    args = ["g++", "-std=c++14", "-pedantic-errors", opt, "-ffp-contract=off", "-D__SYNTHESIS__", "-Wall"]
    args += (["-Wextra"] if wextra else []) + ["-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label",
                                               f"-I{HLS / 'include'}", *extra]
    args += ([] if link else ["-c"]) + [str(tmp_path / "top.cpp"), "-o", str(out)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if not run:
        return r
    return subprocess.run([str(out)], input=input, capture_output=True, timeout=30,
                          text=input is None)
