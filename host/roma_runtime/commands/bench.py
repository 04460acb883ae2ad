"""`roma bench`: prefill and decode tokens/s at several prompt lengths, time to first token, host overhead per
token, LoRA swap time and (where the backend counts cycles) an FPGA speed estimate; `--vs llama.cpp` runs
llama-cpp-python on the same GGUF and token ids, interleaved, and reports ours/peer ratios."""

from __future__ import annotations

import sys

from .. import bench, llama_peer
from ..errors import RomaError
from . import common

HELP = "measure speed: prefill/decode tokens/s, time to first token, host overhead, LoRA swap (--vs llama.cpp)"

_DEFAULT = ",".join(map(str, bench.DEFAULT_LENGTHS))
_ROMA = ",".join(f"{n // 1024}K" if n >= 1024 else str(n) for n in bench.ROMA_LENGTHS)


def add_arguments(parser) -> None:
    parser.add_argument("--lengths", default=_DEFAULT, metavar="N,N,...",
                        help=f"prompt lengths in tokens, K = x1024 (default: {_DEFAULT}, about a minute on the "
                             f"ref backend; the ROMA paper reports {_ROMA})")
    parser.add_argument("--decode-tokens", type=int, default=bench.DEFAULT_DECODE_TOKENS, metavar="N",
                        help=f"single-token decode steps after each prompt (default: {bench.DEFAULT_DECODE_TOKENS})")
    parser.add_argument("--repeats", type=int, default=bench.DEFAULT_REPEATS, metavar="N",
                        help=f"runs per length and side; figures are medians (default: {bench.DEFAULT_REPEATS})")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for both sides: OpenBLAS for ours, n_threads for llama.cpp "
                             f"(default: all usable cores, {bench.usable_cores()} here)")
    parser.add_argument("--vs", default=None, metavar="PEER",
                        help=f"also run a peer on the same GGUF and token ids, interleaved with ours "
                             f"({', '.join(bench.PEERS)}; needs {llama_peer.LLAMA_CPP_PIP})")
    parser.add_argument("--json", action="store_true",
                        help="print every figure, ratio and machine fact as one JSON object instead of the table")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw tokens/s against prompt length (ours and the peer) into a PNG; with cycle "
                             "counts (--backend emu), also where a decode token's cycles go")
    parser.add_argument("--no-lora", action="store_true", help="skip the LoRA swap measurement")
    parser.add_argument("--clock-mhz", type=float, default=None, metavar="MHZ",
                        help="board clock for the cycle-based estimate (default: the backend's clock)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (a bar at a terminal, plain lines elsewhere)")
    common.add_engine_arguments(parser)


def _model_context(model: str) -> int | None:
    """A GGUF model's context length from its metadata alone (None when that is not cheap to know)."""
    from ..model.loader import locate_model, read_gguf_metadata

    kind, path = locate_model(model)
    if kind != "gguf":
        return None
    _, meta = read_gguf_metadata(path)
    value = meta.get("llama.context_length")
    return int(value) if value else None


def run(args) -> int:
    cfg = bench.BenchConfig(lengths=bench.parse_lengths(args.lengths), decode_tokens=args.decode_tokens,
                            repeats=args.repeats, threads=args.threads, peer=args.vs, lora=not args.no_lora,
                            clock_mhz=args.clock_mhz)
    # Everything that can be checked before the model loads, cheapest first.
    common.check_context(args)
    cfg.check(args.context)
    plot = bench.check_plot_path(args.plot)
    if cfg.peer is not None:
        llama_peer.check_installed()
    if args.context is None:
        cfg.check(_model_context(args.model))
    engine = common.load_engine(args, status=not args.no_progress)
    if args.context is None:
        cfg.check(engine.max_context)
    report = bench.run_bench(engine, cfg, backend=args.backend, numerics=args.numerics, model_name=args.model,
                             progress=not args.no_progress, argv=_argv())
    if plot is not None:
        bench.write_plot(report, plot)
        report["plot"] = str(plot)
    if args.json:
        print(bench.to_json(report), flush=True)
    else:
        print(bench.format_table(report), flush=True)
        if plot is not None:
            print(f"plot: {plot}", flush=True)
    failure = report["peer_error"]
    if failure:  # our figures are out; the peer's failure is the command's error
        raise RomaError(failure["error"], hint=failure["hint"])
    return 0


def _argv() -> list[str] | None:
    """The command line, when this process is `roma bench ...`."""
    return ["roma", *sys.argv[1:]] if sys.argv[1:2] == ["bench"] else None
