"""What the reliability tests (test_reliability.py, test_fuzz_readers.py) share: small real files to damage,
the bounds every hostile input must stay within, and the long mode.

`ROMA_LONG=1` is the long (nightly) mode: many more hypothesis examples per reader and the soak. The default run
(`make test`) tries a few hundred inputs in all. `ROMA_FUZZ_REPORT=FILE` makes the fuzz tests append one JSON
line per reader to FILE: inputs tried, loaded, refused cleanly, the slowest input and the largest peak of traced
memory (the README's figures come from it).
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

from roma_runtime.errors import RomaError
from roma_runtime.model.loader import permute_to_gguf_rope

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
    """The weights of a tiny HF folder as a GGUF without a tokenizer (small and quick to write). meta: llama.* keys
    to override (name without the "llama." prefix; values written with their Python type); drop: llama.* keys to
    leave out; shapes: tensor name -> an array to write instead of the real one."""
    from roma_runtime.model.safetensors_io import read_safetensors

    cfg = json.loads((hf_folder / "config.json").read_text())
    t = read_safetensors(hf_folder / "model.safetensors")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("fuzz-llama")
    values = {"block_count": cfg["num_hidden_layers"], "context_length": cfg["max_position_embeddings"],
              "embedding_length": cfg["hidden_size"], "feed_forward_length": cfg["intermediate_size"],
              "attention.head_count": cfg["num_attention_heads"],
              "attention.head_count_kv": cfg["num_key_value_heads"], "rope.freq_base": float(cfg["rope_theta"]),
              "attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]), "vocab_size": cfg["vocab_size"]}
    values.update(meta or {})
    for key, value in values.items():
        if key in drop:
            continue
        name = f"llama.{key}"
        if isinstance(value, bool):
            w.add_bool(name, value)
        elif isinstance(value, int):
            w.add_uint32(name, value) if 0 <= value < 2**32 else w.add_int64(name, value)
        elif isinstance(value, float):
            w.add_float32(name, value)
        elif isinstance(value, str):
            w.add_string(name, value)
        else:
            w.add_array(name, value)
    shapes = shapes or {}

    def add(name, array, kind):
        array = shapes.get(name, array)
        qtype = gguf.GGMLQuantizationType[kind]
        if kind == "F32" or array.ndim == 1 or array.shape[-1] % 32:
            w.add_tensor(name, np.ascontiguousarray(array, np.float32))
        else:
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array, np.float32), qtype),
                         raw_dtype=qtype)

    add("token_embd.weight", t["model.embed_tokens.weight"], embedding)
    add("output_norm.weight", t["model.norm.weight"], "F32")
    if "lm_head.weight" in t:
        add("output.weight", t["lm_head.weight"], embedding)
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", t[p + "input_layernorm.weight"], "F32")
        add(b + "ffn_norm.weight", t[p + "post_attention_layernorm.weight"], "F32")
        add(b + "attn_q.weight", permute_to_gguf_rope(t[p + "self_attn.q_proj.weight"],
                                                      cfg["num_attention_heads"]), linear)
        add(b + "attn_k.weight", permute_to_gguf_rope(t[p + "self_attn.k_proj.weight"],
                                                      cfg["num_key_value_heads"]), linear)
        add(b + "attn_v.weight", t[p + "self_attn.v_proj.weight"], linear)
        add(b + "attn_output.weight", t[p + "self_attn.o_proj.weight"], linear)
        add(b + "ffn_gate.weight", t[p + "mlp.gate_proj.weight"], linear)
        add(b + "ffn_up.weight", t[p + "mlp.up_proj.weight"], linear)
        add(b + "ffn_down.weight", t[p + "mlp.down_proj.weight"], linear)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


PEFT_TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def write_adapter(folder: Path, config, *, rank: int = 4, alpha: float = 8.0, targets=("q_proj", "v_proj"),
                  seed: int = 0, extra_config: dict | None = None, std: float = 0.05) -> Path:
    """A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors, as save_pretrained writes them) for a
    ModelConfig, with random factors, written without torch or peft."""
    from roma_runtime.lora import linear_shapes, PEFT_NAMES

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
