"""The hardware description (.hwh) of the emulated overlay, in the format Vivado writes and PYNQ parses.

The block design has three cells, enough for PYNQ's parsers (pynqmetadata's HwhFrontend +
RuntimeMetadataParser, and the legacy pynq.pl_server.hwh_parser.HWH) to fill ip_dict, mem_dict and
clock_dict exactly as they do for a board:

    zynq_ultra_ps_e_0   the processing system (KV260-like): PL clock 0 enabled at 100 MHz, its M_AXI_HPM0_FPD
                        master maps roma_core's control registers at ROMA_BASE and the DDR at DDR_BASE
    roma_core_0         the HLS IP (VLNV roma-fpga.org:hls:roma_core:1.0): s_axi_control with one register
                        per argument at the offsets interface.py computes from roma_core.h, and one m_axi
                        master per pointer argument, each mapping the DDR
    ddr4_0              the memory (DDR4, DDR_SIZE bytes from DDR_BASE), where the device allocates buffers

Registers are named as the header's arguments; pointers are 64-bit registers (SIZE 64).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .interface import CONTROL_REGISTERS, Interface, load_interface

VENDOR, LIBRARY, VERSION = "roma-fpga.org", "hls", "1.0"
VLNV = f"{VENDOR}:{LIBRARY}:roma_core:{VERSION}"
IP_NAME = "roma_core_0"
PS_NAME = "zynq_ultra_ps_e_0"
DDR_NAME = "ddr4_0"
CTRL_INTERFACE = "s_axi_control"
ROMA_BASE = 0xA000_0000
ROMA_RANGE = 0x1_0000
DDR_BASE = 0x0
DDR_SIZE = 0x8000_0000
PL_CLK_MHZ = 100.0
AXIMM = "xilinx.com:interface:aximm:1.0"


def _param(parent, name: str, value) -> None:
    ET.SubElement(parent, "PARAMETER", NAME=name, VALUE=str(value))


def _prop(parent, name: str, value) -> None:
    ET.SubElement(parent, "PROPERTY", NAME=name, VALUE=str(value))


def _register(parent, name: str, offset: int, size: int, access: str, description: str, fields) -> None:
    reg = ET.SubElement(parent, "REGISTER", NAME=name)
    _prop(reg, "DESCRIPTION", description)
    _prop(reg, "ADDRESS_OFFSET", hex(offset))
    _prop(reg, "SIZE", size)
    _prop(reg, "ACCESS", access)
    _prop(reg, "IS_ENABLED", "true")
    _prop(reg, "RESET_VALUE", "0x0")
    fs = ET.SubElement(reg, "FIELDS")
    for fname, bit, width, faccess in fields:
        f = ET.SubElement(fs, "FIELD", NAME=fname)
        _prop(f, "DESCRIPTION", f"{fname} of {name}")
        _prop(f, "ADDRESS_OFFSET", bit)
        _prop(f, "ACCESS", faccess)
        _prop(f, "BIT_OFFSET", bit)
        _prop(f, "BIT_WIDTH", width)


def _bus(parent, name: str, kind: str, busname: str, vlnv: str = AXIMM, width: int = 32, **params) -> None:
    b = ET.SubElement(parent, "BUSINTERFACE", BUSNAME=busname, DATAWIDTH=str(width), NAME=name, TYPE=kind,
                      VLNV=vlnv)
    for k, v in params.items():
        _param(b, k, v)


def _memrange(parent, instance: str, master: str, slave: str, base: int, size: int, memtype: str,
              block: str) -> None:
    ET.SubElement(parent, "MEMRANGE", ADDRESSBLOCK=block, BASENAME="C_BASEADDR", BASEVALUE=f"0x{base:08X}",
                  HIGHNAME="C_HIGHADDR", HIGHVALUE=f"0x{base + size - 1:08X}", INSTANCE=instance,
                  IS_DATA="TRUE", IS_INSTRUCTION="TRUE", MASTERBUSINTERFACE=master, MEMTYPE=memtype,
                  SLAVEBUSINTERFACE=slave)


def render_hwh(interface: Interface | None = None, *, name: str = "roma", parameters: dict | None = None,
               pl_clk_mhz: float = PL_CLK_MHZ) -> str:
    """The .hwh text. parameters: extra IP parameters (strings) recorded on roma_core_0 (e.g. the build)."""
    itf = interface or load_interface()
    root = ET.Element("EDKSYSTEM", EDWVERSION="1.2", TIMESTAMP=time.strftime("%a %b %d %H:%M:%S %Y"),
                      VIVADOVERSION="roma-emu")
    ET.SubElement(root, "SYSTEMINFO", ARCH="zynquplus", DEVICE="xck26", NAME=name, PACKAGE="sfvc784",
                  SPEEDGRADE="-2LV")
    ET.SubElement(root, "EXTERNALPORTS")
    ET.SubElement(root, "EXTERNALINTERFACES")
    modules = ET.SubElement(root, "MODULES")

    # --- roma_core_0: the HLS IP ---
    core = ET.SubElement(modules, "MODULE", COREREVISION="1", FULLNAME=f"/{IP_NAME}", HWVERSION=VERSION,
                         INSTANCE=IP_NAME, IPTYPE="PERIPHERAL", IS_ENABLE="1", MODCLASS="PERIPHERAL",
                         MODTYPE="roma_core", VLNV=VLNV)
    ET.SubElement(core, "DOCUMENTS")
    blocks = ET.SubElement(core, "ADDRESSBLOCKS")
    block = ET.SubElement(blocks, "ADDRESSBLOCK", ACCESS="read-write", INTERFACE=CTRL_INTERFACE, NAME="Reg",
                          RANGE=str(ROMA_RANGE), USAGE="register")
    regs = ET.SubElement(block, "REGISTERS")
    for rname, offset, desc, fields in CONTROL_REGISTERS:
        _register(regs, rname, offset, 32, "read-write", desc, fields)
    for a in itf.arguments:
        what = f"m_axi offset of {a.name} ({a.ctype})" if a.pointer else f"Data signal of {a.name} ({a.ctype})"
        _register(regs, a.name, a.offset, a.width, "read-write", what,
                  ((a.name, 0, a.width, "read-write"),))
    params = ET.SubElement(core, "PARAMETERS")
    _param(params, "C_S_AXI_CONTROL_ADDR_WIDTH", itf.addr_width)
    _param(params, "C_S_AXI_CONTROL_DATA_WIDTH", 32)
    for a in itf.pointers:
        _param(params, f"C_M_AXI_{a.name.upper()}_ADDR_WIDTH", 64)
        _param(params, f"C_M_AXI_{a.name.upper()}_DATA_WIDTH", 32)
    _param(params, "Component_Name", f"{name}_roma_core_0_0")
    _param(params, "clk_period", round(1000.0 / pl_clk_mhz, 3))
    for k, v in (parameters or {}).items():
        _param(params, k, v)
    ET.SubElement(core, "PORTS")
    buses = ET.SubElement(core, "BUSINTERFACES")
    _bus(buses, CTRL_INTERFACE, "SLAVE", f"{PS_NAME}_M_AXI_HPM0_FPD", ADDR_WIDTH=itf.addr_width,
         DATA_WIDTH=32, PROTOCOL="AXI4LITE", READ_WRITE_MODE="READ_WRITE", FREQ_HZ=int(pl_clk_mhz * 1e6))
    for a in itf.pointers:
        _bus(buses, f"m_axi_{a.name}", "MASTER", f"{IP_NAME}_m_axi_{a.name}", ADDR_WIDTH=64, DATA_WIDTH=32,
             PROTOCOL="AXI4", READ_WRITE_MODE="READ_ONLY" if a.const else "READ_WRITE",
             FREQ_HZ=int(pl_clk_mhz * 1e6))
    mm = ET.SubElement(core, "MEMORYMAP")
    for a in itf.pointers:
        _memrange(mm, DDR_NAME, f"m_axi_{a.name}", "C0_DDR4_S_AXI", DDR_BASE, DDR_SIZE, "MEMORY",
                  "C0_DDR4_ADDRESS_BLOCK")

    # --- ddr4_0: the memory ---
    ddr = ET.SubElement(modules, "MODULE", COREREVISION="1", FULLNAME=f"/{DDR_NAME}", HWVERSION="2.2",
                        INSTANCE=DDR_NAME, IPTYPE="PERIPHERAL", IS_ENABLE="1", MODCLASS="MEMORY_CNTLR",
                        MODTYPE="ddr4", VLNV="xilinx.com:ip:ddr4:2.2")
    ET.SubElement(ddr, "DOCUMENTS")
    dparams = ET.SubElement(ddr, "PARAMETERS")
    _param(dparams, "C0.DDR4_MemoryPart", "emulated")
    _param(dparams, "C0_DDR4_SIZE_BYTES", DDR_SIZE)
    ET.SubElement(ddr, "PORTS")
    dbuses = ET.SubElement(ddr, "BUSINTERFACES")
    _bus(dbuses, "C0_DDR4_S_AXI", "SLAVE", "interconnect_ddr", DATA_WIDTH=128, PROTOCOL="AXI4", width=128)
    _bus(dbuses, "C0_DDR4", "INITIATOR", "__NOC__", vlnv="xilinx.com:interface:ddr4:1.0", width=64)

    # --- the processing system ---
    ps = ET.SubElement(modules, "MODULE", CONFIGURABLE="TRUE", COREREVISION="1", FULLNAME=f"/{PS_NAME}",
                       HWVERSION="3.5", INSTANCE=PS_NAME, IPTYPE="PERIPHERAL", IS_ENABLE="1", IS_PL="FALSE",
                       MODTYPE="zynq_ultra_ps_e", VLNV="xilinx.com:ip:zynq_ultra_ps_e:3.5")
    ET.SubElement(ps, "DOCUMENTS")
    pparams = ET.SubElement(ps, "PARAMETERS")
    for i in range(4):
        on = i == 0
        _param(pparams, f"PSU__FPGA_PL{i}_ENABLE", 1 if on else 0)
        _param(pparams, f"PSU__CRL_APB__PL{i}_REF_CTRL__SRCSEL", "IOPLL")
        _param(pparams, f"PSU__CRL_APB__PL{i}_REF_CTRL__DIVISOR0", 15 if on else 4)
        _param(pparams, f"PSU__CRL_APB__PL{i}_REF_CTRL__DIVISOR1", 1)
        _param(pparams, f"PSU__CRL_APB__PL{i}_REF_CTRL__ACT_FREQMHZ", pl_clk_mhz if on else 100)
    _param(pparams, "C_MAXIGP0_DATA_WIDTH", 32)
    _param(pparams, "C_SAXIGP2_DATA_WIDTH", 128)
    ET.SubElement(ps, "PORTS")
    pbuses = ET.SubElement(ps, "BUSINTERFACES")
    _bus(pbuses, "M_AXI_HPM0_FPD", "MASTER", f"{PS_NAME}_M_AXI_HPM0_FPD", DATA_WIDTH=32, PROTOCOL="AXI4")
    pmm = ET.SubElement(ps, "MEMORYMAP")
    _memrange(pmm, IP_NAME, "M_AXI_HPM0_FPD", CTRL_INTERFACE, ROMA_BASE, ROMA_RANGE, "REGISTER", "Reg")
    _memrange(pmm, DDR_NAME, "M_AXI_HPM0_FPD", "C0_DDR4_S_AXI", DDR_BASE, DDR_SIZE, "MEMORY",
              "C0_DDR4_ADDRESS_BLOCK")
    periph = ET.SubElement(ps, "PERIPHERALS")
    ET.SubElement(periph, "PERIPHERAL", INSTANCE=IP_NAME)
    ET.SubElement(periph, "PERIPHERAL", INSTANCE=DDR_NAME)

    ET.indent(root, "  ")
    return '<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_hwh(path: str | Path, interface: Interface | None = None, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".hwh.tmp")
    tmp.write_text(render_hwh(interface, **kwargs))
    tmp.replace(path)
    return path
