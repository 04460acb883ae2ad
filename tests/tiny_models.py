"""Tiny random LLaMA models that the tests write themselves: a Hugging Face folder and GGUF files of the
same weights. They borrow SmolLM2's vocabulary so the real tokenizer works on them."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

from roma_runtime.model.loader import resolve_model_path
from roma_runtime.model.loader import permute_to_gguf_rope, read_gguf_metadata

SMOLLM2_VOCAB = 49152


def write_tiny_hf(folder: Path, *, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                  vocab=SMOLLM2_VOCAB, tied=True, rope_theta=10000.0, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    hd = dim // n_heads

    def mat(rows, cols, std=0.08):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    t = {"model.embed_tokens.weight": mat(vocab, dim, 1.0),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)}
    if not tied:
        t["lm_head.weight"] = mat(vocab, dim, 1.0)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
        t[p + "self_attn.q_proj.weight"] = mat(n_heads * hd, dim, 0.3)
        t[p + "self_attn.k_proj.weight"] = mat(n_kv_heads * hd, dim, 0.3)
        t[p + "self_attn.v_proj.weight"] = mat(n_kv_heads * hd, dim)
        t[p + "self_attn.o_proj.weight"] = mat(dim, n_heads * hd)
        t[p + "mlp.gate_proj.weight"] = mat(ffn_dim, dim)
        t[p + "mlp.up_proj.weight"] = mat(ffn_dim, dim)
        t[p + "mlp.down_proj.weight"] = mat(dim, ffn_dim)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
        "intermediate_size": ffn_dim, "num_hidden_layers": n_layers, "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads, "vocab_size": vocab, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": rope_theta, "tie_word_embeddings": tied, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer_metadata() -> dict:
    """SmolLM2's tokenizer.* metadata, read once per process (parsing its 49,152 tokens and merges takes seconds)."""
    _, metadata = read_gguf_metadata(resolve_model_path("smollm2-135m"))
    return {key: value for key, value in metadata.items() if key.startswith("tokenizer.")}


def write_tiny_gguf(hf_folder: Path, path: Path, linear_type: str = "Q4_1", embedding_type: str = "Q8_0",
                    arch: str = "llama", *, tokenizer: bool = True, meta: dict | None = None, drop: tuple = (),
                    shapes: dict | None = None) -> Path:
    """The same weights as `hf_folder` in a GGUF file, Q/K permuted as llama.cpp's converter does, with SmolLM2's
    tokenizer unless `tokenizer` is False (smaller and quicker to write). For damaged files (fuzz_tools): meta,
    ARCH.* keys to override (without the prefix; written with their Python type); drop, ARCH.* keys to leave
    out; shapes, tensor name -> an array to write instead of the real one (F32 where it cannot be quantized)."""
    from roma_runtime.model.safetensors_io import read_safetensors

    cfg = json.loads((hf_folder / "config.json").read_text())
    t = read_safetensors(hf_folder / "model.safetensors")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    values = {"block_count": cfg["num_hidden_layers"], "context_length": cfg["max_position_embeddings"],
              "embedding_length": cfg["hidden_size"], "feed_forward_length": cfg["intermediate_size"],
              "attention.head_count": cfg["num_attention_heads"],
              "attention.head_count_kv": cfg["num_key_value_heads"], "rope.freq_base": float(cfg["rope_theta"]),
              "attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]),
              "rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"],
              "vocab_size": cfg["vocab_size"], **(meta or {})}
    for key, value in values.items():
        name = f"{arch}.{key}"
        if key in drop:
            continue
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
    if tokenizer:
        smollm2 = smollm2_tokenizer_metadata()
        w.add_tokenizer_model(smollm2["tokenizer.ggml.model"])
        w.add_tokenizer_pre(smollm2["tokenizer.ggml.pre"])
        w.add_token_list(smollm2["tokenizer.ggml.tokens"])
        w.add_token_types(smollm2["tokenizer.ggml.token_type"])
        w.add_token_merges(smollm2["tokenizer.ggml.merges"])
        w.add_bos_token_id(smollm2["tokenizer.ggml.bos_token_id"])
        w.add_eos_token_id(smollm2["tokenizer.ggml.eos_token_id"])
        w.add_add_bos_token(False)
        w.add_chat_template(smollm2["tokenizer.chat_template"])
    shapes = shapes or {}

    def add(name, array, kind):
        array = shapes.get(name, array)
        qtype = gguf.GGMLQuantizationType[kind]
        if kind == "F32" or array.ndim == 1 or array.shape[-1] % 32:
            w.add_tensor(name, np.ascontiguousarray(array, np.float32))
        else:
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array, np.float32), qtype),
                         raw_dtype=qtype)

    add("token_embd.weight", t["model.embed_tokens.weight"], embedding_type)
    add("output_norm.weight", t["model.norm.weight"], "F32")
    if "lm_head.weight" in t:
        add("output.weight", t["lm_head.weight"], embedding_type)
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", t[p + "input_layernorm.weight"], "F32")
        add(b + "ffn_norm.weight", t[p + "post_attention_layernorm.weight"], "F32")
        add(b + "attn_q.weight", permute_to_gguf_rope(t[p + "self_attn.q_proj.weight"],
                                                      cfg["num_attention_heads"]), linear_type)
        add(b + "attn_k.weight", permute_to_gguf_rope(t[p + "self_attn.k_proj.weight"],
                                                      cfg["num_key_value_heads"]), linear_type)
        add(b + "attn_v.weight", t[p + "self_attn.v_proj.weight"], linear_type)
        add(b + "attn_output.weight", t[p + "self_attn.o_proj.weight"], linear_type)
        add(b + "ffn_gate.weight", t[p + "mlp.gate_proj.weight"], linear_type)
        add(b + "ffn_up.weight", t[p + "mlp.up_proj.weight"], linear_type)
        add(b + "ffn_down.weight", t[p + "mlp.down_proj.weight"], linear_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def peft_with_random_lora(hf_folder: Path, seed: int, std: float = 0.1, **config):
    """The transformers model of `hf_folder` under a PEFT LoRA (LoraConfig(**config)) whose A and B factors are
    random and non-zero (PEFT initialises B to zero, which would test nothing)."""
    import warnings

    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out on nn.Linear warns (PEFT switches it off)
        pm = peft.get_peft_model(model, peft.LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return pm


def save_peft(pm, out: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # embedding targets make PEFT save the embedding too (and say so)
        pm.save_pretrained(out)
    return out


def write_peft_adapter(hf_folder: Path, out: Path, seed: int, **config) -> Path:
    """A PEFT adapter folder with random non-zero factors, as save_pretrained writes it."""
    return save_peft(peft_with_random_lora(hf_folder, seed, **config), out)
