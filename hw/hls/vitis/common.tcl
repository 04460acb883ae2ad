# Shared setup of the Vitis HLS scripts in this folder (Vitis HLS 2024.1, Tcl flow: vitis_hls -f SCRIPT).
#
# Parameters come from the environment, set by bitstreams/Makefile from boards.json (through
# `python -m roma_runtime.compiler.flow params --board B`); there are no defaults, so a script never runs
# for a part or clock other than the board's:
#   ROMA_PART        the FPGA part, e.g. xck26-sfvc784-2LV-c                  (boards.json "part")
#   ROMA_CLOCK_NS    the clock period in ns, e.g. 5 for 200 MHz               (1000 / boards.json "clock_mhz")
#   ROMA_WORK        the folder the HLS project is created in
#   ROMA_CSIM_DATA   optional: the golden-data folder tb/gen_NAME.py wrote; C simulation runs when it is set
#   ROMA_HLS_TARGET  optional: vivado (Vivado IP, the default) or vitis (a Vitis kernel for v++ --link)
# Paths of the sources are relative to this file (hw/hls/vitis/), so the scripts run from any folder.

proc roma_env {name {default ""}} {
  if {[info exists ::env($name)] && $::env($name) ne ""} { return $::env($name) }
  if {$default ne ""} { return $default }
  puts stderr "error: $name is not set (run the scripts through make -C bitstreams, or set it yourself)"
  exit 2
}

set ROMA_HLS [file normalize [file join [file dirname [info script]] ..]]
set ROMA_PART [roma_env ROMA_PART]
set ROMA_CLOCK_NS [roma_env ROMA_CLOCK_NS]
set ROMA_WORK [file normalize [roma_env ROMA_WORK]]
set ROMA_CSIM_DATA [roma_env ROMA_CSIM_DATA none]
set ROMA_HLS_TARGET [roma_env ROMA_HLS_TARGET vivado]

# Synthesized sources: C++14 (UG1399 lists C++11/14; the footprint check compiles them with -std=c++14
# -pedantic-errors), no fp contraction (the numerics contract counts every fp32 rounding). The testbenches and
# roma_core's C-simulation project compile the csim/ headers, which may use C++17.
set ROMA_INCLUDES "-ffp-contract=off -I$ROMA_HLS/include -I$ROMA_HLS"
set ROMA_CFLAGS "-std=c++14 $ROMA_INCLUDES"
set ROMA_CSIM_CFLAGS "-std=c++17 $ROMA_INCLUDES"
set ROMA_TB_CFLAGS "$ROMA_CSIM_CFLAGS -I$ROMA_HLS/tb"

file mkdir $ROMA_WORK
cd $ROMA_WORK

# One kernel project: the synthesis wrapper kernels/syn_NAME.cpp (top TOP) and the testbench tb/tb_NAME.cpp,
# C simulation on the golden data (when given), then C synthesis (reports in WORK/NAME/sol/syn/report).
proc roma_kernel {name top} {
  global ROMA_HLS ROMA_PART ROMA_CLOCK_NS ROMA_CSIM_DATA ROMA_CFLAGS ROMA_TB_CFLAGS
  open_project -reset $name
  set_top $top
  add_files $ROMA_HLS/vitis/kernels/syn_$name.cpp -cflags $ROMA_CFLAGS
  add_files -tb $ROMA_HLS/tb/tb_$name.cpp -cflags $ROMA_TB_CFLAGS
  open_solution -reset sol -flow_target vivado
  set_part $ROMA_PART
  create_clock -period $ROMA_CLOCK_NS -name default
  if {$ROMA_CSIM_DATA ne "none"} {
    csim_design -argv $ROMA_CSIM_DATA
  }
  csynth_design
  close_project
}
