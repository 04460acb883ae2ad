"""`roma info`: what a model file holds (architecture, tensor types, parameters, tokenizer, chat template)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from . import common

HELP = "show a model's facts: config, tensor types, parameters, tokenizer"


def add_arguments(parser) -> None:
    common.add_model_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the facts as one JSON object")


def _tensor_facts(model) -> tuple[dict[str, int], int]:
    """(tensor count per stored type, parameter count)."""
    if model.format == "gguf":
        from ..model.loader import read_gguf_metadata

        reader, _ = read_gguf_metadata(model.source)
        types = Counter(t.tensor_type.name for t in reader.tensors)
        params = sum(int(t.n_elements) for t in reader.tensors)
        return dict(sorted(types.items())), params
    # A Hugging Face folder: count what the loader imported (float tensors).
    w = model.weights
    tensors = [w.token_embedding, w.output_norm] + ([w.output] if w.output is not None else [])
    for layer in w.layers:
        tensors += [layer.attn_norm, layer.ffn_norm, *layer.linears().values()]
    types: Counter = Counter()
    params = 0
    for t in tensors:
        if isinstance(t, np.ndarray):
            types[str(t.dtype).upper().replace("FLOAT", "F")] += 1
            params += int(t.size)
        else:
            types[f"q{t.bits}g{t.group}"] += 1
            params += int(np.prod(t.shape))
    return dict(sorted(types.items())), params


def facts(model, tok) -> dict:
    types, params = _tensor_facts(model)
    source = model.source
    if source.is_file():
        size = source.stat().st_size
    else:
        size = sum(f.stat().st_size for f in source.iterdir() if f.is_file())
    return {
        "model": model.config.name,
        "file": str(source),
        "format": model.format,
        "file_size_bytes": size,
        "config": model.config.to_dict(),
        "tensor_count": sum(types.values()),
        "tensor_types": types,
        "parameter_count": params,
        "tokenizer": {
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "eos_ids": sorted(tok.eos_ids),
            "add_bos": tok.add_bos,
            "special_tokens": len(tok.special_ids),
            "pre_tokenizer": model.metadata.get("tokenizer.ggml.pre"),
        },
        "chat_template": tok.chat_template is not None,
    }


def run(args) -> int:
    from ..model.loader import load_model
    from ..tokenizer import Tokenizer

    model = load_model(args.model)
    tok = Tokenizer.from_model(model)
    f = facts(model, tok)
    if args.json:
        print(json.dumps(f, ensure_ascii=False))
        return 0
    c, t = f["config"], f["tokenizer"]
    size_mb = f["file_size_bytes"] / 1e6
    lines = [
        f"model          {f['model']}",
        f"file           {f['file']} ({f['format']}, {size_mb:.1f} MB)",
        f"layers         {c['n_layers']}",
        f"dim            {c['dim']} (ffn {c['ffn_dim']})",
        f"heads          {c['n_heads']} query, {c['n_kv_heads']} key/value, head dim {c['head_dim']}",
        f"vocab          {c['vocab_size']}",
        f"context        {c['context_length']}",
        f"rope theta     {c['rope_theta']:g}",
        f"rms eps        {c['rms_eps']:g}",
        f"tied embedding {'yes' if c['tied_embeddings'] else 'no'}",
        f"parameters     {f['parameter_count']:,} ({f['parameter_count'] / 1e6:.1f} M)",
        f"tensors        {f['tensor_count']}: "
        + ", ".join(f"{n} {k}" for k, n in f["tensor_types"].items()),
        f"tokenizer      {t['vocab_size']} tokens, bos {t['bos_id']}, eos {t['eos_ids']}, "
        f"{t['special_tokens']} special, adds bos: {'yes' if t['add_bos'] else 'no'}",
        f"chat template  {'yes' if f['chat_template'] else 'no'}",
    ]
    print("\n".join(lines))
    return 0
