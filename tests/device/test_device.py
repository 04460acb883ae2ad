"""The emulated board and the PYNQ driver (host/roma_runtime/device), on the real roma_core.

Every test that runs the core runs hw/hls/roma_core.cpp itself (`make -C hw/hls emu`, the HLS C simulation)
for the tiny model's build, through the real emulated device, .hwh, pynq.Overlay and driver. The library is
compiled once (the session's `tiny_emu` fixture, cached by content hash under the roma cache), so no test here
recompiles the core: the cache is tested through its hash function and one real cache hit.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

pynq = pytest.importorskip("pynq")

from roma_runtime.device import driver as drv  # noqa: E402
from roma_runtime.device.emu import emu_device  # noqa: E402
from roma_runtime.artifact.hwh import IP_NAME, VLNV, render_hwh, write_hwh  # noqa: E402
from roma_runtime.artifact.interface import (FIRST_ARG, HEADER, HLS_DIR, load_constants,  # noqa: E402
                                           load_interface, parse_interface)
from roma_runtime.device.library import build_library, content_hash, hls_sources  # noqa: E402
from roma_runtime.errors import RomaError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = 2e-3  # max|dl| / max|l| against the golden model: tb_roma_core.cpp's header explains the bound
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                               reason="needs g++ and make")


def _rel(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


# --- the register layout ------------------------------------------------------------------------------------


def test_layout_from_the_header():
    itf = load_interface()
    text = HEADER.read_text()
    decl = text[text.index('extern "C" void roma_core('):]
    names = [a.name for a in itf.arguments]
    assert names[0] == "command" and names[-1] == "status"
    for n in names:  # every argument, in header order
        assert f" {n}," in decl or f"*{n}," in decl or f"*{n})" in decl or f"&{n}," in decl
    assert [decl.index(n) for n in names] == sorted(decl.index(n) for n in names)
    layout = itf.layout()
    assert layout["CTRL"]["offset"] == 0x00 and layout["GIER"]["offset"] == 0x04
    assert layout["IP_IER"]["offset"] == 0x08 and layout["IP_ISR"]["offset"] == 0x0C
    assert itf.arguments[0].offset == FIRST_ARG == 0x10
    for a, b in zip(itf.arguments, itf.arguments[1:]):  # data words + one reserved word each
        assert b.offset == a.offset + 4 * (a.width // 32 + 1)
    for a in itf.arguments:
        assert a.width == (64 if a.pointer else 32)
    assert {a.name for a in itf.pointers} == {"tokens_in", "tokens_out", "logits", "kv_cache", "kv_cache_1",
                                              "kv_cache_2", "kv_cache_3", "lora_staging",
                                              "ddr_weights", "ddr_weights_1", "ddr_weights_2", "ddr_weights_3",
                                              "uram_weights", "status"}
    assert itf["inv_temperature"].base == "float" and itf["tokens_in"].const and not itf["logits"].const
    # encoding: floats as their IEEE bits, pointers as 64-bit offsets
    assert itf["top_p"].encode(0.5) == struct.unpack("<I", struct.pack("<f", 0.5))[0]
    assert itf["top_p"].decode(itf["top_p"].encode(0.25)) == 0.25
    assert itf["logits"].encode(0x1_2345_6789) == 0x1_2345_6789
    c = load_constants()
    assert c["CMD_PREFILL"] == 1 and c["STATUS_WORDS"] == 32 and c["ERR_TOKEN_RANGE"] == 3
    assert "LORA_SLOTS" not in c and "LORA_MAX_RANK" not in c  # the LoRA unit is the build's (roma_model.h)
    assert drv.stage_names(c)[:4] == ["embedding", "norm", "act_quant", "gemv"] and len(drv.stage_names(c)) == 13
    assert drv.stage_names(c)[-2:] == ["kv_load", "weight_load"] and c["CMD_KV_LOAD"] == 6
    assert c["CMD_LOAD_WEIGHTS"] == 7 and c["STATUS_CHECKSUM"] == 2
    # the cycle counters: one output register per stage, in stage order, read-only (not set by the host)
    assert [a.name for a in itf.outputs] == [f"cycles_{s}" for s in drv.stage_names(c)]
    assert all(a.ctype == "uint32_t &" and not a.pointer for a in itf.outputs)
    assert not set(itf.outputs) & set(itf.scalars)


def test_layout_rules_on_a_synthetic_header():
    itf = parse_interface('extern "C" void roma_core(uint32_t a, // comment, with a comma\n'
                          '  const float *p, float f, uint64_t big, int32_t *q, uint32_t &out);')
    assert [(a.name, a.offset, a.width) for a in itf.arguments] == [
        ("a", 0x10, 32), ("p", 0x18, 64), ("f", 0x24, 32), ("big", 0x2C, 64), ("q", 0x38, 64), ("out", 0x44, 32)]
    assert [a.name for a in itf.outputs] == ["out"] and [a.name for a in itf.pointers] == ["p", "q"]
    assert itf["a"].decode(0xFFFFFFFF) == 0xFFFFFFFF and parse_interface(
        'extern "C" void roma_core(int32_t s);')["s"].decode(0xFFFFFFFF) == -1
    with pytest.raises(RomaError, match="no extern"):
        parse_interface("void other(int a);")
    with pytest.raises(RomaError, match="cannot read argument|does not know"):
        parse_interface('extern "C" void roma_core(half x);')


# --- the hardware description -------------------------------------------------------------------------------


def test_hwh_parses_with_pynqs_parsers(tmp_path):
    from pynq.pl_server.hwh_parser import _HWHUltrascale
    from pynqmetadata.frontends import Metadata
    from pynqmetadata.views.runtime import RuntimeMetadataParser

    path = write_hwh(tmp_path / "roma_core.hwh")
    itf = load_interface()
    for parser in (RuntimeMetadataParser(Metadata(input=str(path))), _HWHUltrascale(str(path))):
        ip = parser.ip_dict[IP_NAME]
        assert ip["type"] == VLNV
        assert ip["phys_addr"] == 0xA000_0000 and ip["addr_range"] == 0x10000
        regs = ip["registers"]
        assert list(regs)[:4] == ["CTRL", "GIER", "IP_IER", "IP_ISR"]
        for a in itf.arguments:
            assert regs[a.name]["address_offset"] == a.offset and regs[a.name]["size"] == a.width
        assert regs["CTRL"]["fields"]["AP_START"]["bit_offset"] == 0
        assert regs["CTRL"]["fields"]["AUTO_RESTART"]["bit_offset"] == 7
        mem = parser.mem_dict["ddr4_0"]
        assert mem.get("phys_addr", mem.get("base_address")) == 0 and mem["addr_range"] == 0x8000_0000
        assert parser.clock_dict[0]["enable"] == 1
    assert "roma-fpga.org:hls:roma_core:1.0" in render_hwh()


# --- the emulated device through pynq ---------------------------------------------------------------------


@needs_gxx
def test_overlay_exposes_roma_core_with_its_register_map(tiny_emu):
    ol = tiny_emu.overlay
    tiny_emu.new_cache(4)  # (any call makes this backend's overlay the downloaded one)
    tiny_emu._ensure()
    assert isinstance(ol, pynq.Overlay) and ol.is_loaded()
    assert isinstance(ol.roma_core_0, drv.RomaCoreDriver)  # bound by VLNV
    assert ol.ip_dict[IP_NAME]["type"] == VLNV and "ddr4_0" in ol.mem_dict
    rm = ol.roma_core_0.register_map
    itf = load_interface()
    for a in itf.arguments:
        assert getattr(rm, a.name).address == a.offset and getattr(rm, a.name).width == a.width
    rm.position = 1234
    assert ol.roma_core_0.mmio.read(itf["position"].offset) == 1234
    rm.logits = 0x1_0000_2000  # a 64-bit register, low word first
    assert ol.roma_core_0.mmio.read(itf["logits"].offset) == 0x2000
    assert ol.roma_core_0.mmio.read(itf["logits"].offset + 4) == 1
    assert rm.CTRL.AP_IDLE == 1 and rm.CTRL.AP_START == 0
    from pynq.ps import Clocks

    assert Clocks.fclk0_mhz == pytest.approx(100.0, rel=1e-3)  # set by Overlay.download on emulated regs
    # a plain pynq.Overlay on the same emulated bitstream works too (and is the downloaded one now)
    plain = pynq.Overlay(str(Path(ol.bitfile_name)), device=emu_device())
    assert isinstance(getattr(plain, IP_NAME), drv.RomaCoreDriver)


def test_buffers_have_distinct_aligned_addresses_and_read_through():
    dev = emu_device()
    a = pynq.allocate((1000,), np.int32, target=dev)
    b = pynq.allocate((3, 5), np.float32, target=dev)
    c = dev.allocate((1,), np.uint8)
    addrs = [x.device_address for x in (a, b, c)]
    assert len(set(addrs)) == 3 and all(x % 4096 == 0 and x > 0 for x in addrs)
    assert a.device_address + a.nbytes <= b.device_address or b.device_address + b.nbytes <= a.device_address
    a[:] = np.arange(1000)
    a.flush()
    word = int.from_bytes(dev.read_registers(a.device_address + 4 * 17, 4), "little")
    assert word == 17
    dev.write_registers(b.device_address + 4, struct.pack("<f", 2.5))
    b.invalidate()
    assert b[0, 1] == 2.5
    assert a[10:].device_address == a.device_address + 40  # views keep their device address
    assert dev.memory.translate(a.device_address + 8) == a.ctypes.data + 8
    with pytest.raises(RomaError, match="not inside"):
        dev.memory.translate(0x10)
    import gc

    gc.collect()  # buffers that earlier tests left to the collector go first
    live = dev.memory.live_buffers
    addr = c.device_address
    del c
    gc.collect()
    assert dev.memory.live_buffers == live - 1
    with pytest.raises(RomaError):  # the address is free again
        dev.memory.translate(addr)


def _offline_driver(tmp_path, board: str):
    """A RomaCoreDriver on the emulated device from the .hwh of roma_core.h, its registers tagged with `board`'s
    memories as an xclbin's are, with no core downloaded: its buffers are real, its calls are not run."""
    from pynqmetadata.frontends import Metadata
    from pynqmetadata.views.runtime import RuntimeMetadataParser

    from roma_runtime.artifact.boards import argument_memories, get_board

    dev = emu_device()
    ip = dict(RuntimeMetadataParser(Metadata(input=str(write_hwh(tmp_path / "roma_core.hwh")))).ip_dict[IP_NAME])
    ip["device"] = dev
    for argument, tag in argument_memories(get_board(board).to_dict()).items():
        ip["registers"][argument]["memory"] = tag
        dev.bank(tag)
    return drv.RomaCoreDriver(ip), dev


@pytest.mark.parametrize("layout", [(1, 16, 2), (2, 8, 2), (2, 8, 1), (1, 16, 1)])
def test_a_kv_buffer_puts_each_set_and_port_on_its_argument(tmp_path, monkeypatch, layout):
    """A KV buffer of the tiny model's shape (head 16, KV_DIM 32) over the U250's memories: one buffer per (set,
    port) of [N_LAYERS][2][ceil(capacity / sets)][KV_DIM / ports] in its argument's bank, the rows written and read
    back through the layout, and each buffer's address in its argument's register (0 in the others)."""
    from roma_runtime.artifact.kv_layout import KV_ARGUMENTS, KvLayout
    from roma_runtime.model.config import ModelConfig

    layout = KvLayout(*layout)
    core, dev = _offline_driver(tmp_path, "u250")
    config = ModelConfig(name="tiny", n_layers=2, dim=64, ffn_dim=128, n_heads=4, n_kv_heads=2, vocab_size=32,
                         context_length=64, rope_theta=10000.0, rms_eps=1e-5, tied_embeddings=True)
    core.configure(config, 16, kv_layout=layout)
    assert KvLayout.for_build(config.head_dim, 512, 4) == KvLayout(1, 16, 2)  # the tiny model's U250 build
    kv = core.new_kv(7)
    assert [b.shape for b in kv.buffers] == [(2, 2, -(-7 // layout.sets), 32 // layout.ports)] * layout.buffers
    for b, argument in zip(kv.buffers, layout.arguments):  # each in the bank its argument's port reaches
        bank = dev.banks[core.memories[argument]]
        assert bank.base_address <= b.device_address < bank.base_address + bank.size, argument
    want = {a: 0 for a in KV_ARGUMENTS}
    want.update({a: b.device_address for a, b in zip(layout.arguments, kv.buffers)})
    assert kv.port_addresses == [want[a] for a in KV_ARGUMENTS] and len(set(want.values()) - {0}) == layout.buffers
    rows = np.random.default_rng(7).integers(0, 1 << 16, (2, 2, 7, 32), dtype=np.uint16)
    flushes = dev.stats["flush"]
    kv.write_rows(rows[:, :, :5])
    kv.write_rows(rows)
    assert dev.stats["flush"] >= flushes + 2 * layout.buffers
    assert np.array_equal(kv.rows(7), rows) and np.array_equal(kv.rows(4), rows[:, :, :4])
    assert kv.rows(0).shape == (2, 2, 0, 32)
    # position p in set p % sets at row p // sets: position 5 of layer 1's values
    set_, row = 5 % layout.sets, 5 // layout.sets
    got = np.concatenate([b[1, 1, row].reshape(-1, layout.unit)
                          for b in kv.buffers[set_ * layout.ports:(set_ + 1) * layout.ports]], axis=1).reshape(-1)
    assert np.array_equal(got, rows[1, 1, 5])
    # a command's registers: each buffer's address on its argument (the call itself not run: no core is loaded)
    regs = {}
    monkeypatch.setattr(core, "write_arg", lambda name, value: regs.__setitem__(name, value))
    monkeypatch.setattr(core, "start", lambda: None)
    monkeypatch.setattr(core, "wait", lambda timeout=None: None)
    monkeypatch.setattr(core, "read_arg", lambda name: 0)
    core._call(core.constants["CMD_DECODE"], position=5, n_tokens=1, kv=kv)
    assert {a: regs[a] for a in KV_ARGUMENTS} == want and regs["kv_capacity"] == 7
    core._call(core.constants["CMD_SELECT_LORA"])
    assert [regs[a] for a in KV_ARGUMENTS] == [0] * 4 and regs["kv_capacity"] == 0


@needs_gxx
def test_data_path_on_the_real_core(tiny_emu, tiny_build):
    """prefill, decode, KV rows, generate, status errors and LoRA commands through the driver, against the
    golden model of the same build."""
    from roma_runtime.model.loader import load_build
    from roma_runtime.golden import GoldenModel

    be = tiny_emu
    dev = be.device
    model = load_build(tiny_build)
    golden = GoldenModel(model, "quant")
    prompt = [1, 17, 4242, 99, 7, 31000, 5]
    gc_, cache = golden.new_cache(32), be.new_cache(32)
    before = dict(dev.stats)
    g = golden.forward(prompt, gc_)[-1]
    e = be.forward(prompt, cache)
    assert cache.length == len(prompt) and e.shape == (be.config.vocab_size,) and e.dtype == np.float32
    assert _rel(e, g) <= TOL
    ids = []
    for _ in range(4):  # greedy decode steps, token by token
        ids.append(int(np.argmax(g)))
        assert int(np.argmax(e)) == ids[-1]
        g = golden.forward([ids[-1]], gc_)[-1]
        e = be.forward([ids[-1]], cache)
        assert _rel(e, g) <= TOL
    assert dev.stats["flush"] > before["flush"] and dev.stats["invalidate"] > before["invalidate"]
    # the KV rows the core wrote: fp16, [layer, position, kv_head, head_dim], as the golden cache's
    n = cache.length
    keys, values = cache.read_rows(n)
    c = be.config
    assert keys.shape == values.shape == (c.n_layers, n, c.n_kv_heads, c.head_dim) and keys.dtype == np.float16
    gk = np.asarray(gc_.keys[:, :n], np.float32).reshape(keys.shape)
    assert np.abs(keys.astype(np.float32) - gk).max() <= 1e-2 * np.abs(gk).max()
    other = be.new_cache(8)  # each cache owns its DDR buffer
    assert other.kv.device_address != cache.kv.device_address
    # CMD_GENERATE: the on-chip greedy loop equals single decode steps; eos_id stops after it is written
    first = int(np.argmax(e))
    steps, pos = [], cache.length
    probe = be.new_cache(32)
    probe.write_rows(*cache.read_rows(n))
    t = first
    for i in range(4):
        t = int(np.argmax(be.core.decode(t, pos + i, kv=probe.kv)))
        steps.append(t)
    auto = be.new_cache(32)
    auto.write_rows(*cache.read_rows(n))
    assert be.core.generate(first, pos, 4, kv=auto.kv) == steps
    assert be.core.last_cycles > 0
    again = be.new_cache(32)
    again.write_rows(*cache.read_rows(n))
    assert be.core.generate(first, pos, 4, eos_id=steps[1], kv=again.kv) == steps[:2]
    # errors are status words: a RomaError, and nothing changed
    kv_before = cache.kv.rows(cache.capacity)
    with pytest.raises(RomaError, match="outside the vocabulary"):
        be.forward([be.config.vocab_size], cache)
    with pytest.raises(RomaError, match="do not fit"):
        be.core.prefill([1, 2], position=31, kv=cache.kv)
    assert cache.length == n and np.array_equal(cache.kv.rows(cache.capacity), kv_before)
    with pytest.raises(RomaError, match="not a valid packed image"):
        be.core.load_lora(1, b"\x01\x02\x03\x04" * 32)
    with pytest.raises(RomaError, match="LoRA slot"):
        be.core.select_lora(3)  # empty
    with pytest.raises(RomaError, match="LoRA slot"):
        be.core.select_lora(be.lora_unit.slots)  # out of range: the build's LoRA unit has slots 0..slots-1
    be.core.select_lora(None)
    assert be.core.register_map.CTRL.AP_IDLE == 1


# --- manifests ------------------------------------------------------------------------------------------------


@needs_gxx
def test_a_command_writes_only_the_registers_that_changed_and_reads_the_counters_at_once(tiny_emu, tiny_build,
                                                                                         monkeypatch):
    """The argument registers keep their values until a download, so a decode step writes its position and no
    other register; after a download (a second backend on the emulated board downloads its overlay, then this one
    its own) the driver writes them all again, and the next step is still the golden model's. (A plain
    pynq.Overlay's download: test_overlay_exposes_roma_core_with_its_register_map, before
    test_data_path_on_the_real_core.)"""
    from roma_runtime.backends.emulated import EmuBackend
    from roma_runtime.golden import GoldenModel
    from roma_runtime.model.loader import load_build

    be = tiny_emu
    cache = be.new_cache(16)
    be.forward([1, 17, 4242], cache)
    be.forward([99], cache)
    writes = []
    mmio, write = be.core.mmio, be.core.mmio.write
    monkeypatch.setattr(mmio, "write", lambda offset, value: (writes.append(offset), write(offset, value))[1])
    be.forward([7], cache)
    assert writes == [be.core.offsets["position"], drv.CTRL]
    assert be.core.read_arg("position") == 4
    # the cycle counters in one read of their span: the values the registers hold one by one
    outputs = be.core.read_outputs()
    assert outputs == {a.name: be.core.read_arg(a.name) for a in be.core.interface.arguments if a.output}
    assert outputs["cycles_gemv"] == be.last_cycles()["gemv"] > 0
    other = EmuBackend(tiny_build, progress=False)  # downloads its overlay: the core's registers start empty
    other.forward([1], other.new_cache(4))
    writes.clear()
    logits = be.forward([5], cache)  # downloads this overlay again, and runs
    assert {be.core.offsets[a.name] for a in be.core.interface.arguments if not a.output} <= set(writes)
    golden = GoldenModel(load_build(tiny_build), "quant")
    assert _rel(logits, golden.forward([1, 17, 4242, 99, 7, 5], golden.new_cache(16))[-1]) <= TOL


def test_a_bitstream_of_another_build_is_refused(tiny_emu, tiny_build, tmp_path):
    bit = Path(tiny_emu.overlay.bitfile_name)
    folder = tmp_path / "other"
    shutil.copytree(bit.parent, folder, symlinks=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert drv.check_manifest(folder / bit.name, tiny_build)["model"]["sha256"] == manifest["model"]["sha256"]
    manifest["quantization"]["bits"] = 2
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RomaError, match="another model or quantization.*bits"):
        drv.RomaOverlay(str(folder / bit.name), expect=tiny_build, device=emu_device())
    manifest["quantization"]["bits"] = 4
    manifest["model"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RomaError, match="another model"):
        drv.check_manifest(folder / bit.name, tiny_build)
    (folder / "manifest.json").unlink()
    with pytest.raises(RomaError, match="no build manifest"):
        drv.check_manifest(folder / bit.name, tiny_build)


# --- the library cache ----------------------------------------------------------------------------------------


def _copy_sources(dst: Path) -> Path:
    """hw/hls's library sources (what content_hash reads), without testbenches and build outputs."""
    for p in hls_sources(HLS_DIR):
        target = dst / p.relative_to(HLS_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    return dst


def test_library_content_hash(tiny_build, tmp_path):
    """The cache key changes with any source or the build's roma_model.h, not with a touch."""
    hls = _copy_sources(tmp_path / "hls")
    h = content_hash(tiny_build, hls)
    assert h == content_hash(tiny_build, HLS_DIR)  # the copy holds exactly the files that count
    assert content_hash(tiny_build, hls) == h  # nothing changed
    (hls / "roma_core.cpp").touch()
    assert content_hash(tiny_build, hls) == h  # mtime only
    with open(hls / "roma_core.cpp", "a") as f:
        f.write("\n// changed\n")
    h2 = content_hash(tiny_build, hls)
    assert h2 != h
    (hls / "include" / "roma" / "extra.h").write_text("#pragma once\n")  # a new header is a source too
    assert content_hash(tiny_build, hls) not in (h, h2)
    (hls / "tb").mkdir()
    (hls / "tb" / "tb_x.cpp").write_text("int main() {}\n")  # testbenches are not library sources
    (hls / "build").mkdir()
    (hls / "build" / "x.h").write_text("\n")
    h3 = content_hash(tiny_build, hls)
    (hls / "tb" / "tb_x.cpp").write_text("int main() { return 1; }\n")
    assert content_hash(tiny_build, hls) == h3
    other = tmp_path / "other_build"
    shutil.copytree(tiny_build, other)
    with open(other / "roma_model.h", "a") as f:
        f.write("// another model\n")
    assert content_hash(other, HLS_DIR) != h  # the build's roma_model.h is part of the key
    (other / "roma_model.h").unlink()
    with pytest.raises(RomaError, match="not a complete build"):
        content_hash(other, HLS_DIR)


@needs_gxx
def test_library_cache_hit_and_compile_error(tiny_emu, tiny_build, tmp_path, capsys):
    lib, compiled_now = build_library(tiny_build)  # tiny_emu compiled (or found) it this session
    assert not compiled_now and lib.is_file() and lib.resolve() == tiny_emu.device.library.path
    assert "compiling" not in capsys.readouterr().err
    hls = _copy_sources(tmp_path / "hls")
    src = hls / "roma_core.cpp"
    src.write_text("this is not C++;\n" + src.read_text())  # fails at once, in a cache of its own
    with pytest.raises(RomaError, match="compiling the emulated board failed") as e:
        build_library(tiny_build, hls_dir=hls, cache=tmp_path / "cache", progress=False)
    assert "error" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-written is left to be reused
