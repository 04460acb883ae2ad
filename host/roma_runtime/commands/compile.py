"""`roma compile`: quantize a model into ROM images for a board; writes a build folder (see compiler.build)."""

from __future__ import annotations

import json
import sys
from collections import Counter

from ..compiler.quantization.quantize import CALIB_TOKENS, METHODS
from ..model.weights import SUPPORTED_BITS, SUPPORTED_GROUPS
from . import common
from .plan import (LINEARS, add_ddr_argument, add_embedding_bits_argument, add_kv_onchip_argument, add_pe_argument,
                   add_scales_argument, add_uram_argument)

HELP = "quantize, pack and place a model into ROM images for a board (writes a build folder)"


def add_arguments(parser) -> None:
    common.add_model_argument(parser)
    parser.add_argument("--bits", type=int, default=4, choices=SUPPORTED_BITS,
                        help="code width of the linear layers (default 4; 4 with --group 32 keeps Q4_1 exactly)")
    parser.add_argument("--group", type=int, default=32, choices=SUPPORTED_GROUPS,
                        help="inputs per scale/minimum (default 32); with --bits-budget the largest group a "
                             "tensor may get")
    add_scales_argument(parser)
    parser.add_argument("--method", default="rtn", choices=METHODS,
                        help="quantizer: round to nearest; GPTQ with calibration on stdlib docstrings; or GPTAQ, "
                             "GPTQ fitted layer by layer on the quantized model's inputs to the float model's "
                             "outputs (it needs more calibration text: see --calib-tokens)")
    parser.add_argument("--board", default="u250", help="target board (see roma plan; default u250)")
    parser.add_argument("--out", required=True, metavar="DIR", help="build folder to write")
    parser.add_argument("--lora-rank", type=int, default=0, metavar="R",
                        help="also produce a LoRA of rank R compensating the quantization error (LoftQ, on the "
                             "LoRA unit's targets; R at most --lora-slot-rank)")
    add_lora_unit_arguments(parser)
    parser.add_argument("--bits-budget", type=float, default=None, metavar="B",
                        help="mixed precision: average bits per weight of the linears, scales included; each "
                             "linear's width (2/3/4/8) and group (up to --group) chosen by measured sensitivity")
    add_embedding_bits_argument(parser)
    parser.add_argument("--calib-tokens", type=int, default=None, metavar="N",
                        help=f"calibration tokens for GPTQ, GPTAQ and --bits-budget (default "
                             f"{CALIB_TOKENS['gptq']}; {CALIB_TOKENS['gptaq']} with --method gptaq)")
    add_ddr_argument(parser)
    add_uram_argument(parser)
    add_pe_argument(parser)
    add_kv_onchip_argument(parser)
    parser.add_argument("--context", type=int, default=None, metavar="N",
                        help="the build's context: the longest session its core runs, which sizes attention's "
                             "buffers and the KV port (default: the model's context length, or the board's max_context in "
                             "boards.json when shorter: 2048 on a KV260)")
    parser.add_argument("--force", action="store_true", help="replace a build of another model in --out")
    parser.add_argument("--no-footprint", action="store_true",
                        help="skip the footprint check (g++ on the synthesis path, read back against the plan and "
                             "the board's budget; it runs when g++ is available and writes footprint.json)")
    parser.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (a bar at a terminal, plain lines elsewhere)")


def add_lora_unit_arguments(parser) -> None:
    parser.add_argument("--lora-slots", type=int, default=None, metavar="S",
                        help="adapter slots of the core's LoRA unit (0: no LoRA unit; default: the board's, "
                             "boards.json lora_unit)")
    parser.add_argument("--lora-slot-rank", type=int, default=None, metavar="R",
                        help="the largest adapter rank a slot holds (default: the board's)")
    parser.add_argument("--lora-targets", nargs="+", default=None, metavar="LINEAR", choices=LINEARS,
                        help=f"linears with LoRA memory, among {' '.join(LINEARS)} (default: the board's)")
    parser.add_argument("--lora-dtype", default=None, choices=("fp16", "int8"),
                        help="LoRA memory: fp16 values, or int8 codes with fp32 row scales (default: the board's)")


def run(args) -> int:
    from ..artifact.lora_unit import LoraUnit
    from ..compiler.build import compile_model
    from ..compiler.quantization.mixed import setting_name

    manifest = compile_model(
        args.model, args.out, bits=args.bits, group=args.group, method=args.method, scales=args.scales,
        board=args.board, lora_rank=args.lora_rank, bits_budget=args.bits_budget, embedding_bits=args.embedding_bits,
        force=args.force, calib_tokens=args.calib_tokens, progress=not args.no_progress, ddr=args.ddr,
        uram=args.uram, kv_onchip=args.kv_onchip or 0, context=args.context, lora_slots=args.lora_slots,
        lora_slot_rank=args.lora_slot_rank, lora_targets=args.lora_targets, lora_dtype=args.lora_dtype, pe=args.pe)
    q = manifest["quantization"]
    summary = {
        "out": str(args.out),
        "model": manifest["model"]["name"],
        "model_sha256": manifest["model"]["sha256"],
        "bits": q["bits"], "group": q["group"], "scales": q["scales"], "method": q["method"],
        "lora_rank": q["lora_rank"],
        "lora_unit": manifest["lora_unit"],
        "bits_budget": q["bits_budget"],
        "linear_bits_per_weight": round(q["linear_bits_per_weight"], 4),
        "all_bits_per_weight": round(q["all_bits_per_weight"], 4),
        "rom_bytes": manifest["sizes"]["rom_bytes"],
        "ddr_bytes": manifest["sizes"]["ddr_bytes"],
        "uram_bytes": manifest["sizes"]["uram_bytes"],
        "context": manifest["context"],
        "kv_onchip": manifest["kv_onchip"],
        "files": len(manifest["files"]) + 1,
        "compile_seconds": manifest["compile_seconds"],
        "passthrough_tensors": sum(1 for t in manifest["tensors"].values() if t["method"] == "passthrough"),
    }
    if q["bits_budget"] is not None:  # how many linears got each (width, group)
        settings = Counter(setting_name((t["bits"], t["group"])) for t in manifest["tensors"].values()
                           if "sensitivity" in t)
        summary["mixed_settings"] = dict(sorted(settings.items()))
    if not args.no_progress:  # the last line of the progress: what was built, in how long
        print(f"compile: {summary['model']} into {summary['out']}, {summary['linear_bits_per_weight']:.3f} "
              f"bits/weight, ROM {summary['rom_bytes'] / 2**20:.1f} MiB, in {summary['compile_seconds']:.1f} s",
              file=sys.stderr, flush=True)
    report = None
    if not args.no_footprint:
        from ..compiler.placement import footprint

        why = footprint.available()
        if why:
            print(f"footprint: skipped ({why})", file=sys.stderr, flush=True)
        else:
            report = footprint.check_build(args.out, progress=not args.no_progress)
            summary["footprint"] = {k: report[k] for k in ("ok", "total_bram36", "total_uram", "bram36_budget",
                                                           "uram_budget", "failures", "seconds")}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        width = ("mixed " + ", ".join(f"{n} x {s}" for s, n in summary["mixed_settings"].items()) + " (bits/group)"
                 if q["bits_budget"] is not None else f"{q['bits']}-bit G{q['group']}")
        print(f"built {summary['out']}: {summary['model']} at {width} ({q['method']}"
              + (", q8 scales" if q["scales"] == "q8" else "")
              + (f", LoRA rank {q['lora_rank']}" if q["lora_rank"] else "")
              + (f", budget {q['bits_budget']}" if q["bits_budget"] is not None else "") + ")")
        print(f"  linears {summary['linear_bits_per_weight']:.3f} bits/weight, all tensors "
              f"{summary['all_bits_per_weight']:.3f}; ROM {summary['rom_bytes'] / 2**20:.1f} MiB; "
              + (f"URAM (loaded by the driver) {summary['uram_bytes'] / 2**20:.1f} MiB; " if summary["uram_bytes"]
                 else "")
              + (f"DDR-streamed {summary['ddr_bytes'] / 2**20:.1f} MiB; " if summary["ddr_bytes"] else "")
              + f"context {summary['context']} tokens; "
              + (f"KV on chip {kv['tokens']} tokens ({kv['bytes'] / 2**20:.1f} MiB, {kv['placement']}); "
                 if (kv := summary["kv_onchip"]) else "") +
              f"{summary['passthrough_tensors']} tensors passed through; {summary['compile_seconds']:.1f} s")
        print(f"  LoRA unit: {LoraUnit.from_dict(manifest['lora_unit'], 'the manifest').describe()}"
              + (f" ({u['bytes'] / 2**20:.2f} MiB, {u['placement']})" if (u := manifest["lora_unit"])["slots"] else ""))
        if report:
            print("  " + footprint.summary_line(report))
    if report and not report["ok"]:  # the build stays written; the numbers say why it does not fit
        print("error: the build does not fit as the synthesized top declares it:\n"
              + "\n".join(f"  - {f}" for f in report["failures"])
              + f"\n  (details: {args.out}/{footprint.FOOTPRINT_FILE}, or make -C hw/hls footprint BUILD={args.out})",
              file=sys.stderr)
        return 1
    return 0
