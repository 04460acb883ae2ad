"""The KV cache manager: how many tokens fit, who holds them, and sessions saved to and restored from files.

ROMA's trade-off: the LoRA slots and the KV cache share the writable memory, so every byte given to LoRA rank
is a byte less for context. `kv_capacity` is that arithmetic; a `KVPool` hands the resulting tokens out to
sessions (each session has its own KV buffer of `capacity` positions) and takes them back when a session is
closed or dropped.

A saved session is one `.npz` file (numpy's zip of arrays; no pickles are ever read, so loading a file cannot
run code). It is read as a stream (read_session_file): the metadata first, typed and checked (the engine checks
the model, numerics, adapter and length there), then each array's .npy header against the model's shape before
its data is inflated, so a damaged or hostile file costs no more memory than the KV rows it may hold:
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
from .tempfiles import clean_stale

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


def session_memory_limit() -> int:
    """Bytes one session's KV cache may take: ROMA_SESSION_MEMORY_MB (MiB) when set, else half of this machine's
    physical memory (8 GiB where that cannot be read). The engine cuts the default session to it and refuses a
    longer one, so no model file (a context_length of 10 million) makes a session allocate beyond it."""
    env = os.environ.get("ROMA_SESSION_MEMORY_MB")
    if env:
        try:
            mb = float(env)
        except ValueError:
            mb = float("nan")
        if not (mb > 0 and mb < float(1 << 40)):
            raise RomaError(f"ROMA_SESSION_MEMORY_MB must be a positive number of MiB, not {env!r}")
        return int(mb * MIB)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def session_tokens(config: ModelConfig, kv_dtype="fp16") -> int:
    """The most KV positions one session may hold within session_memory_limit() (at least 1)."""
    return max(1, session_memory_limit() // kv_token_bytes(config, kv_dtype))


def check_session_memory(config: ModelConfig, capacity: int, kv_dtype="fp16") -> None:
    """RomaError naming the limit when a session of `capacity` positions would exceed session_memory_limit()."""
    need = capacity * kv_token_bytes(config, kv_dtype)
    limit = session_memory_limit()
    if need > limit:
        raise RomaError(f"a session of {capacity} tokens needs {need / (1 << 30):.2f} GiB of KV cache, more than "
                        f"the {limit / (1 << 30):.2f} GiB one session may take (half of this machine's memory, "
                        "or ROMA_SESSION_MEMORY_MB)",
                        hint=f"ask for a shorter context (--context {session_tokens(config, kv_dtype)} or less)")


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


# --- session files ---------------------------------------------------------------------------------------

MAX_META_BYTES = 64 << 20  # a session's JSON metadata (a conversation's messages): 64 MiB
# Without a model to check against, an array may take at most this many times its compressed bytes (+1 MiB):
# numpy's savez stores arrays uncompressed, so only a zip bomb comes near it.
MAX_INFLATION = 64


def write_session_file(path: str | Path, meta: dict, ids: list[int], keys: np.ndarray, values: np.ndarray) -> Path:
    """Write atomically (a temporary file renamed over `path`); the name is used as given. Temporaries that a
    killed writer left in the folder are removed first (tempfiles.clean_stale)."""

    path = Path(path).expanduser()
    meta = {"format": SESSION_FORMAT, "version": SESSION_VERSION, **meta}
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise RomaError(f"cannot save to {path}: the folder {folder} does not exist")
    clean_stale(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=str(folder))
    except OSError as e:
        raise RomaError(f"cannot save the session to {path}: {e.strerror or e}") from None
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


class _Refusal(Exception):
    """A fault found while reading a session file (becomes one RomaError naming the file)."""


def _read_member(zf, name: str, check, archive_bytes: int) -> np.ndarray:
    """One .npy member of the zip, streamed: its header is read and `check(shape, dtype)` must accept it before
    the data is inflated; exactly the bytes the header states are read (the zip's CRC is verified at the end),
    and trailing bytes are refused."""
    import zipfile

    member = f"{name}.npy"
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise _Refusal(f"it has no array '{name}'") from None
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise _Refusal(f"array '{name}' has .npy format version {version}")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise _Refusal(f"array '{name}' has dtype {dtype}, not a plain number type")
        check(tuple(shape), dtype)
        count = 1
        for s in shape:
            count *= s
        nbytes = count * dtype.itemsize
        # what the member can hold: its stored bytes, or for a compressed member a bounded inflation of them
        budget = info.compress_size if info.compress_type == zipfile.ZIP_STORED else \
            MAX_INFLATION * info.compress_size + (1 << 20)
        if nbytes > budget or info.compress_size > archive_bytes:
            raise _Refusal(f"array '{name}' claims {nbytes} bytes, more than its {info.compress_size} bytes in the "
                           "file can hold")
        array = np.empty(count, dtype=dtype)
        view, got = memoryview(array.reshape(-1).view(np.uint8)), 0
        while got < nbytes:
            step = fp.readinto(view[got:got + (16 << 20)])
            if not step:
                raise _Refusal(f"array '{name}' is truncated ({got} of {nbytes} bytes)")
            got += step
        if fp.read(1):
            raise _Refusal(f"array '{name}' has bytes after its data")
    return array.reshape(shape, order="F" if fortran else "C")


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_session_meta(meta) -> None:
    """_Refusal unless the metadata has the types this runtime writes (see the module docstring)."""
    if not isinstance(meta, dict) or meta.get("format") != SESSION_FORMAT:
        raise _Refusal("it is not a ROMA session file")
    if meta.get("version") != SESSION_VERSION:
        raise _Refusal(f"it is a session file of version {meta.get('version')!r}; this runtime reads version "
                       f"{SESSION_VERSION}")
    length, capacity = meta.get("length"), meta.get("capacity")
    if not _whole(length) or length < 0:
        raise _Refusal(f"its length is {length!r}, not a whole number of tokens")
    if capacity is not None and (not _whole(capacity) or capacity < 0):
        raise _Refusal(f"its capacity is {capacity!r}, not a whole number of tokens")
    model = meta.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("identity"), str) \
            or not isinstance(model.get("name", ""), str):
        raise _Refusal("its model entry is not an object with a name and an identity")
    for key in ("numerics", "kv_dtype"):
        if not isinstance(meta.get(key), str):
            raise _Refusal(f"its {key} is {meta.get(key)!r}, not a name")
    if meta["kv_dtype"] not in KV_DTYPES:
        raise _Refusal(f"its KV type {meta['kv_dtype']!r} is not one of {', '.join(KV_DTYPES)}")
    adapter = meta.get("adapter")
    if adapter is not None and (not isinstance(adapter, dict) or not isinstance(adapter.get("name"), str)
                                or not isinstance(adapter.get("fingerprint"), (str, type(None)))):
        raise _Refusal("its adapter entry is not null or an object with a name and a fingerprint")
    if not isinstance(meta.get("extra", {}), dict):
        raise _Refusal("its extra entry is not an object")


def read_session_file(path: str | Path, config: ModelConfig | None = None, kv_dtype=None,
                      max_tokens: int | None = None, check=None) -> tuple[dict, list[int], np.ndarray, np.ndarray]:
    """(meta, ids, keys, values), checked for internal consistency and, given `config` (and `kv_dtype`,
    `max_tokens`), against the model, all before the arrays are inflated: a damaged, truncated or hostile file
    is one RomaError, and no array larger than the model's KV rows for the stated tokens is ever allocated.
    check(meta): the caller's own checks of the (typed) metadata, run before any array is read."""
    import zipfile

    path = Path(path).expanduser()
    if not path.is_file():
        raise RomaError(f"no session file at '{path}'", hint="give a file written by /save or Session.save")
    want_dtype = None if kv_dtype is None else KV_DTYPES[kv_dtype_name(kv_dtype)]
    limit = max_tokens if max_tokens is not None else (config.context_length if config is not None else None)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            def meta_check(shape, dtype):
                if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
                    raise _Refusal(f"its metadata is {dtype} {shape}, not at most {MAX_META_BYTES} bytes of text")

            blob = _read_member(zf, "meta", meta_check, size)
            try:
                meta = json.loads(blob.tobytes().decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise _Refusal(f"its metadata is not JSON text ({e})") from None
            check_session_meta(meta)
            if check is not None:
                check(meta)
            n = meta["length"]
            if limit is not None and n > limit:
                raise _Refusal(f"it holds {n} tokens, more than the {limit} this session can hold")
            dtype = KV_DTYPES[meta["kv_dtype"]]
            if want_dtype is not None and dtype != want_dtype:
                raise _Refusal(f"its KV cache is {meta['kv_dtype']}, not this engine's {kv_dtype_name(want_dtype)}")

            def ids_check(shape, dt):
                if dt != np.int64 or shape != (n,):
                    raise _Refusal(f"its ids are {dt} {shape}, not {n} int64 token ids")

            def kv_check(shape, dt):
                if dt != dtype:
                    raise _Refusal(f"its KV rows are {dt}, not the {meta['kv_dtype']} its metadata states")
                if config is not None:
                    want = (config.n_layers, n, config.n_kv_heads, config.head_dim)
                    if shape != want:
                        raise _Refusal(f"its KV rows have shape {shape}, but {config.name} needs {want} for "
                                       f"{n} tokens")
                elif len(shape) != 4 or shape[1] != n:
                    raise _Refusal(f"its KV rows have shape {shape}, not [layers, {n}, kv heads, head dim]")

            ids = _read_member(zf, "ids", ids_check, size)
            keys = _read_member(zf, "keys", kv_check, size)

            def values_check(shape, dt):
                if shape != keys.shape:
                    raise _Refusal(f"its values have shape {shape}, its keys {keys.shape}")
                kv_check(shape, dt)

            values = _read_member(zf, "values", values_check, size)
    except _Refusal as e:
        raise RomaError(f"{path} is not a usable ROMA session file: {e}",
                        hint="give a file written by /save or Session.save; a damaged file cannot be restored") \
            from None
    except RomaError:
        raise
    except Exception as e:  # zipfile and the .npy reader fail in many ways on damaged files
        raise RomaError(f"{path} is not a ROMA session file ({type(e).__name__}: {e})",
                        hint="give a file written by /save or Session.save; a damaged file cannot be restored") \
            from None
    return meta, [int(i) for i in ids], keys, values
