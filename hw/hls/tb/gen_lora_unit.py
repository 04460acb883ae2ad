"""Golden data for tb_lora_unit.cpp (the LoRA unit, include/roma/lora_unit.h), written with the runtime's own
packer and golden model: roma_runtime.lora (Adapter.from_factors, pack -> PackedLora) and the golden
LoraAdapter that PackedLora.to_golden() reads back from the packed buffer, so the golden delta uses exactly the
stored (fp16- or int8-rounded) factors. Nothing here re-implements the unit.

    PYTHONPATH=host python hw/hls/tb/gen_lora_unit.py OUT_DIR [--no-model]   (--no-model: accepted, unused)

Four units (the testbench instantiates one LoraUnit each, 3 slots each):
    tiny16  2 layers, dim 32, kv 16, ffn 48, slot rank 8, fp16, all 7 linears
    tiny8   the same shapes, int8, memory for wq wk w_gate w_up w_down only (not wv, wo)
    smol16  SmolLM2-135M's shapes for one layer (dim 576, kv 192, ffn 1536), slot rank 16, fp16, all 7 linears
    smol8   the same shapes, int8, memory for wq w_gate w_up w_down only
OUT_DIR/cases.txt, one line each, run in order (all loads and refusals before the applies):
    load   SHAPE SLOT NAME            NAME.img.u8: a packed adapter; must validate and is copied into SLOT
    reject SHAPE SLOT NAME REASON...  NAME.img.u8: a corrupt image; lora_validate must return REASON and
                                      SLOT (loaded before) must stay bit for bit as it was
    apply  SHAPE SLOT NAME LAYERS T   for every layer L and linear (wq wk wv wo w_gate w_up w_down, index J):
                                      NAME.lL_J.x.f32 [T,in], .y0.f32 [T,out] (random), .y.f32 [T,out] golden
                                      y0 + delta (y0 itself where the adapter has no factor), .mag.f64 [T,out]
                                      = |scale| * (|x| |A|^T) |B|^T (the tolerance's magnitude)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from roma_runtime import lora
from roma_runtime.artifact.lora_image import ENTRY_BYTES, HEADER_BYTES
from roma_runtime.model.config import ModelConfig, linear_shapes

TINY = ModelConfig("tiny-lora", 2, 32, 48, 4, 2, 100, 64, 10000.0, 1e-5, True)
SMOL = ModelConfig("smollm2-135m-1layer", 1, 576, 1536, 9, 3, 49152, 2048, 100000.0, 1e-5, True)
SHAPES = {  # unit -> (config, tokens per apply); the units' ranks, storage and targets are in tb_lora_unit.cpp
    "tiny16": (TINY, 4), "tiny8": (TINY, 4), "smol16": (SMOL, 2), "smol8": (SMOL, 2),
}
# (shape, slot, name, storage, scale type, slot rank, {(layer, linear): rank}); ranks mostly below the slot rank
ADAPTERS = [
    ("tiny16", 2, "tiny_prev", "fp16", "fp16", 8, {(l, n): 8 for l in range(2) for n in lora.LINEAR}),
    ("tiny16", 0, "tiny_fp16", "fp16", "fp16", 8, {(0, "wq"): 3, (0, "wv"): 8, (0, "w_down"): 1, (1, "wo"): 5,
                                                 (1, "w_gate"): 2}),
    ("tiny8", 1, "tiny_i8h", "int8", "fp16", 6, {(0, "wk"): 2, (0, "w_gate"): 6, (0, "w_up"): 4, (1, "wq"): 1,
                                                (1, "w_down"): 3}),
    ("tiny8", 2, "tiny_i8f", "int8", "fp32", 8, {(0, "wq"): 7, (0, "wk"): 4, (0, "w_up"): 8, (1, "w_down"): 2}),
    ("smol16", 0, "smol_fp16", "fp16", "fp16", 16, {(0, "wq"): 8, (0, "wk"): 4, (0, "wv"): 16, (0, "wo"): 2}),
    ("smol8", 1, "smol_i8h", "int8", "fp16", 16, {(0, "w_gate"): 8, (0, "w_up"): 12, (0, "w_down"): 3}),
    ("smol8", 2, "smol_i8f", "int8", "fp32", 8, {(0, "wq"): 8, (0, "w_down"): 5}),
]


def _save(out: Path, name: str, arr, dtype) -> None:
    np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tofile(out / name)


def make_packed(shape: str, name: str, dtype: str, scale_dtype: str, slot_rank: int, ranks, rng):
    config = SHAPES[shape][0]
    shapes = linear_shapes(config)
    factors = {}
    for (layer, lin), r in ranks.items():
        out_dim, in_dim = shapes[lin]
        a = rng.standard_normal((r, in_dim)).astype(np.float32) / np.float32(np.sqrt(in_dim))
        b = (rng.standard_normal((out_dim, r)) * 0.5).astype(np.float32)
        factors[(layer, lin)] = (a, b, float(rng.uniform(0.25, 4.0)))
    adapter = lora.Adapter.from_factors(name, config, factors)
    return lora.pack(adapter, dtype, slot_rank, scale_dtype)


def _entry(e: int) -> int:
    return HEADER_BYTES + e * ENTRY_BYTES


def write_cases(out: Path, seed: int = 1) -> list[str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    loads, rejects, applies = [], [], []
    packed = {}
    for shape, slot, name, dtype, sdt, slot_rank, ranks in ADAPTERS:
        p = make_packed(shape, name, dtype, sdt, slot_rank, ranks, rng)
        packed[name] = p
        _save(out, f"{name}.img.u8", p.buffer, np.uint8)
        loads.append(f"load {shape} {slot} {name}")
        if name != "tiny_prev":  # overwritten in slot 2 by tiny_i8f
            applies.append((shape, slot, name, p))

    def reject(shape, slot, name, buf, reason):
        _save(out, f"{name}.img.u8", buf, np.uint8)
        rejects.append(f"reject {shape} {slot} {name} {reason}")

    base = packed["tiny_fp16"].buffer
    bad = base.copy()
    bad[3] ^= 0x20  # "ROMaLORA"
    reject("tiny16", 0, "tiny_bad_magic", bad, "bad magic")
    bad = base.copy()
    bad[_entry(1) + 4] += 1  # layer 0 wk: in_dim 33
    reject("tiny16", 0, "tiny_bad_in", bad, "linear shape differs from the model")
    bad = base.copy()
    bad[_entry(7 + 5) + 8] += 16  # layer 1 w_up (no factor there): out_dim 64
    reject("tiny16", 1, "tiny_bad_out", bad, "linear shape differs from the model")
    p = make_packed("tiny16", "tiny_r9", "fp16", "fp16", 9, {(0, "wq"): 2}, rng)
    reject("tiny16", 2, "tiny_rank9", p.buffer, "slot rank above the unit's")
    reject("tiny8", 0, "tiny_gets_smol", packed["smol_i8f"].buffer, "layer/linear count differs from the model")
    reject("tiny16", 1, "tiny_short", base[:-64], "bad directory offset or total size")
    # what the build's unit cannot hold: another storage type, a factor where it has no memory
    reject("tiny16", 0, "tiny_int8_for_fp16", packed["tiny_i8h"].buffer, "storage type differs from the unit's")
    reject("tiny8", 1, "tiny_fp16_for_int8", base, "storage type differs from the unit's")
    p = make_packed("tiny8", "tiny_wv", "int8", "fp32", 8, {(0, "wq"): 2, (1, "wv"): 3}, rng)
    reject("tiny8", 2, "tiny_off_target", p.buffer, "factor on a linear the unit has no memory for")
    bad = packed["smol_i8h"].buffer.copy()
    bad[0] = ord("X")
    reject("smol8", 1, "smol_bad_magic", bad, "bad magic")
    bad = packed["smol_fp16"].buffer.copy()
    bad[_entry(6) + 4:_entry(6) + 8] = np.frombuffer(np.uint32(1537).tobytes(), np.uint8)  # w_down in 1537
    reject("smol16", 0, "smol_bad_in", bad, "linear shape differs from the model")

    for shape, slot, name, p in applies:
        config, t = SHAPES[shape]
        shapes = linear_shapes(config)
        golden = p.to_golden()  # the stored factors, as the unit holds them
        for layer in range(config.n_layers):
            for j, lin in enumerate(lora.LINEAR):
                out_dim, in_dim = shapes[lin]
                x = rng.standard_normal((t, in_dim)).astype(np.float32)
                y0 = rng.standard_normal((t, out_dim)).astype(np.float32)
                delta = golden.delta((layer, lin), x)
                y = y0 if delta is None else (y0 + delta).astype(np.float32)
                mag = np.zeros((t, out_dim))
                if delta is not None:
                    a, b, s = golden.factors[(layer, lin)]
                    mag = abs(s) * ((np.abs(x.astype(np.float64)) @ np.abs(a.T.astype(np.float64)))
                                    @ np.abs(b.T.astype(np.float64)))
                stem = f"{name}.l{layer}_{j}"
                _save(out, f"{stem}.x.f32", x, np.float32)
                _save(out, f"{stem}.y0.f32", y0, np.float32)
                _save(out, f"{stem}.y.f32", y, np.float32)
                _save(out, f"{stem}.mag.f64", mag, np.float64)
    lines = loads + rejects + [f"apply {s} {sl} {n} {SHAPES[s][0].n_layers} {SHAPES[s][1]}"
                               for s, sl, n, _ in applies]
    (out / "cases.txt").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit("usage: gen_lora_unit.py OUT_DIR [--no-model]")
    for line in write_cases(Path(args[0])):
        print(line)
