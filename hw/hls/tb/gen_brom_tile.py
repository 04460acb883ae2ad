"""Golden data for tb_brom_tile.cpp, written by the Python golden model (roma_runtime.golden.numerics).

    PYTHONPATH=host python hw/hls/tb/gen_brom_tile.py OUT_DIR [--no-model]

OUT_DIR/cases.txt lists one case per line: `name bits group rows cols tiles tokens`. Per case:
    name.bin        the ROM image (roma_runtime.compiler.brom.write_image; the tb loads it like C simulation)
    name.ddr.u32    the same tensor in the DDR image layout (brom.ddr_words: what ddr_weights.bin holds)
    name.x.f32      activations fp32 [tokens, cols]
    name.xq.i8      golden int8 activations [tokens, cols]
    name.ascale.f32 golden activation scales [tokens, groups]
    name.dot.i32    golden group dot products [tokens, rows, groups]
    name.xsum.i32   golden activation sums [tokens, groups]
    name.y.f32      golden outputs [tokens, rows]
    name.ymag.f64   per output, the magnitude both fp32 evaluations round against:
                    sum_j |a_scale d q x_q| + sum_g |a_scale m xsum|  (float64) [tokens, rows]
plus half.f32: numpy's float16 -> float32 of all 65536 bit patterns (checks roma::half_to_float).
Raw little-endian arrays (numpy tofile). The tb must instantiate a kernel for each case's shape.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT / "host") not in sys.path:
    sys.path.insert(0, str(ROOT / "host"))

from roma_runtime.compiler import brom  # noqa: E402
from roma_runtime.golden import numerics  # noqa: E402
from roma_runtime.model.weights import QuantizedMatrix  # noqa: E402

# Shapes the testbench instantiates: (rows, cols, tiles) for the random cases of every bits x group.
RANDOM_SHAPE = (12, 384, 6)  # 2 rows per tile: below the fp32 adder latency, exercises GEMV_II > 1
EXTRA_CASES = [(3, 64, 16, 192, 1)]  # bits, group, rows, cols, tiles: one tile of 16 rows
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
    img = brom.pack(qm, tiles)
    brom.write_image(img, out, name)
    (out / f"{name}.dat").unlink()  # the tb loads the .bin, as C simulation does
    brom.ddr_words(img).astype("<u4").tofile(out / f"{name}.ddr.u32")
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
    return f"{name} {qm.bits} {qm.group} {rows} {cols} {tiles} {x.shape[0]}"


def write_cases(out: Path, random: bool = True, model: bool = True, model_tokens: int = 4) -> list[str]:
    """Write the random cases and/or the SmolLM2 case into `out`; returns the lines of cases.txt.

    The model case needs the SmolLM2 package (roma_runtime.model.load_model raises RomaError without it).
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
    if model:
        from roma_runtime.golden.model import rms_norm
        from roma_runtime.model import load_model

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
    (out / "cases.txt").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    for line in write_cases(Path(args[0]), model="--no-model" not in sys.argv):
        print(line)
