"""The quality table: compile + eval of SmolLM2-135M at each setting, printed as a markdown table.

    PYTHONPATH=host python benchmarks/quality_table.py [--tokens 1024] [--rows passthrough,4-g128-rtn,...]
        [--markdown benchmarks/quality_table.md]

Candidate = the golden model in quant mode (accelerator numerics) on the build's ROM images (+ its LoRA);
reference = the golden model in float mode on the original GGUF. Held-out text: stdlib docstrings
(evaluation split). SmolLM2's 576-wide rows admit G32 and G64 only (576 = 4.5 x 128), so at --group 128
they fall back to G64 and only the 1536-wide w_down rows get G128 (the labels say so); mixed rows choose each
tensor's width and group (up to the row's --group). All GPTQ and mixed rows share one calibration (Hessians),
the mixed rows one sensitivity measurement per --group and scale format; GPTAQ rows calibrate each build on its
own (sequentially: a layer's inputs come from the layers already quantized).
Rows print as they finish, so a partial run still gives numbers; --markdown writes the finished table to a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from roma_runtime.compiler.build import compile_model, measure_sensitivity
from roma_runtime.model.loader import load_build
from roma_runtime.compiler.quantization.calibrate import collect_hessians
from roma_runtime.evaluation import chat_sequences, eval_windows, evaluate_models
from roma_runtime.golden import GoldenModel
from roma_runtime.model.loader import load_model

ROWS = {
    "passthrough": ("4-bit G32 pass-through (Q4_1)", dict(bits=4, group=32)),
    "4-g64-rtn": ("4-bit G64 RTN", dict(bits=4, group=64)),
    "4-g64-gptq": ("4-bit G64 GPTQ", dict(bits=4, group=64, method="gptq")),
    "4-g128-rtn": ("4-bit G128 RTN (G64 on 576-wide rows)", dict(bits=4, group=128)),
    "4-g128-gptq": ("4-bit G128 GPTQ (G64 on 576-wide rows)", dict(bits=4, group=128, method="gptq")),
    "4-g128-gptq-r16": ("4-bit G128 GPTQ + activation-weighted LoftQ LoRA r16", dict(bits=4, group=128, method="gptq", lora_rank=16)),
    "3-g64-rtn": ("3-bit G64 RTN", dict(bits=3, group=64)),
    "3-g64-gptq": ("3-bit G64 GPTQ", dict(bits=3, group=64, method="gptq")),
    "3-g32-gptq": ("3-bit G32 GPTQ", dict(bits=3, group=32, method="gptq")),
    "3-g64-gptq-r16": ("3-bit G64 GPTQ + activation-weighted LoftQ LoRA r16", dict(bits=3, group=64, method="gptq", lora_rank=16)),
    "2-g64-rtn": ("2-bit G64 RTN", dict(bits=2, group=64)),
    "2-g64-gptq": ("2-bit G64 GPTQ", dict(bits=2, group=64, method="gptq")),
    "2-g64-gptq-r16": ("2-bit G64 GPTQ + activation-weighted LoftQ LoRA r16", dict(bits=2, group=64, method="gptq", lora_rank=16)),
    "2-g64-gptq-r32": ("2-bit G64 GPTQ + activation-weighted LoftQ LoRA r32", dict(bits=2, group=64, method="gptq", lora_rank=32)),
    "2-g64-gptq-r64": ("2-bit G64 GPTQ + activation-weighted LoftQ LoRA r64", dict(bits=2, group=64, method="gptq", lora_rank=64)),
    "mixed-3.0": ("mixed, groups up to 128, budget 3.0 bits/weight (GPTQ)",
                  dict(bits=4, group=128, method="gptq", bits_budget=3.0)),
    "mixed-3.0-r64": ("mixed, groups up to 128, budget 3.0 bits/weight (GPTQ) + activation-weighted LoftQ LoRA "
                      "r64", dict(bits=4, group=128, method="gptq", bits_budget=3.0, lora_rank=64)),
    "4-g128-gptq-r64": ("4-bit G128 GPTQ + activation-weighted LoftQ LoRA r64",
                        dict(bits=4, group=128, method="gptq", lora_rank=64)),
    "mixed-4.0": ("mixed, groups up to 128, budget 4.0 bits/weight (GPTQ)",
                  dict(bits=4, group=128, method="gptq", bits_budget=4.0)),
    "3-g64-gptq-q8": ("3-bit G64 GPTQ, q8 scales", dict(bits=3, group=64, method="gptq", scales="q8")),
    "3-g32-gptq-q8": ("3-bit G32 GPTQ, q8 scales", dict(bits=3, group=32, method="gptq", scales="q8")),
    "mixed-3.0-q8": ("mixed, groups up to 128, q8 scales, budget 3.0 bits/weight (GPTQ)",
                     dict(bits=4, group=128, method="gptq", bits_budget=3.0, scales="q8")),
    "mixed-3.0-q8-r64": ("mixed, groups up to 128, q8 scales, budget 3.0 bits/weight (GPTQ) + activation-weighted "
                         "LoftQ LoRA r64", dict(bits=4, group=128, method="gptq", bits_budget=3.0, scales="q8",
                                                lora_rank=64)),
    "4-g128-gptaq": ("4-bit G128 GPTAQ (G64 on 576-wide rows)", dict(bits=4, group=128, method="gptaq")),
    "3-g64-gptaq": ("3-bit G64 GPTAQ", dict(bits=3, group=64, method="gptaq")),
    "2-g64-gptaq": ("2-bit G64 GPTAQ", dict(bits=2, group=64, method="gptaq")),
    "mixed-3.0-q8-gptaq": ("mixed, groups up to 128, q8 scales, budget 3.0 bits/weight (GPTAQ)",
                           dict(bits=4, group=128, method="gptaq", bits_budget=3.0, scales="q8")),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=1024, help="held-out tokens (default 1024)")
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--sensitivity-tokens", type=int, default=256)
    ap.add_argument("--markdown", default=None, help="also write the table (with the command) to this file")
    ap.add_argument("--chat-tokens", type=int, default=0, help="reference answer tokens per chat prompt (0: off)")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    ap.add_argument("--out", default=None, help="folder for the builds (default: a temporary folder)")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}")
    model = load_model(args.model)
    ref, memo = GoldenModel(model, "float"), {}  # memo: the reference's logits, computed once
    windows = eval_windows(model, args.tokens, 256)
    seqs = chat_sequences(model, ref, args.chat_tokens) if args.chat_tokens else []
    hessians = None
    sensitivity = {}
    shared = []  # seconds of the shared steps, for the notes
    root = Path(args.out or tempfile.mkdtemp(prefix="roma-quality-"))
    head = (f"model {model.config.name}; {args.tokens} held-out tokens (stdlib docstrings, evaluation split), "
            f"windows of 256; calibration {args.calib_tokens} tokens; sensitivity {args.sensitivity_tokens} "
            f"tokens")
    print(head + f"; builds in {root}", flush=True)
    cols = "| setting | bits/weight (linears, incl. scales) | ppl ref | ppl build | KL | top-1 |"
    if seqs:
        cols += " chat KL | chat top-1 |"
    cols += " compile s |"
    table = [cols, "|" + "---|" * (cols.count("|") - 1)]
    print("\n".join(table), flush=True)
    for key in rows:
        label, kw = ROWS[key]
        extra = {}
        if kw.get("method") == "gptq" or "bits_budget" in kw:
            if hessians is None:
                t = time.time()
                hessians = collect_hessians(model, args.calib_tokens, 256, progress=sys.stderr.isatty())
                shared.append(f"calibration {time.time() - t:.0f} s")
                print(f"({shared[-1]})", file=sys.stderr, flush=True)
            extra = dict(hessians=hessians)
        if "bits_budget" in kw:
            key_s = (kw["group"], kw.get("scales", "fp16"))
            if key_s not in sensitivity:
                t = time.time()
                sensitivity[key_s] = measure_sensitivity(model, kw["group"], hessians, args.sensitivity_tokens,
                                                         progress=sys.stderr.isatty(), scales=key_s[1])
                shared.append(f"sensitivity at G{kw['group']} ({key_s[1]} scales) {time.time() - t:.0f} s")
                print(f"({shared[-1]})", file=sys.stderr, flush=True)
            extra.update(sensitivity=sensitivity[key_s], sensitivity_tokens=args.sensitivity_tokens)
        t = time.time()
        man = compile_model(model, root / key, board="u250", force=True, progress=sys.stderr.isatty(),
                            calib_tokens=args.calib_tokens, lora_slot_rank=kw.get("lora_rank") or None, **kw, **extra)
        secs = time.time() - t
        loaded = load_build(root / key)
        lora = loaded.compensation
        cand = GoldenModel(loaded, "quant")
        cand.lora = lora
        res = evaluate_models(ref, cand, windows, seqs, memo=memo)
        r = res["text"]
        line = (f"| {label} | {man['quantization']['linear_bits_per_weight']:.3f} | {r['ppl_reference']:.2f} | "
                f"{r['ppl_candidate']:.2f} | {r['kl']:.4f} | {100 * r['top1']:.1f}% |")
        if seqs:
            line += f" {res['chat']['kl']:.4f} | {100 * res['chat']['top1']:.1f}% |"
        line += f" {secs:.0f} |"
        table.append(line)
        print(line, flush=True)
    if args.markdown:
        import platform

        Path(args.markdown).write_text(
            "# Quality of SmolLM2-135M builds against the float reference\n\n"
            f"Produced by `PYTHONPATH=host python benchmarks/quality_table.py {' '.join(sys.argv[1:])}` on "
            f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {platform.processor() or ''} "
            f"({os.cpu_count()} CPUs, shared), {platform.python_version()}.\n\n{head}.\n"
            "Reference: the golden model in float mode on the GGUF (Q4_1 weights dequantized). Candidate: the "
            "golden model in quant mode (int8 activations, fp16 KV) on the build's ROM images (+ its LoRA). "
            "bits/weight counts the scale and minimum of every group (fp16, or q8 where the label says: 8-bit "
            "steps of a power of two per row, 16 bits per group and 16 per row); compile s excludes the shared "
            f"steps ({', '.join(shared) or 'none'}; see also compile_time.py).\n\n"
            + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
