"""The argument spec of roma_core and its AXI-Lite register layout, both derived from hw/hls/roma_core.h.

The header is the single source of truth: this module parses its `extern "C" void roma_core(...)` declaration
(argument names, order, scalar types, m_axi pointers) and lays the arguments out as Vitis HLS lays out an
`s_axi_control` bundle:

    0x00  CTRL    bit 0 ap_start (R/W, cleared by the handshake), bit 1 ap_done (R, clear on read),
                  bit 2 ap_idle (R), bit 3 ap_ready (R, clear on read), bit 7 auto_restart (R/W)
    0x04  GIER    bit 0 global interrupt enable
    0x08  IP_IER  bit 0 ap_done, bit 1 ap_ready interrupt enable
    0x0C  IP_ISR  bit 0 ap_done, bit 1 ap_ready interrupt status (toggle on write)
    0x10  first argument. Each argument takes its data words and then one reserved word:
          a 32-bit scalar (uint32_t, int32_t, float) 1 + 1 words (8 bytes), a pointer (m_axi offset) or
          64-bit scalar 2 + 1 words (12 bytes, low word first). A reference (`uint32_t &name`) is an output
          register the core writes (its extra word is Vitis HLS's name_ctrl, the ap_vld bit).

The same layout is what the board's .hwh says (PYNQ's register map) and what the emulated board's generated
.hwh says, so the driver addresses registers by argument name on both.
"""

from __future__ import annotations

import ctypes
import re
import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from ..errors import RomaError

# The HLS sources: the repository's hw/hls, linked into the package (host/roma_runtime/hls) and shipped with it
HLS_DIR = Path(__file__).resolve().parents[1] / "hls"
HEADER = HLS_DIR / "roma_core.h"
TOP = "roma_core"

# control registers: name, offset, fields (name, bit offset, width, access)
CTRL, GIER, IP_IER, IP_ISR = 0x00, 0x04, 0x08, 0x0C
AP_START, AP_DONE, AP_IDLE, AP_READY, AUTO_RESTART = 0x1, 0x2, 0x4, 0x8, 0x80
FIRST_ARG = 0x10
CONTROL_REGISTERS = (
    ("CTRL", CTRL, "Control signals", (("AP_START", 0, 1, "read-write"), ("AP_DONE", 1, 1, "read-only"),
                                      ("AP_IDLE", 2, 1, "read-only"), ("AP_READY", 3, 1, "read-only"),
                                      ("RESERVED_1", 4, 3, "read-only"), ("AUTO_RESTART", 7, 1, "read-write"),
                                      ("RESERVED_2", 8, 24, "read-only"))),
    ("GIER", GIER, "Global Interrupt Enable Register", (("Enable", 0, 1, "read-write"),
                                                        ("RESERVED", 1, 31, "read-only"))),
    ("IP_IER", IP_IER, "IP Interrupt Enable Register", (("CHAN0_INT_EN", 0, 1, "read-write"),
                                                        ("CHAN1_INT_EN", 1, 1, "read-write"),
                                                        ("RESERVED", 2, 30, "read-only"))),
    ("IP_ISR", IP_ISR, "IP Interrupt Status Register", (("CHAN0_INT_ST", 0, 1, "read-write"),
                                                        ("CHAN1_INT_ST", 1, 1, "read-write"),
                                                        ("RESERVED", 2, 30, "read-only"))),
)

# C scalar types -> (numpy dtype, ctypes type, bits)
_SCALARS = {
    "uint32_t": (np.uint32, ctypes.c_uint32, 32), "int32_t": (np.int32, ctypes.c_int32, 32),
    "uint16_t": (np.uint16, ctypes.c_uint16, 16), "int16_t": (np.int16, ctypes.c_int16, 16),
    "uint8_t": (np.uint8, ctypes.c_uint8, 8), "int8_t": (np.int8, ctypes.c_int8, 8),
    "uint64_t": (np.uint64, ctypes.c_uint64, 64), "int64_t": (np.int64, ctypes.c_int64, 64),
    "float": (np.float32, ctypes.c_float, 32), "double": (np.float64, ctypes.c_double, 64),
    "unsigned": (np.uint32, ctypes.c_uint32, 32), "int": (np.int32, ctypes.c_int32, 32),
    "bool": (np.uint8, ctypes.c_bool, 8),
}


@dataclass(frozen=True)
class Argument:
    """One argument of roma_core and its register."""

    name: str
    index: int
    ctype: str             # as written in the header, e.g. "const int32_t *" or "float"
    base: str              # the element / scalar type, e.g. "int32_t"
    pointer: bool
    const: bool
    offset: int            # AXI-Lite byte offset of its (first) data word
    width: int             # register width in bits: 32, or 64 for pointers and 64-bit scalars
    output: bool = False   # a register the core writes (a reference argument), not one the host sets

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_SCALARS[self.base][0])

    @property
    def ctypes_type(self):
        if self.pointer or self.output:  # an output: the address of the host's cell
            return ctypes.c_void_p
        return _SCALARS[self.base][1]

    @property
    def words(self) -> int:
        return self.width // 32

    def encode(self, value) -> int:
        """The register value (an unsigned int of `width` bits) of a host value."""
        if self.pointer:
            v = int(value)
        elif self.base == "float":
            v = struct.unpack("<I", struct.pack("<f", float(value)))[0]
        elif self.base == "double":
            v = struct.unpack("<Q", struct.pack("<d", float(value)))[0]
        else:
            v = int(value)
        return v & ((1 << self.width) - 1)

    def decode(self, raw: int):
        """The host value of a register value (the inverse of encode; pointers stay ints)."""
        if self.pointer:
            return int(raw)
        if self.base == "float":
            return struct.unpack("<f", struct.pack("<I", raw & 0xFFFFFFFF))[0]
        if self.base == "double":
            return struct.unpack("<d", struct.pack("<Q", raw))[0]
        bits = _SCALARS[self.base][2]
        raw &= (1 << bits) - 1
        if np.dtype(_SCALARS[self.base][0]).kind == "i" and raw >> (bits - 1):
            raw -= 1 << bits
        return raw


@dataclass(frozen=True)
class Interface:
    """roma_core's arguments in header order and the AXI-Lite layout (`registers`: name -> Argument)."""

    arguments: tuple[Argument, ...]
    header: str

    @cached_property  # looked up for every register of every command (the driver, the emulated board)
    def registers(self) -> dict[str, Argument]:
        return {a.name: a for a in self.arguments}

    @property
    def pointers(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.pointer)

    @property
    def scalars(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if not a.pointer and not a.output)

    @property
    def outputs(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.output)

    @property
    def end(self) -> int:
        """One past the last reserved word."""
        last = self.arguments[-1]
        return last.offset + 4 * (last.words + 1)

    @property
    def addr_width(self) -> int:
        """Address bits of the s_axi_control bundle (Vitis HLS: enough for `end`)."""
        return max(4, (self.end - 1).bit_length())

    def layout(self) -> dict[str, dict]:
        """name -> {offset, width, type} for every register, control registers included."""
        out = {name: {"offset": off, "width": 32, "type": "control"} for name, off, _, _ in CONTROL_REGISTERS}
        for a in self.arguments:
            out[a.name] = {"offset": a.offset, "width": a.width, "type": a.ctype}
        return out

    def __getitem__(self, name: str) -> Argument:
        return self.registers[name]


_DECL = re.compile(r'extern\s+"C"\s+void\s+' + TOP + r'\s*\((?P<args>[^)]*)\)\s*;', re.S)
_PARAM = re.compile(r"^(?P<const>const\s+)?(?P<base>[A-Za-z_][A-Za-z0-9_ ]*?)\s*(?P<ptr>\*|&)?\s*"
                    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def parse_interface(text: str, source: str = "roma_core.h") -> Interface:
    """The Interface of the `extern "C" void roma_core(...)` declaration in a header's text."""
    m = _DECL.search(_strip_comments(text))
    if not m:
        raise RomaError(f'{source} has no extern "C" void {TOP}(...) declaration')
    args, offset = [], FIRST_ARG
    for i, raw in enumerate(p.strip() for p in m.group("args").split(",")):
        pm = _PARAM.match(" ".join(raw.split()))
        if not pm:
            raise RomaError(f"{source}: cannot read argument {i} of {TOP}: '{raw}'")
        base = pm.group("base").strip()
        pointer, output = pm.group("ptr") == "*", pm.group("ptr") == "&"
        if base not in _SCALARS:
            raise RomaError(f"{source}: argument '{pm.group('name')}' has type '{base}', which the driver "
                            f"does not know", hint="use a fixed-width integer, float or double")
        width = 64 if pointer or _SCALARS[base][2] == 64 else 32
        ctype = ("const " if pm.group("const") else "") + base + (" *" if pointer else " &" if output else "")
        args.append(Argument(name=pm.group("name"), index=i, ctype=ctype, base=base,
                             pointer=pointer, const=pm.group("const") is not None, offset=offset,
                             width=width, output=output))
        offset += 4 * (width // 32 + 1)
    names = [a.name for a in args]
    if len(set(names)) != len(names):
        raise RomaError(f"{source}: duplicate argument names in {TOP}")
    return Interface(tuple(args), source)


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> Interface:
    return parse_interface(Path(path).read_text(), path)


def load_interface(header: str | Path = HEADER) -> Interface:
    """The Interface of roma_core.h (re-read when the file changes)."""
    header = Path(header)
    if not header.is_file():
        raise RomaError(f"the contract header {header} is missing")
    return _load(str(header), header.stat().st_mtime_ns)


def parse_enums(text: str) -> dict[str, int]:
    """NAME = value constants of the header's enums and constexprs (commands, status words, error codes)."""
    text = _strip_comments(text)
    out = {}
    for m in re.finditer(r"\b([A-Z][A-Z0-9_]+)\s*=\s*(0x[0-9A-Fa-f]+|-?\d+)u?\b", text):
        out[m.group(1)] = int(m.group(2), 0)
    for m in re.finditer(r"\b([A-Z][A-Z0-9_]+)\s*=\s*([A-Z][A-Z0-9_]+)\s*[;,]", text):
        if m.group(2) in out:
            out[m.group(1)] = out[m.group(2)]
    return out


@lru_cache(maxsize=4)
def _constants(path: str, mtime_ns: int) -> dict[str, int]:
    return parse_enums(Path(path).read_text())


def load_constants(header: str | Path = HEADER) -> dict[str, int]:
    header = Path(header)
    return _constants(str(header), header.stat().st_mtime_ns)


def kernel_constants(name: str) -> dict[str, int]:
    """The constants of the kernel header include/roma/NAME: the byte formats the kernels read (DDR image
    header, LoRA image layout, q8 exponent range) have their one definition there."""
    return load_constants(HLS_DIR / "include" / "roma" / name)
