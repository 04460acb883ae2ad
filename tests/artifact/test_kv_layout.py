"""The DDR KV cache over the KV ports and position sets (artifact/kv_layout.py): which builds split it, the split the
core reads, and the m_axi bundles and memories of the KV arguments (artifact/boards.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from roma_runtime.artifact.boards import (BOARDS_FILE, POINTER_ARGUMENTS, argument_memories, board_names, get_board,
                                          load_boards, m_axi_bundle)
from roma_runtime.artifact.kv_layout import KV_ARGUMENTS, MAX_KV_PORTS, MAX_KV_SETS, KvLayout, port_lanes
from roma_runtime.errors import RomaError


@pytest.mark.parametrize("board, head_dim, onchip, want", [
    ("u250", 64, 0, KvLayout(2, 32, 2)),   # SmolLM2: rows over two 512-bit DDR banks, positions over two pairs
    ("u280", 64, 0, KvLayout(2, 16, 1)),   # two 256-bit HBM ports: one set
    ("kv260", 64, 0, KvLayout(1, 8, 1)),   # one 128-bit HP port
    ("pynq-z2", 64, 0, KvLayout(1, 4, 1)),  # one 64-bit HP port
    ("u250", 16, 0, KvLayout(1, 16, 2)),   # a head of 16: one port's 16 lanes already cover it; two sets
    ("u280", 16, 0, KvLayout(1, 16, 1)),   # ... but not on two ports: set 1 would share set 0's bundle
    ("u250", 64, 64, KvLayout(1, 32, 1)),  # an on-chip cache: one port, which it writes through to, one set
])
def test_a_build_splits_its_kv_rows_where_a_head_holds_whole_chunks(board, head_dim, onchip, want):
    b = get_board(board)
    layout = KvLayout.for_build(head_dim, b.kv_port_bits, b.kv_ports, onchip)
    assert layout == want
    assert head_dim % layout.lanes == 0 and layout.unit == port_lanes(head_dim, b.kv_port_bits)
    assert layout.buffers == layout.ports * layout.sets <= b.kv_ports


def test_the_u250_has_four_kv_ports_and_the_others_fewer():
    assert get_board("u250").kv_ports == 4 and get_board("u280").kv_ports == 2
    assert all(get_board(z).kv_ports == 1 for z in ("pynq-z2", "kv260", "zcu104", "zcu102"))


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


def _old_split(ports: int, unit: int, rows: np.ndarray) -> list[np.ndarray]:
    """The split before position sets (kv_layout.py at FORMAT_VERSION 16), the reference of sets=1."""
    if ports == 1:
        return [rows]
    runs = rows.reshape(*rows.shape[:-1], -1, ports, unit)
    return [runs[..., p, :].reshape(*rows.shape[:-1], -1) for p in range(ports)]


@pytest.mark.parametrize("ports, unit", [(1, 32), (2, 32), (2, 8)])
@pytest.mark.parametrize("n", [1, 5, 8])
def test_one_set_is_the_layout_before_sets_byte_for_byte(ports, unit, n):
    rows = np.random.default_rng(n).integers(0, 1 << 16, (3, 2, n, 64), dtype=np.uint16)
    layout = KvLayout(ports, unit)
    assert layout.sets == 1 and layout == KvLayout(ports, unit, 1)
    assert layout.arguments == KV_ARGUMENTS[:ports] and layout.rows_per_set(n) == n
    assert layout.buffer_rows(n) == [n] * ports
    new, old = layout.split(rows), _old_split(ports, unit, rows)
    assert len(new) == len(old) == ports
    for a, b in zip(new, old):
        assert a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert layout.join(new).tobytes() == rows.tobytes()


@pytest.mark.parametrize("ports", [1, 2])
@pytest.mark.parametrize("sets", [1, 2])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 10])
def test_split_and_join_round_trip_over_sets_and_ports(ports, sets, n):
    unit, kv_dim = 8, 32
    layout = KvLayout(ports, unit, sets)
    rows = np.random.default_rng(100 * n + 10 * ports + sets).integers(0, 1 << 16, (2, 2, n, kv_dim), dtype=np.uint16)
    parts = layout.split(rows)
    assert len(parts) == layout.buffers == ports * sets
    # buffer i is set i // ports, port i % ports; set s holds positions s, s + sets, ...: ceil((n - s) / sets)
    assert [p.shape for p in parts] == [(2, 2, k, kv_dim // ports) for k in layout.buffer_rows(n)]
    assert sum(layout.buffer_rows(n)) == n * ports
    for i, part in enumerate(parts):
        s, q = divmod(i, ports)
        for r in range(part.shape[2]):
            position = r * sets + s
            for e in range(kv_dim):  # element e of a row: port (e // unit) % ports, at run e // (unit * ports)
                if (e // unit) % ports == q:
                    assert part[1, 0, r, (e // (unit * ports)) * unit + e % unit] == rows[1, 0, position, e]
    back = layout.join(parts)
    assert back.shape == rows.shape and np.array_equal(back, rows)
    # join of copies placed into longer buffers, cut at each buffer's rows (the driver's rows(n))
    cap = n + 3
    buffers = [np.zeros((2, 2, layout.rows_per_set(cap), kv_dim // ports), np.uint16) for _ in parts]
    for b, p in zip(buffers, parts):
        b[:, :, :p.shape[2]] = p
    assert np.array_equal(layout.join([b[:, :, :k] for b, k in zip(buffers, layout.buffer_rows(n))]), rows)


def test_two_sets_put_even_positions_in_the_first_pair_and_odd_in_the_second():
    layout = KvLayout(1, 16, 2)
    assert layout.arguments == ("kv_cache", "kv_cache_2") and layout.argument_indices == (0, 2)
    assert KvLayout(2, 32, 2).arguments == KV_ARGUMENTS and KvLayout(2, 32, 2).argument_indices == (0, 1, 2, 3)
    assert KvLayout(2, 16, 1).arguments == ("kv_cache", "kv_cache_1")
    assert layout.rows_per_set(7) == 4 and layout.rows_per_set(8) == 4 and layout.buffer_rows(7) == [4, 3]
    assert KvLayout(2, 32, 2).buffer_rows(5) == [3, 3, 2, 2]
    rows = np.arange(7 * 16, dtype=np.uint16).reshape(7, 16)
    even, odd = layout.split(rows)
    assert np.array_equal(even, rows[0::2]) and np.array_equal(odd, rows[1::2])
    assert np.shares_memory(even, rows)  # one port: views
    with pytest.raises(ValueError, match="not those of"):
        layout.join([rows[1::2], rows[0::2]])  # 3 + 4 rows: 7 positions put 4 in set 0
    with pytest.raises(ValueError, match="parts"):
        layout.join([rows])


def test_the_manifest_carries_the_sets():
    layout = KvLayout(1, 16, 2)
    assert layout.to_dict() == {"ports": 1, "unit": 16, "sets": 2}
    assert KvLayout.from_manifest({"kv_layout": layout.to_dict()}) == layout
    with pytest.raises(KeyError):  # a manifest of a build before sets (its format version is refused first)
        KvLayout.from_manifest({"kv_layout": {"ports": 2, "unit": 32}})
    for bad in ((3, 16, 1), (1, 16, 3), (0, 16, 1), (1, 16, 0)):
        with pytest.raises(ValueError):
            KvLayout(*bad)
    assert len(KV_ARGUMENTS) == MAX_KV_PORTS * MAX_KV_SETS


def test_the_kv_arguments_bundles_and_memories():
    """roma_core.cpp's pragmas (tests/hw/test_build_flow.py checks m_axi_bundle against them): with four KV ports the
    second set has two bundles of its own; with fewer it parks on gmem_kv, never read."""
    assert {"kv_cache", "kv_cache_1", "kv_cache_2", "kv_cache_3"} <= set(POINTER_ARGUMENTS)
    four = {a: m_axi_bundle(a, 4, 4) for a in KV_ARGUMENTS}
    assert four == {"kv_cache": "gmem_kv", "kv_cache_1": "gmem_kv_1", "kv_cache_2": "gmem_kv_2",
                    "kv_cache_3": "gmem_kv_3"}
    assert [m_axi_bundle(a, 4, 2) for a in KV_ARGUMENTS] == ["gmem_kv", "gmem_kv_1", "gmem_kv", "gmem_kv"]
    assert [m_axi_bundle(a, 4, 1) for a in KV_ARGUMENTS] == ["gmem_kv"] * 4
    u250 = argument_memories(get_board("u250").to_dict())
    # the four KV buffers of a SmolLM2 build in the four banks: set 0 in banks 1 and 3, set 1 in banks 0 and 2
    assert [u250[a] for a in KV_ARGUMENTS] == ["DDR[1]", "DDR[3]", "DDR[0]", "DDR[2]"]
    assert u250["kv_cache_2"] == u250["ddr_weights"] and u250["kv_cache_3"] == u250["ddr_weights_2"]  # shared banks
    u280 = argument_memories(get_board("u280").to_dict())
    assert u280["kv_cache_2"] == u280["kv_cache_3"] == u280["kv_cache"] == "HBM[8:11]"
    assert argument_memories(get_board("kv260").to_dict()) == {}  # a Zynq board: every port reaches its one DDR
    assert [m_axi_bundle(a, 4, get_board("kv260").kv_ports) for a in KV_ARGUMENTS] == ["gmem_kv"] * 4


def test_kv_beside_weights_where_the_memory_peak_covers_both_streams():
    """A prefill block's attention reads the KV cache beside an FFN that streams its weights only where the memory's
    nominal peak covers the weight ports and the KV ports at a port word a cycle each (roma_model.h
    KV_BESIDE_WEIGHTS)."""
    def demand(b):  # GB/s of all the ports at once
        return (b.weight_ports * b.weight_port_bits + b.kv_ports * b.kv_port_bits) / 8 * b.clock_mhz / 1000

    kv260, u250 = get_board("kv260"), get_board("u250")
    assert demand(kv260) == 16.0 and kv260.ddr_bandwidth_gbs == 19.2 and kv260.kv_beside_weights
    assert demand(u250) == 153.6 and u250.ddr_bandwidth_gbs == 77.0 and not u250.kv_beside_weights  # shared banks
    for name in board_names():
        b = get_board(name)
        assert b.kv_beside_weights == (demand(b) <= b.ddr_bandwidth_gbs), name


def test_a_board_has_one_two_or_four_kv_ports(tmp_path):
    data = json.loads(BOARDS_FILE.read_text())
    f = tmp_path / "boards.json"
    for bad in (0, 3, 5, True):
        data["boards"]["kv260"]["kv_ports"] = bad
        f.write_text(json.dumps(data))
        with pytest.raises(RomaError, match="board 'kv260' has an invalid 'kv_ports'"):
            load_boards(f)
    # four KV ports: kv_cache_2's and kv_cache_3's bundles gmem_kv_2 and gmem_kv_3, so memory_banks must name them
    data["boards"]["kv260"].update(kv_ports=4, weight_ports=2)
    banks = {"gmem_weights": "DDR[0]", "gmem_weights_1": "DDR[1]", "gmem_kv": "DDR[1]", "gmem_kv_1": "DDR[3]",
             "gmem_tok": "DDR[2]", "gmem_logits": "DDR[2]", "gmem_lora": "DDR[2]", "gmem_status": "DDR[2]"}
    data["boards"]["kv260"]["memory_banks"] = banks
    f.write_text(json.dumps(data))
    with pytest.raises(RomaError, match="gmem_kv_2, gmem_kv_3"):
        load_boards(f)
    data["boards"]["kv260"]["memory_banks"] = {**banks, "gmem_kv_2": "DDR[0]", "gmem_kv_3": "DDR[2]"}
    f.write_text(json.dumps(data))
    board = load_boards(f)["kv260"]
    assert argument_memories(board.to_dict())["kv_cache_3"] == "DDR[2]"
    assert argument_memories(board.to_dict())["kv_cache_2"] == "DDR[0]"
    assert argument_memories(board.to_dict())["ddr_weights_2"] == "DDR[0]"  # past weight_ports: parked
