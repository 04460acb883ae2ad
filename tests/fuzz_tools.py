"""What the reliability tests (test_reliability.py, test_fuzz_readers.py) share: small real files to damage,
the bounds every hostile input must stay within, and the long mode.

`ROMA_LONG=1` is the long (nightly) mode: many more hypothesis examples per reader and the soak. The default run
(`make test`) tries a few hundred inputs in all. `ROMA_FUZZ_REPORT=FILE` makes the fuzz tests append one JSON
line per reader to FILE: inputs tried, loaded, refused cleanly, the slowest input and the largest peak of traced
memory (the figures in benchmarks/reliability.md come from it).
"""

from __future__ import annotations

import io
import json
import os
import time
import tracemalloc
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from roma_runtime.errors import RomaError
from tiny_models import write_tiny_gguf

LONG = os.environ.get("ROMA_LONG", "") not in ("", "0")
# Every input, hostile or not, must end within these (per input): a load or a RomaError, nothing else.
TIME_BOUND_S = 5.0
MEMORY_BOUND = 64 << 20  # peak of memory traced by tracemalloc (numpy's buffers included) for one input
SMALL_VOCAB = 256


def examples(default: int) -> int:
    """hypothesis max_examples for a reader: `default` in the default run, 25x that in the long mode."""
    return default * 25 if LONG else default


class Tally:
    """Counts what a fuzz test saw, per reader: inputs, loads, clean refusals, the slowest and the largest."""

    def __init__(self, reader: str):
        self.reader = reader
        self.tried = self.loaded = self.refused = 0
        self.max_seconds = 0.0
        self.max_peak = 0
        self.t0 = time.perf_counter()

    @contextmanager
    def run(self):
        """One input: the body either loads (returns) or refuses with RomaError; anything else fails the test,
        and so does an input over TIME_BOUND_S or MEMORY_BOUND."""
        tracemalloc.start()
        t0 = time.perf_counter()
        refused = False
        try:
            yield
        except RomaError as e:
            refused = True
            assert str(e).strip(), "a refusal says what is wrong"
        finally:
            seconds = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        self.tried += 1
        self.refused += refused
        self.loaded += not refused
        self.max_seconds = max(self.max_seconds, seconds)
        self.max_peak = max(self.max_peak, peak)
        assert seconds < TIME_BOUND_S, f"{self.reader}: one input took {seconds:.1f} s"
        assert peak < MEMORY_BOUND, f"{self.reader}: one input took {peak / 2**20:.0f} MiB"

    def report(self) -> dict:
        row = {"reader": self.reader, "long": LONG, "tried": self.tried, "loaded": self.loaded,
               "refused": self.refused, "max_seconds": round(self.max_seconds, 3),
               "max_peak_mib": round(self.max_peak / 2**20, 2), "total_seconds": round(time.perf_counter() - self.t0, 1)}
        path = os.environ.get("ROMA_FUZZ_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row


# --- small real files --------------------------------------------------------------------------------------


def write_gguf(hf_folder: Path, path: Path, linear: str = "Q4_1", embedding: str = "Q8_0", *,
               meta: dict | None = None, drop: tuple = (), shapes: dict | None = None) -> Path:
    """The weights of a tiny HF folder as a GGUF without a tokenizer (small and quick to write); meta, drop and
    shapes damage it as tiny_models.write_tiny_gguf says."""
    return write_tiny_gguf(hf_folder, path, linear, embedding, tokenizer=False, meta=meta, drop=drop, shapes=shapes)


PEFT_TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def write_adapter(folder: Path, config, *, rank: int = 4, alpha: float = 8.0, targets=("q_proj", "v_proj"),
                  seed: int = 0, extra_config: dict | None = None, std: float = 0.05) -> Path:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors, as save_pretrained writes them) for a
    ModelConfig, with random factors, written without torch or peft."""
    from roma_runtime.lora import PEFT_NAMES
    from roma_runtime.model.config import linear_shapes

    rng = np.random.default_rng(seed)
    shapes = linear_shapes(config)
    tensors = {}
    for layer in range(config.n_layers):
        for proj in targets:
            out, inp = shapes[PEFT_NAMES[proj]]
            base = f"base_model.model.model.layers.{layer}.{PEFT_TARGETS[proj]}.{proj}"
            tensors[f"{base}.lora_A.weight"] = (rng.standard_normal((rank, inp)) * std).astype(np.float32)
            tensors[f"{base}.lora_B.weight"] = (rng.standard_normal((out, rank)) * std).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
           "bias": "none", "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "task_type": "CAUSAL_LM"}
    cfg.update(extra_config or {})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def npz_bytes(members: dict, compressed: bool = False) -> bytes:
    """A session-file-like .npz of .npy members (name -> array, or raw bytes for a hand-made member)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        for name, value in members.items():
            if isinstance(value, (bytes, bytearray)):
                zf.writestr(name + ".npy", bytes(value))
            else:
                b = io.BytesIO()
                np.lib.format.write_array(b, np.asarray(value), allow_pickle=False)
                zf.writestr(name + ".npy", b.getvalue())
    return buf.getvalue()


def npy_header(shape, dtype="<f2") -> bytes:
    """A .npy header that claims `shape` (and no data after it)."""
    b = io.BytesIO()
    np.lib.format.write_array_header_2_0(b, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return b.getvalue()


def flip_bytes(data: bytes, positions, values) -> bytes:
    """`data` with data[p % len] = v for each (p, v)."""
    out = bytearray(data)
    for p, v in zip(positions, values):
        if out:
            out[p % len(out)] = v
    return bytes(out)


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
