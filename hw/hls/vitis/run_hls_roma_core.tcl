# Vitis HLS (2024.1): the top roma_core for one build folder (`roma compile` output), exported as the IP the
# runtime's driver binds to (VLNV roma-fpga.org:hls:roma_core:1.0, host/roma_runtime/artifact/hwh.py).
#
#   ROMA_PART=... ROMA_CLOCK_NS=... ROMA_WORK=... ROMA_BUILD=<build folder> [ROMA_HLS_TARGET=vivado|vitis]
#   [ROMA_CSIM_DATA=<gen_roma_core.py folder>] [ROMA_DEFINES="-DROMA_DATAPATH=DspMac ..."]
#   vitis_hls -f run_hls_roma_core.tcl            (make -C bitstreams BOARD=... runs it)
#
# 1. C simulation (when ROMA_CSIM_DATA is set): tb/tb_roma_core.cpp against the tiny build that
#    tb/gen_roma_core.py writes into ROMA_CSIM_DATA/build (its roma_model.h fixes the dimensions, so this is a
#    project of its own, compiled as C++17 for the csim/ headers); the ROM images are loaded from the .bin files as
#    on the emulated board.
# 2. C synthesis of roma_core.cpp (C++14) against ROMA_BUILD/roma_model.h: __SYNTHESIS__ is defined by the tool, and
#    roma_model.h includes roma_rom_define.h once per on-chip tensor, which initialises every ROM array from
#    its ROMA_BUILD/NAME.dat (norms.dat for the RMSNorm weights); -I ROMA_BUILD puts them on the include path.
#    Tensors the build streams from DDR have no .dat: the core reads them through its weight ports (ddr_weights,
#    ddr_weights_1 .. : one m_axi bundle each for roma_model.h's ROMA_WEIGHT_PORTS; brom_ddr.h);
#    neither have those it holds in URAM: their banks are written by CMD_LOAD_WEIGHTS (weight_load.h).
# 3. Export: a Vivado IP (ip_catalog, into WORK/roma_core/sol/impl/ip) for the Zynq block design, or a
#    Vitis kernel (WORK/roma_core.xo) for v++ --link on Alveo (ROMA_HLS_TARGET=vitis).
source [file join [file dirname [info script]] common.tcl]

set ROMA_BUILD [file normalize [roma_env ROMA_BUILD]]
set ROMA_DEFINES [roma_env ROMA_DEFINES " "]
foreach f {roma_model.h manifest.json norms.dat} {
  if {![file exists $ROMA_BUILD/$f]} {
    puts stderr "error: $ROMA_BUILD/$f is missing: ROMA_BUILD must be a build folder (roma compile --out ...)"
    exit 2
  }
}

# The IP's identity: the driver binds to VENDOR:LIBRARY:NAME:VERSION (tests/test_build_flow.py checks it).
set ROMA_IP_VENDOR roma-fpga.org
set ROMA_IP_LIBRARY hls
set ROMA_IP_NAME roma_core
set ROMA_IP_VERSION 1.0

# ---- 1. C simulation on the tiny build ----
if {$ROMA_CSIM_DATA ne "none"} {
  open_project -reset roma_core_csim
  set_top roma_core
  add_files $ROMA_HLS/roma_core.cpp -cflags "$ROMA_CSIM_CFLAGS -I$ROMA_CSIM_DATA/build $ROMA_DEFINES"
  add_files -tb $ROMA_HLS/tb/tb_roma_core.cpp -cflags "$ROMA_TB_CFLAGS -I$ROMA_CSIM_DATA/build $ROMA_DEFINES"
  open_solution -reset sol -flow_target $ROMA_HLS_TARGET
  set_part $ROMA_PART
  create_clock -period $ROMA_CLOCK_NS -name default
  csim_design -argv $ROMA_CSIM_DATA
  close_project
}

# ---- 2. C synthesis against the build ----
open_project -reset roma_core
set_top roma_core
add_files $ROMA_HLS/roma_core.cpp -cflags "$ROMA_CFLAGS -I$ROMA_BUILD $ROMA_DEFINES"
add_files $ROMA_HLS/roma_core.h
add_files $ROMA_HLS/roma_rom_define.h
open_solution -reset sol -flow_target $ROMA_HLS_TARGET
set_part $ROMA_PART
create_clock -period $ROMA_CLOCK_NS -name default
csynth_design

# ---- 3. Export ----
if {$ROMA_HLS_TARGET eq "vitis"} {
  export_design -format xo -output $ROMA_WORK/roma_core.xo \
    -vendor $ROMA_IP_VENDOR -library $ROMA_IP_LIBRARY -ipname $ROMA_IP_NAME -version $ROMA_IP_VERSION
} else {
  export_design -format ip_catalog -display_name "ROMA core" -description "ROMA: LLM with its base weights in ROM" \
    -vendor $ROMA_IP_VENDOR -library $ROMA_IP_LIBRARY -ipname $ROMA_IP_NAME -version $ROMA_IP_VERSION
}
close_project
exit
