"""The KV cache manager: how many tokens fit, who holds them, and sessions saved to and restored from files.

ROMA's trade-off: the LoRA slots and the KV cache share the writable memory, so every byte given to LoRA rank
is a byte less for context. `kv_capacity` is that arithmetic; a `KVPool` hands the resulting tokens out to
sessions (each session has its own KV buffer of `capacity` positions) and takes them back when a session is
closed or dropped.

A saved session is one `.npz` file (numpy's zip of arrays, read with allow_pickle=False, so loading a file
cannot run code):
    meta    uint8: UTF-8 JSON {format, version, model: {name, identity, config}, numerics, backend,
            kv_dtype, capacity, length, adapter: {name, fingerprint} or null, extra: {...}}
    ids     int64 [length]: the tokens whose keys and values follow
    keys    kv dtype [n_layers, length, n_kv_heads, head_dim]
    values  the same shape
Only the filled rows (0..length) are stored.
"""

from __future__ import annotations

import json
import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RomaError
from .model.config import ModelConfig

KV_DTYPES = {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32), "int8": np.dtype(np.int8)}
SESSION_FORMAT = "roma-session"
SESSION_VERSION = 1
MIB = 1 << 20


def kv_dtype_name(dtype) -> str:
    """'fp16', 'fp32' or 'int8' for a name or numpy dtype."""
    if isinstance(dtype, str) and dtype in KV_DTYPES:
        return dtype
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    for name, d in KV_DTYPES.items():
        if dt == d:
            return name
    raise RomaError(f"unsupported KV cache type {dtype!r}", hint=f"use one of {', '.join(KV_DTYPES)}")


def kv_token_bytes(config: ModelConfig, kv_dtype="fp16") -> int:
    """Bytes one token occupies in the KV cache: n_layers * 2 (K and V) * kv_dim * bytes per element.
    (An int8 cache also needs its scales; they are not counted here.)"""
    return config.n_layers * 2 * config.kv_dim * KV_DTYPES[kv_dtype_name(kv_dtype)].itemsize


def kv_capacity(config: ModelConfig, memory_bytes: int, lora_slot_bytes: int = 0, kv_dtype="fp16") -> int:
    """Tokens of KV cache that fit in `memory_bytes` of writable memory after `lora_slot_bytes` (all LoRA
    slots) are taken: floor((memory - lora) / kv_token_bytes). Not capped at the model's context length.
    RomaError when not even one token fits."""
    memory_bytes, lora_slot_bytes = int(memory_bytes), int(lora_slot_bytes)
    if memory_bytes <= 0 or lora_slot_bytes < 0:
        raise RomaError(f"a memory budget must be positive (got {memory_bytes} bytes, LoRA {lora_slot_bytes})")
    per_token = kv_token_bytes(config, kv_dtype)
    left = memory_bytes - lora_slot_bytes
    if left < per_token:
        raise RomaError(
            f"{memory_bytes / MIB:.2f} MiB of memory leaves {max(left, 0) / MIB:.2f} MiB after the LoRA slots "
            f"({lora_slot_bytes / MIB:.2f} MiB), less than one token of KV cache ({per_token} bytes)",
            hint="give more memory (--kv-memory), fewer LoRA slots (--lora-slots) or a lower slot rank "
                 "(--lora-rank)")
    return left // per_token


@dataclass(frozen=True)
class KVBudget:
    """The split of a writable-memory budget between the LoRA slots and the KV cache."""

    memory_bytes: int
    lora_bytes: int
    kv_dtype: str
    token_bytes: int
    tokens: int  # kv_capacity: tokens of KV that fit (all sessions together)

    @classmethod
    def compute(cls, config: ModelConfig, memory_bytes: int, lora_bytes: int, kv_dtype="fp16") -> "KVBudget":
        name = kv_dtype_name(kv_dtype)
        return cls(int(memory_bytes), int(lora_bytes), name, kv_token_bytes(config, name),
                   kv_capacity(config, memory_bytes, lora_bytes, name))

    def describe(self) -> str:
        return (f"memory {self.memory_bytes / MIB:.2f} MiB = LoRA slots {self.lora_bytes / MIB:.2f} MiB + KV "
                f"{self.tokens} tokens x {self.token_bytes} bytes ({self.kv_dtype})")


class KVPool:
    """Hands out KV positions to sessions from a fixed number of tokens (None: unlimited).

    A session's reservation returns to the pool when `release` is called for it or when it is garbage
    collected."""

    def __init__(self, tokens: int | None = None):
        self.tokens = tokens
        self._held: dict[int, int] = {}  # id(owner) -> tokens
        self._next = 0

    @property
    def used(self) -> int:
        return sum(self._held.values())

    @property
    def free(self) -> int | None:
        return None if self.tokens is None else self.tokens - self.used

    def check(self, capacity: int) -> None:
        free = self.free
        if free is not None and capacity > free:
            raise RomaError(f"a session of {capacity} tokens does not fit: {free} of the {self.tokens} KV tokens "
                            "the memory budget holds are free",
                            hint="close another session, ask for a shorter context (--context), or give more "
                                 "memory (--kv-memory)")

    def reserve(self, owner, capacity: int) -> int:
        """Reserve `capacity` tokens for `owner`; returns a ticket for `release`."""
        self.check(capacity)
        self._next += 1
        ticket = self._next
        self._held[ticket] = capacity
        weakref.finalize(owner, self._held.pop, ticket, None)
        return ticket

    def release(self, ticket: int | None) -> None:
        if ticket is not None:
            self._held.pop(ticket, None)


# --- cache rows -------------------------------------------------------------------------------------------


def cache_rows(cache, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the keys and values at positions 0..length of a cache ([layer, position, kv_head, head_dim])."""
    if hasattr(cache, "read_rows"):
        return cache.read_rows(length)
    if hasattr(cache, "keys") and hasattr(cache, "values"):
        return np.array(cache.keys[:, :length]), np.array(cache.values[:, :length])
    raise RomaError("this backend's KV cache cannot be read back, so sessions cannot be saved on it")


def write_cache_rows(cache, keys: np.ndarray, values: np.ndarray) -> None:
    """Put rows 0..len into a cache and set its length."""
    n = keys.shape[1]
    if hasattr(cache, "write_rows"):
        cache.write_rows(keys, values)
        return
    if hasattr(cache, "keys") and hasattr(cache, "values"):
        cache.truncate(0)
        cache.keys[:, :n] = keys
        cache.values[:, :n] = values
        cache.length = n
        return
    raise RomaError("this backend's KV cache cannot be written from the host, so sessions cannot be restored on it")


# --- session files ----------------------------------------------------------------------------------------


def write_session_file(path: str | Path, meta: dict, ids: list[int], keys: np.ndarray, values: np.ndarray) -> Path:
    """Write atomically (a temporary file renamed over `path`); the name is used as given."""
    path = Path(path).expanduser()
    meta = {"format": SESSION_FORMAT, "version": SESSION_VERSION, **meta}
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise RomaError(f"cannot save to {path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".roma-session-", dir=str(folder))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=blob, ids=np.asarray(ids, np.int64), keys=keys, values=values)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RomaError(f"cannot save the session to {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_session_file(path: str | Path) -> tuple[dict, list[int], np.ndarray, np.ndarray]:
    """(meta, ids, keys, values), checked for internal consistency (not yet against a model)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RomaError(f"no session file at '{path}'", hint="give a file written by /save or Session.save")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("meta", "ids", "keys", "values")}
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError) as e:
        raise RomaError(f"{path} is not a ROMA session file ({type(e).__name__}: {e})",
                        hint="give a file written by /save or Session.save") from None
    if not isinstance(meta, dict) or meta.get("format") != SESSION_FORMAT:
        raise RomaError(f"{path} is not a ROMA session file", hint="give a file written by /save or Session.save")
    if meta.get("version") != SESSION_VERSION:
        raise RomaError(f"{path} is a session file of version {meta.get('version')}; this runtime reads version "
                        f"{SESSION_VERSION}")
    ids, keys, values = arrays["ids"], arrays["keys"], arrays["values"]
    n = int(meta.get("length", -1))
    if ids.ndim != 1 or ids.size != n or keys.ndim != 4 or keys.shape != values.shape or keys.shape[1] != n:
        raise RomaError(f"{path} is inconsistent: {ids.size} ids, keys {keys.shape}, values {values.shape}, "
                        f"length {n}", hint="the file is damaged; save the session again")
    return meta, [int(i) for i in ids], keys, values
