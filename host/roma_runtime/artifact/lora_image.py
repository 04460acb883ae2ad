"""The LoRA image: one adapter slot's contents in the accelerator's LoRA memory, as the core reads it.

lora.py makes and names adapters (PEFT folders, concatenation, slots) and packs them through this module;
the factors here are plain arrays per (layer, linear): (A [r, in] fp32, B [out, r] fp32, scale).

Layout (all little-endian; offsets in bytes from the start of the buffer, i.e. from the slot's base):

Header, 64 bytes:
    0  char[8] magic "ROMALORA"       20  u32 slot rank R
    8  u32 version (1)                24  u32 n_layers
   12  u32 factor type 1=fp16 2=int8 28  u32 linears per layer (7)
   16  u32 row-scale type             32  u32 directory offset (64)
       0=none (fp16) 1=fp16 2=fp32    36  u32 total bytes;  40..63 zero
Directory at 64: n_layers * 7 entries of 32 bytes, entry (layer * 7 + linear) with linears in the order
wq wk wv wo w_gate w_up w_down (HF q k v o gate up down):
    0 u32 rank r (0 = no adapter on this linear: the LoRA unit skips it, offsets are 0)
    4 u32 in_dim   8 u32 out_dim   (written for every entry, present or not)
   12 f32 scale (alpha/r, or alpha/sqrt(r) for rsLoRA; folded scales of a concatenation give 1.0)
   16 u32 A offset: R rows of in_dim values, row-major; rows r..R-1 are zero
   20 u32 A row-scale offset: R scales, one per A row (int8 only, else 0)
   24 u32 B offset: out_dim rows of R values, row-major; columns r..R-1 are zero
   28 u32 B row-scale offset: out_dim scales, one per B row (int8 only, else 0)
Data: for each present entry in directory order, A values, A scales, B values, B scales, each block
starting on a 64-byte boundary (AXI bursts). Q/K B rows are in GGUF (adjacent-pair RoPE) order.
Values: fp16, or int8 symmetric per row: value = code * scale, code in [-127, 127] (-128 unused), scale =
max|row| / 127 rounded up to the scale type (fp16 or fp32), so no code overflows; all-zero rows have scale 0.
The LoRA unit computes y += scale * B (A x); zero padding contributes exact zeros, so a rank-r adapter in
an R slot gives the same result as its unpadded factors.
"""

from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

from ..errors import RomaError
from ..model.weights import LayerWeights
from .interface import kernel_constants

LINEAR = LayerWeights.LINEAR  # the directory's order of a layer's linears
PACK_DTYPES = ("fp16", "int8")
SCALE_DTYPES = ("fp16", "fp32")
MAGIC = b"ROMALORA"
_FMT = kernel_constants("lora_unit.h")  # lora_fmt: the LoRA unit's definitions of the image it reads
VERSION = _FMT["VERSION"]
HEADER_BYTES = _FMT["HEADER_BYTES"]
ENTRY_BYTES = _FMT["ENTRY_BYTES"]
ALIGN = 64
_FACTOR_CODES = {"fp16": _FMT["FACTOR_FP16"], "int8": _FMT["FACTOR_INT8"]}
_SCALE_CODES = {None: _FMT["SCALE_NONE"], "fp16": _FMT["SCALE_FP16"], "fp32": _FMT["SCALE_FP32"]}
_HEADER = struct.Struct("<8sIIIIIIII")  # magic, version, factor type, scale type, R, layers, linears, dir, total
_ENTRY = struct.Struct("<IIIfIIII")  # rank, in, out, scale, A, A scales, B, B scales


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def packed_size(n_layers: int, shapes: dict[str, tuple[int, int]], ranked: Iterable[str], slot_rank: int,
                dtype: str = "fp16", scale_dtype: str = "fp16") -> int:
    """Bytes of a packed adapter that targets the linears `ranked` (one name per (layer, linear)) at slot_rank."""
    elem = 2 if dtype == "fp16" else 1
    sbytes = 0 if dtype == "fp16" else (2 if scale_dtype == "fp16" else 4)
    total = _align(HEADER_BYTES + n_layers * len(LINEAR) * ENTRY_BYTES)
    for name in ranked:
        out, inp = shapes[name]
        total += _align(slot_rank * inp * elem) + _align(out * slot_rank * elem)
        if sbytes:
            total += _align(slot_rank * sbytes) + _align(out * sbytes)
    return total


def _quantize_rows(x: np.ndarray, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row with the scale rounded *up* to its storage type, so |code| <= 127."""
    sdt = np.float16 if scale_dtype == "fp16" else np.float32
    amax = np.abs(x).max(axis=1).astype(np.float32) if x.size else np.zeros(x.shape[0], np.float32)
    scale = (amax / np.float32(127)).astype(sdt)
    low = scale.astype(np.float32) * np.float32(127) < amax
    scale[low] = np.nextafter(scale[low], sdt(np.inf))
    if not np.isfinite(scale).all():
        raise RomaError(f"a LoRA factor row is too large for {scale_dtype} scales (max |value| {amax.max():g})",
                        hint="use fp32 scales")
    s32 = scale.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(s32[:, None] > 0, np.rint(x / s32[:, None]), 0)
    return np.clip(codes, -127, 127).astype(np.int8), scale


def write_image(factors: dict, n_layers: int, shapes: dict[str, tuple[int, int]], dtype: str, slot_rank: int,
                scale_dtype: str, name: str) -> np.ndarray:
    """The LoRA image (uint8) of `factors` {(layer, linear): (A, B, scale)} for a model of n_layers with the
    linears' (out, in) `shapes` (see the module docstring). RomaError naming the adapter `name` if a rank
    exceeds the slot rank or a value does not fit fp16."""
    if dtype not in PACK_DTYPES:
        raise RomaError(f"unsupported LoRA storage type {dtype!r}", hint=f"use {' or '.join(PACK_DTYPES)}")
    if scale_dtype not in SCALE_DTYPES:
        raise RomaError(f"unsupported LoRA scale type {scale_dtype!r}", hint=f"use {' or '.join(SCALE_DTYPES)}")
    if isinstance(slot_rank, bool) or not isinstance(slot_rank, int) or slot_rank < 1:
        raise RomaError(f"the slot rank must be a positive integer, not {slot_rank!r}")
    for (layer, linear), f in factors.items():
        if f[0].shape[0] > slot_rank:
            raise RomaError(f"adapter '{name}' layer {layer} {linear} has rank {f[0].shape[0]}, above the LoRA slot "
                            f"rank {slot_rank}", hint=f"use an adapter of rank <= {slot_rank}")
    int8 = dtype == "int8"
    sdt = None if not int8 else scale_dtype
    total = packed_size(n_layers, shapes, [k[1] for k in factors], slot_rank, dtype, scale_dtype)
    if total >= 2**32:
        raise RomaError(f"adapter '{name}' packs to {total} bytes, beyond the 4 GiB the format addresses")
    buf = np.zeros(total, np.uint8)
    _HEADER.pack_into(buf, 0, MAGIC, VERSION, _FACTOR_CODES[dtype], _SCALE_CODES[sdt], slot_rank, n_layers,
                      len(LINEAR), HEADER_BYTES, total)
    pos = _align(HEADER_BYTES + n_layers * len(LINEAR) * ENTRY_BYTES)

    def reserve(nbytes: int) -> int:
        nonlocal pos
        start = pos
        pos = start + _align(nbytes)
        return start

    for layer in range(n_layers):
        for li, linear in enumerate(LINEAR):
            out, inp = shapes[linear]
            entry = (0, inp, out, 0.0, 0, 0, 0, 0)
            f = factors.get((layer, linear))
            if f is not None:
                # Written straight into the slot image: rows r..R-1 of A and columns r..R-1 of B stay the
                # buffer's zeros (a zero row quantizes to code 0 with scale 0), so a rank-r adapter takes the
                # slot's bytes and nothing of the slot's size besides.
                a, b, scale = f
                r = a.shape[0]
                vt = np.int8 if int8 else np.float16
                st = np.float16 if scale_dtype == "fp16" else np.float32
                vsize, ssize = np.dtype(vt).itemsize, np.dtype(st).itemsize
                if not int8:
                    big = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0))
                    if big > 65504:
                        raise RomaError(f"adapter '{name}' layer {layer} {linear} holds {big:g}, beyond fp16",
                                        hint="store it as int8 with scales, or fold the scale differently")
                oa = reserve(slot_rank * inp * vsize)
                osa = reserve(slot_rank * ssize) if int8 else 0
                ob = reserve(out * slot_rank * vsize)
                osb = reserve(out * ssize) if int8 else 0
                a_img = buf[oa: oa + slot_rank * inp * vsize].view(vt).reshape(slot_rank, inp)
                b_img = buf[ob: ob + out * slot_rank * vsize].view(vt).reshape(out, slot_rank)
                if int8:
                    qa, sa = _quantize_rows(a, scale_dtype)
                    qb, sb = _quantize_rows(b, scale_dtype)
                    a_img[:r] = qa
                    b_img[:, :r] = qb
                    buf[osa: osa + r * ssize].view(st)[:] = sa
                    buf[osb: osb + out * ssize].view(st)[:] = sb
                else:
                    a_img[:r] = a
                    b_img[:, :r] = b
                entry = (r, inp, out, float(np.float32(scale)), oa, osa, ob, osb)
            _ENTRY.pack_into(buf, HEADER_BYTES + (layer * len(LINEAR) + li) * ENTRY_BYTES, *entry)
    assert pos == total, (pos, total)
    return buf


def read_image(buffer) -> tuple[dict, int, dict[str, tuple[int, int]]]:
    """The inverse of write_image: (the stored (rounded) factors, unpadded, fp32; n_layers; shapes)."""
    buf = np.frombuffer(bytes(buffer), np.uint8) if not isinstance(buffer, np.ndarray) else buffer.view(np.uint8)
    if buf.size < HEADER_BYTES:
        raise RomaError(f"a packed LoRA needs at least {HEADER_BYTES} bytes, not {buf.size}")
    magic, version, ftype, stype, slot_rank, n_layers, n_linear, directory, total = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION or n_linear != len(LINEAR):
        raise RomaError("not a packed ROMA LoRA buffer (bad magic, version or linear count)")
    if total != buf.size:
        raise RomaError(f"packed LoRA buffer is {buf.size} bytes but its header says {total}")
    dtype = {v: k for k, v in _FACTOR_CODES.items()}.get(ftype)
    sdt = {v: k for k, v in _SCALE_CODES.items()}.get(stype, "?")
    if dtype is None or sdt == "?" or (dtype == "int8") != (sdt is not None):
        raise RomaError(f"packed LoRA buffer has an unknown factor/scale type ({ftype}, {stype})")
    vt = np.float16 if dtype == "fp16" else np.int8
    st = {None: None, "fp16": np.float16, "fp32": np.float32}[sdt]

    def raw(offset: int, shape, t) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(t).itemsize
        if offset < 0 or offset + n > buf.size:
            raise RomaError(f"packed LoRA buffer: a block of {n} bytes at {offset} lies outside its {buf.size} bytes")
        return buf[offset: offset + n].view(t).reshape(shape)

    def read(offset: int, shape, t) -> np.ndarray:
        return raw(offset, shape, t).astype(np.float32)

    def read_cols(offset: int, shape, t, r: int) -> np.ndarray:
        return np.ascontiguousarray(raw(offset, shape, t)[:, :r], dtype=np.float32)

    factors, shapes = {}, {}
    for layer in range(n_layers):
        for li, lname in enumerate(LINEAR):
            r, inp, out, scale, oa, osa, ob, osb = _ENTRY.unpack_from(buf, directory + (layer * n_linear + li)
                                                                      * ENTRY_BYTES)
            shapes[lname] = (out, inp)
            if r == 0:
                continue
            if r > slot_rank:
                raise RomaError(f"packed LoRA buffer: layer {layer} {lname} has rank {r} above its slot rank "
                                f"{slot_rank}")
            a = read(oa, (r, inp), vt)  # the first r rows of the slot's R
            b = read_cols(ob, (out, slot_rank), vt, r)
            if st is not None:
                a *= read(osa, (r,), st)[:, None]
                b *= read(osb, (out,), st)[:, None]
            factors[(layer, lname)] = (a, b, scale)
    return factors, n_layers, shapes
