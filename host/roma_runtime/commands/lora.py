"""`roma lora`: work with PEFT LoRA adapters. `roma lora inspect DIR` checks an adapter folder and shows what
it adapts (targets, ranks, scaling, size); with --model it is also checked against that model's shapes. Exit
code 0 when every check passes, 1 when one fails (a rank above the slot rank), 2 for an adapter it cannot read."""

from __future__ import annotations

import json
import sys

from ..errors import RomaError
from ..compiler.placement.plan import ranges

HELP = "inspect PEFT LoRA adapters (targets, ranks, scaling, size; checks what the hardware can run)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="lora_command", metavar="ACTION")
    p = sub.add_parser("inspect", help="check an adapter folder and show its facts",
                       description="check a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) "
                                   "and show its facts")
    p.add_argument("folder", help="the folder PEFT's save_pretrained wrote")
    p.add_argument("--model", default=None,
                   help="also check the shapes against this model (a known name, GGUF file or HF folder)")
    p.add_argument("--slot-rank", type=int, default=None, metavar="R",
                   help="the LoRA slot rank of the hardware (default: the slot rank of --model's LoRA unit when "
                        "it is a build, else 64)")
    p.add_argument("--json", action="store_true", help="print the facts as one JSON object")


def run(args) -> int:
    from .. import lora

    if getattr(args, "lora_command", None) != "inspect":
        raise RomaError("roma lora needs an action", hint="roma lora inspect DIR [--json]")
    if args.slot_rank is not None and args.slot_rank < 1:
        raise RomaError(f"--slot-rank must be at least 1 (got {args.slot_rank})")
    model = None
    if args.model is not None:
        from ..model.loader import load_model

        model = load_model(args.model)
    slot_rank = args.slot_rank
    if slot_rank is None and model is not None and model.format == "build":
        from ..artifact.lora_unit import manifest_lora_unit

        slot_rank = manifest_lora_unit(model.metadata["roma.build"]).rank  # the build's LoRA unit
    if slot_rank is None:
        slot_rank = lora.DEFAULT_MAX_RANK
    # Ranks above the slot rank are reported (fits_slot_rank), not refused: inspect is for finding out.
    facts = lora.inspect_peft_adapter(args.folder, None, slot_rank)
    if model is not None:
        adapter = lora.read_peft_adapter(args.folder, model, max_rank=1 << 30)  # checks every shape
        facts["checked_against"] = model.config.name
        if facts["fits_slot_rank"]:
            facts["packed_bytes"] = {dtype: lora.pack(adapter, dtype, slot_rank).nbytes for dtype in lora.PACK_DTYPES}
    # A check that fails (a rank above the slot rank) is reported and makes the exit code 1, for scripts.
    status = 0 if facts["fits_slot_rank"] else 1
    if args.json:
        print(json.dumps(facts, ensure_ascii=False))
        return status
    scaling = "alpha/sqrt(r) (rsLoRA)" if facts["use_rslora"] else "alpha/r"
    print(f"adapter   {facts['name']}  ({facts['source']})")
    if facts.get("base_model"):
        print(f"trained on {facts['base_model']}")
    print(f"r {facts['r']}, lora_alpha {facts['lora_alpha']:g}, scaling {scaling}")
    print(f"layers    {len(facts['layers'])} ({ranges(facts['layers'])}), {facts['modules']} adapted linears")
    for proj, t in facts["per_target"].items():
        ranks = "/".join(map(str, t["ranks"]))
        scales = "/".join(f"{s:g}" for s in t["scales"])
        print(f"  {proj:<10} rank {ranks:<6} scale {scales:<8} layers {ranges(t['layers'])}")
    print(f"parameters {facts['parameter_count']:,} ({facts['bytes_fp16'] / 1e6:.2f} MB at fp16)")
    fits = "yes" if facts["fits_slot_rank"] else "NO"
    print(f"fits a rank-{facts['slot_rank']} slot: {fits} (max rank {facts['max_rank']})")
    if "packed_bytes" in facts:
        pb = facts["packed_bytes"]
        print(f"checked against {facts['checked_against']}: packed {pb['fp16'] / 1e6:.2f} MB fp16, "
              f"{pb['int8'] / 1e6:.2f} MB int8")
    if status:
        print(f"check failed: rank {facts['max_rank']} is above the slot rank {facts['slot_rank']}; retrain with "
              f"r <= {facts['slot_rank']}, or run with a larger --lora-rank where the hardware allows it",
              file=sys.stderr)
    return status
