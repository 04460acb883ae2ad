"""`roma eval`: quality of a build against the float reference (perplexity, KL, top-1 agreement)."""

from __future__ import annotations

import json
import sys
import time

from . import common

HELP = "measure a build's quality against the float model (perplexity, KL, top-1 agreement)"


def add_arguments(parser) -> None:
    common.add_model_argument(parser)
    parser.add_argument("--build", required=True, metavar="DIR", help="build folder written by roma compile")
    parser.add_argument("--lora", metavar="DIR", default=None,
                        help="a PEFT adapter folder to evaluate on the build (e.g. from roma finetune --distill)")
    parser.add_argument("--tokens", type=int, default=2048, metavar="N",
                        help="held-out tokens of stdlib docstrings to evaluate on (default 2048)")
    parser.add_argument("--window", type=int, default=256, metavar="T", help="tokens per window (default 256)")
    parser.add_argument("--chat-tokens", type=int, default=32, metavar="N",
                        help="tokens of the reference's answer per chat prompt; 0 skips the chat set")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (a bar at a terminal, plain lines elsewhere)")


def run(args) -> int:
    from ..evaluation import evaluate_build
    from ..errors import RomaError

    if args.tokens < 1 or args.window < 2:
        raise RomaError("--tokens must be at least 1 and --window at least 2")
    t0 = time.perf_counter()
    result = evaluate_build(args.model, args.build, tokens=args.tokens, window=args.window,
                            chat=args.chat_tokens > 0, chat_tokens=max(args.chat_tokens, 1),
                            progress=not args.no_progress, lora=args.lora)
    if not args.no_progress:  # the last line of the progress: the headline figures, in how long
        text = result["text"]
        print(f"eval: {text['tokens']} tokens, perplexity {text['ppl_reference']:.3f} (reference) -> "
              f"{text['ppl_candidate']:.3f} (build), KL {text['kl']:.4f}, top-1 {text['top1'] * 100:.1f}%, "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    b = result["build"]
    print(f"build {b['dir']}: {b['bits']}-bit G{b['group']} {b['method']}"
          + (f" + LoRA r{b['lora_rank']}" if b["lora_rank"] else "") + (f" + adapter {b['lora']}" if b["lora"] else "")
          + f", {b['linear_bits_per_weight']:.3f} bits/weight (linears)")
    print(f"{'set':6} {'tokens':>7} {'ppl ref':>9} {'ppl build':>10} {'KL':>8} {'top-1':>7}")
    for name in ("text", "chat"):
        if name in result:
            r = result[name]
            print(f"{name:6} {r['tokens']:7d} {r['ppl_reference']:9.3f} {r['ppl_candidate']:10.3f} "
                  f"{r['kl']:8.4f} {r['top1'] * 100:6.1f}%")
    return 0
