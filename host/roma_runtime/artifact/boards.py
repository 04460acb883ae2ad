"""Board data: the FPGA resources the placement planner fills, read from boards.json.

boards.json is plain data that anyone can extend; this module loads it, checks every entry against a small
schema (an error names the board and the field), and looks boards up by name. A different file can be used
with load_boards(path) for experiments.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import RomaError
from .lora_unit import LoraUnit

BOARDS_FILE = Path(__file__).with_name("boards.json")
FAMILIES = ("zynq7", "zynqmp", "alveo", "versal")
HOSTS = ("arm", "x86-pcie")
KV_PORT_WIDTHS = (32, 64, 128, 256, 512)  # AXI data widths a memory port of the fabric can have

# field -> (accepted types, check, what the check wants)
_NONNEG_INT = ((int,), lambda v: v >= 0, "an integer >= 0")
_POS_INT = ((int,), lambda v: v > 0, "an integer > 0")
_POS_NUM = ((int, float), lambda v: v > 0, "a number > 0")
_TEXT = ((str,), lambda v: bool(v.strip()), "a non-empty string")
_BOOL = ((bool,), lambda v: True, "true or false")
AXI_WIDTHS = (64, 128, 256, 512)
# the m_axi bundles of roma_core's pointer arguments whose bundle does not depend on the board's ports (roma_core.cpp's
# INTERFACE pragmas; m_axi_bundle)
_FIXED_BUNDLE = {"ddr_weights": "gmem_weights", "uram_weights": "gmem_weights", "kv_cache": "gmem_kv",
                 "tokens_in": "gmem_tok", "tokens_out": "gmem_tok", "logits": "gmem_logits",
                 "lora_staging": "gmem_lora", "status": "gmem_status"}
POINTER_ARGUMENTS = (*_FIXED_BUNDLE, "ddr_weights_1", "ddr_weights_2", "ddr_weights_3", "kv_cache_1", "kv_cache_2",
                     "kv_cache_3")
KV_PORT_COUNTS = (1, 2, 4)  # a board's KV m_axi ports: one, a row's two, or two position sets of two (kv_layout.py)
REQUIRED_FIELDS = {
    "description": _TEXT,
    "part": _TEXT,
    "family": ((str,), lambda v: v in FAMILIES, f"one of {', '.join(FAMILIES)}"),
    "bram36": _POS_INT,
    "uram": _NONNEG_INT,
    "dsp": _NONNEG_INT,
    "luts": _POS_INT,
    "ff": _POS_INT,
    "clock_mhz": _POS_NUM,
    "ddr_bandwidth_gbs": _POS_NUM,
    "memory": _TEXT,
    "bandwidth_source": _TEXT,
    "weight_port_bits": ((int,), lambda v: v in AXI_WIDTHS, f"an AXI data width: one of {', '.join(map(str, AXI_WIDTHS))}"),
    "weight_ports": ((int,), lambda v: 1 <= v <= 4, "1 to 4 (roma_core has four weight port arguments)"),
    "pynq_board": _BOOL,
    "host": ((str,), lambda v: v in HOSTS, f"one of {', '.join(HOSTS)}"),
    "uram_initialisable": _BOOL,
    "bram_rom": _BOOL,
    "lora_unit": ((dict,), lambda v: True, "an object {slots, rank, targets, dtype}: the default LoRA unit"),
    "max_context": _POS_INT,
    "kv_port_bits": ((int,), lambda v: v in KV_PORT_WIDTHS, f"one of {', '.join(map(str, KV_PORT_WIDTHS))}"),
    "kv_ports": ((int,), lambda v: v in KV_PORT_COUNTS,
                 f"one of {', '.join(map(str, KV_PORT_COUNTS))} (roma_core's four KV cache arguments: a row's ports, "
                 "times two position sets with four)"),
    "elementwise_lanes": ((dict,), lambda v: True, "an object {norm, swiglu, rope, residual}: lanes per unit"),
    "token_lanes": ((int,), lambda v: 1 <= v <= 4, "1 to 4 (roma_core passes a block's tokens as four pointers)"),
    "prefill_chunk": ((int,), lambda v: 4 <= v <= 64 and v & (v - 1) == 0,
                      "a power of two from 4 to 64 (the chunk's activation buffers are on chip)"),
    "act_lanes": ((int,), lambda v: 4 <= v <= 128 and v & (v - 1) == 0,
                  "a power of two from 4 to 128 (whole quads of the candidate stage)"),
    "sampler_lanes": ((int,), lambda v: 1 <= v <= 16 and v & (v - 1) == 0,
                      "a power of two from 1 to 16 (a sorted list of the best logits per lane)"),
    "argmax_lanes": ((int,), lambda v: 1 <= v <= 64 and v & (v - 1) == 0,
                     "a power of two from 1 to 64 (the logits a greedy token takes per cycle)"),
    "memory_banks": ((dict,), lambda v: all(isinstance(t, str) and t.strip() for t in v.values()),
                     "an object {m_axi bundle: memory}, or empty where every port reaches one memory"),
}
ELEMENTWISE_UNITS = ("norm", "swiglu", "rope", "residual")
MAX_ELEMENTWISE_LANES = 64


def pow2_at_least(n: int) -> int:  # roma_core.cpp pow2_at_least
    return 1 << (n - 1).bit_length()


def logits_banks(weight_ports: int, weight_port_bits: int) -> int:
    """g_logits' cyclic banks (roma_core.cpp LOGITS_BANKS): the power of two covering the weight ports (the logits a
    streamed head writes per cycle) and a port word's fp32 lanes (the logits LOGITS_OUT sends per cycle)."""
    return pow2_at_least(max(weight_ports, weight_port_bits // 32))


def _pow2_at_most(lanes: int, n: int) -> int:
    """The largest power of two <= lanes that divides n."""
    while n % lanes:
        lanes //= 2
    return lanes


@dataclass(frozen=True)
class ElementwiseLanes:
    """Elements per cycle of the elementwise units (boards.json elementwise_lanes; roma_model.h ROMA_*_LANES):
    RMSNorm's sum of squares and normalize loop (norm.h), SwiGLU, RoPE's rotation (pairs) and the
    residual add. Powers of two; a build takes, per unit, the largest power of two at most these that divides the
    model's dimension (``for_model``), as attention's lanes follow the KV port."""
    norm: int
    swiglu: int
    rope: int
    residual: int

    @classmethod
    def from_dict(cls, value: dict, where: str) -> ElementwiseLanes:
        want = (f"an object with the integer fields {', '.join(ELEMENTWISE_UNITS)}, each a power of two from 1 to "
                f"{MAX_ELEMENTWISE_LANES}")
        if set(value) != set(ELEMENTWISE_UNITS):
            raise RomaError(f"{where} has an invalid 'elementwise_lanes': {value!r}", hint=f"it must be {want}")
        for unit in ELEMENTWISE_UNITS:
            v = value[unit]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ELEMENTWISE_LANES or v & (v - 1):
                raise RomaError(f"{where} has an invalid 'elementwise_lanes' {unit}: {v!r}", hint=f"it must be {want}")
        return cls(**{u: value[u] for u in ELEMENTWISE_UNITS})

    def for_model(self, dim: int, ffn_dim: int, head_dim: int) -> ElementwiseLanes:
        """The lanes a build of a model with these dimensions has: each halved until it divides the unit's vector
        (norm and residual DIM, SwiGLU FFN_DIM, RoPE the HEAD_DIM / 2 pairs of a head)."""
        return ElementwiseLanes(norm=_pow2_at_most(self.norm, dim), swiglu=_pow2_at_most(self.swiglu, ffn_dim),
                                rope=_pow2_at_most(self.rope, head_dim // 2),
                                residual=_pow2_at_most(self.residual, dim))


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    part: str
    family: str
    bram36: int
    uram: int
    dsp: int
    luts: int
    ff: int
    clock_mhz: float
    ddr_bandwidth_gbs: float
    memory: str
    bandwidth_source: str
    weight_port_bits: int  # the weight stream's AXI port, bits per core cycle (roma_model.h WEIGHT_PORT_BITS)
    weight_ports: int  # how many such ports read the DDR tensors' tiles at once (roma_model.h WEIGHT_PORTS)
    pynq_board: bool
    host: str
    uram_initialisable: bool
    bram_rom: bool
    lora_unit: LoraUnit  # the LoRA unit `roma compile` reserves by default
    # the longest context a build for this board has by default (its attention buffers grow with it; a model's
    # own shorter context wins; roma compile --context overrides it)
    max_context: int
    # the data width of the memory port the KV cache has to itself (boards.json's comment): attention reads that
    # many bits of the cache per cycle (roma_model.h's KV_PORT_BITS)
    kv_port_bits: int
    # the board's KV m_axi ports (1, 2 or 4; roma_model.h ROMA_KV_PORTS, one bundle each): a build's DDR KV cache
    # splits its rows over up to two of them (KV_PORTS) and, with four, its positions into two sets (KV_SETS), as
    # artifact/kv_layout.py KvLayout.for_build gives them
    kv_ports: int
    elementwise_lanes: ElementwiseLanes  # the elementwise units' lanes (at most; see ElementwiseLanes.for_model)
    # prefill tokens a layers' GEMV engine serves per pass over its weights (roma_model.h TOKEN_LANES)
    token_lanes: int
    # prompt tokens a prefill runs through all layers per pass (roma_model.h PREFILL_CHUNK: the rows of the chunk's
    # on-chip activation buffers)
    prefill_chunk: int
    # activations a GEMV engine takes in per cycle (roma_model.h ROMA_ACT_LANES; an engine of a smaller group, its
    # group: engine_act_lanes)
    act_lanes: int
    # logits the on-chip sampler takes in per cycle (roma_model.h SAMPLER_LANES: model_sampler_lanes), each lane a
    # sorted list of the best logits with its insertion network
    sampler_lanes: int
    # logits a greedy token takes per cycle where more than sampler_lanes (roma_model.h ARGMAX_LANES:
    # model_argmax_lanes), the best one per lane
    argmax_lanes: int
    memory_banks: dict  # m_axi bundle -> the memory an Alveo card's link binds it to; empty on Zynq (one DDR)

    def engine_act_lanes(self, group: int) -> int:
        """The activations per cycle of an engine of `group`-wide groups (roma_core.cpp Unit::ACT): its quantizer
        and candidate stage work within one group a cycle."""
        return min(self.act_lanes, group)

    def model_sampler_lanes(self, vocab: int) -> int:
        """The sampler's lanes in a build of a model with this vocabulary: the board's, halved until they divide it
        (sampler.h streams whole rows of lanes)."""
        return _pow2_at_most(self.sampler_lanes, vocab)

    def model_argmax_lanes(self, vocab: int) -> int:
        """The greedy ARGMAX's lanes in a build (sampler.h GLANES): the board's argmax_lanes, at least the sampler's
        lanes (a multiple of them) and at most g_logits' banks (logits_banks)."""
        return min(max(self.argmax_lanes, self.model_sampler_lanes(vocab)),
                   logits_banks(self.weight_ports, self.weight_port_bits))

    def default_context(self, model_context: int) -> int:
        return min(model_context, self.max_context)

    @property
    def kv_beside_weights(self) -> bool:
        """Whether the memory's nominal peak (ddr_bandwidth_gbs) covers the weight ports and the KV ports streaming at
        once, a port word a cycle each: then attention reads the KV cache at full rate beside a GEMV that streams its
        weights (roma_model.h KV_BESIDE_WEIGHTS). A Zynq UltraScale+ board's KV port is an HP port of its own into the
        one DDR (4 x 128 + 128 bits at 200 MHz: 16 of 19.2 GB/s); a U250's KV ports share its four DDR banks with the
        weight ports (8 x 512 bits at 300 MHz: twice the banks' 77 GB/s)."""
        bits = self.weight_ports * self.weight_port_bits + self.kv_ports * self.kv_port_bits
        return bits / 8 * self.clock_mhz / 1000 <= self.ddr_bandwidth_gbs

    @property
    def bram_bytes(self) -> int:
        return self.bram36 * 36 * 1024 // 8

    @property
    def uram_bytes(self) -> int:
        return self.uram * 288 * 1024 // 8

    def to_dict(self) -> dict:
        return asdict(self)


def m_axi_bundle(argument: str, weight_ports: int, kv_ports: int) -> str:
    """The m_axi bundle of roma_core's pointer argument, as roma_core.cpp's INTERFACE pragmas give it at
    ROMA_WEIGHT_PORTS = weight_ports and ROMA_KV_PORTS = kv_ports: a weight or KV port past those shares the first
    port's bundle (tests/hw/test_build_flow.py checks this against the preprocessed pragmas)."""
    port = argument.rsplit("_", 1)[-1]
    if argument.startswith("ddr_weights_"):
        return f"gmem_weights_{port}" if int(port) < weight_ports else "gmem_weights"
    if argument == "kv_cache_1":
        return "gmem_kv_1" if kv_ports > 1 else "gmem_kv"
    if argument in ("kv_cache_2", "kv_cache_3"):
        return f"gmem_kv_{port}" if kv_ports > 2 else "gmem_kv"
    if argument not in _FIXED_BUNDLE:
        raise RomaError(f"roma_core has no pointer argument '{argument}'")
    return _FIXED_BUNDLE[argument]


def argument_memories(board: dict) -> dict[str, str]:
    """The memory each of roma_core's pointer arguments reaches on `board` (a board as boards.json and a build's
    manifest give it): its m_axi bundle's in memory_banks; empty on a board whose ports all reach one memory."""
    banks = board.get("memory_banks") or {}
    if not banks:
        return {}
    return {a: banks[m_axi_bundle(a, board["weight_ports"], board["kv_ports"])] for a in POINTER_ARGUMENTS}


def _validate(name: str, entry, source: Path) -> Board:
    if not isinstance(entry, dict):
        raise RomaError(f"{source}: board '{name}' must be an object of fields, not {type(entry).__name__}")
    for fld, (types, check, want) in REQUIRED_FIELDS.items():
        if fld not in entry:
            raise RomaError(f"{source}: board '{name}' lacks field '{fld}'", hint=f"'{fld}' must be {want}")
        v = entry[fld]
        # bool is an int in Python; a count given as true/false is a mistake.
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types) or not check(v):
            raise RomaError(f"{source}: board '{name}' has an invalid '{fld}': {v!r}", hint=f"'{fld}' must be {want}")
    unknown = sorted(set(entry) - set(REQUIRED_FIELDS) - {"notes"})
    if unknown:
        raise RomaError(f"{source}: board '{name}' has unknown field(s) {', '.join(unknown)}",
                        hint=f"known fields: {', '.join(REQUIRED_FIELDS)} (and free-text 'notes')")
    if entry["family"] != "versal" and entry["uram_initialisable"]:
        raise RomaError(f"{source}: board '{name}' says uram_initialisable but is {entry['family']}",
                        hint="only Versal URAM has an init value; UltraScale+ URAM powers up as 0")
    fields = {k: entry[k] for k in REQUIRED_FIELDS}
    fields["lora_unit"] = LoraUnit.from_dict(entry["lora_unit"], f"{source}: board '{name}'")
    fields["elementwise_lanes"] = ElementwiseLanes.from_dict(entry["elementwise_lanes"], f"{source}: board '{name}'")
    if entry["prefill_chunk"] % entry["token_lanes"]:
        raise RomaError(f"{source}: board '{name}' field 'prefill_chunk' ({entry['prefill_chunk']}) must be a multiple "
                        f"of its token_lanes ({entry['token_lanes']})", hint="a chunk is whole blocks of tokens")
    bundles = {m_axi_bundle(a, entry["weight_ports"], entry["kv_ports"]) for a in POINTER_ARGUMENTS}
    if entry["memory_banks"] and set(entry["memory_banks"]) != bundles:
        raise RomaError(f"{source}: board '{name}' field 'memory_banks' must name the memory of each of roma_core's "
                        f"m_axi bundles at its weight_ports and kv_ports, {', '.join(sorted(bundles))}, and no other",
                        hint="or leave it empty ({}) when every port reaches one memory")
    return Board(name=name, **fields)


def load_boards(path: str | Path | None = None) -> dict[str, Board]:
    """Read and validate a boards file (default: the packaged boards.json). Returns name -> Board."""
    source = Path(path) if path is not None else BOARDS_FILE
    if path is None:
        return dict(_default_boards())
    return _read(source)


@lru_cache(maxsize=1)
def _default_boards() -> tuple[tuple[str, Board], ...]:
    return tuple(_read(BOARDS_FILE).items())


def _read(source: Path) -> dict[str, Board]:
    try:
        data = json.loads(source.read_text())
    except OSError as e:
        raise RomaError(f"cannot read the board file {source}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise RomaError(f"{source} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("boards"), dict) or not data["boards"]:
        raise RomaError(f"{source} must hold an object with a non-empty 'boards' object")
    return {name: _validate(name, entry, source) for name, entry in data["boards"].items()}


def board_names() -> list[str]:
    return list(load_boards())


def get_board(name: "str | Board") -> Board:
    """The named board; an unknown name is a RomaError that lists the known boards."""
    if isinstance(name, Board):
        return name
    boards = load_boards()
    key = str(name).strip().lower()
    if key not in boards:
        raise RomaError(f"unknown board '{name}'",
                        hint=f"known boards: {', '.join(boards)} (add one in {BOARDS_FILE})")
    return boards[key]
