"""How a build's DDR KV cache lies over the core's KV cache arguments (roma_model.h KV_PORTS, KV_PORT_LANES and
KV_SETS).

Attention reads a cache row in chunks of as many fp16 lanes as the row's ports carry in one cycle. With one port a
row is one buffer's [KV_DIM] elements. With two (an Alveo card's two KV banks, whose bandwidths add up) a row's
elements are runs of `unit` (one port's fp16 lanes: its bits / 16, halved until a head holds whole runs), the runs
alternating between the ports: run r of a row in port r % ports, at run r // ports of that port's row
(hw/hls/include/roma/attention.h, "KV ports").

A board of four KV ports (the U250: boards.json kv_ports 4) also splits the positions into `sets`: position p's row
is in set p % sets, at row p // sets of that set's buffers, so attention reads the rows of two positions at once;
each set is split over the ports as above. The buffer of (set s, port q) is roma_core's KV argument 2 * s + q
(KV_ARGUMENTS: set 0 kv_cache and kv_cache_1, set 1 kv_cache_2 and kv_cache_3; with one port a set's buffer is
kv_cache or kv_cache_2), each [N_LAYERS][2][ceil(capacity / sets)][KV_DIM / ports] (with an odd capacity set 1's
last row is unused). With one set (every board of fewer than four KV ports, and an on-chip cache) the buffers are
the ports' alone, as before sets existed. The host writes and reads rows through split and join, the buffers in
`arguments` order (set-major).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_KV_PORTS = 2  # the ports a row is split over: a set's two KV cache arguments (types.h MAX_KV_PORTS)
MAX_KV_SETS = 2  # the position sets: roma_core's KV cache arguments are MAX_KV_SETS pairs of ports
# roma_core's KV cache arguments (roma_core.h), the buffer of (set s, port q) at index MAX_KV_PORTS * s + q
KV_ARGUMENTS = ("kv_cache", "kv_cache_1", "kv_cache_2", "kv_cache_3")
assert len(KV_ARGUMENTS) == MAX_KV_PORTS * MAX_KV_SETS


def board_sets(kv_ports: int) -> int:
    """The position sets of a board's DDR KV cache: two on a board of four KV ports (set 1's arguments, kv_cache_2 and
    kv_cache_3, have bundles of their own only there: boards.m_axi_bundle; with fewer they share set 0's, and reading
    both sets at once would not pay), else one. roma_core.cpp's PV_SETS: attention's partial sums follow them also
    with an on-chip cache, so that both give the same bits."""
    return MAX_KV_SETS if kv_ports >= 2 * MAX_KV_PORTS else 1


def port_lanes(head_dim: int, kv_port_bits: int) -> int:
    """The fp16 lanes one KV port carries per cycle: its bits / 16, halved until they divide a head."""
    lanes = kv_port_bits // 16
    while head_dim % lanes:
        lanes //= 2
    return lanes


@dataclass(frozen=True)
class KvLayout:
    ports: int  # roma_model.h KV_PORTS: the ports a row is split over
    unit: int  # roma_model.h KV_PORT_LANES: one port's lanes, the rows' unit of interleave
    sets: int = 1  # roma_model.h KV_SETS: position p's row is in set p % sets

    def __post_init__(self):
        if not (1 <= self.ports <= MAX_KV_PORTS and 1 <= self.sets <= MAX_KV_SETS and self.unit >= 1):
            raise ValueError(f"no KV layout of {self.ports} ports, {self.sets} sets and runs of {self.unit}")

    @classmethod
    def for_build(cls, head_dim: int, kv_port_bits: int, kv_ports: int, kv_onchip: int = 0) -> "KvLayout":
        """The layout of a build for a board of `kv_ports` KV m_axi ports (boards.json: 1, 2 or 4) of kv_port_bits
        each: a row over at most MAX_KV_PORTS of them where a head holds whole chunks of all of them, and the board's
        position sets (board_sets). An on-chip cache is read from on-chip RAM: one port, which it writes through to,
        and one set."""
        unit = port_lanes(head_dim, kv_port_bits)
        if kv_onchip:
            return cls(1, unit, 1)
        ports = min(kv_ports, MAX_KV_PORTS)
        while ports > 1 and head_dim % (unit * ports):
            ports -= 1
        return cls(ports, unit, board_sets(kv_ports))

    @classmethod
    def from_manifest(cls, manifest: dict) -> "KvLayout":
        """The layout a build's manifest records (read_manifest checked it against roma_model.h)."""
        kv = manifest["kv_layout"]
        return cls(int(kv["ports"]), int(kv["unit"]), int(kv["sets"]))

    @property
    def lanes(self) -> int:
        """Attention's fp16 lanes: a chunk of a row read from a set's ports in one cycle (roma_core.cpp ATT_SIMD)."""
        return self.ports * self.unit

    @property
    def buffers(self) -> int:
        """The buffers a KV cache takes: one per (set, port)."""
        return self.ports * self.sets

    @property
    def argument_indices(self) -> tuple[int, ...]:
        """The index in KV_ARGUMENTS of each buffer, in buffer order (set-major): MAX_KV_PORTS * set + port."""
        return tuple(MAX_KV_PORTS * s + q for s in range(self.sets) for q in range(self.ports))

    @property
    def arguments(self) -> tuple[str, ...]:
        """roma_core's KV argument of each buffer, in buffer order (kv_cache, kv_cache_2 with one port, two sets)."""
        return tuple(KV_ARGUMENTS[i] for i in self.argument_indices)

    def to_dict(self) -> dict:
        return {"ports": self.ports, "unit": self.unit, "sets": self.sets}

    def port_dim(self, kv_dim: int) -> int:
        """Elements of one row in one port's buffer."""
        return kv_dim // self.ports

    def rows_per_set(self, capacity: int) -> int:
        """The rows of each buffer of a cache of `capacity` positions: ceil(capacity / sets)."""
        return -(-int(capacity) // self.sets)

    def set_rows(self, n: int, s: int) -> int:
        """How many of positions 0..n-1 are in set s: ceil((n - s) / sets)."""
        return max(0, -(-(int(n) - s) // self.sets))

    def buffer_rows(self, n: int) -> list[int]:
        """The rows positions 0..n-1 take in each buffer, in buffer order."""
        return [self.set_rows(n, s) for s in range(self.sets) for _ in range(self.ports)]

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """Each buffer's part of rows [..., n, KV_DIM] (positions 0..n-1 on axis -2), in buffer order: set s's
        positions s, s + sets, ... as [..., set_rows(n, s), KV_DIM / ports] per port. `rows` itself with one port and
        one set; views of it with one port (a strided view of every sets-th row), else copies."""
        parts = []
        for s in range(self.sets):
            sub = rows if self.sets == 1 else rows[..., s::self.sets, :]
            if self.ports == 1:
                parts.append(sub)
                continue
            lead, width = sub.shape[:-1], sub.shape[-1] // self.ports  # (explicit sizes: n may be 0)
            runs = sub.reshape(*lead, width // self.unit, self.ports, self.unit)
            parts += [runs[..., p, :].reshape(*lead, width) for p in range(self.ports)]
        return parts

    def join(self, parts: list[np.ndarray]) -> np.ndarray:
        """Rows [..., n, KV_DIM] from each buffer's part of them (split's inverse): set s's parts hold positions s,
        s + sets, ..., n the sum of the sets' rows (each set's set_rows(n, s), else ValueError). parts[0] itself with
        one port and one set."""
        if len(parts) != self.buffers:
            raise ValueError(f"{len(parts)} parts for a KV layout of {self.buffers} buffers")
        sets = []
        for s in range(self.sets):
            mine = parts[s * self.ports:(s + 1) * self.ports]
            if self.ports == 1:
                sets.append(mine[0])
                continue
            lead, width = mine[0].shape[:-1], mine[0].shape[-1]
            runs = np.stack([p.reshape(*lead, width // self.unit, self.unit) for p in mine], axis=-2)
            sets.append(runs.reshape(*lead, width * self.ports))
        if self.sets == 1:
            return sets[0]
        n = sum(x.shape[-2] for x in sets)
        if [x.shape[-2] for x in sets] != [self.set_rows(n, s) for s in range(self.sets)]:
            raise ValueError(f"the sets' rows {[x.shape[-2] for x in sets]} are not those of {n} positions")
        out = np.empty((*sets[0].shape[:-2], n, sets[0].shape[-1]), sets[0].dtype)
        for s, x in enumerate(sets):
            out[..., s::self.sets, :] = x
        return out
