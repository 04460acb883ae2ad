"""Options and helpers shared by the commands that run a model (chat, generate) or read one (tokenize, info).

Everything a user can get wrong is checked here before the model loads where possible (sampling values,
text encodings), and reported as one RomaError.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..backends import BACKENDS
from ..errors import RomaError
from ..golden.model import MODES
from ..generate import SamplingParams
from ..model.loader import DEFAULT_MODEL



def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"a known model name, a GGUF file, a Hugging Face folder or a build folder (roma "
                             f"compile output) (default: {DEFAULT_MODEL})")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="ref: numpy golden model; emu: the emulated board (HLS C simulation; a model that is "
                             "not a build is compiled once, 4-bit G32, and cached); board: the PYNQ overlay of "
                             "--bitstream (default: board where a PYNQ board is present, else emu; ref with --numerics float)")
    parser.add_argument("--bitstream", default=None, metavar="DIR",
                        help="board backend: the folder with roma_core.bit, its .hwh and the build's manifest.json")
    parser.add_argument("--numerics", choices=MODES, default="quant",
                        help="quant: the accelerator's integer contract; float: dequantized weights (default: quant)")
    parser.add_argument("--context", type=int, default=None, metavar="N",
                        help="KV cache size in tokens (default: the model's context length)")


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """LoRA adapters and the writable-memory budget they share with the KV cache."""
    g = parser.add_argument_group("LoRA and KV memory")
    g.add_argument("--lora", action="append", default=[], metavar="[NAME=]DIR",
                   help="a PEFT LoRA adapter folder to load (repeatable; the first one is active; the name "
                        "defaults to the folder's name)")
    g.add_argument("--lora-slots", type=int, default=None, metavar="N",
                   help="LoRA slots in the writable memory (default: one per --lora; at most the build's LoRA "
                        "unit's, `roma compile --lora-slots`)")
    g.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="slot rank: the largest adapter rank a slot holds (default: the build's LoRA unit's; 64 "
                        "for a model that is not a build)")
    g.add_argument("--lora-dtype", choices=("fp16", "int8"), default=None,
                   help="how the LoRA factors are stored (default: as the build's LoRA unit stores them; fp16)")
    g.add_argument("--lora-any-build", action="store_true",
                   help="accept an adapter that `roma finetune` trained for another build (with a warning)")
    g.add_argument("--kv-memory", type=float, default=None, metavar="MB",
                   help="writable memory in MiB for the LoRA slots plus the KV cache; the KV tokens that fit "
                        "after the slots bound the context (higher slot rank, fewer tokens)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for the host's numpy work (OpenBLAS), as `roma bench --threads` "
                             "(default: every usable core)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set the BLAS thread count --threads asks for (generate, chat and serve call it before the model loads;
    `roma bench` sets and restores its own)."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise RomaError(f"--threads must be at least 1 (got {threads})")
    from ..bench import blas_threads

    blas_threads(threads)


def add_sampling_arguments(parser: argparse.ArgumentParser, stop: bool = False,
                           repeat_penalty: float | None = None) -> None:
    """repeat_penalty: this command's default, when it differs from SamplingParams'."""
    d = SamplingParams()
    if repeat_penalty is not None:
        d.repetition_penalty = repeat_penalty
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="N",
                   help=f"most tokens to generate per answer (default: {d.max_tokens})")
    g.add_argument("--temperature", type=float, default=d.temperature, metavar="T",
                   help=f"0 is greedy (default: {d.temperature:g})")
    g.add_argument("--top-k", type=int, default=d.top_k, metavar="K", help="keep the K likeliest tokens; 0 = off")
    g.add_argument("--top-p", type=float, default=d.top_p, metavar="P",
                   help="keep the likeliest tokens whose mass reaches P; 1 = off")
    g.add_argument("--min-p", type=float, default=d.min_p, metavar="P",
                   help="drop tokens less likely than P times the likeliest; 0 = off")
    g.add_argument("--repeat-penalty", type=float, default=d.repetition_penalty, metavar="X",
                   help="penalty on recently seen tokens; 1 = off")
    g.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n, metavar="N",
                   help=f"how many recent tokens the penalty looks at (default: {d.repeat_last_n})")
    g.add_argument("--seed", type=int, default=None, help="random seed; the same seed reproduces a run")
    g.add_argument("--on-chip", action="store_true",
                   help="autonomous decode: the accelerator samples and feeds back 16 tokens per call (emu and "
                        "board backends); a seed's tokens differ from host sampling's")
    if stop:
        g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when this text appears (repeatable); the stop text is not printed")


SEED_MAX = (1 << 64) - 1  # seeds are 64-bit (numpy's generator takes any non-negative number; the chip 64 bits)
MAX_KV_MEMORY_MB = float(1 << 30)  # --kv-memory in MiB: at most 1 PiB, finite


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """SamplingParams from the parsed options, validated (RomaError on a bad value)."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise RomaError(f"--seed must be a whole number in 0..{SEED_MAX} (2^64 - 1), not {seed}")
    stops = [check_text(s, "--stop") for s in getattr(args, "stop", None) or []]
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        seed=args.seed,
        stop=stops,
    ).validate()


def check_context(args: argparse.Namespace) -> None:
    from ..model.config import MAX_CONTEXT

    if args.context is not None and not 1 <= args.context <= MAX_CONTEXT:
        raise RomaError(f"--context must be 1..{MAX_CONTEXT} tokens (got {args.context})",
                        hint="the model's own context length is the default")


def check_options(args: argparse.Namespace) -> None:
    """The LoRA and memory options, checked before any model loads (load_engine calls it first; a command may
    call it earlier still)."""
    from ..lora import MAX_SLOTS

    slots = getattr(args, "lora_slots", None)
    if slots is not None and not 0 <= slots <= MAX_SLOTS:
        raise RomaError(f"--lora-slots must be 0..{MAX_SLOTS} (got {slots})")
    rank = getattr(args, "lora_rank", None)
    if rank is not None and rank < 1:
        raise RomaError(f"--lora-rank must be at least 1 (got {rank})")
    kv_memory = getattr(args, "kv_memory", None)
    if kv_memory is not None and not 0 < kv_memory <= MAX_KV_MEMORY_MB:
        raise RomaError(f"--kv-memory must be a positive finite number of MiB, at most {MAX_KV_MEMORY_MB:.0f} "
                        f"(got {kv_memory:g})")
    if getattr(args, "context", None) is not None:
        check_context(args)


def load_engine(args: argparse.Namespace, status: bool = True):
    """The Engine the options ask for, with a short status line on stderr while it loads."""
    from ..engine import Engine, parse_lora_specs

    check_options(args)
    specs = parse_lora_specs([check_text(spec, "--lora") for spec in getattr(args, "lora", None) or []])
    args.lora_specs = specs
    slots = getattr(args, "lora_slots", None)
    slots = len(specs) if slots is None else slots
    if slots < len(specs):
        raise RomaError(f"--lora-slots {slots} cannot hold the {len(specs)} adapters given with --lora")
    rank = getattr(args, "lora_rank", None)
    kv_memory = getattr(args, "kv_memory", None)
    options = {"lora_slots": slots, "lora_dtype": getattr(args, "lora_dtype", None),
               "lora_any_build": bool(getattr(args, "lora_any_build", False))}
    if rank is not None:
        options["lora_rank"] = rank
    if kv_memory is not None:
        options["kv_memory"] = int(kv_memory * (1 << 20))
    from ..backends import check_backend
    from ..builds import build_for, default_settings
    from ..model.loader import load_model

    args.backend = check_backend(args.backend, args.numerics)
    if status:
        print(f"loading {args.model} on {args.backend} ({args.numerics})...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    model = load_model(args.model)
    # the build step (emu on a model that is not a build): found in the cache, else compiled, with its progress
    settings = default_settings(slots, rank, options["lora_dtype"])  # a default build holds what is asked
    build = build_for(args.backend, model, settings=settings, progress=status, tensor_progress=status)
    engine = Engine(model, args.backend, args.numerics, build=build, bitstream=args.bitstream, **options)
    for name, folder in specs:
        engine.load_lora(name, folder)
        if status:
            print(dim(f"loaded LoRA adapter {name} from {folder}", sys.stderr), file=sys.stderr, flush=True)
    if status:
        print(dim(f"loaded {engine.config.name} in {time.perf_counter() - t0:.1f} s", sys.stderr),
              file=sys.stderr, flush=True)
    return engine


def load_tokenizer(model: str):
    """The tokenizer alone: a GGUF's metadata is read without its weights."""
    from ..model.loader import locate_model
    from ..tokenizer import Tokenizer

    kind, path = locate_model(model)
    if kind == "build":  # the tokenizer of the model the build was compiled from
        from ..model.loader import build_source

        kind, path = build_source(path)
    return Tokenizer.from_hf_folder(path) if kind == "hf" else Tokenizer.from_gguf(path)


# --- text ------------------------------------------------------------------------------------------------


def decode_utf8(raw: bytes, what: str) -> str:
    """Bytes as UTF-8 text, or one RomaError saying where the bad byte is."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RomaError(f"{what} is not valid UTF-8: byte {e.start} ({raw[e.start:e.start + 1]!r}) {e.reason}",
                        hint="send text encoded as UTF-8") from None


def check_text(text: str, what: str) -> str:
    """A str that came from argv or JSON: refuse lone surrogates (undecodable argv bytes end up as those)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(text)  # argv bytes that were not UTF-8 come back as surrogate escapes
    except UnicodeEncodeError:
        raw = None
    if raw is not None:
        return decode_utf8(raw, what)
    raise RomaError(f"{what} contains a lone surrogate, which is not valid Unicode text")


# --- output ----------------------------------------------------------------------------------------------


def dim(text: str, stream=None) -> str:
    """Text in the terminal's dim style when `stream` is a terminal, plain otherwise."""
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return f"\x1b[2m{text}\x1b[0m" if tty and os.environ.get("NO_COLOR") is None else text
