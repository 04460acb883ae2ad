"""How a build's DDR KV cache lies over the core's KV ports (roma_model.h KV_PORTS and KV_PORT_LANES).

Attention reads a cache row in chunks of as many fp16 lanes as the KV ports carry in one cycle. With one port a
row is one buffer's [KV_DIM] elements. With two (the board's kv_ports: an Alveo card's two DDR banks, whose
bandwidths add up) a row's elements are runs of `unit` (one port's fp16 lanes: its bits / 16, halved until a
head holds whole runs), the runs alternating between the ports: run r of a row in port r % ports, at run
r // ports of that port's row. Each port's buffer is [N_LAYERS][2][capacity][KV_DIM / ports]
(hw/hls/include/roma/attention.h, "KV ports"). The host writes and reads rows through split and join.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_KV_PORTS = 2  # roma_core has two KV cache arguments (types.h MAX_KV_PORTS)


def port_lanes(head_dim: int, kv_port_bits: int) -> int:
    """The fp16 lanes one KV port carries per cycle: its bits / 16, halved until they divide a head."""
    lanes = kv_port_bits // 16
    while head_dim % lanes:
        lanes //= 2
    return lanes


@dataclass(frozen=True)
class KvLayout:
    ports: int  # roma_model.h KV_PORTS
    unit: int  # roma_model.h KV_PORT_LANES: one port's lanes, the rows' unit of interleave

    @classmethod
    def for_build(cls, head_dim: int, kv_port_bits: int, kv_ports: int, kv_onchip: int = 0) -> "KvLayout":
        """The board's KV ports where a head holds whole chunks of all of them and the cache is in DDR (an on-chip
        cache is read from on-chip RAM: one port, which it writes through to)."""
        unit = port_lanes(head_dim, kv_port_bits)
        ports = 1 if kv_onchip else kv_ports
        while ports > 1 and head_dim % (unit * ports):
            ports -= 1
        return cls(ports, unit)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "KvLayout":
        """The layout a build's manifest records (read_manifest checked it against roma_model.h)."""
        kv = manifest["kv_layout"]
        return cls(int(kv["ports"]), int(kv["unit"]))

    @property
    def lanes(self) -> int:
        """Attention's fp16 lanes: a chunk of a row read from all ports in one cycle (roma_core.cpp ATT_SIMD)."""
        return self.ports * self.unit

    def to_dict(self) -> dict:
        return {"ports": self.ports, "unit": self.unit}

    def port_dim(self, kv_dim: int) -> int:
        """Elements of one row in one port's buffer."""
        return kv_dim // self.ports

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """Each port's part of rows [..., KV_DIM] (views when there is one port)."""
        if self.ports == 1:
            return [rows]
        runs = rows.reshape(*rows.shape[:-1], -1, self.ports, self.unit)
        return [runs[..., p, :].reshape(*rows.shape[:-1], -1) for p in range(self.ports)]

    def join(self, parts: list[np.ndarray]) -> np.ndarray:
        """Rows [..., KV_DIM] from each port's part of them."""
        if self.ports == 1:
            return parts[0]
        lead = parts[0].shape[:-1]
        runs = np.stack([p.reshape(*lead, -1, self.unit) for p in parts], axis=-2)
        return runs.reshape(*lead, -1)
