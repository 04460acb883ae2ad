"""`roma plan`: does a model fit a board? Where does each tensor go? Estimated decode tokens/s."""

from __future__ import annotations

import argparse
import json

from ..errors import RomaError
from ..model.weights import SCALE_BITS, SUPPORTED_BITS

HELP = "plan the placement of a model on a board: BRAM-ROM, URAM-load-once or DDR-streamed, with a tokens/s estimate"

LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="a known model name, a GGUF file or a Hugging Face folder (default: smollm2-135m)")
    parser.add_argument("--board", required=True, help="board name from artifact/boards.json (e.g. kv260, u250)")
    parser.add_argument("--bits", type=int, default=4, help="code bits of the ROM base: 2, 3, 4 or 8 (default 4)")
    parser.add_argument("--group", type=int, default=32, help="weights per scale/minimum group: 32, 64 or 128")
    parser.add_argument("--tensor-bits", action="append", default=[], metavar="NAME=BITS",
                        help="mixed precision: bits for one tensor kind (wq, w_down, token_embedding, output) or "
                             "one tensor (layers.3.wq); repeatable")
    parser.add_argument("--lora-slots", type=int, default=None,
                        help="LoRA slots to reserve memory for (0: none; default: the board's, boards.json lora_unit)")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="LoRA slot rank to reserve memory for (0: none; default: the board's)")
    parser.add_argument("--lora-targets", nargs="+", default=None, metavar="LINEAR",
                        help=f"linears that carry LoRA, among {' '.join(LINEARS)} (default: the board's)")
    parser.add_argument("--lora-dtype", default=None,
                        help="fp16, or int8 with per-row scales (default: the board's)")
    add_kv_onchip_argument(parser)
    parser.add_argument("--budget", type=float, default=0.8, help="fraction of BRAM/URAM to use (default 0.8)")
    parser.add_argument("--context", type=int, default=None,
                        help="context length the tokens/s estimate assumes (default: --kv-onchip, else 256); the "
                             "context a build is made for, which sizes its attention buffers, is roma compile "
                             "--context")
    add_ddr_argument(parser)
    add_uram_argument(parser)
    add_pe_argument(parser)
    add_scales_argument(parser)
    add_embedding_bits_argument(parser)
    parser.add_argument("--per-tensor", action="store_true", help="one row per tensor instead of per layer")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def add_ddr_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ddr", default=None, metavar="UNITS",
                        help="stream these units from DDR whatever the room: layer numbers or ranges, head (the lm "
                             "head; tied: with the embedding), embedding, or all (e.g. --ddr 1,3-5,head); their "
                             "on-chip memory stays free")


def add_uram_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uram", default=None, metavar="UNITS",
                        help="put these units in URAM (load-once, written by the driver after the overlay loads) "
                             "instead of BRAM: layer numbers or ranges, head, embedding, or all (as --ddr)")


def add_pe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pe", type=int, default=None, metavar="N",
                        help="tiles (processing elements) of the layers' on-chip GEMV engines, each one group of one "
                             "row per cycle (default: the most the board's logic allows, by the estimate)")


def add_scales_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scales", default="fp16", choices=tuple(SCALE_BITS),
                        help="how the linears store each group's scale and minimum: fp16 (32 bits per group; the "
                             "default, and Q4_1's form) or q8 (8-bit steps of a power of two per row: 16 bits per "
                             "group and 16 per row); roma compile stores a requantized embedding and lm head "
                             "(--embedding-bits below the source's) the same way")


def add_embedding_bits_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedding-bits", type=int, default=8, choices=SUPPORTED_BITS,
                        help="code width of the embedding / lm head (default 8; a source already that wide, like "
                             "Q8_0, passes through, else it is requantized in --group and --scales)")


def add_kv_onchip_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kv-onchip", type=int, default=None, metavar="N",
                        help="keep the KV cache of N tokens on chip (URAM/BRAM, reserved before the weights); "
                             "sessions are then at most N tokens long (default: the KV cache in DDR only)")


def _parse_tensor_bits(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, bits = item.partition("=")
        if not sep or not name.strip() or not bits.strip().isdigit():
            raise RomaError(f"--tensor-bits wants NAME=BITS, not '{item}'", hint="for example --tensor-bits w_down=8")
        out[name.strip()] = int(bits)
    return out


def run(args) -> int:
    from ..artifact.boards import get_board
    from ..compiler.placement.plan import make_plan, parse_ddr_units

    board = get_board(args.board)  # fail fast, before the model loads
    parse_ddr_units(args.ddr)
    parse_ddr_units(args.uram)
    if args.context is not None and args.context < 0:
        raise RomaError(f"--context must be >= 0, not {args.context}")
    per_tensor_bits = _parse_tensor_bits(args.tensor_bits)
    from ..compiler.build import embedding_forms
    from ..model.loader import load_model

    model = load_model(args.model)
    config = model.config
    # the embedding and an untied lm head as roma compile stores them, at --embedding-bits or their --tensor-bits
    forms = embedding_forms(model, args.embedding_bits, args.group, args.scales, per_tensor_bits)
    per_tensor_bits = {**per_tensor_bits, **{n: b for n, (b, _, _) in forms.items()}}
    unit = board.lora_unit  # the reservation `roma compile` makes for this board, unless told otherwise
    plan = make_plan(config, board, bits=args.bits, group=args.group, per_tensor_bits=per_tensor_bits,
                     per_tensor_groups={n: g for n, (_, g, _) in forms.items()},
                     per_tensor_scales={n: s for n, (_, _, s) in forms.items()},
                     lora_slots=unit.slots if args.lora_slots is None else args.lora_slots,
                     lora_rank=unit.rank if args.lora_rank is None else args.lora_rank,
                     lora_targets=unit.targets if args.lora_targets is None else tuple(args.lora_targets),
                     lora_dtype=unit.dtype if args.lora_dtype is None else args.lora_dtype,
                     kv_tokens=args.kv_onchip, budget=args.budget, context=args.context, ddr=args.ddr,
                     scales=args.scales, uram=args.uram, pe=args.pe)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(plan.render(per_tensor=args.per_tensor))
    return 0
