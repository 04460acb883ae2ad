"""The PYNQ driver of roma_core, in the explicit style of FINN's driver, for a board and the emulated board.

    ol = RomaOverlay("roma_core.bit", expect="builds/smollm2-q4")   # refuses a bitstream of another build
    core = ol.core                                                  # RomaCoreDriver, bound by VLNV
    logits = core.prefill(ids, position=0)
    ids = core.generate(first_id, position, n=32, sampling=params, seed=1)

Every call is the same explicit data path: pack the inputs into the DDR buffers, flush them, write the
argument registers by name (offsets from the .hwh), write ap_start, wait for ap_done, invalidate the outputs,
read the status word (RomaError on an error code) and unpack. Buffers are allocated once per driver; a KV
cache is a DDR buffer of its own (`KVBuffer`), so several sessions can share one core.

A build whose placement streams tensors from DDR ships their images as ddr_weights.bin next to the bitstream
(and its manifest): RomaOverlay checks it against the manifest's sha256 (and its own header's CRC), and the
driver copies it once into the `ddr_weights` buffer, sized to the image, which every command passes to the
core, to its first weight port and to the others (ddr_weights_1..3: the build's weight ports stream a tensor's tiles
at once; on a Zynq board every HP port reaches the one DDR, so they share the buffer; an Alveo card's ports are
in banks of their own, so each bank gets a copy). The core refuses a run command without this build's image on
every port it reads (ERR_DDR_WEIGHTS).

Memories: on an Alveo card each pointer argument reaches only the memory its m_axi bundle is linked to
(alveo_link_BOARD.cfg; the xclbin's `memory` tag of the argument's register, which PYNQ puts in the IP's
description), so the driver allocates every buffer in its argument's memory (`device.get_memory_by_name`). A
Zynq board's description has no such tags: every buffer is in its one DDR.

A build whose plan puts tensors in URAM ("URAM-load-once") ships their bank words as uram_weights.bin next to the
bitstream: UltraScale+ URAM holds nothing after configuration, so RomaOverlay (after every download) copies the
image into a buffer, flushes it, issues CMD_LOAD_WEIGHTS and compares the checksum the core read back from its
banks (STATUS_CHECKSUM) with the manifest's; a refusal or a mismatch is one RomaError and the overlay is not used.
Until the load succeeded the core refuses every run command (ERR_WEIGHTS_NOT_LOADED).

The build's context (`roma compile --context N`: the manifest's "context", the core's CONTEXT; the model's
context length by default) bounds every KV buffer and command: a longer one is refused, naming the limit.

A build compiled with an on-chip KV cache (`roma compile --kv-onchip N`: the manifest's "kv_onchip", the
core's KV_ONCHIP_CTX) holds N positions of keys and values on chip and attends over those; every row it
computes is also written to the session's DDR buffer, which stays the source of truth, so sessions, rollback,
prefix reuse and save/restore work on the DDR buffers as without it. The driver tracks which buffer (the
KVBuffer object and its device address) and how many rows 0..n the on-chip copy holds: before a run on another
buffer, or past those rows, it issues CMD_KV_LOAD for the missing rows (its cycles are added to the run's);
a host write into a buffer (KVBuffer.flush: restore, or any other write) forgets the copy of that buffer.
KV buffers longer than N positions are refused, naming the limit.

The engine's backends (roma_runtime.backends: emu, board) run on this driver; this module holds only the
overlay and its explicit data path.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from pathlib import Path

import numpy as np
from pynq import DefaultIP, Overlay

from ..artifact import ddr_image as ddr_format
from ..artifact import hwh as hwh_mod
from ..artifact import uram_image as uram_format
from ..artifact.build import MANIFEST, read_manifest, uram_layout, verify_file
from ..artifact.interface import AP_DONE, AP_START, CTRL, load_constants, load_interface
from ..artifact.kv_layout import KV_ARGUMENTS, KvLayout
from ..errors import RomaError
from ..golden.sampler import OnChipParams
from ..model.config import ModelConfig

# the identity of a build: a bitstream serves only the model and quantization it was built for
QUANT_KEYS = ("bits", "group", "method", "embedding_bits", "bits_budget", "lora_rank")

# the weight ports' pointer arguments (roma_core.h); the KV cache's are KV_ARGUMENTS (kv_layout: kv_cache,
# kv_cache_1 .. kv_cache_3, each position set's ports)
WEIGHT_ARGUMENTS = ("ddr_weights", "ddr_weights_1", "ddr_weights_2", "ddr_weights_3")

# sample_mode register values (roma_core.h: 0 = logits only)
SAMPLE_OFF, SAMPLE_GREEDY, SAMPLE_RANDOM = 0, 1, 2


def _obj(value) -> dict:
    return value if isinstance(value, dict) else {}


def _identity(manifest: dict) -> dict:
    q = _obj(manifest.get("quantization"))
    ddr = _obj(manifest.get("ddr"))
    return {"model": _obj(manifest.get("model")).get("sha256"), **{k: q.get(k) for k in QUANT_KEYS},
            "ddr_image": ddr.get("crc32"), "uram_image": _obj(manifest.get("uram")).get("checksum"),
            "context": manifest.get("context"),
            "kv_onchip": kv_onchip_tokens(manifest)}


def build_context(manifest: dict) -> int:
    """The build's context (roma compile --context, CONTEXT in roma_model.h): the longest KV cache its core runs."""
    context = manifest.get("context")
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise RomaError(f"the build manifest's context is {context!r}, not a whole number of tokens",
                        hint="recompile the build")
    return context


def kv_onchip_tokens(manifest: dict) -> int:
    """Positions of the build's on-chip KV cache (roma compile --kv-onchip), 0 when its KV cache is in DDR only."""
    tokens = _obj(manifest.get("kv_onchip")).get("tokens") or 0
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise RomaError(f"the build manifest's kv_onchip.tokens is {tokens!r}, not a whole number",
                        hint="recompile the build")
    return tokens


def _as_manifest(expect) -> dict:
    if isinstance(expect, dict):
        return expect
    path = Path(expect)
    if path.is_dir():
        path = path / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RomaError(f"cannot read the build manifest {path} ({e})") from None


def check_manifest(bitfile: str | Path, expect=None) -> dict:
    """The manifest next to a bitstream; RomaError when it is missing or (with expect: a manifest dict or a
    build folder) describes another model or quantization."""
    path = Path(bitfile).resolve().parent / MANIFEST
    if not path.is_file():
        raise RomaError(f"no build manifest next to the bitstream {bitfile}",
                        hint=f"copy the build's {MANIFEST} next to the bitstream")
    have = _as_manifest(path)
    if not isinstance(have, dict):
        raise RomaError(f"{path} is not a build manifest", hint="copy the build's manifest.json next to the bitstream")
    if expect is not None:
        want = _as_manifest(expect)
        a, b = _identity(have), _identity(want)
        if a != b:
            diff = ", ".join(f"{k}: bitstream {a[k]!r} vs asked {b[k]!r}" for k in a if a[k] != b[k])
            name = have.get("model", {}).get("name", "?")
            raise RomaError(f"the bitstream {bitfile} was built for another model or quantization "
                            f"({name}; {diff})",
                            hint="build the bitstream for this build (make -C bitstreams), or use the "
                                 "build it was made for")
    read_manifest(path.parent)  # its seal: the manifest was not edited after the build wrote it
    return have


class KVBuffer:
    """A KV cache in DDR: fp16 bit patterns [N_LAYERS][2][capacity][KV_DIM] (roma_core.h), its positions split into
    the build's position sets and its rows over their KV ports (kv_layout.KvLayout: one buffer per (set, port), each
    on its argument, kv_cache, kv_cache_1, kv_cache_2, kv_cache_3, and each [N_LAYERS][2][rows_per_set(capacity)]
    [KV_DIM / ports]). The host writes rows with write_rows (copy, flush) and reads them with rows (invalidate,
    copy)."""

    def __init__(self, driver: "RomaCoreDriver", capacity: int):
        c = driver.config
        self.driver = driver
        self.capacity = int(capacity)
        self.layout = driver.kv_layout
        shape = (c.n_layers, 2, self.layout.rows_per_set(self.capacity), self.layout.port_dim(c.kv_dim))
        self.buffers = [driver.allocate(shape, np.uint16, argument) for argument in self.layout.arguments]
        for b in self.buffers:
            b[:] = 0
            b.flush()

    def flush(self) -> None:
        """Make host writes visible to the core; an on-chip copy the core holds of this buffer is stale now."""
        for b in self.buffers:
            b.flush()
        self.driver.kv_written(self)

    @property
    def device_address(self) -> int:
        return self.buffers[0].device_address

    @property
    def port_addresses(self) -> list[int]:
        """The addresses of KV_ARGUMENTS (kv_cache .. kv_cache_3): each (set, port)'s buffer at its argument; 0 for an
        argument the build's layout has no buffer on (the core never reads it then, and on an Alveo card no buffer
        of this cache is in its memory)."""
        addresses = [0] * len(KV_ARGUMENTS)
        for i, b in zip(self.layout.argument_indices, self.buffers):
            addresses[i] = b.device_address
        return addresses

    def rows(self, n: int) -> np.ndarray:
        """A copy of positions 0..n-1 of every layer's keys and values: uint16 [N_LAYERS][2][n][KV_DIM]."""
        for b in self.buffers:
            b.invalidate()
        return np.array(self.layout.join([b[:, :, :k] for b, k in zip(self.buffers, self.layout.buffer_rows(n))]))

    def write_rows(self, rows: np.ndarray) -> None:
        """Positions 0..n-1 of every layer's keys and values from uint16 [N_LAYERS][2][n][KV_DIM], then flush."""
        for b, part in zip(self.buffers, self.layout.split(rows)):
            b[:, :, :part.shape[2]] = part
        self.flush()


class RomaCoreDriver(DefaultIP):
    """DefaultIP driver of roma_core (bound to its VLNV). Call configure(config) before the first command
    (RomaOverlay does)."""

    bindto = [hwh_mod.VLNV]
    poll_timeout = float(os.environ.get("ROMA_TIMEOUT", "3600"))

    def __init__(self, description):
        super().__init__(description)
        self.interface = load_interface()
        self.constants = load_constants()
        registers = description.get("registers") or {}
        self.offsets = self._offsets(registers)
        # the memory each pointer argument reaches (an xclbin's tag; none on a Zynq board: its one DDR)
        self.memories = {a.name: registers[a.name]["memory"] for a in self.interface.pointers
                         if isinstance(registers.get(a.name), dict) and registers[a.name].get("memory")}
        self.config = None
        self._kv: KVBuffer | None = None  # the default KV buffer, made on first use (kv)
        self._kv_capacity: int | None = None
        self.status = None
        self.last_cycles = 0
        self.stages = stage_names(self.constants)
        self.stage_cycles: dict[str, int] = {}  # per stage, summed over the last command's calls (prefill chunks)
        self.calls = 0
        self.context = 0  # the build's context (CONTEXT): the longest KV cache and command
        self.kv_onchip = 0  # positions of the on-chip KV cache (0: KV in DDR only)
        self.kv_layout = KvLayout(1, 1)  # the sets and KV ports a DDR KV buffer is split over (one until configure)
        self._onchip = None  # (weakref to the KVBuffer, its device address, rows 0..n) the on-chip copy holds
        self._written: dict[str, object] = {}  # what this driver wrote into the argument registers (_call)

    # --- registers ---
    def _offsets(self, registers: dict) -> dict[str, int]:
        """name -> byte offset from the .hwh (a 64-bit register, or Vitis HLS's name_1/name_2 halves), checked
        against the layout computed from roma_core.h."""
        out = {}
        for a in self.interface.arguments:
            if a.name in registers:
                off = registers[a.name]["address_offset"]
            elif f"{a.name}_1" in registers:
                off = registers[f"{a.name}_1"]["address_offset"]
            elif not registers:
                off = a.offset
            else:
                raise RomaError(f"the IP's register map has no register '{a.name}'",
                                hint="the bitstream was built from another roma_core.h; rebuild it")
            if off != a.offset:
                raise RomaError(f"register {a.name} is at 0x{off:x} in the hardware description but at "
                                f"0x{a.offset:x} in roma_core.h", hint="rebuild the bitstream")
            out[a.name] = off
        return out

    def write_arg(self, name: str, value) -> None:
        a = self.interface[name]
        raw = a.encode(value)
        off = self.offsets[name]
        self.mmio.write(off, raw & 0xFFFFFFFF)
        if a.width == 64:
            self.mmio.write(off + 4, raw >> 32)

    def read_arg(self, name: str):
        return self._decode(self.interface[name], self.mmio.read)

    def _decode(self, a, word):
        """Argument a's value from its register words: word(offset) reads the 32 bits at an offset."""
        off = self.offsets[a.name]
        raw = word(off)
        if a.width == 64:
            raw |= word(off + 4) << 32
        return a.decode(raw)

    def read_outputs(self) -> dict[str, int]:
        """The core's output registers (the cycle counters). Where register accesses go through the device (an
        Alveo card: each crosses PCIe) in one read of the span they lie in; memory-mapped (Zynq), a 32-bit load
        each, as AXI-Lite takes them."""
        outs = [a for a in self.interface.arguments if a.output]
        if not self.mmio.device.has_capability("REGISTER_RW"):
            return {a.name: self.read_arg(a.name) for a in outs}
        lo = min(self.offsets[a.name] for a in outs)
        n = (max(self.offsets[a.name] + a.width // 8 for a in outs) - lo) // 4
        words = np.frombuffer(self.mmio.device.read_registers(self.mmio.base_addr + lo, 4 * n), np.uint32)
        return {a.name: self._decode(a, lambda off: int(words[(off - lo) // 4])) for a in outs}

    def start(self) -> None:
        self.mmio.write(CTRL, AP_START)

    def wait(self, timeout: float | None = None) -> None:
        """Poll ap_done (clear on read), backing off from a tight loop to 1 ms sleeps."""
        deadline = time.monotonic() + (timeout or self.poll_timeout)
        delay = 0.0
        while not self.mmio.read(CTRL) & AP_DONE:
            if time.monotonic() > deadline:
                raise RomaError(f"roma_core did not finish within {timeout or self.poll_timeout:.0f} s",
                                hint="reload the overlay; set ROMA_TIMEOUT for very long calls")
            time.sleep(delay)
            delay = min(0.001, delay * 2 + 1e-5)
        core = getattr(self.device, "core", None)
        if core is not None and getattr(core, "error", None) is not None:
            raise RomaError(f"the emulated roma_core failed: {core.error}")

    # --- buffers ---
    def allocate(self, shape, dtype, argument: str):
        """A buffer for the core's pointer `argument`, in the memory that argument reaches."""
        memory = self.memories.get(argument)
        if memory is None:
            return self.device.allocate(shape, dtype)
        return self.device.get_memory_by_name(memory).allocate(shape, dtype)

    def configure(self, config, context: int, kv_capacity: int | None = None, max_tokens: int | None = None,
                  ddr_image: np.ndarray | None = None, kv_onchip: int = 0,
                  kv_layout: KvLayout = KvLayout(1, 1)) -> None:
        """Allocate the buffers once for a model config (roma_model.h's dimensions); context: the build's context
        (build_context of its manifest, CONTEXT); ddr_image: the build's DDR weight image (uint32 words,
        read_ddr_image), None when every tensor is on chip; kv_onchip: positions of the build's on-chip KV cache
        (kv_onchip_tokens of its manifest), 0 without one; kv_layout: its KV sets and ports (KvLayout.from_manifest)."""
        self.config = config
        self.context = int(context)
        self.kv_onchip = int(kv_onchip)
        self.kv_layout = kv_layout
        self.forget_onchip()
        self.check_kv_capacity(kv_capacity or self.max_context)
        self.max_tokens = int(max_tokens or self.context)
        words = int(self.constants.get("STATUS_WORDS", 32))
        self.tokens_in = self.allocate((self.max_tokens,), np.int32, "tokens_in")
        self.tokens_out = self.allocate((self.max_tokens,), np.int32, "tokens_out")
        self.logits = self.allocate((config.vocab_size,), np.float32, "logits")
        self.status_buf = self.allocate((words,), np.uint32, "status")
        self.lora_staging = self.allocate((1,), np.uint8, "lora_staging")
        # the tensors the placement streams from DDR, read by the core on every GEMV (one word when none): a copy in
        # each memory a weight port reaches
        image = np.zeros(1, np.uint32) if ddr_image is None else np.asarray(ddr_image, np.uint32)
        copies = {}
        for argument in WEIGHT_ARGUMENTS:
            memory = self.memories.get(argument)
            if memory not in copies:
                copies[memory] = self.allocate(image.shape, np.uint32, argument)
                copies[memory][:] = image
                copies[memory].flush()
        self.weight_images = {argument: copies[self.memories.get(argument)] for argument in WEIGHT_ARGUMENTS}
        self.ddr_weights = self.weight_images["ddr_weights"]
        self.uram_weights = self.allocate((1,), np.uint32, "uram_weights")  # the URAM load image, while loading
        self._kv, self._kv_capacity = None, kv_capacity  # the default KV buffer is made on first use

    def load_weights(self, image: np.ndarray, checksum: int) -> int:
        """Write the build's URAM load image (uint32 words, read_uram_image) into the core's URAM banks: copy it into
        a buffer, flush, CMD_LOAD_WEIGHTS, and compare the checksum the core read back from its banks with
        `checksum` (the manifest's). Returns the cycles the load took; RomaError when the core refuses the image or
        the banks read back another checksum (the core then refuses to run until a load succeeds)."""
        self._need_config()
        image = np.asarray(image, np.uint32)
        self.uram_weights = self.allocate(image.shape, np.uint32, "uram_weights")
        self.uram_weights[:] = image
        self.uram_weights.flush()
        try:
            status = self._call(self.constants["CMD_LOAD_WEIGHTS"])
        finally:
            self.uram_weights = self.allocate((1,), np.uint32, "uram_weights")  # the banks hold it now: not kept
        got = int(status[self.constants["STATUS_CHECKSUM"]])
        if got != checksum:
            raise RomaError(f"the URAM weight banks read back checksum 0x{got:08x}, but the build's is "
                            f"0x{checksum:08x}")
        return self.last_cycles

    @property
    def kv(self) -> KVBuffer | None:
        """The default KV buffer (commands without kv= use it), made on first use: the engine's sessions bring
        their own, so a long context is not allocated twice (or at all, by a driver that only refuses)."""
        if self._kv is None and self.config is not None:
            self._kv = KVBuffer(self, self._kv_capacity or self.max_context)
        return self._kv

    @kv.setter
    def kv(self, value: KVBuffer | None) -> None:
        self._kv = value

    @property
    def max_context(self) -> int:
        """The longest KV cache the core runs: its on-chip KV positions, else the build's context."""
        return self.kv_onchip or self.context

    def check_kv_capacity(self, capacity: int) -> None:
        """RomaError naming the limit when a KV cache of `capacity` positions is longer than the build's context
        or its on-chip KV."""
        if capacity > self.context:
            raise RomaError(f"a context of {capacity} tokens is longer than this build's context of {self.context} "
                            f"tokens (compiled with --context {self.context})",
                            hint=f"use a context of at most {self.context} tokens (--context {self.context}), or "
                                 "recompile with a larger --context")
        if self.kv_onchip and capacity > self.kv_onchip:
            raise RomaError(f"a context of {capacity} tokens does not fit this build's on-chip KV cache of "
                            f"{self.kv_onchip} tokens (compiled with --kv-onchip {self.kv_onchip})",
                            hint=f"use a context of at most {self.kv_onchip} tokens (--context {self.kv_onchip}), "
                                 "or recompile with a larger --kv-onchip, or without it to keep the KV cache in DDR")

    def new_kv(self, capacity: int | None = None) -> KVBuffer:
        self._need_config()
        capacity = int(capacity or self.max_context)
        self.check_kv_capacity(capacity)
        return KVBuffer(self, capacity)

    # --- the on-chip KV copy ---
    def forget_onchip(self) -> None:
        """The on-chip KV copy holds nothing known (a new overlay, or another driver ran on the core)."""
        self._onchip = None

    def kv_written(self, kv: KVBuffer) -> None:
        """The host wrote rows of `kv`: the on-chip copy of it, if that is what the core holds, is stale."""
        if self._onchip_rows(kv):
            self._onchip = None

    def _onchip_rows(self, kv: KVBuffer) -> int:
        """Rows 0..n of `kv` the on-chip copy holds (0 when it holds another buffer)."""
        if self._onchip is None:
            return 0
        ref, address, rows = self._onchip
        return rows if ref() is kv and address == kv.device_address else 0

    def _need_config(self) -> None:
        if self.config is None:
            raise RomaError("the roma_core driver is not configured", hint="open the overlay with RomaOverlay")

    # --- one command: the explicit data path ---
    def run(self, command: int, *, position: int = 0, n_tokens: int = 0, kv: KVBuffer | None = None,
            lora_slot: int = 0, lora_bytes: int = 0, sampling=None, seed: int | None = None,
            eos_id: int | None = None) -> np.ndarray:
        """One command (_call); with an on-chip KV cache a run command (PREFILL, DECODE, GENERATE) first
        loads the rows of `kv` below `position` that the on-chip copy lacks (CMD_KV_LOAD), and counts the
        load's cycles in its own."""
        self._need_config()
        kv = kv or self.kv
        c = self.constants
        if not self.kv_onchip or command not in (c["CMD_PREFILL"], c["CMD_DECODE"], c["CMD_GENERATE"]):
            return self._call(command, position=position, n_tokens=n_tokens, kv=kv, lora_slot=lora_slot,
                              lora_bytes=lora_bytes, sampling=sampling, seed=seed, eos_id=eos_id)
        have, load = self._onchip_rows(kv), {}
        self._onchip = None  # until the load and the run have succeeded
        if have < position:
            self._call(c["CMD_KV_LOAD"], position=have, n_tokens=position - have, kv=kv)
            load = dict(self.stage_cycles)
        status = self._call(command, position=position, n_tokens=n_tokens, kv=kv, sampling=sampling, seed=seed,
                            eos_id=eos_id)
        self._onchip = (weakref.ref(kv), kv.device_address, position + int(status[c["STATUS_TOKENS"]]))
        for k, v in load.items():
            self.stage_cycles[k] += v
        self.last_cycles += sum(load.values())
        return status

    def _call(self, command: int, *, position: int = 0, n_tokens: int = 0, kv: KVBuffer | None = None,
              lora_slot: int = 0, lora_bytes: int = 0, sampling=None, seed: int | None = None,
              eos_id: int | None = None) -> np.ndarray:
        """Write the registers, start, wait, read the status. Inputs must already be packed and flushed. kv:
        the KV buffer of a command on KV rows (None for the others)."""
        mode, inv_t, top_k, top_p, min_p, pen, last_n = _sampler_registers(sampling)
        seed = int(seed or 0)
        regs = {
            "command": command, "position": position, "n_tokens": n_tokens, "kv_capacity": kv.capacity if kv else 0,
            "lora_slot": lora_slot, "lora_bytes": lora_bytes, "sample_mode": mode, "inv_temperature": inv_t,
            "top_k": top_k, "top_p": top_p, "min_p": min_p, "repeat_penalty": pen, "repeat_last_n": last_n,
            "seed_lo": seed & 0xFFFFFFFF, "seed_hi": (seed >> 32) & 0xFFFFFFFF,
            "eos_id": 0xFFFFFFFF if eos_id is None else eos_id,
            "tokens_in": self.tokens_in.device_address, "tokens_out": self.tokens_out.device_address,
            "logits": self.logits.device_address,
            **dict(zip(KV_ARGUMENTS, kv.port_addresses if kv else [0] * len(KV_ARGUMENTS))),
            "lora_staging": self.lora_staging.device_address,
            **{argument: b.device_address for argument, b in self.weight_images.items()},
            "uram_weights": self.uram_weights.device_address,
            "status": self.status_buf.device_address,
        }
        # The argument registers keep what they were given until a download resets them (this overlay's or another
        # Overlay's of the bitstream: the status pointer then reads 0), so only the changed ones are written: a
        # decode step writes its position instead of 45 words (on an Alveo card each crosses PCIe). The cycle
        # counters are the core's to write.
        if self._written and self.read_arg("status") != self._written.get("status"):
            self._written = {}
        for a in self.interface.arguments:
            if not a.output and self._written.get(a.name, self) != regs[a.name]:
                self.write_arg(a.name, regs[a.name])
                self._written[a.name] = regs[a.name]
        self.start()
        self.wait()
        self.status_buf.invalidate()
        status = np.array(self.status_buf, copy=True)
        self.status, self.calls = status, self.calls + 1
        c = self.constants
        # the core's cycle counter registers, one per stage (board and emulated board alike)
        outputs = self.read_outputs()
        self.stage_cycles = {name: outputs[f"cycles_{name}"] for name in self.stages}
        self.last_cycles = sum(self.stage_cycles.values())
        err = int(status[c["STATUS_ERROR"]])
        if err:
            raise RomaError(self._error_message(err, command, position, n_tokens, kv))
        return status

    def _error_message(self, err: int, command, position, n_tokens, kv: KVBuffer | None) -> str:
        names = {v: k for k, v in self.constants.items() if k.startswith("ERR_")}
        what = {
            "ERR_BAD_COMMAND": f"command {command} is not one roma_core knows",
            "ERR_CONTEXT": f"positions {position}..{position + n_tokens - 1} do not fit the KV cache of "
                           f"{kv.capacity if kv else 0} positions",
            "ERR_TOKEN_RANGE": f"a token id is outside the vocabulary (0..{self.config.vocab_size - 1})",
            "ERR_LORA_SLOT": "the LoRA slot is out of range or empty",
            "ERR_LORA_IMAGE": "the staged LoRA adapter is not a valid packed image (magic, shapes or size)",
            "ERR_DDR_WEIGHTS": "the ddr_weights buffer does not hold this build's DDR weight image "
                               "(ddr_weights.bin; RomaOverlay loads it)",
            "ERR_WEIGHTS_NOT_LOADED": "its URAM weight banks are not loaded (uram_weights.bin; RomaOverlay loads "
                                      "them with CMD_LOAD_WEIGHTS after every download)",
            "ERR_WEIGHTS_IMAGE": "the URAM load image is not this build's (header magic, version, words or "
                                 "checksum, or its words do not sum to the checksum); nothing was written",
        }
        name = names.get(err, f"error {err}")
        return f"roma_core refused the call: {what.get(name, name)} (status {name})"

    def _put_tokens(self, ids) -> int:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise RomaError("no tokens to run")
        if ids.size > self.max_tokens:
            raise RomaError(f"{ids.size} tokens are more than one call takes ({self.max_tokens})")
        if ids.min() < -(1 << 31) or ids.max() >= (1 << 31):
            raise RomaError("a token id does not fit int32")
        self.tokens_in[: ids.size] = ids
        self.tokens_in.flush()
        return int(ids.size)

    def _get_logits(self) -> np.ndarray:
        self.logits.invalidate()
        return np.array(self.logits, dtype=np.float32, copy=True)

    # --- commands ---
    def prefill(self, ids, position: int, kv: KVBuffer | None = None) -> np.ndarray:
        """Run ids at position.. (longer inputs in chunks of max_tokens); logits of the last one."""
        self._need_config()
        ids = list(np.asarray(ids).reshape(-1))
        total: dict[str, int] = {}
        for i in range(0, len(ids), self.max_tokens):
            chunk = ids[i: i + self.max_tokens]
            n = self._put_tokens(chunk)
            cmd = self.constants["CMD_DECODE"] if n == 1 else self.constants["CMD_PREFILL"]
            self.run(cmd, position=position + i, n_tokens=n, kv=kv)
            for k, v in self.stage_cycles.items():
                total[k] = total.get(k, 0) + v
        self.stage_cycles = total
        return self._get_logits()

    def decode(self, token_id: int, position: int, kv: KVBuffer | None = None) -> np.ndarray:
        self._need_config()
        self._put_tokens([token_id])
        self.run(self.constants["CMD_DECODE"], position=position, n_tokens=1, kv=kv)
        return self._get_logits()

    def generate(self, first_id: int, position: int, n: int, sampling=None, seed: int | None = None,
                 eos_id: int | None = None, kv: KVBuffer | None = None) -> list[int]:
        """Autonomous decode on chip: feed first_id at position, sample and feed back n tokens (or up to and
        including eos_id). sampling: generate.SamplingParams / golden.sampler.OnChipParams / None (greedy)."""
        self._need_config()
        if not 1 <= n <= self.max_tokens:
            raise RomaError(f"generate takes 1..{self.max_tokens} tokens per call, not {n}")
        self._put_tokens([first_id])
        status = self.run(self.constants["CMD_GENERATE"], position=position, n_tokens=n, kv=kv,
                          sampling=sampling if sampling is not None else "greedy", seed=seed, eos_id=eos_id)
        count = int(status[self.constants["STATUS_TOKENS"]])
        self.tokens_out.invalidate()
        return [int(t) for t in self.tokens_out[:count]]

    def load_lora(self, slot: int, packed) -> None:
        """Copy a packed adapter (lora.PackedLora or bytes) into LoRA slot `slot` via lora_staging."""
        self._need_config()
        data = packed.to_bytes() if hasattr(packed, "to_bytes") else bytes(packed)
        if len(data) > self.lora_staging.nbytes:  # grown once to the largest adapter
            self.lora_staging = self.allocate((len(data),), np.uint8, "lora_staging")
        self.lora_staging[: len(data)] = np.frombuffer(data, np.uint8)
        self.lora_staging.flush()
        self.run(self.constants["CMD_LOAD_LORA"], lora_slot=slot, lora_bytes=len(data))

    def select_lora(self, slot: int | None) -> None:
        self._need_config()
        self.run(self.constants["CMD_SELECT_LORA"], lora_slot=self.constants["LORA_NONE"] if slot is None
                 else slot)


def stage_names(constants: dict[str, int]) -> list[str]:
    """The cycle-estimate stages of roma_core.h's Stage enum in status order: STAGE_GEMV -> "gemv"."""
    stages = sorted((v, k) for k, v in constants.items() if k.startswith("STAGE_") and k != "STAGE_COUNT")
    return [k[len("STAGE_"):].lower() for _, k in stages]


def _sampler_registers(sampling):
    """(sample_mode, inv_temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n)."""
    if sampling is None:
        return SAMPLE_OFF, 1.0, 0, 1.0, 0.0, 1.0, 0
    if isinstance(sampling, str) and sampling == "greedy":
        return SAMPLE_GREEDY, 1.0, 0, 1.0, 0.0, 1.0, 0
    p = sampling if isinstance(sampling, OnChipParams) else OnChipParams.from_sampling(sampling)
    mode = SAMPLE_GREEDY if p.greedy else SAMPLE_RANDOM
    return (mode, float(p.inv_temperature), int(p.top_k), float(p.top_p), float(p.min_p), float(p.penalty),
            int(p.repeat_last_n))


def _verified_image(folder: Path, manifest: dict, key: str, what: str) -> Path | None:
    """The path of the build's image `key` ("ddr", "uram") in `folder` (next to the bitstream) after checking its
    size and sha256 against the manifest's, or None when the build has none. RomaError naming the file when it is
    missing or wrong."""
    entry = manifest.get(key)
    if not entry:
        return None
    path = Path(folder) / entry["file"]
    files = manifest.get("files") or {}
    if entry["file"] not in files:
        raise RomaError(f"the build manifest lists no checksum for its {what} {path}", hint="recompile the build")
    verify_file(path, files[entry["file"]])
    return path


def read_ddr_image(folder: Path, manifest: dict) -> np.ndarray | None:
    """The build's DDR weight image (uint32 words), or None when the build streams nothing from DDR (RomaError
    naming the file when it is missing, or its size, sha256 or header checksum is wrong)."""
    path = _verified_image(folder, manifest, "ddr", "DDR weight image")
    return None if path is None else ddr_format.read_ddr_image(path)


def read_uram_image(folder: Path, manifest: dict) -> np.ndarray | None:
    """The build's URAM load image (uint32 words), or None when no tensor is in URAM (RomaError naming the file
    when it is missing, or its size, sha256, header or checksum is wrong)."""
    path = _verified_image(folder, manifest, "uram", "URAM load image")
    return None if path is None else uram_format.read_uram_image(path, uram_layout(manifest))


class RomaOverlay(Overlay):
    """pynq.Overlay of a ROMA bitstream: refuses a bitstream whose build manifest (next to it) is for another
    model or quantization than `expect` (a manifest dict or a build folder), or whose DDR weight image or URAM
    load image (next to it too, when the build has such tensors) is missing or corrupt, then configures the core
    and, after every download, loads its URAM weight banks (load_weights)."""

    def __init__(self, bitfile_name, expect=None, download: bool = True, device=None,
                 kv_capacity: int | None = None, **kwargs):
        bitfile_name = str(bitfile_name)
        self.manifest = check_manifest(bitfile_name, expect)
        folder = Path(bitfile_name).resolve().parent
        ddr_image = read_ddr_image(folder, self.manifest)
        self.uram_image = read_uram_image(folder, self.manifest)
        self._configured = False
        super().__init__(bitfile_name, download=download, device=device, **kwargs)
        names = [k for k, v in self.ip_dict.items() if v.get("type") == hwh_mod.VLNV]
        if not names:
            raise RomaError(f"{bitfile_name} has no {hwh_mod.VLNV} IP")
        self.core_name = names[0]
        model = self.manifest.get("model")
        self.config = ModelConfig.from_dict(model.get("config") if isinstance(model, dict) else None,
                                            f"{Path(bitfile_name).parent / MANIFEST}: model.config")
        library = getattr(self.device, "library", None) if download else None
        if library is not None and hasattr(library, "check_config"):  # the emulated core's compiled dimensions
            library.check_config(self.config, build_context(self.manifest), kv_onchip_tokens(self.manifest),
                                 f"the build manifest next to {bitfile_name}")
        if download:
            self.core.configure(self.config, build_context(self.manifest), kv_capacity=kv_capacity,
                                ddr_image=ddr_image, kv_onchip=kv_onchip_tokens(self.manifest),
                                kv_layout=KvLayout.from_manifest(self.manifest))
            self._configured = True
            self.load_weights()

    def download(self, *args, **kwargs):
        """Program the bitstream; its URAM holds nothing then, so the weights are loaded again (once the core is
        configured: the first download's load runs at the end of __init__)."""
        super().download(*args, **kwargs)
        if self._configured:  # set before pynq.Overlay.__init__ downloads
            self.load_weights()

    def load_weights(self) -> None:
        """The URAM load image into the core's URAM banks, verified (RomaError, naming what failed, when the core
        refuses it or reads back another checksum); nothing when the build has no URAM tensors."""
        if self.uram_image is None:
            return
        try:
            self.core.load_weights(self.uram_image, int(self.manifest["uram"]["checksum"]))
        except RomaError as e:
            raise RomaError(f"the URAM weights of this overlay did not load, so it cannot run: {e.message}",
                            hint="check that uram_weights.bin next to the bitstream is the build's (recompile the "
                                 "build and copy it again), then reload the overlay") from None

    @property
    def core(self) -> RomaCoreDriver:
        return getattr(self, self.core_name)
