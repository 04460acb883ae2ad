"""libroma_core.so for a build: the HLS C simulation compiled by g++ (as hls4ml builds its C simulation).

    make -C hw/hls emu MODEL_BUILD=<build folder> OUT=<path>/libroma_core.so

The library depends on the HLS sources (hw/hls: Makefile, *.h, *.cpp, include/**) and on the build's
generated roma_model.h (the dimensions are constexpr). It is cached by a content hash of exactly those files
(plus the compiler command) under <cache>/lib/<hash>/libroma_core.so, so it is rebuilt only when one of them
changes; a failed compile raises RomaError with the compiler's last lines. The compiler writes a temporary
name (.libroma_core.so.<pid>.tmp) that is renamed into place when complete; one left by a killed process is
removed by the next compile (tempfiles.clean_stale).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..artifact.interface import HLS_DIR
from ..cpu import cpu_flags
from ..errors import RomaError
from ..tempfiles import clean_stale, temp_path

LIBRARY = "libroma_core.so"
MODEL_HEADER = "roma_model.h"
SOURCE_SUFFIXES = (".h", ".hpp", ".cpp", ".cc")


def cache_root() -> Path:
    """ROMA_CACHE, else $XDG_CACHE_HOME/roma, else ~/.cache/roma."""
    if os.environ.get("ROMA_CACHE"):
        return Path(os.environ["ROMA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "roma"


def hls_sources(hls_dir: Path = HLS_DIR) -> list[Path]:
    """The files the library is compiled from: the Makefile, the top's sources beside it and every header under
    include/. Testbenches, Vitis scripts and build output are not, so the sources an installed wheel ships
    (package data) give the same key as the repository's hw/hls."""
    hls_dir = Path(hls_dir)
    files = [hls_dir / "Makefile"] if (hls_dir / "Makefile").is_file() else []
    candidates = [*sorted(hls_dir.glob("*")), *sorted((hls_dir / "include").rglob("*"))]
    return files + [p for p in candidates if p.is_file() and p.suffix in SOURCE_SUFFIXES]


def content_hash(build_dir: Path, hls_dir: Path = HLS_DIR) -> str:
    """sha256 over the HLS sources (names and contents), the build's roma_model.h, the compiler and the CPU's
    instruction sets (a library built for AVX-512 must not be loaded on a machine without it)."""
    build_dir, hls_dir = Path(build_dir), Path(hls_dir)
    header = build_dir / MODEL_HEADER
    if not header.is_file():
        raise RomaError(f"{build_dir} has no {MODEL_HEADER}; it is not a complete build",
                        hint="compile it with roma compile")
    h = hashlib.sha256()
    for p in hls_sources(hls_dir):
        h.update(str(p.relative_to(hls_dir)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    h.update(b"roma_model.h\0" + header.read_bytes() + b"\0")
    h.update(("CXX=" + os.environ.get("CXX", "") + " CXXFLAGS=" + os.environ.get("CXXFLAGS", "")).encode())
    h.update(" ".join(sorted(cpu_flags())).encode())  # the Makefile compiles for these instruction sets
    return h.hexdigest()


def library_path(build_dir: Path, hls_dir: Path = HLS_DIR, cache: Path | None = None) -> Path:
    return (Path(cache) if cache else cache_root()) / "lib" / content_hash(build_dir, hls_dir)[:20] / LIBRARY


def build_library(build_dir: str | Path, *, hls_dir: str | Path = HLS_DIR, cache: str | Path | None = None,
                  force: bool = False, progress: bool = True, make: str = "make") -> tuple[Path, bool]:
    """(path of libroma_core.so for this build, whether it was compiled now). Cached by content hash."""
    build_dir, hls_dir = Path(build_dir).resolve(), Path(hls_dir).resolve()
    out = library_path(build_dir, hls_dir, cache)
    if out.is_file() and not force:
        return out, False
    if not (hls_dir / "Makefile").is_file():
        raise RomaError(f"no Makefile in {hls_dir}", hint="the HLS sources are part of the repository")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)  # what a compile killed half-way (SIGKILL) left: never loaded, removed now
    tmp = temp_path(out)
    cmd = [make, "-C", str(hls_dir), "emu", f"MODEL_BUILD={build_dir}", f"OUT={tmp}"]
    if progress:
        print(f"roma: compiling the emulated board (HLS C simulation of roma_core) for {build_dir.name} ...",
              file=sys.stderr, flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise RomaError(f"'{make}' is not installed", hint="install make and g++ (apt-get install build-essential)")
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        raise RomaError(f"compiling the emulated board failed ({' '.join(cmd)}):\n{tail}",
                        hint="the C++ compiler's messages are above; fix the HLS sources or the toolchain")
    os.replace(tmp, out)
    if progress:
        print(f"roma: emulated board compiled in {time.time() - t0:.1f} s ({out})", file=sys.stderr, flush=True)
    return out, True


def clear_cache(cache: str | Path | None = None) -> None:
    shutil.rmtree((Path(cache) if cache else cache_root()) / "lib", ignore_errors=True)
