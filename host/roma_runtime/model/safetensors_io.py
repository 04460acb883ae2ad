"""Read .safetensors files into numpy arrays, bf16 included (numpy has no bf16, so it widens to fp32).

The header is checked before any tensor is touched: an 8-byte length within the file and MAX_HEADER_BYTES,
a JSON object of entries {dtype, shape, data_offsets} with known dtypes, whole non-negative dimensions,
offsets inside the data and a byte count equal to shape x element size. Anything else is one RomaError that
names the file and the tensor; nothing is allocated beyond the (memory-mapped) file itself.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import RomaError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_ITEMSIZE = {**{k: np.dtype(v).itemsize for k, v in _DTYPES.items()}, "BF16": 2}
MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit on the JSON header (100 MB)
MAX_DIMS = 8


def _header(path: Path, raw) -> tuple[dict, int]:
    """(the JSON header, its length) after the checks of the module docstring."""
    size = len(raw)
    if size < 8:
        raise RomaError(f"{path} is not a safetensors file (only {size} bytes); is it truncated?")
    (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
    if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
        raise RomaError(f"{path} is not a safetensors file: its header claims {header_len} bytes, but the file "
                        f"has {size - 8} after the length (and a header may take at most {MAX_HEADER_BYTES})",
                        hint="the file is truncated or corrupt")
    try:
        header = json.loads(raw[8: 8 + header_len].tobytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise RomaError(f"{path} is not a safetensors file: its header is not JSON ({e})",
                        hint="the file is truncated or corrupt") from None
    if not isinstance(header, dict):
        raise RomaError(f"{path} is not a safetensors file: its header is a JSON {type(header).__name__}, not "
                        "an object", hint="the file is corrupt")
    return header, header_len


def _entry(path: Path, name: str, info, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, checked against the data size."""
    def bad(why: str):
        return RomaError(f"{path}: tensor {name!r} {why}", hint="the file is corrupt or not a safetensors file")

    if not isinstance(info, dict):
        raise bad(f"is described by a JSON {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
        raise RomaError(f"{path}: tensor {name} has unsupported dtype {dtype!r}",
                        hint=f"ROMA reads {', '.join(_ITEMSIZE)}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise bad(f"has shape {shape!r}: a list of at most {MAX_DIMS} whole non-negative numbers is needed")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise bad(f"has data_offsets {offsets!r}: [start, end] is needed")
    start, end = offsets
    if not 0 <= start <= end:
        raise bad(f"has data_offsets [{start}, {end}]: the start must be 0 or more and not after the end")
    if end > data_size:
        raise RomaError(f"{path} is truncated: tensor {name} ends at byte {end} of the data, which has "
                        f"{data_size}", hint="the file is truncated; copy or download it again")
    count = 1
    for s in shape:
        count *= s
    if count * _ITEMSIZE[dtype] != end - start:
        raise bad(f"has shape {tuple(shape)} of {dtype} ({count * _ITEMSIZE[dtype]} bytes), but its data_offsets "
                  f"span {end - start} bytes")
    return dtype, tuple(shape), start, end


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise RomaError(f"cannot read {path}: {e.strerror or e}") from None
    if size < 8:
        raise RomaError(f"{path} is not a safetensors file (only {size} bytes); is it truncated?")
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise RomaError(f"cannot read {path}: {e}") from None
    header, header_len = _header(path, raw)
    data = raw[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise RomaError(f"{path}: __metadata__ must be an object, not {type(info).__name__}")
            continue
        dtype, shape, start, end = _entry(path, name, info, data.size)
        chunk = data[start:end]
        if dtype == "BF16":
            tensors[name] = (chunk.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            tensors[name] = chunk.view(_DTYPES[dtype]).reshape(shape)
    return tensors
