"""Read a GGUF file's key/values and tensor table in one pass over its header, the tensors memory-mapped.

The `gguf` package's GGUFReader makes a numpy view of every array element: SmolLM2's 98K vocabulary strings and
merges cost it 3-7 s a load, which nearly every `roma` command paid. This reader gives the same values (what
gguf's ReaderField.contents() returns: Python ints, floats, bools, strings, and flat lists of them for arrays)
and the same tensors (gguf.ReaderTensor: the tensor type, the ggml-order shape, and the data viewed as the
GGUFReader views it: elements for F32/F16/integer types, bytes [..., row bytes] for quantized and BF16 ones)
in about 0.1 s. It reads GGUF versions 2 and 3, in either byte order, with gguf's checks: the magic, the
version, unique keys and tensor names, a power-of-two general.alignment (a UINT32). A malformed or truncated
file raises ValueError (or struct.error, UnicodeDecodeError, KeyError) before anything beyond the
memory-mapped file is allocated: every count is bounded by the bytes left in the file.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, ReaderTensor
from gguf.quants import quant_shape_to_byte_shape

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9  # GGUF value types that are not scalars
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # type -> struct
ALIGNMENT_TYPE = 4  # general.alignment must be a UINT32
# tensor types whose GGUFReader view is elements (the others are viewed as bytes)
ELEMENT_TYPES = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                 GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
                 GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
                 GGMLQuantizationType.I64: np.int64}


@dataclass
class GGUFFile:
    """A GGUF file read by read_gguf: `metadata` (key -> value, the GGUF.version/tensor_count/kv_count entries
    first, as GGUFReader names them), `tensors` in file order, and where the tensor data starts."""

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[ReaderTensor] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0


class _Cursor:
    """Reads values of one byte order from a buffer, refusing any read past its end."""

    def __init__(self, buf: memoryview, order: str):
        self.buf, self.order, self.pos = buf, order, 0

    def take(self, n: int) -> int:
        """The position of the next n bytes, after checking they are in the buffer."""
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise ValueError(f"the file ends at byte {len(self.buf)}, inside a value at byte {start} ({n} bytes)")
        self.pos = start + n
        return start

    def scalar(self, code: str):
        size = struct.calcsize(code)
        return struct.unpack_from(self.order + code, self.buf, self.take(size))[0]

    def string(self) -> str:
        n = self.scalar("Q")
        start = self.take(n)
        return str(self.buf[start:start + n], "utf-8")

    def value(self, vtype: int):
        """One value of GGUF type vtype: a scalar, a string, or (an array) a flat list of its elements."""
        if vtype == STRING:
            return self.string()
        if vtype in SCALARS:
            return self.scalar(SCALARS[vtype])
        if vtype != ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        itype, count = self.scalar("I"), self.scalar("Q")
        if itype in SCALARS:  # one numpy read; tolist gives the Python values contents() gives
            dtype = np.dtype(SCALARS[itype]).newbyteorder(self.order)
            start = self.take(count * dtype.itemsize)
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        if count > len(self.buf) - self.pos:  # every string or array element takes at least one byte
            raise ValueError(f"an array of {count} elements does not fit the {len(self.buf) - self.pos} bytes left")
        if itype == STRING:
            return [self.string() for _ in range(count)]
        out = []
        for _ in range(count):  # nested arrays come out flat, as GGUFReader flattens them
            item = self.value(itype)
            out += item if isinstance(item, list) else [item]
        return out


def read_gguf(path: str | Path) -> GGUFFile:
    """The key/values and tensors of the GGUF file at `path` (see the module docstring)."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise ValueError("the file is empty") from None
    buf = memoryview(mapped)
    if bytes(buf[:4]) != MAGIC:
        raise ValueError("GGUF magic invalid")
    order = "<"
    cur = _Cursor(buf, order)
    cur.take(4)
    version = cur.scalar("I")
    if version & 0xFFFF == 0:  # written in the other byte order
        order = cur.order = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported (only {VERSIONS})")
    tensor_count, kv_count = cur.scalar("Q"), cur.scalar("Q")
    out = GGUFFile(path, {"GGUF.version": version, "GGUF.tensor_count": tensor_count, "GGUF.kv_count": kv_count})
    types = {}
    for _ in range(kv_count):
        key = cur.string()
        if key in out.metadata:
            raise KeyError(f"duplicate key {key}")
        types[key] = vtype = cur.scalar("I")
        out.metadata[key] = cur.value(vtype)

    infos = []
    for _ in range(tensor_count):
        name = cur.string()
        n_dims = cur.scalar("I")
        dims = np.frombuffer(buf, np.dtype("u8").newbyteorder(order), n_dims, cur.take(8 * n_dims))
        infos.append((name, dims, GGMLQuantizationType(cur.scalar("I")), cur.scalar("Q")))
    if "general.alignment" in out.metadata:
        out.alignment = out.metadata["general.alignment"]
        if types["general.alignment"] != ALIGNMENT_TYPE:
            raise ValueError("general.alignment is not a UINT32")
        if out.alignment == 0 or out.alignment & (out.alignment - 1):
            raise ValueError(f"general.alignment {out.alignment} is not a power of two")
    out.data_offset = -(-cur.pos // out.alignment) * out.alignment

    names = set()
    for name, dims, ttype, offset in infos:
        if name in names:
            raise ValueError(f"duplicate tensor {name}")
        names.add(name)
        n_elements = math.prod(int(d) for d in dims)
        block, type_size = GGML_QUANT_SIZES[ttype]
        n_bytes = n_elements * type_size // block
        start = out.data_offset + offset
        shape = tuple(int(d) for d in reversed(dims))
        if ttype in ELEMENT_TYPES:
            dtype = np.dtype(ELEMENT_TYPES[ttype]).newbyteorder(order)
            data = np.frombuffer(buf, dtype, n_elements, start).reshape(shape)
        else:
            data = np.frombuffer(buf, np.uint8, n_bytes, start).reshape(quant_shape_to_byte_shape(shape, ttype))
        out.tensors.append(ReaderTensor(name=name, tensor_type=ttype, shape=dims, n_elements=n_elements,
                                        n_bytes=n_bytes, data_offset=start, data=data, field=None))
    return out
