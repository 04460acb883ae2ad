"""The `board` backend: roma_core on a PYNQ board (or an XRT card), from a bitstream folder: roma_core.bit,
its .hwh and the build's manifest.json (and ddr_weights.bin when the build streams tensors from DDR,
uram_weights.bin when it holds tensors in URAM).

It cannot be exercised without a board: it refuses cleanly when there is none.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pynq.pl_server.device import Device

from ..device.driver import RomaOverlay, check_manifest
from ..errors import RomaError
from ..model.loader import LoadedModel
from .core import CoreBackend


class BoardBackend(CoreBackend):
    """The `board` backend: RomaOverlay of a bitstream folder (roma_core.bit + .hwh + the build's
    manifest.json) on the PYNQ device. Refuses a machine without a board, a folder without a bitstream, and a
    bitstream built for another model or quantization than `model`."""

    def __init__(self, model: LoadedModel, bitstream: str | Path | None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            devices = [d for d in Device.devices if type(d).__name__ != "EmuDevice"]
        if not devices:
            raise RomaError("the board backend needs a PYNQ board (or an XRT device), and this machine has none",
                            hint="run on the board, or use --backend emu (the emulated board) here")
        if bitstream is None:
            raise RomaError("the board backend needs the bitstream folder of a build",
                            hint="give --bitstream DIR (roma_core.bit, roma_core.hwh and the build's manifest.json)")
        folder = Path(bitstream)
        bits = [folder] if folder.is_file() else sorted(folder.glob("*.bit"))
        if len(bits) != 1:
            raise RomaError(f"{bitstream} holds {len(bits)} .bit files; a bitstream folder holds exactly one",
                            hint="give the folder with roma_core.bit, its .hwh and manifest.json")
        expect = model.metadata.get("roma.build")  # a build's own manifest, else the model's sha256 is checked
        if expect is None:
            have = check_manifest(bits[0])
            if have.get("model", {}).get("sha256") != model.identity():
                raise RomaError(f"the bitstream {bits[0]} was built for {have.get('model', {}).get('name', '?')}, "
                                f"not for this model", hint="give the bitstream of this model's build")
        self._setup(RomaOverlay(str(bits[0]), expect=expect, device=devices[0]))
        self.name = "board"
