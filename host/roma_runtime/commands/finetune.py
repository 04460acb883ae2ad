"""`roma finetune`: train a LoRA adapter against the exact base a device holds (a build's ROM weights, or an
unquantized model), with PEFT on transformers; writes a PEFT adapter folder plus roma_build.json (see
roma_runtime.finetune). Needs the `train` extra: pip install 'roma-runtime[train]'."""

from __future__ import annotations

import json
import sys

from ..errors import RomaError

HELP = "train a LoRA adapter on a build's frozen ROM base (task data, or --distill against the float model)"


def add_arguments(parser) -> None:
    from ..compiler.quantization.corpus import DISTILL_TEXTS
    from ..finetune import DEFAULT_STEPS, SCHEDULES, FinetuneOptions

    d = FinetuneOptions()
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--build", metavar="DIR", help="a roma compile build folder: train on its ROM weights")
    base.add_argument("--model", metavar="M", help="an unquantized base (GGUF file, Hugging Face folder or known "
                                                   "name) instead of a build")
    parser.add_argument("--data", metavar="F", default=None,
                        help="training data: .jsonl of {\"messages\": [...]} (loss on assistant turns) or "
                             "{\"text\": ...} lines, or a .txt file; 'example' is the shipped answer-format task")
    parser.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write (PEFT format)")
    parser.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank, at most the slot rank 64 "
                                                                 f"(default {d.rank})")
    parser.add_argument("--alpha", type=float, default=None,
                        help="lora_alpha (default 2 x rank; with --distill from a build LoRA: rank)")
    parser.add_argument("--targets", default="all", help="linears to adapt, comma separated: q_proj, k_proj, "
                                                         "v_proj, o_proj, gate_proj, up_proj, down_proj, or all")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps (default {DEFAULT_STEPS}; with --minutes, as many as the budget "
                             "allows)")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr:g})")
    parser.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                        help="learning rate over the run: constant, or cosine (5%% linear warm-up, then a half "
                             "cosine to zero at --steps or at the end of --minutes, whichever comes first) "
                             f"(default {d.schedule})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"sequences per step (default {d.batch})")
    parser.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per sequence (default {d.seq_len})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the factors' initialisation and the data "
                                                                "order (default 0)")
    parser.add_argument("--save-every", type=int, default=d.save_every, metavar="N",
                        help=f"checkpoint (and write the adapter) every N steps (default {d.save_every})")
    parser.add_argument("--minutes", type=float, default=None, metavar="M",
                        help="time budget: stop after M minutes of training, checkpointed (--steps, when given, "
                             "still caps it)")
    parser.add_argument("--keep-snapshots", action="store_true",
                        help="keep the adapter of every checkpoint under OUT/snapshots (for a learning curve)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--force", action="store_true", help="start over in a non-empty --out")
    parser.add_argument("--distill", action="store_true",
                        help="learn to repair the build's quantization error: KL to the float model's next-token "
                             "distribution on stdlib docstrings (starts from the build's compensating LoRA)")
    parser.add_argument("--distill-tokens", type=int, default=d.distill_tokens, metavar="N",
                        help=f"tokens of the distillation text for --distill (default {d.distill_tokens})")
    parser.add_argument("--distill-text", choices=DISTILL_TEXTS, default=d.distill_text,
                        help="text for --distill: the stdlib docstrings of the calibration split (~190K tokens), "
                             "or those interleaved with the installed torch's docstrings (~840K tokens, so that "
                             f"long runs repeat less) (default {d.distill_text})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from .. import finetune as F

    data = args.data
    if data == "example":
        data = F.example_data()
    options = F.FinetuneOptions(rank=args.rank, alpha=args.alpha, targets=args.targets, steps=args.steps,
                                lr=args.lr, schedule=args.schedule, batch=args.batch, seq_len=args.seq_len,
                                seed=args.seed, save_every=args.save_every, distill=args.distill,
                                distill_tokens=args.distill_tokens,
                                distill_text=args.distill_text, minutes=args.minutes,
                                keep_snapshots=args.keep_snapshots)
    try:
        result = F.finetune(args.out, build=args.build, model=args.model, data=data, options=options,
                            resume=args.resume, force=args.force, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        raise RomaError(f"interrupted; the last checkpoint in {args.out} is kept",
                        hint="continue with the same command and --resume") from None
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    summary = {"out": str(result.out), "steps": result.steps, "resumed_from": result.resumed_from,
               "first_loss": result.losses[0] if result.losses else None,
               "final_loss": result.losses[-1] if result.losses else None,
               "seconds": round(result.seconds, 2), "tokens_per_second": round(result.tokens_per_second, 1),
               "base": result.record["base"]}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        b = summary["base"]
        print(f"trained {summary['out']}: {summary['steps']} steps on the {b['kind']} {b['name']} "
              f"(loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
              f"{summary['tokens_per_second']:,.0f} tokens/s)" if result.losses else
              f"{summary['out']} is already trained to {summary['steps']} steps")
    return 0
