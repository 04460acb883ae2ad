"""Parameters of the bitstream flow (bitstreams/Makefile), resolved from the board facts and the core's VLNV.

    python -m roma_runtime.compiler.flow params --board kv260     KEY=value lines (make evaluates them)
    python -m roma_runtime.compiler.flow boards                   the known boards, one a line

The Makefile asks this module rather than keeping a second copy of the board data: part, clock and family
come from boards.json (artifact/boards.py), the IP's VLNV from artifact/hwh.py (the VLNV the driver binds to).
Values never contain spaces, so make can split the output on whitespace. An unknown board exits with status 2
and the list of known boards on stderr.

Extra per-board data the flow needs and boards.json does not hold (it describes resources, not tool setups):
the Vivado board part of a Zynq board (an optional preset for the PS: DDR, MIO; without the board files
installed the block design uses the part and the PS defaults) and the XRT platform of an Alveo card.
Both can be overridden from make (BOARD_PART=..., PLATFORM=...).
"""

from __future__ import annotations

import argparse
import sys

from ..artifact import hwh
from ..artifact.boards import Board, get_board, load_boards
from ..errors import RomaError

TOOL_VERSION = "2024.1"  # the Vitis HLS / Vivado / v++ release the scripts are written for

# Vivado board parts (board files: Kria and ZCU boards ship with Vivado; PYNQ-Z2's come from TUL's repository).
BOARD_PARTS = {
    "kv260": "xilinx.com:kv260_som:part0:1.4",
    "zcu104": "xilinx.com:zcu104:part0:1.1",
    "zcu102": "xilinx.com:zcu102:part0:3.4",
    "pynq-z2": "tul.com.tw:pynq-z2:part0:1.0",
}
# XRT platforms (the shell flashed on the card) for v++ --link.
PLATFORMS = {
    "u250": "xilinx_u250_gen3x16_xdma_4_1_202210_1",
    "u280": "xilinx_u280_gen3x16_xdma_1_202211_1",
}
# Processing system IP per Zynq family (zynq_bd.tcl).
PS_IP = {"zynqmp": "zynq_ultra_ps_e", "zynq7": "processing_system7"}


def flow_of(board: Board) -> str:
    """'zynq' (Vivado block design with the PS, PYNQ overlay .bit + .hwh) or 'alveo' (v++ link, .xclbin)."""
    if board.family in PS_IP:
        return "zynq"
    if board.family == "alveo":
        return "alveo"
    raise RomaError(f"board '{board.name}' is of family {board.family}, which the bitstream flow does not "
                    f"cover yet", hint="the flow builds Zynq-7000, Zynq UltraScale+ and Alveo boards")


def clock_ns(mhz: float) -> str:
    """The HLS clock period in ns for a clock in MHz, as create_clock -period takes it (3 decimals)."""
    return f"{1000.0 / float(mhz):.3f}".rstrip("0").rstrip(".")


def _num(v: float) -> str:
    return str(int(v)) if float(v) == int(v) else repr(float(v))


def params(name: str) -> dict[str, str]:
    """The flow's parameters of one board (KEY -> value, no spaces)."""
    b = get_board(name)
    flow = flow_of(b)
    out = {
        "BOARD": b.name,
        "PART": b.part,
        "FAMILY": b.family,
        "FLOW": flow,
        "CLOCK_MHZ": _num(b.clock_mhz),
        "CLOCK_NS": clock_ns(b.clock_mhz),
        "CLOCK_HZ": str(int(round(b.clock_mhz * 1e6))),
        # Vitis HLS flow target: a Vivado IP (ip_catalog) for the block design, a Vitis kernel (.xo) for v++
        "HLS_TARGET": "vivado" if flow == "zynq" else "vitis",
        "HLS_FORMAT": "ip_catalog" if flow == "zynq" else "xo",
        "VLNV": hwh.VLNV,
        "TOOL_VERSION": TOOL_VERSION,
        # the DDR weight stream's AXI ports (roma_core's gmem_weights, gmem_weights_1, ...) and their width: the
        # block design gives each its own HP port of this width, alveo_link_BOARD.cfg each its own bank
        "WEIGHT_PORTS": str(b.weight_ports),
        "WEIGHT_PORT_BITS": str(b.weight_port_bits),
    }
    if flow == "zynq":
        out["PS_IP"] = PS_IP[b.family]
        out["BOARD_PART"] = BOARD_PARTS.get(b.name, "")
        out["KV_PORT_BITS"] = str(b.kv_port_bits)  # the width of the HP port the block design gives the KV cache
    else:
        out["PLATFORM"] = PLATFORMS.get(b.name, "")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m roma_runtime.compiler.flow", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("params", help="KEY=value lines of one board's flow parameters")
    p.add_argument("--board", required=True)
    sub.add_parser("boards", help="the known boards (boards.json), one a line")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "boards":
            print("\n".join(load_boards()))
            return 0
        for k, v in params(args.board).items():
            print(f"{k}={v}")
        return 0
    except RomaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
