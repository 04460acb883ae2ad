"""The bitstream flow (bitstreams/, hw/hls/vitis/) without the AMD tools: its dry run for every board, and the
consistency of the scripts with the repository, boards.json, roma_core.cpp and the driver's VLNV."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from roma_runtime.compiler import flow
from roma_runtime.artifact.boards import load_boards
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


def m_axi_bundles() -> set[str]:
    src = (HLS / "roma_core.cpp").read_text()
    return set(re.findall(r"#pragma HLS INTERFACE mode = m_axi port = \w+ offset = slave bundle = (\w+)", src))


def test_alveo_link_maps_every_m_axi_bundle_once():
    bundles = m_axi_bundles()
    assert {"gmem_weights", "gmem_kv"} <= bundles
    common = (BITSTREAMS / "alveo_link.cfg").read_text()
    assert re.search(r"^nk=roma_core:1:roma_core_1$", common, re.M)
    assert hwh.VLNV.split(":")[2] == "roma_core"
    for name, b in BOARDS.items():
        if b.family != "alveo":
            continue
        text = (BITSTREAMS / f"alveo_link_{name}.cfg").read_text()
        sp = re.findall(r"^sp=roma_core_1\.m_axi_(\w+):(\w+)\[[\d:]+\]$", text, re.M)
        assert sorted(s[0] for s in sp) == sorted(bundles), f"{name}: sp= lines vs roma_core.cpp's bundles"
        banks = {s[1] for s in sp}
        assert banks <= ({"HBM", "DDR"} if "HBM" in b.memory else {"DDR"}), f"{name}: banks {banks}"
        # the KV cache's port has its memory to itself (attention streams it at the port's width)
        bank_of = dict(re.findall(r"^sp=roma_core_1\.m_axi_(\w+):(\w+\[[\d:]+\])$", text, re.M))
        assert list(bank_of.values()).count(bank_of["gmem_kv"]) == 1, f"{name}: gmem_kv shares {bank_of['gmem_kv']}"
        # the weight stream has a 512-bit port (boards.json) on memory no other bundle shares
        assert b.weight_port_bits == 512, name
        target = dict(re.findall(r"^sp=roma_core_1\.m_axi_(\w+):(\S+)$", text, re.M))
        assert [k for k, v in target.items() if v == target["gmem_weights"]] == ["gmem_weights"], name


def test_the_weight_port_is_the_builds_width():
    """Both ports of the gmem_weights bundle are widened to roma_model.h's WEIGHT_PORT_BITS, the width the
    DDR stream's cycles are counted at (brom_ddr.h), not to a constant."""
    src = (HLS / "roma_core.cpp").read_text()
    for port in ("ddr_weights", "uram_weights"):
        m = re.search(rf"#pragma HLS INTERFACE mode = m_axi port = {port} offset = slave bundle = gmem_weights "
                      r"[^\n]*\\\n\s*max_widen_bitwidth = (\w+)", src)
        assert m and m.group(1) == "WEIGHT_PORT_BITS", port
    assert "constexpr int WEIGHT_PORT_BITS = rm::WEIGHT_PORT_BITS;" in src


def test_block_design_routes_the_bundles_roma_core_declares():
    bd = (BITSTREAMS / "zynq_bd.tcl").read_text()
    routed = set(re.findall(r"regexp \{(gmem_\w+)\$\}", bd))
    assert routed == {"gmem_weights", "gmem_kv"} and routed <= m_axi_bundles()
    # the weights on HP0, the KV cache on an HP port of its own (HP2), as wide as the board's kv_port_bits
    assert "[list hp0_sc $weights $ps_hp0 hp2_sc $kv $ps_hp2 hp1_sc $other $ps_hp1]" in bd
    assert "set kv_port_bits [roma_env ROMA_KV_PORT_BITS]" in bd
    assert "CONFIG.PSU__USE__S_AXI_GP4 {1}" in bd and "CONFIG.PSU__SAXIGP4__DATA_WIDTH $kv_port_bits" in bd
    assert "CONFIG.PCW_USE_S_AXI_HP2 {1}" in bd and "CONFIG.PCW_S_AXI_HP2_DATA_WIDTH $kv_port_bits" in bd
    assert "create_bd_cell -type ip -vlnv $vlnv roma_core_0" in bd
    assert hwh.IP_NAME == "roma_core_0"  # the instance name the emulated overlay's .hwh uses too
    for ps, names in {"zynq_ultra_ps_e": ("M_AXI_HPM0_FPD", "S_AXI_HP0_FPD", "S_AXI_HP1_FPD", "S_AXI_HP2_FPD",
                                          "pl_clk0"),
                      "processing_system7": ("M_AXI_GP0", "S_AXI_HP0", "S_AXI_HP1", "S_AXI_HP2", "FCLK_CLK0")}.items():
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
