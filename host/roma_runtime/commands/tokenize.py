"""`roma tokenize`: the token ids of a text (and with --json the tokens themselves)."""

from __future__ import annotations

import json
import sys

from . import common

HELP = "show the token ids of a text"


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="?", help="the text; '-' or nothing reads stdin (as UTF-8)")
    parser.add_argument("--json", action="store_true", help="print ids, token strings and their text as JSON")
    parser.add_argument("--no-special", action="store_true",
                        help="do not add the BOS/EOS tokens the model file asks for")
    parser.add_argument("--chat", action="store_true",
                        help="tokenize the text as a one-turn chat (the model's chat template)")
    common.add_model_argument(parser)


def run(args) -> int:
    if args.text is None or args.text == "-":
        text = common.decode_utf8(sys.stdin.buffer.read(), "stdin")
    else:
        text = common.check_text(args.text, "the text")
    tok = common.load_tokenizer(args.model)
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": text}])
    ids = tok.encode(text, add_special=not args.no_special)
    if args.json:
        record = {
            "ids": ids,
            "tokens": [tok.token_text(i) for i in ids],
            "pieces": [tok.decode([i]) for i in ids],
            "count": len(ids),
        }
        print(json.dumps(record, ensure_ascii=False))
    else:
        print(" ".join(str(i) for i in ids))
    return 0

