"""The emulated board: a pynq.Device whose programmable logic is the HLS C simulation of roma_core.

`EmuDevice` behaves as PYNQ's embedded device does for an overlay, so pynq.Overlay, DefaultIP drivers, the
register map and pynq.allocate run unchanged on it:

- probe: the device registers itself with pynq.Device (lowest priority: a real board comes first).
- memory: one DDR region (the .hwh's ddr4_0). `allocate` hands out PynqBuffers backed by host memory, each
  with its own device address from a first-fit allocator (page aligned, never 0); an address is free again
  when the last view of its buffer is gone. flush/invalidate are no-ops (host memory is coherent), counted
  in `stats` so tests can see that the driver calls them.
- an Alveo build's memories (the emulated bitstream's "memories": each pointer argument's, from the board's
  memory_banks): each is a region of its own (`get_memory_by_name(tag).allocate`), the core's description tags each
  argument's register with its memory as PYNQ does from an xclbin, and the core reads an argument only from its
  own memory, as a port linked to one bank does: a buffer elsewhere is refused.
- MMIO: register reads and writes (capability REGISTER_RW) go to the emulated blocks by address: roma_core's
  s_axi_control, the DDR, and the PS clock registers (CRL_APB/CRF_APB) that pynq's Clocks.set_pl_clk programs
  during Overlay.download.
- download: the "bitstream" is an overlay folder's `roma_core.emu` (JSON: the compiled library and the build
  folder). The library is loaded with ctypes, `roma_emu_load_build(build)` loads its ROM images, and the
  roma_core block appears at the address the .hwh gives it. The library reports the model dimensions it was
  compiled with (`roma_model_dims`); `EmuLibrary.check_config` refuses a build config that states others, so
  no host buffer is sized from numbers the core does not use (the driver calls it before allocating).
- AP_START: writing ap_start to CTRL snapshots the argument registers, decodes the scalars per their header
  types, translates every pointer register (a device address) to a host pointer in its buffer, clears
  ap_idle and calls roma_core(...) through ctypes on a worker thread (ctypes releases the GIL); when it
  returns, its output registers (the cycle counters) hold what it wrote, and ap_done, ap_ready and ap_idle are
  set (ap_done/ap_ready clear on read, as Vitis HLS does).
- GEMV paths: the library counts its tile GEMVs by the path they took (`roma_emu_gemv_paths`:
  `EmuLibrary.gemv_paths`), so a test sees every GEMV take the packed fast path rather than a slow fallback
  that computes the same bits.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import os
import threading
import weakref
from pathlib import Path

import numpy as np
from pynq.buffer import PynqBuffer
from pynq.pl_server.device import Device

from ..artifact import hwh as hwh_mod
from ..artifact.interface import (AP_DONE, AP_IDLE, AP_READY, AP_START, AUTO_RESTART, CTRL, IP_IER, IP_ISR, Interface,
                                  load_constants, load_interface)
from ..errors import RomaError

EMU_FORMAT = "roma-emu-overlay"
PAGE = 4096
RESERVED_LOW = 0x1000_0000  # the first 256 MiB of DDR are "the OS's": no buffer gets address 0
# an Alveo build's memories: 16 GiB regions from 256 GiB up, past the DDR region (no address in two memories)
BANK_BASE, BANK_SIZE = 0x40_0000_0000, 0x4_0000_0000

# Zynq UltraScale+ clock registers that pynq.ps.Clocks programs (CRL_APB / CRF_APB), with reset values that
# give IOPLL = RPLL = DPLL = 1500 MHz (33.333 MHz * 90 / 2), APLL 1200 MHz, and pl_clk0 = 100 MHz.
CRL_APB, CRF_APB = 0xFF5E_0000, 0xFD1A_0000

# What roma_model_dims (hw/hls/roma_core.cpp) reports, in its order: roma_model.h's N_LAYERS, DIM, FFN_DIM,
# N_HEADS, N_KV_HEADS, HEAD_DIM, KV_DIM, VOCAB, CONTEXT, KV_ONCHIP_CTX and TIED_EMBEDDINGS (0/1).
MODEL_DIMS = ("n_layers", "dim", "ffn_dim", "n_heads", "n_kv_heads", "head_dim", "kv_dim", "vocab_size",
              "context", "kv_onchip", "tied_embeddings")


def _pll(fbdiv: int, div2: int = 1) -> int:
    return (fbdiv << 8) | (div2 << 16)


def _plclk(div0: int, div1: int = 1, srcsel: int = 0) -> int:
    return (1 << 24) | (div1 << 16) | (div0 << 8) | srcsel


CRL_RESET = {0x20: _pll(90), 0x30: _pll(90), 0xC0: _plclk(15), 0xC4: _plclk(15), 0xC8: _plclk(15),
             0xCC: _plclk(15)}
CRF_RESET = {0x20: _pll(72), 0x2C: _pll(90), 0x38: _pll(90), 0x60: (1 << 8)}


class RegisterFile:
    """Plain read/write 32-bit registers (the PS clock controllers)."""

    def __init__(self, size: int, reset: dict[int, int] | None = None):
        self.words = np.zeros(size // 4, np.uint32)
        for off, v in (reset or {}).items():
            self.words[off // 4] = v

    def read(self, offset: int) -> int:
        return int(self.words[offset // 4])

    def write(self, offset: int, value: int) -> None:
        self.words[offset // 4] = value & 0xFFFFFFFF


class EmuMemory:
    """The emulated DDR: device addresses for host-memory buffers (first fit, page aligned)."""

    def __init__(self, device: "EmuDevice", base: int = hwh_mod.DDR_BASE, size: int = hwh_mod.DDR_SIZE,
                 reserved: int = RESERVED_LOW, align: int = PAGE):
        self.device = device
        self.base_address, self.size = base, size
        self.align = align
        self._lock = threading.Lock()
        self._free = [(base + reserved, size - reserved)]  # sorted (start, size)
        self._starts: list[int] = []                         # sorted starts of live buffers
        self._live: dict[int, tuple[int, int]] = {}          # start -> (size, host address)

    # --- allocation ---
    def allocate(self, shape, dtype="u4", **kwargs) -> PynqBuffer:
        dtype = np.dtype(dtype)
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        span = max(self.align, -(-nbytes // self.align) * self.align)
        raw = np.zeros(span + self.align, np.uint8)  # host memory (calloc: pages appear when touched)
        skip = (-raw.ctypes.data) % self.align
        host = raw[skip: skip + span]
        with self._lock:
            addr = self._take(span)
            bisect.insort(self._starts, addr)
            self._live[addr] = (span, host.ctypes.data)
        weakref.finalize(raw, self._release, addr)
        buf = PynqBuffer(shape, dtype, buffer=host, device=self.device, device_address=addr, coherent=False)
        return buf

    def _take(self, span: int) -> int:
        for i, (start, size) in enumerate(self._free):
            if size >= span:
                if size == span:
                    del self._free[i]
                else:
                    self._free[i] = (start + span, size - span)
                return start
        raise RomaError(f"the emulated DDR has no free block of {span} bytes "
                        f"({len(self._live)} buffers live)", hint="free buffers that are no longer used")

    def _release(self, addr: int) -> None:
        with self._lock:
            span, _ = self._live.pop(addr)
            self._starts.remove(addr)
            i = bisect.bisect(self._free, (addr, span))
            self._free.insert(i, (addr, span))
            # merge with the neighbours
            if i + 1 < len(self._free) and addr + span == self._free[i + 1][0]:
                self._free[i] = (addr, span + self._free[i + 1][1])
                del self._free[i + 1]
            if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == addr:
                self._free[i - 1] = (self._free[i - 1][0], self._free[i - 1][1] + self._free[i][1])
                del self._free[i]

    # --- address translation ---
    def translate(self, address: int, nbytes: int = 1) -> int:
        """The host address of device address `address` (RomaError when no buffer holds [address, +nbytes))."""
        with self._lock:
            i = bisect.bisect_right(self._starts, address) - 1
            if i >= 0:
                start = self._starts[i]
                span, host = self._live[start]
                if address + nbytes <= start + span:
                    return host + (address - start)
        raise RomaError(f"DDR address 0x{address:x} is not inside an allocated buffer")

    def extent(self, address: int) -> int:
        """Bytes from `address` to the end of its buffer."""
        self.translate(address)
        with self._lock:
            start = self._starts[bisect.bisect_right(self._starts, address) - 1]
            return start + self._live[start][0] - address

    @property
    def live_buffers(self) -> int:
        return len(self._live)

    # --- the DDR as an MMIO target ---
    def read(self, offset: int) -> int:
        return ctypes.c_uint32.from_address(self.translate(self.base_address + offset, 4)).value

    def write(self, offset: int, value: int) -> None:
        ctypes.c_uint32.from_address(self.translate(self.base_address + offset, 4)).value = value & 0xFFFFFFFF


class EmuCore:
    """roma_core's s_axi_control block in front of the C simulation."""

    def __init__(self, device: "EmuDevice", size: int, interface: Interface, library: "EmuLibrary",
                 memories: dict[str, str] | None = None):
        self.device, self.interface, self.library = device, interface, library
        self.memories = memories or {}  # pointer argument -> the memory its port reaches (an Alveo build's)
        self.words = np.zeros(size // 4, np.uint32)
        self.ctrl = AP_IDLE
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.calls = 0
        self._outputs: list = []  # (output argument, its cell) of the running call

    def read(self, offset: int) -> int:
        if offset == CTRL:
            with self._lock:
                v = self.ctrl
                self.ctrl &= ~(AP_DONE | AP_READY)  # clear on read
            return v
        return int(self.words[offset // 4])

    def write(self, offset: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if offset == CTRL:
            with self._lock:
                self.ctrl = (self.ctrl & ~AUTO_RESTART) | (value & AUTO_RESTART)
                start = bool(value & AP_START) and bool(self.ctrl & AP_IDLE)
            if start:
                self._start()
        elif offset == IP_ISR:
            self.words[offset // 4] ^= value & 0x3  # toggle on write
        else:
            self.words[offset // 4] = value

    def register(self, name: str) -> int:
        a = self.interface[name]
        v = int(self.words[a.offset // 4])
        if a.width == 64:
            v |= int(self.words[a.offset // 4 + 1]) << 32
        return v

    def arguments(self) -> list:
        """The call's arguments: scalars decoded per their types, pointers translated to host addresses, outputs
        (the cycle counters) the addresses of cells that _run copies into their registers."""
        args, self._outputs = [], []
        for a in self.interface.arguments:
            raw = self.register(a.name)
            if a.output:
                cell = np.zeros(1, a.dtype)
                self._outputs.append((a, cell))
                args.append(cell.ctypes.data)
            elif a.pointer:
                if raw == 0:
                    args.append(None)
                    continue
                tag = self.memories.get(a.name)
                try:
                    args.append((self.device.bank(tag) if tag else self.device.memory).translate(raw))
                except RomaError:
                    where = f"a buffer in {tag}, the memory its port reaches" if tag else "an allocated DDR buffer"
                    raise RomaError(f"roma_core argument {a.name} = 0x{raw:x} does not point into {where}") from None
            else:
                args.append(a.decode(raw))
        return args

    def _start(self) -> None:
        args = self.arguments()
        with self._lock:
            self.ctrl = (self.ctrl & AUTO_RESTART) | AP_START
            self.error = None
        self.calls += 1
        if self.device.synchronous:
            self._run(args)
        else:
            self._thread = threading.Thread(target=self._run, args=(args,), name="roma_core", daemon=True)
            self._thread.start()

    def _run(self, args) -> None:
        try:
            self.library.call(args)
            for a, cell in self._outputs:  # the core's output registers
                raw = int(cell.view(np.uint64 if a.width == 64 else np.uint32)[0])
                self.words[a.offset // 4] = raw & 0xFFFFFFFF
                if a.width == 64:
                    self.words[a.offset // 4 + 1] = raw >> 32
        except BaseException as e:  # reported by wait()/the device; the block still finishes
            self.error = e
        with self._lock:
            self.ctrl = (self.ctrl & AUTO_RESTART) | AP_DONE | AP_READY | AP_IDLE
            ier = int(self.words[IP_IER // 4])
            self.words[IP_ISR // 4] |= ier & 0x3

    def join(self, timeout: float | None = None) -> None:
        t = self._thread
        if t is not None:
            t.join(timeout)


class EmuLibrary:
    """libroma_core.so loaded with ctypes, its functions typed from the interface."""

    _loaded: dict[str, ctypes.CDLL] = {}

    def __init__(self, path: Path, interface: Interface):
        path = Path(path).resolve()
        if not path.is_file():
            raise RomaError(f"the emulated board's library {path} is missing",
                            hint="rebuild the emulated overlay (roma_runtime.backends.emulated.emu_overlay)")
        # libgomp reads OMP_WAIT_POLICY once, when it is loaded with the first library. Its default lets idle
        # threads spin between parallel loops; on a machine whose cores are shared (other processes, our own
        # Python thread polling ap_done) the spinning threads starve the working ones and a decode step went
        # from ~50 ms to ~1 s (2 cores under load). Passive threads sleep instead. A user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        try:
            lib = self._loaded.get(str(path)) or ctypes.CDLL(str(path))
        except OSError as e:
            raise RomaError(f"cannot load {path}: {e}") from None
        self._loaded[str(path)] = lib
        for sym in ("roma_core", "roma_emu_load_build", "roma_emu_gemv_paths"):
            if not hasattr(lib, sym):
                raise RomaError(f"{path} does not export {sym}", hint="rebuild it with make -C hw/hls emu")
        lib.roma_core.argtypes = [a.ctypes_type for a in interface.arguments]
        lib.roma_core.restype = None
        lib.roma_emu_load_build.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        lib.roma_emu_load_build.restype = ctypes.c_int
        lib.roma_emu_gemv_paths.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
        lib.roma_emu_gemv_paths.restype = ctypes.c_int
        self.dims = None
        if hasattr(lib, "roma_model_dims"):  # the dimensions roma_model.h gave it (MODEL_DIMS order)
            lib.roma_model_dims.argtypes = [ctypes.POINTER(ctypes.c_int32), ctypes.c_int]
            lib.roma_model_dims.restype = ctypes.c_int
            out = (ctypes.c_int32 * len(MODEL_DIMS))()
            count = lib.roma_model_dims(out, len(MODEL_DIMS))
            if count < len(MODEL_DIMS):
                raise RomaError(f"{path} reports {count} model dimensions, not {len(MODEL_DIMS)}",
                                hint="rebuild it with make -C hw/hls emu")
            self.dims = dict(zip(MODEL_DIMS, (int(v) for v in out)))
        self.threads = None
        if hasattr(lib, "roma_emu_set_threads"):  # ROMA_EMU_THREADS: threads of the parallel loops (0: OpenMP's)
            lib.roma_emu_set_threads.argtypes = [ctypes.c_int]
            lib.roma_emu_set_threads.restype = ctypes.c_int
            try:
                want = int(os.environ.get("ROMA_EMU_THREADS", "0"))
            except ValueError:
                raise RomaError(f"ROMA_EMU_THREADS must be a whole number, not {os.environ['ROMA_EMU_THREADS']!r}")
            self.threads = lib.roma_emu_set_threads(max(want, 0))
        self.path, self.lib, self.interface = path, lib, interface

    def check_config(self, config, context: int, kv_onchip: int = 0, where: str = "the build") -> None:
        """RomaError unless `config` (a ModelConfig), the build's context and the on-chip KV positions are the
        dimensions this library was compiled with: the host sizes the KV cache, logits and token buffers from
        them, and the core writes with its own. A library without roma_model_dims (built before it existed) is
        refused too."""
        if self.dims is None:
            raise RomaError(f"the emulated board's library {self.path} does not report its model dimensions",
                            hint="rebuild it (delete it from the roma cache, or make -C hw/hls emu)")
        have = {"n_layers": config.n_layers, "dim": config.dim, "ffn_dim": config.ffn_dim,
                "n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "head_dim": config.head_dim,
                "kv_dim": config.kv_dim, "vocab_size": config.vocab_size, "context": int(context),
                "kv_onchip": int(kv_onchip), "tied_embeddings": int(bool(config.tied_embeddings))}
        diff = [f"{k} {have[k]} vs {self.dims[k]}" for k in MODEL_DIMS if have[k] != self.dims[k]]
        if diff:
            raise RomaError(f"{where} states other model dimensions than the emulated core was compiled with "
                            f"(manifest vs roma_model.h: {', '.join(diff)}); no buffer was made",
                            hint="the build's manifest was edited or belongs to another build; recompile the build "
                                 "(roma compile --force)")

    def gemv_paths(self) -> dict[str, int]:
        """The tile GEMVs the library ran since it was loaded, by path (roma_core.h's GemvPath: GEMV_PATH_PACKED
        -> "packed", the fast path; "rom_unpacked" and "ddr_stream", the slow fallbacks)."""
        paths = sorted((v, k) for k, v in load_constants().items()
                       if k.startswith("GEMV_PATH_") and k != "GEMV_PATH_COUNT")
        out = (ctypes.c_uint64 * len(paths))()
        count = self.lib.roma_emu_gemv_paths(out, len(paths))
        if count != len(paths):
            raise RomaError(f"{self.path} counts {count} GEMV paths, roma_core.h names {len(paths)}",
                            hint="rebuild it with make -C hw/hls emu")
        return {k[len("GEMV_PATH_"):].lower(): int(n) for (_, k), n in zip(paths, out)}

    def load_build(self, build_dir: Path) -> None:
        err = ctypes.create_string_buffer(1024)
        rc = self.lib.roma_emu_load_build(str(build_dir).encode(), err, len(err))
        if rc != 0:
            raise RomaError(f"the emulated board could not load the build {build_dir}: "
                            f"{err.value.decode(errors='replace') or f'error {rc}'}",
                            hint="recompile the build with roma compile")

    def call(self, args) -> None:
        self.lib.roma_core(*args)


def read_emu_bitstream(path: str | Path) -> dict:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RomaError(f"{path} is not an emulated-board bitstream ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != EMU_FORMAT:
        raise RomaError(f"{path} is not an emulated-board bitstream",
                        hint="a board bitstream (.bit) needs a board; on this machine use the emu backend")
    return spec


class EmuDevice(Device):
    """The emulated board (see the module docstring)."""

    _probe_priority_ = 300
    _instance: "EmuDevice | None" = None

    @classmethod
    def _probe_(cls):
        return [cls.instance()]

    @classmethod
    def instance(cls) -> "EmuDevice":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self, tag: str = "roma_emu0"):
        super().__init__(tag)
        self.name = "roma-emu"
        self.arch = "aarch64"  # pynq.ps.Clocks then programs the ZynqMP clock registers emulated below
        self.capabilities = {"REGISTER_RW": True, "MEMORY_MAPPED": False, "CALLABLE": False}
        self.timestamp = ""
        self.bitfile_name = None
        self.synchronous = False
        self.memory = EmuMemory(self)
        self.banks: dict[str, EmuMemory] = {}  # an Alveo build's memories by tag, made when first named
        self.core: EmuCore | None = None
        self.library: EmuLibrary | None = None
        self.build_dir: Path | None = None
        self.stats = {"flush": 0, "invalidate": 0, "downloads": 0, "register_reads": 0, "register_writes": 0}
        self._regions: list[tuple[int, int, object]] = []
        self._map(CRL_APB, 0x100, RegisterFile(0x100, CRL_RESET))
        self._map(CRF_APB, 0x100, RegisterFile(0x100, CRF_RESET))
        self._map(self.memory.base_address, self.memory.size, self.memory)

    # --- address decoding ---
    def _map(self, base: int, size: int, target) -> None:
        self._regions = [r for r in self._regions if not (r[0] < base + size and base < r[0] + r[1])]
        self._regions.append((base, size, target))
        self._regions.sort(key=lambda r: r[0])

    def _target(self, address: int):
        for base, size, target in self._regions:
            if base <= address < base + size:
                return target, address - base
        raise RomaError(f"no emulated block at address 0x{address:x} (bus error)",
                        hint="is the overlay downloaded? (pynq.Overlay(..., download=True))")

    def read_registers(self, address: int, length: int) -> bytes:
        self.stats["register_reads"] += 1
        out = bytearray()
        for a in range(address, address + length, 4):
            target, off = self._target(a)
            out += int(target.read(off)).to_bytes(4, "little")
        return bytes(out[:length])

    def write_registers(self, address: int, data: bytes) -> None:
        self.stats["register_writes"] += 1
        data = bytes(data)
        if len(data) % 4:
            raise RomaError(f"unaligned register write of {len(data)} bytes at 0x{address:x}")
        # a 64-bit write lands low word first; the control word (if any) is written last by the driver
        for i in range(0, len(data), 4):
            target, off = self._target(address + i)
            target.write(off, int.from_bytes(data[i:i + 4], "little"))

    # --- memory ---
    @property
    def default_memory(self) -> EmuMemory:
        return self.memory

    def get_memory(self, description=None) -> EmuMemory:
        return self.memory

    @property
    def live_buffers(self) -> int:
        """Buffers allocated in the DDR and the memories, and not yet freed."""
        return self.memory.live_buffers + sum(m.live_buffers for m in self.banks.values())

    def get_memory_by_name(self, name: str) -> EmuMemory:
        if name not in self.banks:
            raise RomaError(f"the emulated board has no memory '{name}'",
                            hint=f"its memories: {', '.join(self.banks) or 'none but its DDR'}")
        return self.banks[name]

    def bank(self, tag: str) -> EmuMemory:
        """The memory `tag` of an Alveo build (made on first use; it stays for the device's life, as a card's)."""
        if tag not in self.banks:
            base = BANK_BASE + len(self.banks) * BANK_SIZE
            self.banks[tag] = EmuMemory(self, base=base, size=BANK_SIZE)
            self._map(base, BANK_SIZE, self.banks[tag])
        return self.banks[tag]

    def flush(self, bo, offset, ptr, size) -> None:
        self.stats["flush"] += 1

    def invalidate(self, bo, offset, ptr, size) -> None:
        self.stats["invalidate"] += 1

    # --- bitstreams ---
    def get_bitfile_metadata(self, bitfile_name: str, partial: bool = False):
        from pynq.pl_server.hwh_parser import get_hwh_name
        from pynqmetadata.frontends import Metadata
        from pynqmetadata.views.runtime import RuntimeMetadataParser

        spec = read_emu_bitstream(bitfile_name)
        hwh = Path(get_hwh_name(bitfile_name))
        if not hwh.is_file():
            raise RomaError(f"the emulated overlay has no hardware description {hwh}")
        parser = RuntimeMetadataParser(Metadata(input=str(hwh)))
        parser.bin_data = parser.xclbin_data = parser.dtbo_data = None
        # an Alveo build's memories: each argument's register names its memory, as in PYNQ's ip_dict of an xclbin
        for ip in parser.ip_dict.values():
            if ip.get("type") == hwh_mod.VLNV:
                for argument, tag in (spec.get("memories") or {}).items():
                    if argument not in ip["registers"]:
                        raise RomaError(f"{bitfile_name} gives a memory to '{argument}', which roma_core does not "
                                        "have", hint="rebuild the emulated overlay (delete it from the roma cache)")
                    ip["registers"][argument]["memory"] = tag
                    self.bank(tag)
        return parser

    def download(self, bitstream, parser=None) -> None:
        spec = read_emu_bitstream(bitstream.bitfile_name)
        folder = Path(bitstream.bitfile_name).resolve().parent
        if parser is None:
            parser = self.get_bitfile_metadata(bitstream.bitfile_name)
        interface = load_interface(spec["header"]) if spec.get("header") else load_interface()
        library = EmuLibrary(folder / spec["library"], interface)
        build_dir = Path(spec["build"])
        library.load_build(build_dir)
        ips = [(k, v) for k, v in parser.ip_dict.items() if v.get("type") == hwh_mod.VLNV]
        if not ips:
            raise RomaError(f"{bitstream.bitfile_name}: the hardware description has no {hwh_mod.VLNV}")
        _, ip = ips[0]
        if self.core is not None:
            self.core.join()
        self._regions = [r for r in self._regions if not isinstance(r[2], EmuCore)]
        self.core = EmuCore(self, ip["addr_range"], interface, library, spec.get("memories"))
        self._map(ip["phys_addr"], ip["addr_range"], self.core)
        self.library, self.build_dir = library, build_dir
        self.stats["downloads"] += 1
        self.post_download(bitstream, parser, self.name)

    def gen_cache(self, bitstream, parser=None) -> None:
        pass

    def shutdown(self) -> None:
        if self.core is not None:
            self.core.join()

    def close(self) -> None:
        pass


def emu_device() -> EmuDevice:
    """The emulated board, registered with pynq even when pynq probed its devices before this import."""
    dev = EmuDevice.instance()
    devices = getattr(Device, "_devices", None)
    if devices is not None and dev not in devices:
        devices.append(dev)
    return dev
