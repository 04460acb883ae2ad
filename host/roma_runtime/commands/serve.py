"""`roma serve --serial PORT`: answer chats from another computer over a serial line (UART).

For a board without a network: run this on the board, and `roma chat --serial PORT` on a PC connected by a
USB-serial cable. The model loads once; a client's HELLO starts (or resumes) a conversation, so clients can
come and go without restarting the server. Line noise, dropped clients and resent requests are handled by
the protocol (see roma_runtime.serial_link). Ctrl-C stops the server.

The PYNQ board's own console UART (/dev/ttyPS0) carries a login prompt and kernel messages: use another
UART or a USB-serial adapter, or stop the console's getty first.
"""

from __future__ import annotations

import sys

from ..errors import RomaError
from . import common

HELP = "serve chats over a serial line (UART) for `roma chat --serial` on another computer"


def add_arguments(parser) -> None:
    parser.add_argument("--serial", required=True, metavar="PORT",
                        help="serial device, e.g. /dev/ttyUSB0 or /dev/ttyPS1 (any pyserial URL works too)")
    parser.add_argument("--baud", type=int, default=None, metavar="N",
                        help="line speed in bits per second; the client must use the same (default: 115200)")
    common.add_engine_arguments(parser)
    if hasattr(common, "add_lora_arguments"):
        common.add_lora_arguments(parser)
    common.add_sampling_arguments(parser)


def run(args) -> int:
    from ..serial_link import DEFAULT_BAUD, SerialChatServer, open_port

    baud = DEFAULT_BAUD if args.baud is None else args.baud
    if baud <= 0:
        raise RomaError(f"--baud must be a positive number of bits per second (got {baud})")
    params = common.sampling_params(args)  # the defaults for clients that send none
    common.check_context(args)
    port = open_port(args.serial, baud, write_timeout=0.5)  # a wrong port fails before the model loads
    try:
        engine = common.load_engine(args)
        specs = getattr(args, "lora_specs", None) or []  # load_engine loaded them; the first is active
        server = SerialChatServer(engine, port, baud, context=args.context, params=params,
                                  adapter=specs[0][0] if specs else None)
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
