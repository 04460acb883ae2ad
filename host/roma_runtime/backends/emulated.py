"""The `emu` backend: roma_core's HLS C simulation behind the emulated PYNQ board (device.emu), run through
the same RomaOverlay and driver as a board, and the cache of emulated overlays it runs from.

It runs a compiled build (a build folder, or a LoadedModel read from one) and never compiles a model: finding
or compiling a model's build is the caller's explicit step before (roma_runtime.builds.default_build; the CLI
takes it). What it does build on first use, and caches, is the emulated "bitstream" of a build (emu_overlay):
the HLS library compiled for the build's dimensions (device.library) and the folder PYNQ opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..artifact.boards import argument_memories
from ..artifact.build import verify_build
from ..device.driver import MANIFEST, RomaOverlay
from ..device.emu import EMU_FORMAT, emu_device
from ..artifact.hwh import write_hwh
from ..artifact.interface import HLS_DIR, load_interface
from ..device.library import build_library, cache_root
from ..errors import RomaError
from ..model.loader import LoadedModel
from ..tempfiles import clean_stale, temp_path
from .core import CoreBackend

BITSTREAM = "roma_core.emu"
HWH = "roma_core.hwh"
# what a refusal to run a model that is not a build tells the user to do first
BUILD_STEP = ("find or compile the model's build first: roma_runtime.builds.default_build(model) (roma chat and "
              "roma generate do this), then pass it as build=; or roma compile --model ... --out <folder> and "
              "run that folder")


class EmuBackend(CoreBackend):
    """The `emu` backend: the HLS C simulation behind the emulated board, through pynq.Overlay and the
    driver. build: a build folder (roma compile output) or a LoadedModel read from one (load_build).

    The emulated board holds one overlay at a time, as a board does: when several EmuBackends live in one
    process (other builds, or the same library), each one downloads its overlay again before its next call
    and rewrites its LoRA slots, so none runs on another's ROMs or adapters."""

    def __init__(self, build, *, cache: str | Path | None = None, hls_dir: str | Path | None = None,
                 progress: bool = True):
        build_dir = Path(build.source if isinstance(build, LoadedModel) else build)
        if not (build_dir / MANIFEST).is_file():
            raise RomaError(f"the emu backend runs a compiled build, and {build_dir} is not one", hint=BUILD_STEP)
        bit = emu_overlay(build_dir, cache=cache, hls_dir=hls_dir, progress=progress)
        self.build_dir = build_dir
        self.device = emu_device()
        self._token = object()
        self._setup(RomaOverlay(str(bit), expect=build_dir, device=self.device))
        self.name = "emu"
        self._claim()

    def _claim(self) -> None:
        self.device.roma_owner = self._token
        self._lora_loaded = {}
        self.sampler_owner = None  # the library's sampler state may be another backend's
        self.core.forget_onchip()  # and its on-chip KV copy
        self.core.select_lora(None)  # the library's LoRA state may be another backend's
        self._lora_active = None
        if self._slots is not None:
            self.set_lora(self._slots)

    def _ensure(self) -> None:
        if getattr(self.device, "roma_owner", None) is not self._token:
            self.overlay.download()
            self._claim()


def emu_overlay(build_dir: str | Path, *, cache: str | Path | None = None, hls_dir: str | Path | None = None,
                progress: bool = True) -> Path:
    """The emulated "bitstream" of a build (built on first use, cached): a folder holding roma_core.emu (the
    library and the build), roma_core.hwh, the build's manifest.json and libroma_core.so. Returns the path of
    roma_core.emu."""
    build_dir = Path(build_dir).resolve()
    manifest = verify_build(build_dir)
    hls_dir = Path(hls_dir or HLS_DIR).resolve()
    lib, _ = build_library(build_dir, hls_dir=hls_dir, cache=cache, progress=progress)
    manifest_text = (build_dir / MANIFEST).read_text()
    key = hashlib.sha256(f"{build_dir}\0{lib}\0".encode() + manifest_text.encode()).hexdigest()[:20]
    folder = (Path(cache) if cache else cache_root()) / "emu" / key
    bit = folder / BITSTREAM
    images = [e["file"] for e in (manifest.get("ddr"), manifest.get("uram")) if e]  # the weight images
    if bit.is_file() and (folder / HWH).is_file() and (folder / MANIFEST).is_file() and all(
            (folder / f).exists() for f in images):
        return bit
    # Made in a private folder and renamed into place whole (a killed process leaves only .<key>.<pid>.tmp,
    # removed by the next call: tempfiles.clean_stale).
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder.parent)
    tmp = temp_path(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        header = hls_dir / "roma_core.h"
        write_hwh(tmp / HWH, load_interface(header),
                  parameters={"ROMA_MODEL": manifest["model"]["name"],
                              "ROMA_MODEL_SHA256": manifest["model"]["sha256"], "ROMA_BUILD": str(build_dir)})
        (tmp / MANIFEST).write_text(manifest_text)
        (tmp / "libroma_core.so").symlink_to(lib)
        for f in images:  # the DDR and URAM weight images next to the "bitstream", as on a board
            (tmp / f).symlink_to(build_dir / f)
        # an Alveo build's memories: each pointer argument reaches only its own (the emulated board emulates them)
        spec = {"format": EMU_FORMAT, "version": 1, "library": "libroma_core.so", "build": str(build_dir),
                "header": str(header), "model": manifest["model"]["name"],
                "memories": argument_memories(manifest.get("board") or {})}
        (tmp / BITSTREAM).write_text(json.dumps(spec, indent=1))
        if folder.exists() and not bit.is_file():  # an incomplete folder (an older runtime's, written in place)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process put a complete one there first
            if not bit.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bit


