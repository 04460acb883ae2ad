"""The DDR KV cache over the KV ports (artifact/kv_layout.py): which builds split it, and the split the core reads."""

from __future__ import annotations

import numpy as np
import pytest

from roma_runtime.artifact.boards import get_board
from roma_runtime.artifact.kv_layout import KvLayout, port_lanes


@pytest.mark.parametrize("board, head_dim, onchip, want", [
    ("u250", 64, 0, KvLayout(2, 32)),   # SmolLM2: two 512-bit DDR banks, 32 fp16 lanes each
    ("u280", 64, 0, KvLayout(2, 16)),   # two 256-bit HBM ports
    ("kv260", 64, 0, KvLayout(1, 8)),   # one 128-bit HP port
    ("u250", 16, 0, KvLayout(1, 16)),   # a head of 16: one port's 16 lanes already cover it
    ("u250", 64, 64, KvLayout(1, 32)),  # an on-chip cache: one port, which it writes through to
])
def test_a_build_splits_its_kv_rows_where_a_head_holds_whole_chunks(board, head_dim, onchip, want):
    b = get_board(board)
    layout = KvLayout.for_build(head_dim, b.kv_port_bits, b.kv_ports, onchip)
    assert layout == want
    assert head_dim % layout.lanes == 0 and layout.unit == port_lanes(head_dim, b.kv_port_bits)


def test_split_and_join_are_inverse_and_alternate_runs_between_the_ports():
    layout = KvLayout(2, 32)
    rows = np.arange(3 * 2 * 5 * 192, dtype=np.uint16).reshape(3, 2, 5, 192)
    a, b = layout.split(rows)
    assert a.shape == b.shape == (3, 2, 5, 96)
    # element e of a row is in port (e // 32) % 2 at run e // 64 of that port's row (attention.h, "KV ports")
    for e in (0, 31, 32, 63, 64, 100, 191):
        port, at = (e // 32) % 2, (e // 64) * 32 + e % 32
        assert (a, b)[port][1, 0, 4, at] == rows[1, 0, 4, e]
    assert np.array_equal(layout.join([a, b]), rows)
    one = KvLayout(1, 32)
    assert one.split(rows)[0] is rows and one.join([rows]) is rows
