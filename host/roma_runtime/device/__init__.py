"""The device layer: roma_core's register interface (from hw/hls/roma_core.h), the emulated PYNQ board, and
the PYNQ driver shared by the board and the emulation.

    interface.py  argument spec + Vitis HLS AXI-Lite layout, parsed from roma_core.h
    hwh.py        the .hwh of the emulated overlay (PS + roma_core + DDR), as PYNQ parses it
    emu.py        EmuDevice(pynq.Device): DDR buffers, MMIO, download, AP_START -> C simulation via ctypes
    library.py    libroma_core.so per build (make -C hw/hls emu), cached by content hash
    driver.py     RomaOverlay, RomaCoreDriver (DefaultIP, bindto the VLNV): the overlay and its explicit data path

The engine's backends that run on it (emu, board) are roma_runtime.backends.

pynq is imported lazily: `import roma_runtime.device` works without it.
"""

from .interface import Interface, load_interface

__all__ = ["Interface", "load_interface", "RomaOverlay", "RomaCoreDriver", "EmuDevice", "emu_device"]


def __getattr__(name):
    if name in ("RomaOverlay", "RomaCoreDriver"):
        from . import driver

        return getattr(driver, name)
    if name in ("EmuDevice", "emu_device"):
        from . import emu

        return getattr(emu, name)
    raise AttributeError(name)
