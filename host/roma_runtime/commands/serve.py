"""`roma serve`: the model for other programs and computers, over HTTP (--http) or a serial line (--serial).

--http: an OpenAI-compatible HTTP server (roma_runtime.http_server): POST /v1/chat/completions and
/v1/completions (streamed or not), GET /v1/models (the base model and every --lora adapter), /health and
/metrics. It binds 127.0.0.1 unless --host says otherwise, and refuses a non-loopback address without an API
key (--api-key, or the environment variable ROMA_API_KEY) unless --insecure. Needs the `serve` extra
(pip install 'roma-runtime[serve]').

--serial: for a board without a network: run this on the board, and `roma chat --serial PORT` on a PC
connected by a USB-serial cable. The model loads once; a client's HELLO starts (or resumes) a conversation,
so clients can come and go without restarting the server; one client at a time (another one is told the board
is busy). Line noise, dropped clients and resent requests are handled by the protocol (see
roma_runtime.serial_link). The server's --max-tokens is the most a client may ask for; /save and /load over
the line write and read files in --save-dir only.

The PYNQ board's own console UART (/dev/ttyPS0) carries a login prompt and kernel messages: use another
UART or a USB-serial adapter, or stop the console's getty first.

Ctrl-C stops either server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import RomaError
from . import common

HELP = "serve the model: an OpenAI-compatible HTTP server (--http), or chats over a serial line (--serial)"


def add_arguments(parser) -> None:
    from ..http_server import (API_KEY_ENV, DEFAULT_HOST, DEFAULT_MAX_QUEUE, DEFAULT_MAX_REQUEST_BYTES,
                               DEFAULT_PORT, DEFAULT_SESSIONS)

    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--http", action="store_true",
                     help="an OpenAI-compatible HTTP server (needs pip install 'roma-runtime[serve]')")
    how.add_argument("--serial", metavar="PORT",
                     help="serve chats on a serial device, e.g. /dev/ttyUSB0 or /dev/ttyPS1 (any pyserial URL too)")
    http = parser.add_argument_group("HTTP (--http)")
    http.add_argument("--host", default=DEFAULT_HOST,
                      help=f"address to listen on (default: {DEFAULT_HOST}, this machine only); another address "
                           "needs --api-key, or --insecure")
    http.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free one and prints it)")
    http.add_argument("--api-key", default=None, metavar="KEY",
                      help=f"clients must send 'Authorization: Bearer KEY' (default: the environment variable "
                           f"{API_KEY_ENV}, which keeps the key out of the process list)")
    http.add_argument("--insecure", action="store_true",
                      help="allow a non-loopback --host without an API key (a network that is yours alone)")
    http.add_argument("--served-model-name", default=None, metavar="NAME",
                      help="the base model's id in /v1/models and requests (default: from --model); each "
                           "--lora adapter is served under its own NAME")
    http.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                      help=f"requests that may wait while one runs; more are answered 503 (default: "
                           f"{DEFAULT_MAX_QUEUE})")
    http.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS, metavar="N",
                      help=f"KV caches kept between requests for prefix reuse, each of --context tokens "
                           f"(default: {DEFAULT_SESSIONS})")
    http.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                      help="longest prompt accepted (default: the context less one token)")
    http.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                      help=f"largest request body (default: {DEFAULT_MAX_REQUEST_BYTES})")
    serial = parser.add_argument_group("serial (--serial)")
    serial.add_argument("--baud", type=int, default=None, metavar="N",
                        help="line speed in bits per second; the client must use the same (default: 115200)")
    serial.add_argument("--save-dir", default=None, metavar="DIR",
                        help="where /save and /load over the line keep conversation files (default: the "
                             "current folder); names outside it are refused")
    common.add_engine_arguments(parser)
    common.add_lora_arguments(parser)
    common.add_threads_argument(parser)
    common.add_sampling_arguments(parser)


def run(args) -> int:
    if args.http:
        return run_http(args)
    return run_serial(args)


def served_model_name(model: str) -> str:
    """The base model's id: the name of --model, or of its file or folder."""
    path = Path(model).expanduser()
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return model


def run_http(args) -> int:
    from .. import http_server as hs

    hs.require_asgi()  # before anything loads
    key = args.api_key if args.api_key is not None else (os.environ.get(hs.API_KEY_ENV) or None)
    if key is not None:
        hs.check_api_key(key)
    hs.check_bind(args.host, key, args.insecure)
    if args.on_chip:
        raise RomaError("--on-chip is not available with --http yet", hint="leave it out; the host samples")
    params = common.sampling_params(args)
    common.check_context(args)
    options = hs.ServeOptions(
        model_id=args.served_model_name or served_model_name(args.model), api_key=key,
        max_queue=args.max_queue, max_tokens=args.max_tokens, defaults=params, context=args.context,
        sessions=args.sessions, max_prompt_tokens=args.max_prompt_tokens,
        max_request_bytes=args.max_request_bytes).check()
    common.apply_threads(args)
    sock = hs.bind_socket(args.host, args.port)  # a taken port fails before the model loads
    try:
        engine = common.load_engine(args)
        server = hs.RomaHTTPServer(engine, options)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    models = ", ".join(server.models)
    print(f"serving {engine.config.name} on http://{shown}:{port}/v1 (OpenAI API; models: {models}); "
          f"{'API key required' if key else 'no API key'}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve(sock)
    except KeyboardInterrupt:
        pass
    print("stopped", file=sys.stderr, flush=True)
    return 0


def run_serial(args) -> int:
    from ..serial_link import DEFAULT_BAUD, SerialChatServer, open_port

    baud = DEFAULT_BAUD if args.baud is None else args.baud
    if baud <= 0:
        raise RomaError(f"--baud must be a positive number of bits per second (got {baud})")
    params = common.sampling_params(args)  # the defaults for clients that send none, and their limits
    common.check_context(args)
    save_dir = Path(args.save_dir or ".").expanduser()
    if not save_dir.is_dir():
        raise RomaError(f"--save-dir {save_dir}: no such folder")
    common.apply_threads(args)
    port = open_port(args.serial, baud, write_timeout=0.5)  # a wrong port fails before the model loads
    try:
        engine = common.load_engine(args)
        specs = getattr(args, "lora_specs", None) or []  # load_engine loaded them; the first is active
        server = SerialChatServer(engine, port, baud, context=args.context, params=params,
                                  adapter=specs[0][0] if specs else None, save_dir=save_dir)
        server.port_name = args.serial
    except BaseException:
        port.close()
        raise
    print(f"serving {engine.config.name} on {args.serial} at {baud} baud; "
          f"connect with `roma chat --serial PORT --baud {baud}`; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr, flush=True)
    return 0
