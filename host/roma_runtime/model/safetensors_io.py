"""Read .safetensors files into numpy arrays, bf16 included (numpy has no bf16, so it widens to fp32)."""

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


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
        header = json.loads(raw[8 : 8 + header_len].tobytes())
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise RomaError(f"{path} is not a safetensors file ({e})") from None
    data = raw[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > len(data):
            raise RomaError(f"{path} is truncated: tensor {name} ends past the end of the file")
        chunk = data[start:end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            tensors[name] = (chunk.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        elif info["dtype"] in _DTYPES:
            tensors[name] = chunk.view(_DTYPES[info["dtype"]]).reshape(shape)
        else:
            raise RomaError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    return tensors
