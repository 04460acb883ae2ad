"""Golden data for tb_roma_core.cpp: a tiny model's build folder (the compiler API) and what the golden model
(GoldenModel, "quant" mode) computes on it.

    PYTHONPATH=host python gen_roma_core.py OUT_DIR --tiny-models=tests/tiny_models.py [--no-model]

--tiny-models: the module that writes the tiny random LLaMA (write_tiny_hf; the Makefile passes the tests'
one); --no-model is accepted and ignored (no SmolLM2 needed).

OUT_DIR/build        the build (`roma compile` of a tiny random LLaMA: 2 layers, dim 64, GQA 4/2, untied head,
                     vocab 49152; mixed precision: layer 0 at 4 bits G32, layer 1 at 3 bits, its w_down at 2,
                     its wq and w_up at G64; placement: layer 0 in ROM, the lm head in URAM (build/
                     uram_weights.bin, which the testbench writes into the core with CMD_LOAD_WEIGHTS), layer 1
                     and the token embedding streamed from DDR (build/ddr_weights.bin, which the testbench passes
                     as ddr_weights))
                     LoRA unit: LORA_SLOTS slots of rank LORA_SLOT_RANK on every linear, fp16
OUT_DIR/build_kv_onchip/roma_model.h   the same build's header with the KV cache on chip (KV_ONCHIP_CTX =
                     KV_CAPACITY) and an int8 LoRA unit: tb_roma_core_onchip is the same testbench compiled
                     against it, loading the images of OUT_DIR/build (the options change the top, not one image)
OUT_DIR/meta.txt     key value lines (dimensions, prompt length, steps, seeds, sampler registers as fp32 hex)
OUT_DIR/*.i32/.f32/.u16/.bin   prompt, logits, tokens, KV rows, packed LoRA images (see write_case)
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np

PREFILL_CHUNK = 32  # the tiny build's (roma_model.h): a U250's smaller chunk, which a plan takes where 64 costs room
PROMPT_LEN = 37  # > PREFILL_CHUNK: the chunked prefill is exercised
DECODE_STEPS = 4
GEN_STEPS = 8
KV_CAPACITY = 64
SEED = 1234
LORA_SLOTS = 4  # the testbench loads slot 1 and selects the empty slot 3
LORA_SLOT_RANK = 8


def _f32hex(v) -> str:
    return f"{int(np.float32(v).view(np.uint32)):08x}"


DDR_UNITS = "1,embedding"  # placement units streamed from DDR (compile_model ddr=)
URAM_UNITS = "head"  # placement units in URAM (compile_model uram=)
LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def _mixed_build(hf: Path, out: Path):
    """A 4-bit G32 build with layer 1 and the embedding in DDR, then layer 1 re-quantized to 3 bits (its w_down
    to 2, its wq and w_up at G64): per-layer widths and groups differ, and the DDR image holds 3-, 2- and 8-bit
    tensors."""
    import json

    from roma_runtime.artifact import brom_image as brom
    from roma_runtime.artifact import ddr_image
    from roma_runtime.artifact.build import DDR_FILE, is_ddr
    from roma_runtime.compiler.build import compile_model, write_ddr_image, write_manifest
    from roma_runtime.model.loader import load_build
    from roma_runtime.artifact.model_header import render_header
    from roma_runtime.compiler.quantization.quantize import quantize_tensor
    from roma_runtime.model.loader import load_model
    from roma_runtime.model.weights import as_float

    model = load_model(hf)
    compile_model(model, out, bits=4, group=32, progress=False, force=True, ddr=DDR_UNITS, uram=URAM_UNITS,
                  lora_slots=LORA_SLOTS, lora_slot_rank=LORA_SLOT_RANK, lora_targets=LINEARS, lora_dtype="fp16")
    man = json.loads((out / "manifest.json").read_text())
    tensors = man["tensors"]
    words = ddr_image.read_ddr_image(out / DDR_FILE)
    images = {}
    for name, e in tensors.items():  # the DDR tensors as compiled, in the image's order
        if is_ddr(e):
            images[name] = ddr_image.ddr_unpack(words[e["ddr_offset"]: e["ddr_offset"] + e["ddr_words"]], e["bits"],
                                           e["group"], *e["shape"], e["tiles"], scales=e["scales"])
    layer1 = model.weights.layers[1]
    for lin in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        bits = 2 if lin == "w_down" else 3
        group = 64 if lin in ("wq", "w_up") else 32  # per-layer groups too, as a mixed-precision build has them
        q, _ = quantize_tensor(as_float(getattr(layer1, lin)), bits, group, "rtn", None, f"blk.1.{lin}")
        images[f"blk.1.{lin}"] = brom.pack(q, tiles=1)
        tensors[f"blk.1.{lin}"].update({"bits": bits, "group": group})
    _, man["ddr"] = write_ddr_image(out, images, tensors)
    # the generated header (the per-layer widths and DDR offsets the top dispatches on) and the manifest's
    # tensor entries (where load_build finds them); the file checksums are not rewritten, so the golden reads
    # the images back without them
    header = dict(config=model.config, tensors=tensors, bits=4, group=32, context=model.config.context_length,
                  board="u250", model_sha256=model.identity(),
                  ddr=man["ddr"], uram=man["uram"], gemv_pe=man["plan"]["pe"], prefill_chunk=PREFILL_CHUNK)
    (out / "roma_model.h").write_text(render_header(**header, lora_unit=man["lora_unit"]))
    onchip = out.parent / "build_kv_onchip"
    onchip.mkdir(exist_ok=True)
    (onchip / "roma_model.h").write_text(render_header(**header, kv_onchip={"tokens": KV_CAPACITY, "placement": "URAM"},
                                                       lora_unit={**man["lora_unit"], "dtype": "int8"}))
    write_manifest(out, man)  # sealed again: this is the build's writer, not a hand edit
    loaded = load_build(out, verify=False)
    return loaded


def _adapter(model, rng):
    from roma_runtime import lora
    from roma_runtime.model.config import linear_shapes

    c = model.config
    shapes = linear_shapes(c)
    factors = {}
    for (layer, name, r) in [(0, "wq", 4), (0, "wv", 8), (1, "wo", 3), (1, "w_gate", 5), (0, "w_down", 6),
                             (1, "wk", 2), (1, "w_up", 4)]:
        out, inp = shapes[name]
        a = (rng.standard_normal((r, inp)) * 0.25).astype(np.float32)
        b = (rng.standard_normal((out, r)) * 0.25).astype(np.float32)
        factors[(layer, name)] = (a, b, 2.0 / r)
    return lora.Adapter.from_factors("tb", c, factors)


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_case(out: Path, tiny_models: Path) -> dict:
    """tiny_models: the module (a .py file) whose write_tiny_hf writes the tiny model."""
    from roma_runtime import lora
    from roma_runtime.golden import GoldenModel
    from roma_runtime.golden import sampler as gs

    out.mkdir(parents=True, exist_ok=True)
    hf = _load_module(tiny_models).write_tiny_hf(out / "hf", tied=False)
    model = _mixed_build(hf, out / "build")
    shutil.rmtree(out / "hf")
    c = model.config
    g = GoldenModel(model, "quant")
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, c.vocab_size, PROMPT_LEN).astype(np.int32)
    prompt.tofile(out / "prompt.i32")

    def kv_rows(cache, length):  # [L][2][length][KV_DIM] fp16 bits
        k = cache.keys[:, :length].reshape(c.n_layers, length, -1)
        v = cache.values[:, :length].reshape(c.n_layers, length, -1)
        return np.stack([k, v], axis=1).view(np.uint16)

    # prefill + greedy decode
    cache = g.new_cache(KV_CAPACITY)
    logits = [g.forward(prompt, cache)[-1]]
    greedy = [int(np.argmax(logits[0]))]
    for _ in range(DECODE_STEPS):
        logits.append(g.forward([greedy[-1]], cache)[-1])
        greedy.append(int(np.argmax(logits[-1])))
    np.asarray(logits, np.float32).tofile(out / "greedy_logits.f32")  # [1 + DECODE_STEPS][V]
    np.asarray(greedy, np.int32).tofile(out / "greedy_tokens.i32")  # [1 + DECODE_STEPS]
    kv_len = PROMPT_LEN + DECODE_STEPS
    kv_rows(cache, kv_len).tofile(out / "kv.u16")
    # The golden again with the prompt split 5 + the rest: numpy evaluates cos/sin (SIMD body or scalar tail, an ulp
    # apart) and the batched sums differently for another batch length; an ulp can flip the fp16 rounding of a
    # cached K/V element, and that an int8 activation downstream. Both runs are valid evaluations of the contract;
    # the testbench accepts a value close to either and prints how far the two golden runs are apart.
    cache = g.new_cache(KV_CAPACITY)
    g.forward(prompt[:5], cache)
    lg = g.forward(prompt[5:], cache)[-1]
    step_logits = [lg]
    for tok in greedy[:-1]:
        step_logits.append(g.forward([tok], cache)[-1])
    np.asarray(step_logits, np.float32).tofile(out / "greedy_logits_step.f32")
    kv_rows(cache, kv_len).tofile(out / "kv_step.u16")

    # autonomous sampled decode: prefill prompt[:-1], then feed prompt[-1] and sample GEN_STEPS tokens
    prm = gs.OnChipParams(greedy=0, inv_temperature=np.float32(1 / 0.8), top_k=40, top_p=np.float32(0.95),
                          min_p=np.float32(0.02), penalty=np.float32(1.1),
                          inv_penalty=np.float32(np.float32(1) / np.float32(1.1)), repeat_last_n=16)
    state = gs.seed_state(SEED)
    sampler = gs.OnChipSampler(gs.OnChipSamplerSpec(c.vocab_size), prm, state=state)  # lanes: timing only
    cache = g.new_cache(KV_CAPACITY)
    g.forward(prompt[:-1], cache)
    tok, sampled = int(prompt[-1]), []
    for _ in range(GEN_STEPS):
        lg = g.forward([tok], cache)[-1]
        tok = sampler.sample(lg)
        sampled.append(tok)
    np.asarray(sampled, np.int32).tofile(out / "sampled_tokens.i32")
    lg.astype(np.float32).tofile(out / "sampled_last_logits.f32")

    # LoRA: one adapter packed as fp16 and as int8 (fp32 row scales); prefill logits with each
    adapter = _adapter(model, rng)
    for dtype, sdt in (("fp16", "fp16"), ("int8", "fp32")):
        packed = lora.pack(adapter, dtype, slot_rank=LORA_SLOT_RANK, scale_dtype=sdt)
        packed.buffer.tofile(out / f"lora_{dtype}.bin")
        g.lora = packed.to_golden()
        cache = g.new_cache(KV_CAPACITY)
        g.forward(prompt, cache)[-1].astype(np.float32).tofile(out / f"lora_{dtype}_logits.f32")
    g.lora = None

    meta = {
        "n_layers": c.n_layers, "kv_dim": c.kv_dim, "vocab": c.vocab_size, "prompt_len": PROMPT_LEN,
        "decode_steps": DECODE_STEPS, "gen_steps": GEN_STEPS, "kv_capacity": KV_CAPACITY, "kv_len": kv_len,
        "seed_lo": state & 0xFFFFFFFF, "seed_hi": state >> 32, "inv_temperature": _f32hex(prm.inv_temperature),
        "top_k": prm.top_k, "top_p": _f32hex(prm.top_p), "min_p": _f32hex(prm.min_p),
        "repeat_penalty": _f32hex(prm.penalty), "repeat_last_n": prm.repeat_last_n,
    }
    (out / "meta.txt").write_text("".join(f"{k} {v}\n" for k, v in meta.items()))
    (out / "cases.txt").write_text("roma_core tiny\n")
    return meta


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    tiny = [a.split("=", 1)[1] for a in argv if a.startswith("--tiny-models=")]
    if len(args) != 1 or len(tiny) != 1:
        print(__doc__)
        return 2
    print(write_case(Path(args[0]), Path(tiny[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
