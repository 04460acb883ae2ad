"""Finding or compiling a model's default build: the explicit, cached step before the emu backend runs a model.

The emu backend runs a compiled build (roma compile output) and never compiles one itself. A user who gives
`roma chat`, `roma generate`, `roma serve` or `roma bench` a model that is not a build gets its default build:
the CLI (commands/common.load_engine) calls `default_build` before it opens the backend, which finds the build
in the cache, or compiles it once, saying so and showing the compile's progress. Library users take the same
step: `Engine(model, backend, build=build_for(backend, model))`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

from . import __version__
from .backends import needs_build
from .artifact.boards import get_board
from .artifact.build import FORMAT_VERSION, read_manifest
from .compiler.build import compile_model
from .device.library import cache_root
from .errors import RomaError
from .model.loader import LoadedModel
from .tempfiles import clean_stale, temp_path

# What `roma compile` would be asked for when the user gives a model but no build: 4-bit weights in groups of
# 32 (a Q4_1 GGUF passes through bit for bit, anything else is rounded to nearest), 8-bit embeddings, on the
# default board. A different quantization is a `roma compile` away (then --model <build folder>).
DEFAULT_BUILD = {"bits": 4, "group": 32, "method": "rtn", "embedding_bits": 8, "board": "u250"}


def default_settings(lora_slots: int | None = None, lora_slot_rank: int | None = None,
                     lora_dtype: str | None = None) -> dict:
    """DEFAULT_BUILD with a LoRA unit that holds what a command asks for: more slots, a higher slot rank or
    another storage type than the board's default unit (boards.json "lora_unit") reserves. A request the
    default unit holds keeps DEFAULT_BUILD (and its cached build)."""
    unit = get_board(DEFAULT_BUILD["board"]).lora_unit
    settings = dict(DEFAULT_BUILD)
    if lora_slots is not None and lora_slots > unit.slots:
        settings["lora_slots"] = lora_slots
    if lora_slot_rank is not None and lora_slot_rank > unit.rank:
        settings["lora_slot_rank"] = lora_slot_rank
    if lora_dtype is not None and lora_dtype != unit.dtype:
        settings["lora_dtype"] = lora_dtype
    return settings


def default_build_dir(model: LoadedModel, cache: str | Path | None = None, settings: dict | None = None) -> Path:
    """Where the default build of `model` lives: <cache>/builds/<name>-<key>, key = sha256 of the model's
    sha256, the settings and the runtime version (a new version may write builds differently)."""
    settings = dict(settings or DEFAULT_BUILD)
    key = hashlib.sha256(json.dumps({"model": model.identity(), "settings": settings,
                                     "tool": f"roma_runtime {__version__}"}, sort_keys=True).encode())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model.config.name)[:40] or "model"
    return (Path(cache) if cache else cache_root()) / "builds" / f"{name}-{key.hexdigest()[:16]}"


def default_build(model: LoadedModel, *, cache: str | Path | None = None, settings: dict | None = None,
                  progress: bool = True, tensor_progress: bool = False) -> tuple[Path, bool]:
    """(the default build folder of `model`, whether it was compiled now). Found in the cache when it is there
    (at once, silently); else compiled into a private folder (.<name>.<pid>.tmp) and renamed into place only
    once its manifest (written last) is there, so a compile that was interrupted is never reused. The private
    folders of compiles whose process is gone (killed with SIGKILL, which no cleanup survives) are removed
    here first (tempfiles.clean_stale).

    progress: one line on stderr when it compiles (what, and where it is cached); tensor_progress: the
    compile's progress per tensor too (quantizing, packing: compile_model's progress)."""
    settings = dict(settings or DEFAULT_BUILD)
    folder = default_build_dir(model, cache, settings)
    try:
        manifest = read_manifest(folder)
    except RomaError:
        manifest = None
    if (manifest is not None and manifest.get("model", {}).get("sha256") == model.identity()
            and manifest.get("format_version") == FORMAT_VERSION):
        return folder, False
    if progress:
        print(f"roma: compiling {model.config.name} for the emulated board ({settings['bits']}-bit "
              f"G{settings['group']}, once; cached in {folder}) ...", file=sys.stderr, flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder.parent)  # the private folders of compiles that were killed (SIGKILL) before their rename
    tmp = temp_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        compile_model(model, tmp, progress=tensor_progress, force=True, **settings)
        if folder.exists():  # a half-written or stale build (no manifest, or another model's)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process put a complete build there first
            if read_manifest(folder) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, True


def build_for(backend: str, model: LoadedModel, *, settings: dict | None = None, progress: bool = True,
              tensor_progress: bool = False) -> Path | None:
    """The build that backend `backend` ("ref", "emu", "board") runs `model` from, when it needs one that the
    model is not (backends.needs_build: the emu backend on a model that is not a build): its default build
    (settings: default_settings(...) for a LoRA unit that holds what the command asks), found in the cache or
    compiled (default_build). None when it needs none."""
    if not needs_build(backend, model):
        return None
    folder, _ = default_build(model, settings=settings, progress=progress, tensor_progress=tensor_progress)
    return folder
