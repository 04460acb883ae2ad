"""`roma generate`: continue a prompt (raw text, or a one-turn chat with --chat), streamed or as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import RomaError
from . import common

HELP = "continue a prompt (raw text; --chat applies the chat template)"


def add_arguments(parser) -> None:
    parser.add_argument("prompt", nargs="?", help="the prompt text (or use --prompts-file)")
    parser.add_argument("--prompts-file", metavar="FILE",
                        help="one prompt per line, each a JSON string; '-' reads stdin. One model load for all")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per prompt (ids, text, tokens/s) instead of streaming text")
    common.add_engine_arguments(parser)
    common.add_lora_arguments(parser)
    common.add_threads_argument(parser)
    common.add_sampling_arguments(parser, stop=True)


def read_prompts_file(name: str) -> list[tuple[int, str]]:
    """(line number, prompt) for every non-blank line; any bad line is an error naming it."""
    if name == "-":
        raw_lines = sys.stdin.buffer.read().splitlines()
        label = "stdin"
    else:
        try:
            raw_lines = Path(name).read_bytes().splitlines()
        except OSError as e:
            raise RomaError(f"cannot read the prompts file {name}: {e.strerror or e}") from None
        label = name
    prompts = []
    for number, raw in enumerate(raw_lines, 1):
        where = f"{label} line {number}"
        line = common.decode_utf8(raw, where)
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise RomaError(f"{where} is not valid JSON ({e.msg} at column {e.colno})",
                            hint='each line must be one JSON string, for example "Once upon a time"') from None
        if not isinstance(value, str):
            raise RomaError(f"{where} holds a JSON {type(value).__name__}, not a string",
                            hint='each line must be one JSON string, for example "Once upon a time"')
        if not value:
            raise RomaError(f"{where} is an empty prompt")
        prompts.append((number, common.check_text(value, where)))
    if not prompts:
        raise RomaError(f"the prompts file {label} holds no prompts")
    return prompts


def run(args) -> int:
    if args.prompt is not None and args.prompts_file:
        raise RomaError("give either a PROMPT or --prompts-file, not both")
    if args.prompt is None and not args.prompts_file:
        raise RomaError("no prompt given", hint='roma generate "Once upon a time" (or --prompts-file FILE)')
    params = common.sampling_params(args)
    common.check_context(args)
    if args.prompts_file:
        prompts = read_prompts_file(args.prompts_file)
    else:
        prompt = common.check_text(args.prompt, "the prompt")
        if not prompt:
            raise RomaError("the prompt is empty")
        prompts = [(None, prompt)]

    common.apply_threads(args)
    engine = common.load_engine(args)
    specs = getattr(args, "lora_specs", None) or []  # load_engine loaded them; the first is active
    adapter = specs[0][0] if specs else None
    session = engine.new_session(args.context, adapter)
    out = sys.stdout
    for index, (line, prompt) in enumerate(prompts):
        session.reset()  # every prompt starts from an empty cache: its timings are its own
        try:
            generation = engine.generate(prompt, params, session=session, chat=args.chat,
                                         on_chip=args.on_chip)
        except RomaError as e:
            if line is None:
                raise
            raise RomaError(f"prompt on line {line}: {e.message}", hint=e.hint) from None
        if args.json:
            result = generation.run()
            record = {"prompt": prompt, **result.to_dict(), "model": args.model,
                      "backend": args.backend, "numerics": args.numerics, "chat": args.chat}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
        else:
            if index:
                out.write("\n")
            for piece in generation:
                out.write(piece)
                out.flush()
            out.write("\n")
            out.flush()
            print(common.dim(generation.result.speed_line(), sys.stderr), file=sys.stderr, flush=True)
    return 0
