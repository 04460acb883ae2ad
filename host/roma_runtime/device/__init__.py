"""The device layer: the emulated PYNQ board and the PYNQ driver shared by the board and the emulation. The
register interface they drive (roma_core.h) and the overlay's .hwh are artifact/interface.py and artifact/hwh.py.

    emu.py        EmuDevice(pynq.Device): DDR buffers, MMIO, download, AP_START -> C simulation via ctypes
    library.py    libroma_core.so per build (make -C hw/hls emu), cached by content hash
    driver.py     RomaOverlay, RomaCoreDriver (DefaultIP, bindto the VLNV): the overlay and its explicit data path

The engine's backends that run on it (emu, board) are roma_runtime.backends.
"""
