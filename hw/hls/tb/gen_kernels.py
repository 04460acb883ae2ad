"""Golden data for tb_kernels.cpp (RMSNorm, RoPE, SwiGLU, residual add, embedding, attention, fp32->fp16),
written by the Python golden model: roma_runtime.golden.model (rms_norm, rope_tables, apply_rope, silu,
GoldenModel.forward) and QuantizedMatrix.dequantize / artifact.brom_image. Nothing here re-implements a kernel:
golden values come from those functions, or from GoldenModel.forward itself (hooked by subclassing `linear`
to capture layer 0's activations, or to inject random q/k/v into its attention).

    PYTHONPATH=host python hw/hls/tb/gen_kernels.py OUT_DIR [--no-model]

OUT_DIR/cases.txt: one case per line, `kind name dims...` (raw little-endian arrays, numpy tofile):
    f2h      name N                      name.in.u32 fp32 bit patterns, name.out.u16 numpy astype(float16)
    rmsnorm  name N T                    name.x.f32 [T,N] name.w.f32 [N] name.eps.f32 [1] name.y.f32 [T,N]
    rope     name HEADS HD T             name.pos.i32 [T] name.invf.f32 [HD/2] name.x.f32 [T,HEADS*HD]
                                         name.cos.f32 name.sin.f32 [T,HD/2] (rope_tables) name.y.f32 (apply_rope)
    swiglu   name N T                    name.gate.f32 name.up.f32 name.y.f32 [T,N]  (silu(gate)*up)
    residual name N T                    name.x.f32 name.d.f32 name.y.f32 [T,N]  (x + d)
    embed    name TILES ROWS COLS GROUP BITS T
                                         name.bin (brom ROM image) name.ids.i32 [T] name.y.f32 [T,COLS]
    attn     name HEADS KV HD MAXCTX CALLS TOKENS
                                         name.calls.i32 [CALLS,2] (start, count) in order on one cache;
                                         name.q.f32 [TOKENS,HEADS*HD] (rotated), name.k.f32 / name.v.f32
                                         [TOKENS,KV*HD] (k rotated), name.out.f32 [TOKENS,HEADS*HD] (golden
                                         attention output = the input of wo), name.kc.u16 / name.vc.u16
                                         [LEN,KV*HD] (golden fp16 cache of the layer at the end), name.scale.f32,
                                         name.amag.f64 [TOKENS,HEADS] = scale*max_s sum_d |q k|,
                                         name.vmag.f64 [TOKENS,HEADS*HD] = max_s |v[s,d]|  (tolerance inputs)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from roma_runtime.artifact import brom_image as brom
from roma_runtime.golden import model as golden
from roma_runtime.model.config import ModelConfig
from roma_runtime.model.loader import LoadedModel
from roma_runtime.model.weights import LayerWeights, ModelWeights, QuantizedMatrix, as_float

PROMPT = ("The quick brown fox jumps over the lazy dog. On an FPGA the base weights live in read-only memory "
          "next to the arithmetic, while the adapters and the cache of keys and values live in")
DECODE_STEPS = 3
ATTN_MAXCTX = 64  # the cache capacity the testbench instantiates for the SmolLM2 attention case


def _save(out: Path, name: str, suffix: str, arr, dtype) -> None:
    np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tofile(out / f"{name}.{suffix}")


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """The RoPE inverse-frequency table the host hands the core (HD/2 fp32). Checked against the golden
    rope_tables below: cos/sin of fp32(pos)*inv_freq (fp64, rounded) must reproduce rope_tables bit for bit."""
    f = (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)
    pos = np.arange(0, 4096, 37)
    c, s = golden.rope_tables(head_dim, theta, pos)
    a = pos.astype(np.float32)[:, None] * f[None, :]
    if not (np.array_equal(golden.fp32_of_fp64(np.cos, a), c) and np.array_equal(golden.fp32_of_fp64(np.sin, a), s)):
        raise AssertionError("inverse-frequency table disagrees with golden rope_tables")
    return f


class Hooked(golden.GoldenModel):
    """GoldenModel whose layer-0 linears are recorded (input, output) and optionally replaced by injected
    outputs (a dict name -> list of arrays, one per forward call)."""

    def __init__(self, model, mode="quant", kv_dtype=None, inject=None):
        super().__init__(model, mode, kv_dtype)
        self.log: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.inject = inject or {}

    def linear(self, layer, name, x):
        if layer == 0 and name in self.inject:
            y = np.asarray(self.inject[name].pop(0), np.float32)
        else:
            y = super().linear(layer, name, x)
        if layer == 0:
            self.log.append((name, x.copy(), y.copy()))
        return y


# ---------------------------------------------------------------------------------------------- cases ----

def case_f2h(out: Path, rng) -> str:
    bits = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    fin = halves[np.isfinite(halves)].astype(np.float32)
    srt = np.unique(fin.astype(np.float64))
    mids = ((srt[1:] + srt[:-1]) / 2).astype(np.float32)  # exact ties between neighbouring fp16 values
    f32 = np.concatenate([bits.view(np.float32), fin, mids, np.nextafter(mids, np.float32(np.inf)),
                          np.nextafter(mids, np.float32(-np.inf)),
                          np.array([65504, 65519.996, 65520, 65536, 1e10, np.inf, -np.inf, 2.0**-25, 2.0**-26,
                                    -2.0**-25 * 1.0000001, 2.0**-14, 2.0**-24, 1e-45, 0.0, -0.0], np.float32)])
    f32 = f32[~np.isnan(f32)]
    with np.errstate(over="ignore"):
        h = f32.astype(np.float16)
    _save(out, "f2h", "in.u32", f32.view(np.uint32), np.uint32)
    _save(out, "f2h", "out.u16", h.view(np.uint16), np.uint16)
    return f"f2h f2h {f32.size}"


def case_rmsnorm(out, name, x, w, eps) -> str:
    x = np.asarray(x, np.float32)
    y = golden.rms_norm(x, w, eps)
    _save(out, name, "x.f32", x, np.float32)
    _save(out, name, "w.f32", w, np.float32)
    _save(out, name, "eps.f32", [eps], np.float32)
    _save(out, name, "y.f32", y, np.float32)
    return f"rmsnorm {name} {x.shape[1]} {x.shape[0]}"


def case_rope(out, name, x, positions, head_dim, theta) -> str:
    t, width = x.shape
    heads = width // head_dim
    cos, sin = golden.rope_tables(head_dim, theta, np.asarray(positions))
    y = golden.apply_rope(x.reshape(t, heads, head_dim), cos, sin).reshape(t, width)
    _save(out, name, "pos.i32", positions, np.int32)
    _save(out, name, "invf.f32", inv_freq(head_dim, theta), np.float32)
    _save(out, name, "x.f32", x, np.float32)
    _save(out, name, "cos.f32", cos, np.float32)
    _save(out, name, "sin.f32", sin, np.float32)
    _save(out, name, "y.f32", y, np.float32)
    return f"rope {name} {heads} {head_dim} {t}"


def case_swiglu(out, name, gate, up) -> str:
    with np.errstate(over="ignore"):
        y = golden.silu(gate) * up
    _save(out, name, "gate.f32", gate, np.float32)
    _save(out, name, "up.f32", up, np.float32)
    _save(out, name, "y.f32", y, np.float32)
    return f"swiglu {name} {gate.shape[1]} {gate.shape[0]}"


def case_residual(out, name, x, d) -> str:
    _save(out, name, "x.f32", x, np.float32)
    _save(out, name, "d.f32", d, np.float32)
    _save(out, name, "y.f32", x + d, np.float32)
    return f"residual {name} {x.shape[1]} {x.shape[0]}"


def case_embed(out, name, qm: QuantizedMatrix, tiles: int, ids) -> str:
    brom.write_image(brom.pack(qm, tiles), out, name)
    (out / f"{name}.dat").unlink()
    ids = np.asarray(ids)
    rows = QuantizedMatrix(qm.codes[ids], qm.scales[ids], qm.minimums[ids], qm.bits, qm.group)
    _save(out, name, "ids.i32", ids, np.int32)
    _save(out, name, "y.f32", as_float(rows), np.float32)
    r, c = qm.shape
    return f"embed {name} {tiles} {r // tiles} {c} {qm.group} {qm.bits} {len(ids)}"


def case_attn(out, name, hooked: Hooked, calls, ids_per_call, maxctx) -> str:
    """Run GoldenModel.forward once per call on one cache; record layer 0's q/k/v and attention output."""
    c = hooked.config
    hd, heads, kvh = c.head_dim, c.n_heads, c.n_kv_heads
    cache = hooked.new_cache(maxctx)
    qs, ks, vs, outs = [], [], [], []
    for (start, count), ids in zip(calls, ids_per_call):
        assert cache.length == start and len(ids) == count
        hooked.log.clear()
        hooked.forward(ids, cache)
        got = {n: (x, y) for n, x, y in hooked.log}
        positions = np.arange(start, start + count)
        cos, sin = golden.rope_tables(hd, c.rope_theta, positions)
        q = golden.apply_rope(got["wq"][1].reshape(count, heads, hd), cos, sin).reshape(count, -1)
        k = golden.apply_rope(got["wk"][1].reshape(count, kvh, hd), cos, sin).reshape(count, -1)
        qs.append(q), ks.append(k), vs.append(got["wv"][1]), outs.append(got["wo"][0])
    q, k, v, o = (np.concatenate(a).astype(np.float32) for a in (qs, ks, vs, outs))
    length = cache.length
    kc = cache.keys[0, :length].reshape(length, -1)
    vc = cache.values[0, :length].reshape(length, -1)
    assert kc.dtype == np.float16
    scale = np.float32(1.0 / np.sqrt(hd))
    # tolerance inputs (float64): score magnitudes and value magnitudes over the keys each query sees
    ntok = q.shape[0]
    group = heads // kvh
    k64 = kc.astype(np.float64).reshape(length, kvh, hd)
    v64 = np.abs(vc.astype(np.float64).reshape(length, kvh, hd))
    amag = np.zeros((ntok, heads))
    vmag = np.zeros((ntok, heads, hd))
    pos_of = np.concatenate([np.arange(s, s + n) for s, n in calls])
    for i, p in enumerate(pos_of):
        qh = np.abs(q[i].astype(np.float64).reshape(heads, hd))
        for h in range(heads):
            amag[i, h] = float(scale) * (np.abs(k64[: p + 1, h // group]) @ qh[h]).max()
            vmag[i, h] = v64[: p + 1, h // group].max(axis=0)
    for suffix, arr, dt in (("calls.i32", np.asarray(calls), np.int32), ("q.f32", q, np.float32),
                            ("k.f32", k, np.float32), ("v.f32", v, np.float32), ("out.f32", o, np.float32),
                            ("kc.u16", kc.view(np.uint16), np.uint16), ("vc.u16", vc.view(np.uint16), np.uint16),
                            ("scale.f32", [scale], np.float32), ("amag.f64", amag, np.float64),
                            ("vmag.f64", vmag.reshape(ntok, -1), np.float64)):
        _save(out, name, suffix, arr, dt)
    return f"attn {name} {heads} {kvh} {hd} {maxctx} {len(calls)} {ntok}"


def tiny_model(heads, kv_heads, hd, theta, ctx, rng) -> LoadedModel:
    """A one-layer float model of the given attention shape (its q/k/v get injected; weights are filler)."""
    dim, kvd, ffn, vocab = heads * hd, kv_heads * hd, 8, 4
    cfg = ModelConfig("tiny-attn", 1, dim, ffn, heads, kv_heads, vocab, ctx, theta, 1e-5, True)

    def m(r, c):
        return (rng.standard_normal((r, c)) * 0.1).astype(np.float32)

    layer = LayerWeights(np.ones(dim, np.float32), m(dim, dim), m(kvd, dim), m(kvd, dim), m(dim, dim),
                         np.ones(dim, np.float32), m(ffn, dim), m(ffn, dim), m(dim, ffn))
    weights = ModelWeights(m(vocab, dim), np.ones(dim, np.float32), None, [layer])
    return LoadedModel(cfg, weights, Path("."), "hf")


def random_attention(out, rng) -> str:
    heads, kvh, hd, maxctx, theta = 4, 2, 16, 16, 10000.0
    calls = [(0, 5), (5, 1), (6, 3), (9, 1), (10, 1)]
    inject = {"wq": [], "wk": [], "wv": []}
    for _, n in calls:
        inject["wq"].append(rng.standard_normal((n, heads * hd)) * 1.5)
        inject["wk"].append(rng.standard_normal((n, kvh * hd)) * 1.5)
        vv = rng.standard_normal((n, kvh * hd)) * 2.0
        vv[:, 1] = rng.uniform(-6e4, 6e4, n)  # near the top of the fp16 range
        vv[:, 2] = rng.standard_normal(n) * 1e-6  # fp16 subnormals
        inject["wv"].append(vv)
    hooked = Hooked(tiny_model(heads, kvh, hd, theta, maxctx, rng), "float", np.float16, inject)
    return case_attn(out, "rand_attn", hooked, calls, [np.zeros(n, np.int64) for _, n in calls], maxctx)


# --------------------------------------------------------------------------------------------- driver ----

def write_cases(out: Path, random: bool = True, model: bool = True) -> list[str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20250312)
    lines = []
    if random:
        lines.append(case_f2h(out, rng))
        x = rng.standard_normal((3, 64)).astype(np.float32)
        x[1] *= 1e-3
        x[2] *= 300.0
        lines.append(case_rmsnorm(out, "rand_rms64", x, (1 + 0.2 * rng.standard_normal(64)).astype(np.float32),
                                  1e-5))
        xr = rng.standard_normal((6, 2 * 16)).astype(np.float32)
        lines.append(case_rope(out, "rand_rope_h2_d16", xr, np.array([0, 1, 7, 100, 4095, 8191]), 16, 10000.0))
        g = (rng.standard_normal((3, 32)) * 4).astype(np.float32)
        g[2, :6] = [-100.0, -88.5, -20.0, 0.0, 30.0, 100.0]
        u = rng.standard_normal((3, 32)).astype(np.float32)
        lines.append(case_swiglu(out, "rand_swiglu32", g, u))
        lines.append(case_residual(out, "rand_res32", rng.standard_normal((3, 32)).astype(np.float32),
                                   rng.standard_normal((3, 32)).astype(np.float32)))
        qm = QuantizedMatrix(rng.integers(0, 8, (24, 128), dtype=np.uint8),
                             (rng.standard_normal((24, 2)) * 0.05).astype(np.float16),
                             (rng.standard_normal((24, 2)) * 0.2).astype(np.float16), 3, 64)
        lines.append(case_embed(out, "rand_emb_b3_g64", qm, 3, [0, 7, 8, 15, 16, 23, 5]))
        lines.append(random_attention(out, rng))
    if model:
        from roma_runtime.model.loader import load_model
        from roma_runtime.tokenizer import Tokenizer

        loaded = load_model("smollm2-135m")
        c = loaded.config
        ids = Tokenizer.from_model(loaded).encode(PROMPT)
        hooked = Hooked(loaded, "quant")
        # the prompt as one prefill chunk, then greedy decode steps (the golden model picks the tokens)
        cache = hooked.new_cache(ATTN_MAXCTX)
        logits = hooked.forward(ids, cache)
        first_log = list(hooked.log)
        steps = []
        for _ in range(DECODE_STEPS):
            tok = int(np.argmax(logits[-1]))
            steps.append(tok)
            logits = hooked.forward([tok], cache)
        got = {n: (x, y) for n, x, y in first_log}
        emb = as_float(QuantizedMatrix(loaded.weights.token_embedding.codes[ids],
                                       loaded.weights.token_embedding.scales[ids],
                                       loaded.weights.token_embedding.minimums[ids], 8, 32)) \
            if isinstance(loaded.weights.token_embedding, QuantizedMatrix) else \
            np.asarray(loaded.weights.token_embedding)[ids]
        lw = loaded.weights.layers[0]
        lines.append(case_rmsnorm(out, "smollm2_l0_attn_norm", emb, lw.attn_norm, c.rms_eps))
        h_ffn = got["w_gate"][0]  # the ffn norm's output is w_gate's input; its input is x + wo(attn)
        x_mid = emb + got["wo"][1]
        lines.append(case_residual(out, "smollm2_l0_res_attn", emb, got["wo"][1]))
        lines.append(case_rmsnorm(out, "smollm2_l0_ffn_norm", x_mid, lw.ffn_norm, c.rms_eps))
        assert np.array_equal(golden.rms_norm(x_mid, lw.ffn_norm, c.rms_eps), h_ffn)
        t = len(ids)
        pos = np.arange(t)
        lines.append(case_rope(out, "smollm2_l0_q", got["wq"][1], pos, c.head_dim, c.rope_theta))
        lines.append(case_rope(out, "smollm2_l0_k", got["wk"][1], pos, c.head_dim, c.rope_theta))
        lines.append(case_swiglu(out, "smollm2_l0_swiglu", got["w_gate"][1], got["w_up"][1]))
        lines.append(case_embed(out, "smollm2_embedding", loaded.weights.token_embedding, 4, ids + steps))
        calls = [(0, t)] + [(t + i, 1) for i in range(DECODE_STEPS)]
        lines.append(case_attn(out, "smollm2_l0_attn", Hooked(loaded, "quant"), calls,
                               [ids] + [[s] for s in steps], ATTN_MAXCTX))
    (out / "cases.txt").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    for line in write_cases(Path(args[0]), model="--no-model" not in sys.argv):
        print(line)
