"""`roma`: one entry point, one module per subcommand in roma_runtime.commands.

Each command module defines HELP, add_arguments(parser) and run(args) -> exit code. User errors are
RomaError: printed as one message (with a hint) and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from . import __version__
from .errors import RomaError

# Order is the order `roma --help` lists them.
COMMANDS = ("chat", "serve", "generate", "tokenize", "info", "plan", "compile", "eval", "lora", "finetune", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roma", description="ROMA-FPGA: LLMs with the base model in ROM.")
    parser.add_argument("--version", action="version", version=f"roma {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C stops an answer (chat) or the server (serve). Python leaves SIGINT ignored when the process
    # inherited it ignored, as every command started in the background of a non-interactive shell does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except RomaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
