"""The bitstream flow (bitstreams/, hw/hls/vitis/) without the AMD tools: its dry run for every board, and the
consistency of the scripts with the repository, boards.json, roma_core.cpp and the driver's VLNV."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from roma_runtime.compiler import flow
from roma_runtime.artifact.boards import POINTER_ARGUMENTS, load_boards, m_axi_bundle
from roma_runtime.artifact.kv_layout import KV_ARGUMENTS
from roma_runtime.artifact import hwh

ROOT = Path(__file__).resolve().parents[2]
HLS = ROOT / "hw" / "hls"
SCRIPTS = HLS / "vitis"
BITSTREAMS = ROOT / "bitstreams"
BOARDS = load_boards()

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="the flow is a Makefile (apt-get install make)")


def make(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "--no-print-directory", "-C", str(BITSTREAMS), f"PYTHON={sys.executable}",
                           *args], capture_output=True, text=True, env=env, timeout=60)


def dry_run(board: str, *extra: str) -> list[str]:
    r = make(f"BOARD={board}", "DRY_RUN=1", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


def env_of(line: str) -> dict[str, str]:
    """The VAR=value assignments in front of a printed command."""
    out = {}
    for tok in line.split():
        m = re.fullmatch(r"([A-Z_]+)=(\S*)", tok)
        if not m:
            break
        out[m.group(1)] = m.group(2)
    return out


def the(lines: list[str], pattern: str) -> str:
    hits = [ln for ln in lines if re.search(pattern, ln)]
    assert len(hits) == 1, f"expected one line matching {pattern!r}, got {hits}"
    return hits[0]


# ---- the dry run ----


@needs_make
@pytest.mark.parametrize("name", list(BOARDS))
def test_dry_run_prints_every_step_with_the_boards_parameters(name, tmp_path):
    b = BOARDS[name]
    out = BITSTREAMS / "out" / name
    before = sorted(p for p in BITSTREAMS.rglob("*") if "out" not in p.relative_to(BITSTREAMS).parts[:1])
    lines = dry_run(name, "MODEL=smollm2-135m", "BITS=4", "GROUP=32", "METHOD=rtn")
    mhz = flow._num(b.clock_mhz)

    # 1. roma compile into out/<board>/build, for this board
    cmd = the(lines, r"roma_runtime\.cli compile ")
    assert f"--board {name} " in cmd and f"--out {out}/build" in cmd
    assert "--model smollm2-135m --bits 4 --group 32 --method rtn" in cmd

    # 2. Vitis HLS of the top against that build, at the board's part and clock period
    hls = the(lines, r"vitis_hls -f \S+/run_hls_roma_core\.tcl")
    e = env_of(hls)
    assert e["ROMA_PART"] == b.part
    assert float(e["ROMA_CLOCK_NS"]) == pytest.approx(1000.0 / b.clock_mhz, abs=1e-3)
    assert e["ROMA_BUILD"] == f"{out}/build"
    assert e["ROMA_HLS_TARGET"] == ("vitis" if b.family == "alveo" else "vivado")

    # 3. Vivado block design (Zynq) or v++ --link (Alveo), at the board's clock
    if b.family == "alveo":
        link = the(lines, r"^v\+\+ --link ")
        assert f"--platform {flow.PLATFORMS[name]} " in link
        assert f"--clock.freqHz {int(b.clock_mhz * 1e6)}:roma_core_1" in link
        assert f"--config {BITSTREAMS}/alveo_link.cfg --config {BITSTREAMS}/alveo_link_{name}.cfg" in link
        assert link.endswith(f"-o {out}/impl/roma.xclbin {out}/hls/roma_core.xo")
        # the banks of the weight ports are in the board's cfg; the step names how many it has
        the(lines, rf"^# \[3/4 bitstream\] .* {b.weight_ports} weight ports of {b.weight_port_bits} bits ")
        copies = ["roma.xclbin"]
    else:
        viv = the(lines, r"vivado -mode batch .*-source \S+/zynq_bd\.tcl")
        e = env_of(viv)
        assert e["ROMA_PART"] == b.part and e["ROMA_CLOCK_MHZ"] == mhz and e["ROMA_FAMILY"] == b.family
        assert e["ROMA_KV_PORT_BITS"] == str(b.kv_port_bits)  # the KV cache's HP port, as wide as attention reads
        # one HP port for each weight port of the board, each as wide as the weight stream reads
        assert e["ROMA_WEIGHT_PORTS"] == str(b.weight_ports) and e["ROMA_WEIGHT_PORT_BITS"] == str(b.weight_port_bits)
        assert e["ROMA_PS_IP"] == {"zynqmp": "zynq_ultra_ps_e", "zynq7": "processing_system7"}[b.family]
        assert e["ROMA_VLNV"] == hwh.VLNV
        assert e["ROMA_IP_REPO"] == f"{out}/hls/roma_core/sol/impl/ip"
        copies = ["roma.bit", "roma.hwh"]

    # 4. the overlay folder: bitstream (+ hwh) and the build's manifest; the manifest also into manifests/
    for f in copies:
        the(lines, rf"^cp {out}/impl/{f} {out}/overlay/{f}$")
    the(lines, rf"^cp {out}/build/manifest.json {out}/overlay/manifest.json$")
    the(lines, rf"^cp {out}/build/manifest.json {BITSTREAMS}/manifests/{name}_smollm2-135m_q4g32_rtn.json$")
    order = [next(i for i, ln in enumerate(lines) if s in ln)
             for s in ("cli compile", "run_hls_roma_core", "--link" if b.family == "alveo" else "zynq_bd.tcl",
                       "/overlay/manifest.json")]
    assert order == sorted(order), "the steps are printed out of order"
    # the dry run ran nothing and wrote nothing
    assert not out.exists()
    after = sorted(p for p in BITSTREAMS.rglob("*") if "out" not in p.relative_to(BITSTREAMS).parts[:1])
    assert before == after


@needs_make
def test_dry_run_of_the_kernel_testbenches():
    lines = dry_run("zcu104", "hls-kernels")
    b = BOARDS["zcu104"]
    for name in kernel_testbenches():
        cmd = the(lines, rf"vitis_hls -f \S+/run_hls_{name}\.tcl")
        e = env_of(cmd)
        assert e["ROMA_PART"] == b.part and float(e["ROMA_CLOCK_NS"]) == pytest.approx(1000 / b.clock_mhz)
        assert e["ROMA_CSIM_DATA"].endswith(f"golden_tb_{name}")
        the(lines, rf"tb/gen_{name}\.py \S+/golden_tb_{name}$")


@needs_make
def test_unknown_board_lists_the_known_ones():
    r = make("BOARD=no-such-board", "DRY_RUN=1")
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "unknown board 'no-such-board'" in text
    for name in BOARDS:
        assert name in text


@needs_make
def test_params_come_from_boards_json():
    for name, b in BOARDS.items():
        r = make(f"BOARD={name}", "params")
        assert r.returncode == 0, r.stderr
        got = dict(ln.split("=", 1) for ln in r.stdout.splitlines())
        assert got["PART"] == b.part and got["FAMILY"] == b.family and got["CLOCK_MHZ"] == flow._num(b.clock_mhz)
        assert got["VLNV"] == hwh.VLNV
    r = make("boards")
    assert r.stdout.split() == list(BOARDS)


# ---- the HLS scripts ----


def kernel_testbenches() -> list[str]:
    return sorted(p.stem[len("tb_"):] for p in (HLS / "tb").glob("tb_*.cpp") if p.stem != "tb_roma_core")


def script_paths(text: str) -> list[Path]:
    """Every $ROMA_HLS/... path a script names (roma_kernel NAME expands to its two files)."""
    paths = [HLS / m for m in re.findall(r"\$ROMA_HLS/([\w./$]+)", text) if "$" not in m]
    for name in re.findall(r"^roma_kernel (\w+) \w+", text, re.M):
        paths += [SCRIPTS / "kernels" / f"syn_{name}.cpp", HLS / "tb" / f"tb_{name}.cpp",
                  HLS / "tb" / f"gen_{name}.py"]
    return paths


def test_every_kernel_testbench_has_an_hls_script():
    names = kernel_testbenches()
    assert names, "no kernel testbenches found"
    for name in names:
        text = (SCRIPTS / f"run_hls_{name}.tcl").read_text()
        m = re.search(r"^roma_kernel (\w+) (\w+)$", text, re.M)
        assert m and m.group(1) == name, f"run_hls_{name}.tcl does not run the {name} kernel"
        # the synthesis top is a function of its wrapper
        assert re.search(rf'extern "C" \w+ {m.group(2)}\(', (SCRIPTS / "kernels" / f"syn_{name}.cpp").read_text())
    scripts = {p.stem[len("run_hls_"):] for p in SCRIPTS.glob("run_hls_*.tcl")}
    assert scripts == set(names) | {"roma_core"}


def test_every_file_the_scripts_name_exists():
    for script in [*SCRIPTS.glob("*.tcl")]:
        text = script.read_text()
        for p in script_paths(text):
            assert p.exists(), f"{script.name} names {p}, which does not exist"
        for inc in re.findall(r"-I\$ROMA_HLS/?([\w/]*)", text):
            assert (HLS / inc).is_dir(), f"{script.name}: include dir {HLS / inc} does not exist"
        src = re.findall(r"source \[file join \[file dirname \[info script\]\] (\S+)\]", text)
        for s in src:
            assert (SCRIPTS / s).is_file()
    make_text = (BITSTREAMS / "Makefile").read_text()
    for f in re.findall(r"\$\(CURDIR\)/([\w.]+\.(?:tcl|cfg))", make_text):
        assert (BITSTREAMS / f).is_file(), f"the Makefile names bitstreams/{f}"
    for f in re.findall(r"\$\(HLS_SCRIPTS\)/([\w.]+\.tcl)", make_text):
        assert (SCRIPTS / f).is_file(), f"the Makefile names hw/hls/vitis/{f}"
    for name in BOARDS:
        if BOARDS[name].family == "alveo":
            assert (BITSTREAMS / f"alveo_link_{name}.cfg").is_file()


def test_the_top_script_synthesises_roma_core_and_exports_the_drivers_vlnv():
    text = (SCRIPTS / "run_hls_roma_core.tcl").read_text()
    assert re.findall(r"^\s*set_top (\S+)", text, re.M) == ["roma_core", "roma_core"]
    assert "set_part $ROMA_PART" in text and "create_clock -period $ROMA_CLOCK_NS" in text
    common = (SCRIPTS / "common.tcl").read_text()
    assert "set ROMA_PART [roma_env ROMA_PART]" in common and "set ROMA_CLOCK_NS [roma_env ROMA_CLOCK_NS]" in common
    ident = dict(re.findall(r"^set ROMA_IP_(VENDOR|LIBRARY|NAME|VERSION) (\S+)$", text, re.M))
    assert f"{ident['VENDOR']}:{ident['LIBRARY']}:{ident['NAME']}:{ident['VERSION']}" == hwh.VLNV
    exports = re.findall(r"export_design (.*?)(?<!\\)\n", text, re.S)
    assert len(exports) == 2
    for e in exports:
        for k in ("vendor", "library", "ipname", "version"):
            assert f"-{k} $ROMA_IP_" in e
    assert "-format ip_catalog" in exports[1] and "-format xo" in exports[0]
    # synthesis reads the build's roma_model.h and .dat files from the include path
    assert '-I$ROMA_BUILD' in text and "roma_rom_define.h" in text
    assert "csim_design -argv $ROMA_CSIM_DATA" in text and text.index("csim_design") < text.index("csynth_design")
    assert text.index("csynth_design") < text.index("export_design")


@pytest.mark.parametrize("name", list(BOARDS))
def test_the_boards_clock_and_part_reach_every_script(name):
    """The clock period HLS gets, the PL clock Vivado sets and v++'s kernel clock are all boards.json's."""
    b = BOARDS[name]
    p = flow.params(name)
    assert p["PART"] == b.part
    assert float(p["CLOCK_NS"]) == pytest.approx(1000.0 / b.clock_mhz, abs=1e-3)
    assert float(p["CLOCK_MHZ"]) == b.clock_mhz and int(p["CLOCK_HZ"]) == round(b.clock_mhz * 1e6)
    assert p["VLNV"] == hwh.VLNV
    assert p["WEIGHT_PORTS"] == str(b.weight_ports) and p["WEIGHT_PORT_BITS"] == str(b.weight_port_bits)
    if b.family == "alveo":
        assert p["HLS_FORMAT"] == "xo" and p["PLATFORM"]
    else:
        assert p["HLS_FORMAT"] == "ip_catalog" and p["PS_IP"] and p["KV_PORT_BITS"] == str(b.kv_port_bits)
    bd = (BITSTREAMS / "zynq_bd.tcl").read_text()
    assert "set clock_mhz [roma_env ROMA_CLOCK_MHZ]" in bd and "set part [roma_env ROMA_PART]" in bd
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz" in bd
    assert "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $clock_mhz" in bd
    assert "create_project -force roma $work/vivado -part $part" in bd


def test_kernel_wrappers_compile_on_both_paths(tmp_path):
    """The synthesis wrappers compile as C++14 with __SYNTHESIS__ (what Vitis HLS sees) and without (C simulation)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    for src in sorted((SCRIPTS / "kernels").glob("syn_*.cpp")):
        for defs in (["-D__SYNTHESIS__"], []):
            # C++14 on both paths: common.tcl compiles the wrappers with -std=c++14 for C simulation and synthesis
            r = subprocess.run(["g++", "-std=c++14", "-pedantic-errors", "-ffp-contract=off", "-Wall", "-Wextra",
                                "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label", f"-I{HLS / 'include'}", *defs,
                                "-fsyntax-only", str(src)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{src.name} {defs}:\n{r.stderr}"


# ---- the block design, the link config and roma_core.cpp agree ----

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="reads roma_core.cpp's pragmas through g++ -E")
WEIGHT_BUNDLE = re.compile(r"gmem_weights(?:_(\d))?")


def weight_index(bundle: str) -> int | None:
    """k of the weight bundle gmem_weights_k (0 for gmem_weights), None for any other bundle."""
    m = WEIGHT_BUNDLE.fullmatch(bundle)
    return None if m is None else int(m.group(1) or 0)


@functools.cache
def m_axi_ports(weight_ports: int, kv_ports: int = 1) -> dict[str, str]:
    """port -> bundle of roma_core's m_axi arguments as Vitis HLS sees them for a build whose roma_model.h has
    ROMA_WEIGHT_PORTS = weight_ports and ROMA_KV_PORTS = kv_ports: the INTERFACE pragmas of roma_core.cpp and the
    conditionals around them, run through the C preprocessor with __SYNTHESIS__ defined."""
    src = (HLS / "roma_core.cpp").read_text().replace("\\\n", " ")
    keep = [ln for ln in src.splitlines() if re.match(r"\s*#\s*(if|ifdef|ifndef|elif|else|endif)\b", ln)
            or re.match(r"\s*#\s*pragma\s+HLS\s+INTERFACE\s+mode\s*=\s*m_axi\b", ln)]
    r = subprocess.run(["g++", "-E", "-P", "-x", "c++", "-D__SYNTHESIS__", f"-DROMA_WEIGHT_PORTS={weight_ports}",
                        f"-DROMA_KV_PORTS={kv_ports}", "-"],
                       input="\n".join(keep) + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    ports = {}
    for ln in r.stdout.splitlines():
        port, bundle = re.search(r"\bport\s*=\s*(\w+)", ln), re.search(r"\bbundle\s*=\s*(\w+)", ln)
        if port and bundle:
            assert port.group(1) not in ports, f"two pragmas for {port.group(1)}, ROMA_WEIGHT_PORTS={weight_ports}"
            ports[port.group(1)] = bundle.group(1)
    return ports


def m_axi_bundles(weight_ports: int, kv_ports: int = 1) -> set[str]:
    return set(m_axi_ports(weight_ports, kv_ports).values())


@needs_gxx
def test_roma_core_has_a_weight_bundle_for_each_weight_port():
    """ddr_weights_k (k = 1..3) is an m_axi port of its own bundle gmem_weights_k when k < ROMA_WEIGHT_PORTS, else
    it is parked in gmem_weights (never read): the IP has exactly the board's weight_ports weight bundles."""
    src = (HLS / "roma_core.cpp").read_text()
    for k in (1, 2, 3):
        assert re.search(rf"const\s+uint32_t\s*\*\s*ddr_weights_{k}\b", src), f"roma_core has no ddr_weights_{k}"
    for p in (1, 2, 3, 4):  # boards.py: weight_ports is 1 to 4
        ports = m_axi_ports(p)
        assert ports["ddr_weights"] == ports["uram_weights"] == "gmem_weights", p
        for k in (1, 2, 3):
            assert ports.get(f"ddr_weights_{k}") == (f"gmem_weights_{k}" if k < p else "gmem_weights"), (p, k)
        assert ports["kv_cache"] == ports["kv_cache_1"] == ports["kv_cache_2"] == ports["kv_cache_3"] == "gmem_kv"
        assert sorted(weight_index(b) for b in m_axi_bundles(p) if weight_index(b) is not None) == list(range(p))
    # the board's second KV port (kv_ports 2) is a bundle of its own, else parked in the first (never read); so are
    # the second position set's two (kv_ports 4): not a weight port's bundle, whose element width and options differ
    two = m_axi_ports(4, 2)
    assert two["kv_cache"] == "gmem_kv" and two["kv_cache_1"] == "gmem_kv_1"
    assert two["kv_cache_2"] == two["kv_cache_3"] == "gmem_kv"
    four = m_axi_ports(4, 4)
    assert [four[f"kv_cache{k}"] for k in ("", "_1", "_2", "_3")] == ["gmem_kv", "gmem_kv_1", "gmem_kv_2",
                                                                      "gmem_kv_3"]
    assert m_axi_bundles(4, 4) == m_axi_bundles(4, 2) | {"gmem_kv_2", "gmem_kv_3"}
    # boards.py's mirror, which the driver's memories (an Alveo card's) follow, gives every pragma's bundle
    for p in (1, 2, 3, 4):
        for kv in (1, 2, 4):
            assert {a: m_axi_bundle(a, p, kv) for a in POINTER_ARGUMENTS} == m_axi_ports(p, kv), (p, kv)


def test_every_weight_port_is_the_builds_width():
    """Every port of a weight bundle (in each branch of its conditional) is widened to roma_model.h's
    WEIGHT_PORT_BITS, the width the DDR stream's cycles are counted at (brom_ddr.h), not to a constant."""
    src = (HLS / "roma_core.cpp").read_text().replace("\\\n", " ")
    widths: dict[str, list[str]] = {}
    for port, rest in re.findall(r"#pragma HLS INTERFACE mode = m_axi port = (\w+) offset = slave bundle = (.*)", src):
        if re.fullmatch(r"(ddr|uram)_weights(_\d)?", port):
            m = re.search(r"max_widen_bitwidth = (\w+)", rest)
            widths.setdefault(port, []).append(m.group(1) if m else "none")
    assert {"ddr_weights", "uram_weights", "ddr_weights_1", "ddr_weights_2", "ddr_weights_3"} <= set(widths)
    assert all(w == ["WEIGHT_PORT_BITS"] * len(w) for w in widths.values()), widths
    assert "constexpr int WEIGHT_PORT_BITS = rm::WEIGHT_PORT_BITS;" in src


def memory_of(target: str) -> tuple[str, set[int]]:
    """'HBM[4:7]' -> ('HBM', {4, 5, 6, 7}); 'DDR[2]' -> ('DDR', {2})."""
    m = re.fullmatch(r"(\w+)\[(\d+)(?::(\d+))?\]", target)
    assert m, target
    lo = int(m.group(2))
    return m.group(1), set(range(lo, int(m.group(3) or lo) + 1))


@needs_gxx
@pytest.mark.parametrize("name", [n for n, b in BOARDS.items() if b.family == "alveo"])
def test_alveo_link_gives_each_weight_port_its_own_bank(name):
    b = BOARDS[name]
    common = (BITSTREAMS / "alveo_link.cfg").read_text()
    assert re.search(r"^nk=roma_core:1:roma_core_1$", common, re.M)
    assert hwh.VLNV.split(":")[2] == "roma_core"
    text = (BITSTREAMS / f"alveo_link_{name}.cfg").read_text()
    sp = re.findall(r"^sp=roma_core_1\.m_axi_(\w+):(\S+)$", text, re.M)
    # every m_axi bundle of the IP built for this board once: gmem_weights .. gmem_weights_{P-1}, kv, the others
    assert sorted(s[0] for s in sp) == sorted(m_axi_bundles(b.weight_ports, b.kv_ports)), \
        f"{name}: sp= lines vs roma_core.cpp"
    # the runtime's copy of the map (the driver allocates each buffer in its port's memory, the emulated card
    # emulates them)
    assert dict(sp) == b.memory_banks, f"{name}: alveo_link_{name}.cfg vs boards.json memory_banks"
    where = {bundle: memory_of(t) for bundle, t in sp}
    assert {kind for kind, _ in where.values()} <= ({"HBM", "DDR"} if "HBM" in b.memory else {"DDR"}), name
    weights = [bd for bd in where if weight_index(bd) is not None]
    assert len(weights) == b.weight_ports
    # the weight ports read their own copies of the image from disjoint banks (HBM pseudo channels)
    for i, w in enumerate(weights):
        for v in weights[i + 1:]:
            assert where[w][0] != where[v][0] or not where[w][1] & where[v][1], f"{name}: {w} and {v} share memory"
    # each KV port has its memory to itself (attention streams them side by side at the ports' width), but where the
    # weight ports take every bank (the U250's four): then it shares one weight port's, as the stages never stream at
    # once, and maybe the small buffers' (idle while attention runs); the KV ports never share a bank with each other.
    # A board of four (the U250) has four gmem_kv bundles, its four KV arguments in four different banks
    kv = [bd for bd in where if bd.startswith("gmem_kv")]
    assert len(kv) == b.kv_ports, name
    if b.kv_ports == 4:
        kv_memories = [b.memory_banks[m_axi_bundle(a, b.weight_ports, b.kv_ports)] for a in KV_ARGUMENTS]
        assert len(set().union(*(memory_of(t)[1] for t in kv_memories))) == 4, f"{name}: {kv_memories}"
    small = {"gmem_tok", "gmem_logits", "gmem_lora", "gmem_status"}
    for bundle in kv:
        kind, banks = where[bundle]
        sharing = [other for other, (k, bb) in where.items() if other != bundle and k == kind and bb & banks]
        streams = [other for other in sharing if other not in small]
        every_bank = kind == "DDR" and len(set().union(*(where[w][1] for w in weights))) == 4
        assert sharing == [] or (every_bank and len(streams) == 1 and streams[0] in weights), f"{name}: {sharing}"
    assert b.weight_port_bits == 512, name  # the AXI port of a DDR4 bank / the HBM switch


# The DDR controller port each Zynq PS slave port reaches DDR through: Zynq UltraScale+ XPI 3 (HP0, shared with
# DisplayPort), 4 (HP1 and HP2), 5 (HP3, shared with the FPD DMA), the CCI (HPC0, HPC1) (UG1085); Zynq-7000 the
# two AFI pairs' ports (UG585).
DDR_PORT = {"S_AXI_HP0_FPD": "XPI3", "S_AXI_HP1_FPD": "XPI4", "S_AXI_HP2_FPD": "XPI4", "S_AXI_HP3_FPD": "XPI5",
            "S_AXI_HPC0_FPD": "CCI", "S_AXI_HPC1_FPD": "CCI",
            "S_AXI_HP0": "AFI01", "S_AXI_HP1": "AFI01", "S_AXI_HP2": "AFI23", "S_AXI_HP3": "AFI23"}
# The CONFIG names of a PS slave port: zynq_ultra_ps_e's S_AXI_GPn are HPC0, HPC1, HP0..HP3; processing_system7's
# S_AXI_HPn.
PS_PORT_CONFIG = {
    **{f"S_AXI_{p}_FPD": (f"CONFIG.PSU__USE__S_AXI_GP{n}", f"CONFIG.PSU__SAXIGP{n}__DATA_WIDTH")
       for n, p in enumerate(("HPC0", "HPC1", "HP0", "HP1", "HP2", "HP3"))},
    **{f"S_AXI_HP{n}": (f"CONFIG.PCW_USE_S_AXI_HP{n}", f"CONFIG.PCW_S_AXI_HP{n}_DATA_WIDTH") for n in range(4)},
}
PS_CELL = {"zynqmp": "zynq_ultra_ps_e_0", "zynq7": "processing_system7_0"}

# Vivado's block design commands for plain tclsh: each prints itself (set_property -dict one property a line), the
# ones whose result zynq_bd.tcl reads return what Vivado would; the IP's m_axi masters come from STUB_MASTERS.
BD_STUB = r"""
foreach c {create_project current_project current_fileset update_ip_catalog create_bd_design apply_bd_automation
           connect_bd_net connect_bd_intf_net assign_bd_address validate_bd_design save_bd_design generate_target
           add_files update_compile_order launch_runs wait_on_run write_hw_platform} {
  proc $c {args} "puts \"$c \$args\""
}
proc set_property {args} {
  if {[lindex $args 0] eq "-dict"} {
    foreach {k v} [lindex $args 1] { puts "set_property $k $v [lindex $args 2]" }
  } else { puts "set_property $args" }
}
proc create_bd_cell {args} { puts "create_bd_cell $args"; return [lindex $args end] }
proc get_board_parts {args} { return {} }
proc get_ipdefs {args} { return [lindex $args end] }
proc get_bd_pins {args} { if {"-of_objects" in $args} { return {} }; return [lindex $args end] }
proc get_bd_intf_pins {args} { if {"-of_objects" in $args} { return $::env(STUB_MASTERS) }; return [lindex $args end] }
proc get_property {name args} {
  switch -glob -- $name {
    NAME { return [lmap o [lindex $args end] {file tail $o}] }
    PROGRESS { return 100% }
    STATS.WNS { return 0.5 }
    DIRECTORY { return $::env(STUB_IMPL) }
    default { return 0 }
  }
}
proc get_files {args} { return roma.bd }
proc get_runs {args} { return [lindex $args end] }
proc make_wrapper {args} { return roma_wrapper.v }
source [lindex $argv 0]
"""


def run_block_design(tmp_path: Path, name: str, bundles: set[str], **env: str) -> subprocess.CompletedProcess:
    """zynq_bd.tcl in tclsh with Vivado stubbed, for board `name` (its flow parameters) and an IP whose m_axi
    bundles are `bundles`."""
    b = BOARDS[name]
    work, impl = tmp_path / "work", tmp_path / "impl"
    hwh_file = work / "vivado" / "roma.gen" / "sources_1" / "bd" / "roma" / "hw_handoff" / "roma.hwh"
    hwh_file.parent.mkdir(parents=True, exist_ok=True)
    impl.mkdir(exist_ok=True)
    hwh_file.write_text("hwh")
    (impl / "roma_wrapper.bit").write_text("bit")
    (tmp_path / "stub.tcl").write_text(BD_STUB)
    p = flow.params(name)
    full = dict(os.environ, ROMA_PART=b.part, ROMA_FAMILY=b.family, ROMA_PS_IP=p["PS_IP"],
                ROMA_CLOCK_MHZ=p["CLOCK_MHZ"], ROMA_KV_PORT_BITS=p["KV_PORT_BITS"],
                ROMA_WEIGHT_PORTS=p["WEIGHT_PORTS"], ROMA_WEIGHT_PORT_BITS=p["WEIGHT_PORT_BITS"], ROMA_VLNV=p["VLNV"],
                ROMA_IP_REPO=str(tmp_path / "ip"), ROMA_WORK=str(work), STUB_IMPL=str(impl),
                STUB_MASTERS=" ".join(f"roma_core_0/m_axi_{bd}" for bd in sorted(bundles)))
    full.update(env)
    return subprocess.run(["tclsh", str(tmp_path / "stub.tcl"), str(BITSTREAMS / "zynq_bd.tcl")], capture_output=True,
                          text=True, env=full, timeout=30)


@needs_gxx
@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh")
@pytest.mark.parametrize("name", [n for n, b in BOARDS.items() if b.family != "alveo"])
def test_block_design_gives_each_weight_port_its_own_hp_port(name, tmp_path):
    """zynq_bd.tcl run with Vivado stubbed, on the m_axi bundles roma_core.cpp gives this board's build: every bundle
    reaches the PS; each weight bundle alone on an HP port of its own, as wide as the weight stream, each through
    another DDR controller port; the KV cache on a port no weight bundle uses, as wide as attention reads it."""
    b = BOARDS[name]
    bundles = m_axi_bundles(b.weight_ports)
    r = run_block_design(tmp_path, name, bundles)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    ps = PS_CELL[b.family]
    nets = [ln.split()[1:] for ln in lines if ln.startswith("connect_bd_intf_net ")]
    into = {src.split("/")[0]: dst for src, dst in nets if src.endswith("/M00_AXI")}  # smartconnect -> what it feeds
    port_of = {}
    for src, dst in nets:
        if src.startswith("roma_core_0/m_axi_"):
            sc = dst.split("/")[0]
            assert into[sc].startswith(f"{ps}/"), f"{src} -> {sc} -> {into[sc]}"
            port_of[src[len("roma_core_0/m_axi_"):]] = into[sc].split("/")[1]
    assert set(port_of) == bundles, "every m_axi bundle of the IP reaches the PS"
    weights = sorted((bd for bd in bundles if weight_index(bd) is not None), key=weight_index)
    assert len(weights) == b.weight_ports
    weight_ports = [port_of[w] for w in weights]
    assert len(set(weight_ports)) == len(weights), f"weight bundles share an HP port: {port_of}"
    assert len({DDR_PORT[p] for p in weight_ports}) == len(weights), f"through one DDR controller port: {port_of}"
    assert port_of["gmem_kv"] not in weight_ports
    for bd, port in port_of.items():  # a weight bundle has its port to itself, so has the KV cache
        if bd in weights or bd == "gmem_kv":
            assert list(port_of.values()).count(port) == 1, f"{bd} shares {port}"
    props = {ln.split()[1]: ln.split()[2] for ln in lines if ln.startswith("set_property CONFIG.") and ln.endswith(ps)}
    for port in set(port_of.values()):
        use, width = PS_PORT_CONFIG[port]
        assert props.get(use) == "1", f"{port} is used but not enabled ({use})"
        if port in weight_ports:
            assert props.get(width) == str(b.weight_port_bits), f"{port}: {width}"
    assert props.get(PS_PORT_CONFIG[port_of["gmem_kv"]][1]) == str(b.kv_port_bits)
    enabled = {port for port, (use, _) in PS_PORT_CONFIG.items() if props.get(use) == "1"}
    assert enabled == set(port_of.values()), "an HP port is enabled that no bundle uses"
    # every smartconnect is clocked and reset with the core
    scs = [ln.split()[-1] for ln in lines if ln.startswith("create_bd_cell ") and ":smartconnect " in ln]
    clk = the(lines, r"^connect_bd_net \S+/(pl_clk0|FCLK_CLK0) ")
    rst = the(lines, r"^connect_bd_net rst_0/peripheral_aresetn ")
    assert len(scs) == len(set(port_of.values())) + 1  # and ctrl_sc
    for sc in scs:
        assert f" {sc}/aclk" in clk and f" {sc}/aresetn" in rst
    assert f"ROMA: wrote {tmp_path}/work/roma.bit" in r.stdout


@needs_gxx
@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh")
def test_block_design_refuses_a_weight_port_count_it_cannot_route(tmp_path):
    for name in ("kv260", "pynq-z2"):
        b = BOARDS[name]
        # more weight ports than the PS has HP ports for: stops before it creates the project
        r = run_block_design(tmp_path, name, m_axi_bundles(b.weight_ports), ROMA_WEIGHT_PORTS=str(b.weight_ports + 1))
        assert r.returncode == 2 and "HP ports for the weight stream" in r.stderr, r.stderr
        assert "create_project" not in r.stdout
        # an IP synthesised for fewer weight ports than the board's
        r = run_block_design(tmp_path, name, m_axi_bundles(b.weight_ports - 1))
        assert r.returncode == 2 and "the IP was synthesised for another board" in r.stderr, r.stderr
        assert "connect_bd_intf_net roma_core_0/m_axi_" not in r.stdout


def test_block_design_uses_the_drivers_names_and_writes_the_overlay():
    bd = (BITSTREAMS / "zynq_bd.tcl").read_text()
    assert "set kv_port_bits [roma_env ROMA_KV_PORT_BITS]" in bd
    assert "set weight_ports [roma_env ROMA_WEIGHT_PORTS]" in bd
    assert "set weight_port_bits [roma_env ROMA_WEIGHT_PORT_BITS]" in bd
    assert "create_bd_cell -type ip -vlnv $vlnv roma_core_0" in bd
    assert hwh.IP_NAME == "roma_core_0"  # the instance name the emulated overlay's .hwh uses too
    for ps, names in {"zynq_ultra_ps_e": ("M_AXI_HPM0_FPD", "pl_clk0"),
                      "processing_system7": ("M_AXI_GP0", "FCLK_CLK0")}.items():
        assert f"xilinx.com:ip:{ps} " in bd
        for n in names:
            assert f"$ps/{n}]" in bd
    for step in ("assign_bd_address", "validate_bd_design", "launch_runs synth_1", "write_bitstream",
                 "$work/roma.bit", "$work/roma.hwh"):
        assert step in bd


def test_the_overlay_names_are_what_pynq_loads():
    """PYNQ finds the .hwh next to the .bit by base name; the driver wants manifest.json beside them."""
    text = (BITSTREAMS / "Makefile").read_text()
    assert "$(OVERLAY_DIR)/roma.bit $(OVERLAY_DIR)/roma.hwh" in text
    from roma_runtime.device import driver

    assert driver.MANIFEST == "manifest.json"
    assert "$(OVERLAY_DIR)/manifest.json" in text


# ---- git ----


def test_no_binaries_tracked_under_bitstreams():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
                        "bitstreams"], capture_output=True, text=True, check=True)
    files = r.stdout.split()
    assert files, "bitstreams/ is empty"
    bad = [f for f in files if Path(f).suffix in {".bit", ".bin", ".xclbin", ".xo", ".xsa", ".dcp", ".zip", ".hwh"}]
    for f in files:
        data = (ROOT / f).read_bytes()
        if b"\0" in data[:8192]:
            bad.append(f)
    assert not bad, f"binary files under bitstreams/: {bad}"
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "bitstreams/out/kv260/overlay/roma.bit"])
    assert ignored.returncode == 0, "bitstreams/out/ must be git-ignored"


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh")
def test_hls_scripts_run_with_stubbed_tool_commands(tmp_path):
    """The HLS scripts' Tcl runs in plain tclsh with the Vitis HLS commands stubbed: the commands in order,
    the build on the include path of synthesis, the golden build on csim's, the driver's VLNV exported."""
    stub = tmp_path / "stub.tcl"
    stub.write_text(
        "foreach c {open_project set_top add_files open_solution set_part create_clock csim_design csynth_design"
        " export_design close_project} { proc $c {args} \"puts \\\"$c \\$args\\\"\" }\n"
        "rename exit _exit\nproc exit {{code 0}} { if {$code} { _exit $code } }\nsource [lindex $argv 0]\n")
    build = tmp_path / "build"
    build.mkdir()
    for f in ("roma_model.h", "manifest.json", "norms.dat"):
        (build / f).write_text("")
    env = dict(os.environ, ROMA_PART="xck26-sfvc784-2LV-c", ROMA_CLOCK_NS="5", ROMA_WORK=str(tmp_path / "w"),
               ROMA_BUILD=str(build), ROMA_CSIM_DATA=str(tmp_path / "golden"))
    r = subprocess.run(["tclsh", str(stub), str(SCRIPTS / "run_hls_roma_core.tcl")], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    cmds = [ln.split()[0] for ln in r.stdout.splitlines()]
    assert cmds == ["open_project", "set_top", "add_files", "add_files", "open_solution", "set_part", "create_clock",
                    "csim_design", "close_project", "open_project", "set_top", "add_files", "add_files", "add_files",
                    "open_solution", "set_part", "create_clock", "csynth_design", "export_design", "close_project"]
    lines = r.stdout.splitlines()
    assert f"-I{tmp_path}/golden/build" in lines[2] and f"-I{build}" in lines[11]
    assert "set_part xck26-sfvc784-2LV-c" in lines and "create_clock -period 5 -name default" in lines
    v, lib, name, ver = hwh.VLNV.split(":")
    assert f"-vendor {v} -library {lib} -ipname {name} -version {ver}" in lines[18]
    for name in kernel_testbenches():
        r = subprocess.run(["tclsh", str(stub), str(SCRIPTS / f"run_hls_{name}.tcl")], capture_output=True,
                           text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        assert f"add_files -tb {HLS}/tb/tb_{name}.cpp" in r.stdout and "csynth_design" in r.stdout
    env.pop("ROMA_PART")
    r = subprocess.run(["tclsh", str(stub), str(SCRIPTS / "run_hls_roma_core.tcl")], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 2 and "ROMA_PART is not set" in r.stderr
