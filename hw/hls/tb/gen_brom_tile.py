"""Golden data for tb_brom_tile.cpp, written by the Python golden model (roma_runtime.golden.numerics).

    PYTHONPATH=host python hw/hls/tb/gen_brom_tile.py OUT_DIR [--no-model]

OUT_DIR/cases.txt lists one case per line: `name bits group rows cols tiles tokens scales` (scales: the ROM's
scale format, fp16 or q8). Per case:
    name.bin        the ROM image (roma_runtime.artifact.brom_image.write_image; the tb loads it like C simulation)
    name.fp16.bin   q8 cases: the same matrix with fp16 scales (the tb's reference for the q8 decode)
    name.ddr.u32    the same tensor in the DDR image layout (ddr_image.ddr_words: what ddr_weights.bin holds)
    name.x.f32      activations fp32 [tokens, cols]
    name.xq.i8      golden int8 activations [tokens, cols]
    name.ascale.f32 golden activation scales [tokens, groups]
    name.dot.i32    golden group dot products [tokens, rows, groups]
    name.xsum.i32   golden activation sums [tokens, groups]
    name.y.f32      golden outputs [tokens, rows]
    name.ymag.f64   per output, the magnitude both fp32 evaluations round against:
                    sum_j |a_scale d q x_q| + sum_g |a_scale m xsum|  (float64) [tokens, rows]
plus half.f32: numpy's float16 -> float32 of all 65536 bit patterns (checks roma::half_to_float), and q8.u16: the
fp16 bits of code * 2^(e + Q8_EXP_MIN) for [unsigned, signed][e = 0..32][code byte 0..255] (brom.q8_values;
checks roma::q8_to_half).
Raw little-endian arrays (numpy tofile). The tb must instantiate a kernel for each case's shape.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from roma_runtime.artifact import brom_image as brom
from roma_runtime.artifact import ddr_image
from roma_runtime.artifact.brom_image import Q8_EXP_MAX, Q8_EXP_MIN
from roma_runtime.compiler.quantization.quantize import quantize_rtn
from roma_runtime.golden import numerics
from roma_runtime.model.weights import QuantizedMatrix

# Shapes the testbench instantiates: (rows, cols, tiles) for the random cases of every bits x group.
RANDOM_SHAPE = (12, 384, 6)  # 2 rows per tile: below the fp32 adder latency, exercises GEMV_II > 1
# bits, group, rows, cols, tiles: one tile of 16 rows; four tiles of 8 rows (a DDR stream whose outputs outrun y's
# write port at 512 bits: each tile's go out while the next streams, more rows than the next tile's blocks)
EXTRA_CASES = [(3, 64, 16, 192, 1), (2, 64, 32, 128, 4)]
# q8 scales: every bits x group at RANDOM_SHAPE, then the RTN quantizer's q8 output at EXTRA_CASES' shape, and
# odd rows per tile (a half-filled exponent word) with 15 steps a tile (a partial 8-step DDR block)
Q8_RTN_CASE = (3, 64, 16, 192, 1)
Q8_ODD_CASE = (2, 32, 15, 96, 3)
MODEL_CASE = ("smollm2_l0_wq", 4)  # SmolLM2-135M layer 0 wq (Q4_1: 4-bit, G32, 576x576), 4 tiles


def random_matrix(rng: np.random.Generator, bits: int, group: int, rows: int, cols: int) -> QuantizedMatrix:
    ng = cols // group
    codes = rng.integers(0, 1 << bits, (rows, cols), dtype=np.uint8)
    codes[0] = (1 << bits) - 1  # extremes: a row of maximal codes and a row of zeros
    codes[-1] = 0
    scales = (rng.standard_normal((rows, ng)) * 0.05).astype(np.float16)
    mins = (rng.standard_normal((rows, ng)) * 0.2).astype(np.float16)
    scales[0, 0] = np.float16(6e-8)  # subnormal fp16
    mins[1, 0] = np.float16(-0.0)
    return QuantizedMatrix(codes, scales, mins, bits, group)


def random_q8_matrix(rng: np.random.Generator, bits: int, group: int, rows: int, cols: int) -> QuantizedMatrix:
    """Random values on the q8 grid, with the extremes: row 0 at the smallest exponents (fp16 subnormals),
    row 1 at the largest, and the largest and most negative steps."""
    ng = cols // group
    codes = rng.integers(0, 1 << bits, (rows, cols), dtype=np.uint8)
    codes[0] = (1 << bits) - 1
    codes[-1] = 0
    sd = rng.integers(0, 256, (rows, ng))
    sm = rng.integers(-128, 128, (rows, ng))
    ed = rng.integers(-14, -6, (rows, 1))
    em = rng.integers(-12, -4, (rows, 1))
    ed[0], em[0], ed[1], em[1] = Q8_EXP_MIN, Q8_EXP_MIN, Q8_EXP_MAX, Q8_EXP_MAX
    sd[0, 0], sd[1, 0], sm[1, 0], sm[0, 0] = 255, 255, -128, 1
    d = np.ldexp(sd.astype(np.float64), ed).astype(np.float16)
    m = np.ldexp(sm.astype(np.float64), em).astype(np.float16)
    return QuantizedMatrix(codes, d, m, bits, group, "q8")


def q8_table() -> np.ndarray:
    """uint16 [2][33][256]: fp16 bits of the unsigned, then signed, code byte times 2^(e + Q8_EXP_MIN)."""
    exps = np.arange(Q8_EXP_MAX - Q8_EXP_MIN + 1)[:, None]
    codes = np.arange(256, dtype=np.uint16)[None, :]
    return np.stack([brom.q8_values(codes, exps), brom.q8_values(codes.astype(np.uint8).view(np.int8), exps)]
                    ).view(np.uint16)


def random_activations(rng: np.random.Generator, group: int, cols: int, tokens: int = 3) -> np.ndarray:
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    # token 1: a group with amax exactly 127 (scale 1) and halves (round-half-even ties), a zero group
    ties = rng.integers(-126, 126, group).astype(np.float32) + np.float32(0.5)
    ties[0] = 127.0
    x[1, :group] = ties
    x[1, group:2 * group] = 0.0
    # token 2: a wide dynamic range
    x[2] = (rng.standard_normal(cols) * np.exp(rng.uniform(-20, 8, cols))).astype(np.float32)
    return x


def write_case(out: Path, name: str, qm: QuantizedMatrix, x: np.ndarray, tiles: int) -> str:
    img = brom.pack(qm, tiles, name)
    brom.write_image(img, out, name)
    (out / f"{name}.dat").unlink()  # the tb loads the .bin, as C simulation does
    ddr_image.ddr_words(img).astype("<u4").tofile(out / f"{name}.ddr.u32")
    if qm.scale_format == "q8":  # the golden model and the fp16 twin take the values q8 stores
        stored = brom.unpack(img)
        qm = QuantizedMatrix(stored.codes, stored.scales, stored.minimums, qm.bits, qm.group)
        brom.write_image(brom.pack(qm, tiles), out, f"{name}.fp16")
        (out / f"{name}.fp16.dat").unlink()
    prepared = numerics.PreparedMatrix(qm)
    xq, a_scale = numerics.quantize_activations(x, qm.group)
    dot, xsum = numerics.group_dot(prepared, xq)
    y = numerics.quantized_matmul(prepared, x)
    rows, cols = qm.shape
    t, ng = x.shape[0], cols // qm.group
    xg = np.abs(xq.reshape(t, ng, qm.group).astype(np.float64))
    a = a_scale.astype(np.float64)
    q = qm.codes.reshape(rows, ng, qm.group).astype(np.float64)
    d = np.abs(qm.scales.astype(np.float64))
    m = np.abs(qm.minimums.astype(np.float64))
    ymag = (np.einsum("ogj,tgj->tog", q, xg) * d[None] * a[:, None, :]).sum(-1) + \
        (np.abs(xsum.astype(np.float64)) * a) @ m.T
    for suffix, arr, dtype in (("x.f32", x, np.float32), ("xq.i8", xq, np.int8),
                               ("ascale.f32", a_scale, np.float32), ("dot.i32", dot, np.int32),
                               ("xsum.i32", xsum, np.int32), ("y.f32", y, np.float32),
                               ("ymag.f64", ymag, np.float64)):
        np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tofile(out / f"{name}.{suffix}")
    return f"{name} {qm.bits} {qm.group} {rows} {cols} {tiles} {x.shape[0]} {img.scale_format}"


def write_cases(out: Path, random: bool = True, model: bool = True, model_tokens: int = 4) -> list[str]:
    """Write the random cases and/or the SmolLM2 case into `out`; returns the lines of cases.txt.

    The model case needs the SmolLM2 package (roma_runtime.model.loader.load_model raises RomaError without it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20250311)
    lines = []
    rows, cols, tiles = RANDOM_SHAPE
    for bits in (2, 3, 4, 8) if random else ():
        for group in (32, 64, 128):
            qm = random_matrix(rng, bits, group, rows, cols)
            lines.append(write_case(out, f"rand_b{bits}_g{group}", qm, random_activations(rng, group, cols),
                                    tiles))
    for bits, group, r, c, t in EXTRA_CASES if random else ():
        qm = random_matrix(rng, bits, group, r, c)
        lines.append(write_case(out, f"rand_b{bits}_g{group}_r{r}", qm, random_activations(rng, group, c), t))
    rng = np.random.default_rng(20250312)  # q8 cases after the fp16 ones: their data stay as they were
    for bits in (2, 3, 4, 8) if random else ():
        for group in (32, 64, 128):
            qm = random_q8_matrix(rng, bits, group, rows, cols)
            lines.append(write_case(out, f"q8_b{bits}_g{group}", qm, random_activations(rng, group, cols), tiles))
    if random:
        bits, group, r, c, t = Q8_RTN_CASE
        w = (rng.standard_normal((r, c)) * np.exp(rng.uniform(-6, 1, (r, 1)))).astype(np.float32)
        qm = quantize_rtn(w, bits, group, scales="q8")
        lines.append(write_case(out, f"q8_rtn_b{bits}_g{group}_r{r}", qm, random_activations(rng, group, c), t))
        bits, group, r, c, t = Q8_ODD_CASE
        qm = random_q8_matrix(rng, bits, group, r, c)
        lines.append(write_case(out, f"q8_b{bits}_g{group}_r{r}", qm, random_activations(rng, group, c), t))
    if model:
        from roma_runtime.golden.model import rms_norm
        from roma_runtime.model.loader import load_model

        loaded = load_model("smollm2-135m")
        wq = loaded.weights.layers[0].wq
        ids = np.array([1, 100, 2000, 30000][:model_tokens])
        emb = loaded.weights.token_embedding
        if isinstance(emb, QuantizedMatrix):  # dequantize only the rows used
            emb = QuantizedMatrix(emb.codes[ids], emb.scales[ids], emb.minimums[ids], emb.bits, emb.group)
            e = emb.dequantize()
        else:
            e = np.asarray(emb, dtype=np.float32)[ids]
        # the real input of wq: RMS-normed token embeddings times the layer's attention norm weight
        x = rms_norm(e, loaded.weights.layers[0].attn_norm, loaded.config.rms_eps).astype(np.float32)
        name, t = MODEL_CASE
        lines.append(write_case(out, name, wq, x, t))
    np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype("<f4").tofile(out / "half.f32")
    q8_table().astype("<u2").tofile(out / "q8.u16")
    (out / "cases.txt").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    for line in write_cases(Path(args[0]), model="--no-model" not in sys.argv):
        print(line)
