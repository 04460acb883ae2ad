"""Backends run the model; the engine talks to all of them through one small interface.

A backend creates KV caches and runs `forward(ids, cache)`: append the tokens at cache.length and return the
logits of the last one. `ref` is the numpy golden model; `emu` (the HLS C simulation behind the emulated
board) and `board` (a PYNQ overlay) implement the same interface.

The interface, in full:
- `name`, `config`; `numerics` ("quant" or "float") and `kv_dtype` (numpy dtype of the KV cache), which a
  saved session records and checks on restore.
- `new_cache(capacity)`: a Cache with `capacity`, `length` and `truncate(length)` (keep positions 0..length;
  rows past it are overwritten by later tokens). For session save/restore a cache also exposes its rows,
  either as arrays `keys`/`values` [layer, position, kv_head, head_dim] or by `read_rows(n)` -> (keys,
  values) and `write_rows(keys, values)` (which also sets length); see kv.cache_rows.
- `forward(ids, cache)`.
- `set_lora(slots)`: run from now on with the active adapter of `slots` (a lora.LoraSlots), or none when
  `slots.active` is None. The engine calls it whenever the slots' `version` changed (a load, unload or switch),
  before the next forward. `slots` offers what every backend needs: `golden_adapter()` for the golden model,
  and for hardware the slot index (`active_slot`), the packed LoRA memory image of each resident slot
  (`packed(name)`, `status()`) and `version`, so a device writes a slot's image once and switches by writing
  the active-slot register.
- optional, hardware backends: `check_lora(slots)` (RomaError when the engine's slots do not fit the core's
  LoRA unit: LORA_SLOTS slots of rank up to LORA_MAX_RANK; the engine calls it when it is created),
  `last_cycles()` ({stage: estimated FPGA cycles} of the last forward, from the core's status words, or
  None) and `clock_mhz` (the fabric clock of the build's board), which `roma bench` turns into estimated
  board tokens/s; `max_context`, the longest KV cache the backend runs when that is below the model's context
  (a build with an on-chip KV cache: its positions), which bounds the engine's default session length.

Which backend: `check_backend(None)` is `default_backend()`: "board" where PYNQ finds a real device, else
"emu"; float numerics run on "ref" only. The emu backend runs a build folder (roma compile output) as it is,
and any other model through its default build (`default_build`: 4-bit G32, compiled on first use and
cached under <roma cache>/builds).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import RomaError
from .model.config import ModelConfig
from .model.loader import LoadedModel

BACKENDS = ("ref", "emu", "board")


class Cache(Protocol):
    capacity: int
    length: int

    def truncate(self, length: int) -> None: ...


class Backend(Protocol):
    name: str
    config: ModelConfig

    def new_cache(self, capacity: int | None = None) -> Cache: ...

    def forward(self, ids: list[int], cache: Cache) -> np.ndarray: ...

    def set_lora(self, slots) -> None: ...


class RefBackend:
    """The golden model: `numerics` is "quant" (the accelerator's contract) or "float"."""

    def __init__(self, model: LoadedModel, numerics: str = "quant"):
        from .golden import GoldenModel

        self.golden = GoldenModel(model, numerics)
        self.config = model.config
        self.numerics = numerics
        self.kv_dtype = self.golden.kv_dtype
        self.name = f"ref ({numerics})"

    def new_cache(self, capacity: int | None = None):
        return self.golden.new_cache(capacity)

    def forward(self, ids, cache) -> np.ndarray:
        return self.golden.forward(ids, cache)[-1]

    def set_lora(self, slots) -> None:
        """The golden model adds the active slot's factors as stored (packed, storage-rounded)."""
        slots.apply_to(self.golden)


# --- choosing a backend ----------------------------------------------------------------------------------

_BOARD_PRESENT: bool | None = None


def board_present() -> bool:
    """True when PYNQ finds a real device (an FPGA board or an XRT card); the emulated board does not count.
    Probed once per process; False when pynq is not installed."""
    global _BOARD_PRESENT
    if _BOARD_PRESENT is None:
        try:
            import warnings

            with warnings.catch_warnings():  # pynq warns "No devices found" on a machine without one
                warnings.simplefilter("ignore")
                from pynq.pl_server.device import Device

                devices = list(Device.devices)
        except Exception:  # no pynq, or a probe that cannot run here
            devices = []
        _BOARD_PRESENT = any(type(d).__name__ != "EmuDevice" for d in devices)
    return _BOARD_PRESENT


def default_backend() -> str:
    """"board" where a real PYNQ device is present, else "emu" (the emulated board)."""
    return "board" if board_present() else "emu"


def check_backend(name: str | None, numerics: str = "quant") -> str:
    """The backend to use, checked before any model is loaded. None picks the default: default_backend() for
    the quant numerics, "ref" for float numerics (only the golden model runs those). Refuses an unknown name,
    float numerics on hardware, and the board backend on a machine without a board."""
    if name is None:
        return "ref" if numerics == "float" else default_backend()
    if name not in BACKENDS:
        raise RomaError(f"unknown backend '{name}'", hint=f"choose one of {', '.join(BACKENDS)}")
    if name != "ref" and numerics != "quant":
        raise RomaError(f"the {name} backend runs the accelerator's quant numerics, not '{numerics}'",
                        hint="use --numerics quant, or --backend ref for the float model")
    if name == "board" and not board_present():
        raise RomaError("the board backend needs a PYNQ board (or an XRT device), and this machine has none",
                        hint="run on the board, or use --backend emu (the emulated board) here")
    return name


# --- default builds for the emu backend ------------------------------------------------------------------

# What `roma compile` would be asked for when the user gives a model but no build: 4-bit weights in groups of
# 32 (a Q4_1 GGUF passes through bit for bit, anything else is rounded to nearest), 8-bit embeddings, on the
# default board. A different quantization is a `roma compile` away (then --model <build folder>).
DEFAULT_BUILD = {"bits": 4, "group": 32, "method": "rtn", "embedding_bits": 8, "board": "u250"}


def default_build_dir(model: LoadedModel, cache: str | Path | None = None, settings: dict | None = None) -> Path:
    """Where the default build of `model` lives: <cache>/builds/<name>-<key>, key = sha256 of the model's
    sha256, the settings and the runtime version (a new version may write builds differently)."""
    from . import __version__
    from .device.library import cache_root

    settings = dict(settings or DEFAULT_BUILD)
    key = hashlib.sha256(json.dumps({"model": model.identity(), "settings": settings,
                                     "tool": f"roma_runtime {__version__}"}, sort_keys=True).encode())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model.config.name)[:40] or "model"
    return (Path(cache) if cache else cache_root()) / "builds" / f"{name}-{key.hexdigest()[:16]}"


def default_build(model: LoadedModel, *, cache: str | Path | None = None, settings: dict | None = None,
                  progress: bool = True) -> tuple[Path, bool]:
    """(the default build folder of `model`, whether it was compiled now). Compiled on first use into a
    private folder (.<name>.<pid>.tmp) and renamed into place only once its manifest (written last) is there,
    so a compile that was interrupted is never reused; later calls find the folder and return at once. The
    private folders of compiles whose process is gone (killed with SIGKILL, which no cleanup survives) are
    removed here first (tempfiles.clean_stale)."""
    from .artifact.build import FORMAT_VERSION, read_manifest
    from .compiler.build import compile_model

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
    from .tempfiles import clean_stale, temp_path

    clean_stale(folder.parent)  # the private folders of compiles that were killed (SIGKILL) before their rename
    tmp = temp_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        compile_model(model, tmp, progress=False, force=True, **settings)
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


def create_backend(name: str | None, model: LoadedModel, numerics: str = "quant", *,
                   bitstream: str | Path | None = None, progress: bool = True) -> Backend:
    """The backend `name` (None: default_backend()) running `model`.

    emu: a build folder model (format "build") runs as it is; any other model gets its default build
    (default_build: compiled on first use, cached). board: RomaOverlay of the bitstream folder `bitstream`
    (.bit, .hwh, manifest.json) on the PYNQ device; it refuses a bitstream built for another model."""
    name = check_backend(name, numerics)
    if name == "ref":
        return RefBackend(model, numerics)
    if name == "emu":
        from .device.driver import EmuBackend

        if getattr(model, "format", None) == "build":
            build = Path(model.source)
        else:
            build, _ = default_build(model, progress=progress)
        return EmuBackend(build, progress=progress)
    from .device.driver import BoardBackend

    return BoardBackend(model, bitstream, progress=progress)
