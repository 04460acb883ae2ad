"""Backends run the model; the engine, the bench and the CLI talk to all of them through one interface.

    base.py       Backend: the complete interface (every member, capabilities a backend may lack included)
    reference.py  ref: the numpy golden model, quant or float numerics
    core.py       what emu and board share: roma_core behind a RomaOverlay (device.driver)
    emulated.py   emu: the HLS C simulation behind the emulated board, and its cache of emulated overlays
    board.py      board: a PYNQ board's overlay of a bitstream folder

A backend takes what it runs as it is: ref a loaded model, emu a compiled build (a build folder, or a model read
from one), board a bitstream folder. None of them compiles a model: finding or compiling a model's default
build is an explicit step before (roma_runtime.builds.default_build), which the CLI takes when `needs_build`.

Which backend: `check_backend(None)` is `default_backend()`: "board" where PYNQ finds a real device, else
"emu"; float numerics run on "ref" only. `create_backend` opens one; emu and board import pynq, so they are
imported when asked for.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import RomaError
from ..model.loader import LoadedModel
from .base import Backend
from .reference import RefBackend

BACKENDS = ("ref", "emu", "board")

_BOARD_PRESENT: bool | None = None


def board_present() -> bool:
    """True when PYNQ finds a real device (an FPGA board or an XRT card); the emulated board does not count.
    Probed once per process; False when pynq is not installed."""
    global _BOARD_PRESENT
    if _BOARD_PRESENT is None:
        try:
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


def needs_build(name: str, model: LoadedModel) -> bool:
    """Whether backend `name` needs a compiled build for `model` that the model is not: the emu backend runs
    builds only, so for any other model the caller finds or compiles one first (builds.default_build)."""
    return name == "emu" and model.format != "build"


def create_backend(name: str | None, model: LoadedModel, numerics: str = "quant", *,
                   build: str | Path | None = None, bitstream: str | Path | None = None,
                   progress: bool = True) -> Backend:
    """The backend `name` (None: default_backend()) running `model`; it never compiles a model.

    ref: the golden model of `model`. emu: the build `build` (a build folder; default: `model` itself, when it
    was read from a build folder); RomaError naming the build step when there is none (see needs_build).
    progress: the emu backend's one-time compile of the emulated board's library for the build. board:
    RomaOverlay of the bitstream folder `bitstream` (.bit, .hwh, manifest.json) on the PYNQ device; it refuses
    a bitstream built for another model."""
    name = check_backend(name, numerics)
    if name == "ref":
        return RefBackend(model, numerics)
    if name == "emu":  # pynq is imported only by the backends that drive an overlay: ref runs without it
        from .emulated import EmuBackend

        return EmuBackend(model if build is None else build, progress=progress)
    from .board import BoardBackend

    return BoardBackend(model, bitstream)
