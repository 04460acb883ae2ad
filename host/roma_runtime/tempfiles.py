"""Crash-safe writes: every file or folder the runtime writes appears under its final name only when complete.

A writer puts its output under a temporary name in the same folder, `.<name>.<pid>.tmp` (or
`.<name>.<pid>.<random>.tmp`), and renames it into place, which is atomic on one file system. A process killed
half-way (SIGKILL, power loss) leaves only such a temporary behind, which no reader takes for the real thing;
`clean_stale` removes the temporaries whose process is gone, and the writers call it for their folder when they
start (the default builds, the emulated board's libraries and overlays, session files, build manifests).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

# .<anything>.<pid>.tmp or .<anything>.<pid>.<random>.tmp (tempfile.mkstemp's random part: [a-z0-9_])
STALE = re.compile(r"^\..+\.(?P<pid>\d+)(?:\.[A-Za-z0-9_]+)?\.tmp$")


def temp_path(path: str | Path) -> Path:
    """The temporary name of `path` for this process: .<name>.<pid>.tmp beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine's PID namespace)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove the temporaries (files or folders named as in STALE) in `folder` whose process is no longer
    running; returns what was removed. Missing folders and races with other cleaners are fine."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = STALE.match(p.name)
        if not m or pid_alive(int(m.group("pid"))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError:
            pass
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary name beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))
