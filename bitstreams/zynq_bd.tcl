# Vivado 2024.1 block design + bitstream of ROMA on a Zynq board (Zynq UltraScale+: kv260, zcu104, zcu102;
# Zynq-7000: pynq-z2):
#
#   processing system (zynq_ultra_ps_e_0 or processing_system7_0), PL clock 0 at the board's clock
#     M_AXI_HPM0_FPD / M_AXI_GP0 --ctrl_sc--> roma_core_0/s_axi_control   (AXI-Lite registers, by name in the .hwh)
#     each group of roma_core_0's m_axi bundles --smartconnect sc_PORT--> a PS slave port of its own:
#                           Zynq UltraScale+      Zynq-7000
#       m_axi_gmem_weights     S_AXI_HP0_FPD      S_AXI_HP0    the DDR weight stream (and the URAM load image)
#       m_axi_gmem_weights_1   S_AXI_HP1_FPD      S_AXI_HP2    more ports of the weight stream, one for each of
#       m_axi_gmem_weights_2   S_AXI_HP3_FPD      -            the board's ROMA_WEIGHT_PORTS (zynqmp 4, zynq7 2)
#       m_axi_gmem_weights_3   S_AXI_HPC1_FPD     -
#       m_axi_gmem_kv          S_AXI_HP2_FPD      S_AXI_HP1    the KV cache
#       m_axi_gmem_tok, _logits, _lora, _status  (small buffers)
#                              S_AXI_HPC0_FPD     S_AXI_HP3
#     Every weight port is ROMA_WEIGHT_PORT_BITS wide (roma_model.h WEIGHT_PORT_BITS, the width each weight bundle
#     reads at), the KV cache's ROMA_KV_PORT_BITS (roma_model.h KV_PORT_BITS). All ports reach the one DDR (the
#     driver gives every weight port the same buffer); the weight ports reach its controller through different
#     ports: on Zynq UltraScale+ HP0, HP1 and HP3 through XPI 3, 4 and 5 and HPC1 through the CCI (HP2, the KV
#     cache, shares XPI 4 with HP1; HPC0, the small buffers, the CCI with HPC1; UG1085), on Zynq-7000 HP0 and HP2
#     through the DDR ports of the two AFI pairs
#     (HP0/HP1, HP2/HP3; UG585).
#     pl_ps_irq0 / IRQ_F2P <-- roma_core_0/interrupt (the driver polls ap_done; the line is there for later)
#   proc_sys_reset rst_0 on PL clock 0; every clock pin of the PS and the IPs on PL clock 0
# then address assignment, validation, HDL wrapper, synthesis, implementation, write_bitstream, and
# ROMA_WORK/roma.bit + ROMA_WORK/roma.hwh (same base name: what PYNQ's Overlay loads) + roma.xsa.
#
# Run by bitstreams/Makefile (make -C bitstreams BOARD=...), which sets from boards.json (compiler/flow.py):
#   ROMA_PART ROMA_FAMILY (zynqmp|zynq7) ROMA_PS_IP ROMA_CLOCK_MHZ ROMA_KV_PORT_BITS ROMA_WEIGHT_PORTS
#   ROMA_WEIGHT_PORT_BITS ROMA_VLNV ROMA_IP_REPO ROMA_WORK
#   [ROMA_BOARD_PART] [ROMA_JOBS] [ROMA_ALLOW_TIMING_FAIL=1: keep a bitstream that misses timing]

proc roma_env {name {default ""}} {
  if {[info exists ::env($name)] && $::env($name) ne ""} { return $::env($name) }
  if {$default ne ""} { return $default }
  puts stderr "error: $name is not set (run this script through make -C bitstreams BOARD=...)"
  exit 2
}

set part [roma_env ROMA_PART]
set family [roma_env ROMA_FAMILY]
set ps_ip [roma_env ROMA_PS_IP]
set clock_mhz [roma_env ROMA_CLOCK_MHZ]
set kv_port_bits [roma_env ROMA_KV_PORT_BITS]
set weight_ports [roma_env ROMA_WEIGHT_PORTS]
set weight_port_bits [roma_env ROMA_WEIGHT_PORT_BITS]
set vlnv [roma_env ROMA_VLNV]
set ip_repo [file normalize [roma_env ROMA_IP_REPO]]
set work [file normalize [roma_env ROMA_WORK]]
set board_part [roma_env ROMA_BOARD_PART none]
set jobs [roma_env ROMA_JOBS 4]
set allow_timing_fail [roma_env ROMA_ALLOW_TIMING_FAIL 0]
if {$family ni {zynqmp zynq7}} {
  puts stderr "error: zynq_bd.tcl builds zynqmp and zynq7 boards, not $family"
  exit 2
}

# The PS slave ports of each group of bundles, with the index the PS's CONFIG names give them: zynq_ultra_ps_e's
# S_AXI_GPn are HPC0, HPC1, HP0..HP3, LPD (n = 0..6; PSU__USE__S_AXI_GPn, PSU__SAXIGPn__DATA_WIDTH),
# processing_system7's S_AXI_HPn are n (PCW_USE_S_AXI_HPn, PCW_S_AXI_HPn_DATA_WIDTH).
if {$family eq "zynqmp"} {
  set weight_hp {{S_AXI_HP0_FPD 2} {S_AXI_HP1_FPD 3} {S_AXI_HP3_FPD 5} {S_AXI_HPC1_FPD 1}}
  set kv_hp {S_AXI_HP2_FPD 4}
  set other_hp {S_AXI_HPC0_FPD 0}
} else {
  set weight_hp {{S_AXI_HP0 0} {S_AXI_HP2 2}}
  set kv_hp {S_AXI_HP1 1}
  set other_hp {S_AXI_HP3 3}
}
if {![string is integer -strict $weight_ports] || $weight_ports < 1 || $weight_ports > [llength $weight_hp]} {
  puts stderr "error: ROMA_WEIGHT_PORTS=$weight_ports, but a $family PS has [llength $weight_hp] HP ports for the\
    weight stream ([join [lmap p $weight_hp {lindex $p 0}] {, }]); set the board's weight_ports in boards.json to at\
    most [llength $weight_hp]"
  exit 2
}
set weight_hp [lrange $weight_hp 0 [expr {$weight_ports - 1}]]

# The CONFIG properties that enable the PS slave port with index n at `bits` wide (the PS default width when "").
proc hp_config {family n bits} {
  if {$family eq "zynqmp"} {
    set c [list CONFIG.PSU__USE__S_AXI_GP$n {1}]
    if {$bits ne ""} { lappend c CONFIG.PSU__SAXIGP${n}__DATA_WIDTH $bits }
  } else {
    set c [list CONFIG.PCW_USE_S_AXI_HP$n {1}]
    if {$bits ne ""} { lappend c CONFIG.PCW_S_AXI_HP${n}_DATA_WIDTH $bits }
  }
  return $c
}
set hp_props {}
foreach p $weight_hp { lappend hp_props {*}[hp_config $family [lindex $p 1] $weight_port_bits] }
lappend hp_props {*}[hp_config $family [lindex $kv_hp 1] $kv_port_bits]
lappend hp_props {*}[hp_config $family [lindex $other_hp 1] ""]

# ---- project, IP repository ----
create_project -force roma $work/vivado -part $part
set preset 0
if {$board_part ne "none"} {
  if {[llength [get_board_parts -quiet $board_part]]} {
    set_property board_part $board_part [current_project]
    set preset 1
  } else {
    puts "WARNING: board files for $board_part are not installed; the PS keeps its defaults for $part"
  }
}
set_property ip_repo_paths [list $ip_repo] [current_project]
update_ip_catalog -rebuild
if {![llength [get_ipdefs -quiet $vlnv]]} {
  puts stderr "error: $vlnv is not in the IP repository $ip_repo (run the HLS step first)"
  exit 2
}

create_bd_design roma

# ---- processing system and its PL clock ----
if {$family eq "zynqmp"} {
  set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e zynq_ultra_ps_e_0]
  if {$preset} {
    apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps
  }
  set_property -dict [list \
    CONFIG.PSU__USE__M_AXI_GP0 {1} \
    CONFIG.PSU__USE__M_AXI_GP1 {0} \
    CONFIG.PSU__USE__M_AXI_GP2 {0} \
    {*}$hp_props \
    CONFIG.PSU__USE__IRQ0 {1} \
    CONFIG.PSU__FPGA_PL0_ENABLE {1} \
    CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz \
  ] $ps
  set ps_clk [get_bd_pins $ps/pl_clk0]
  set ps_resetn [get_bd_pins $ps/pl_resetn0]
  set ps_ctrl [get_bd_intf_pins $ps/M_AXI_HPM0_FPD]
  set ps_irq [get_bd_pins $ps/pl_ps_irq0]
} else {
  set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:processing_system7 processing_system7_0]
  # DDR and FIXED_IO are always external on Zynq-7000; the board preset also sets DDR timing and MIO.
  apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
    -config [list make_external "FIXED_IO, DDR" apply_board_preset $preset Master Disable Slave Disable] $ps
  set_property -dict [list \
    CONFIG.PCW_USE_M_AXI_GP0 {1} \
    {*}$hp_props \
    CONFIG.PCW_USE_FABRIC_INTERRUPT {1} \
    CONFIG.PCW_IRQ_F2P_INTR {1} \
    CONFIG.PCW_EN_CLK0_PORT {1} \
    CONFIG.PCW_EN_RST0_PORT {1} \
    CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $clock_mhz \
  ] $ps
  set ps_clk [get_bd_pins $ps/FCLK_CLK0]
  set ps_resetn [get_bd_pins $ps/FCLK_RESET0_N]
  set ps_ctrl [get_bd_intf_pins $ps/M_AXI_GP0]
  set ps_irq [get_bd_pins $ps/IRQ_F2P]
}

# ---- roma_core, reset, interconnect ----
set core [create_bd_cell -type ip -vlnv $vlnv roma_core_0]
set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset rst_0]
connect_bd_net $ps_resetn [get_bd_pins $rst/ext_reset_in]

# roma_core's m_axi bundles, as the IP has them: gmem_weights, gmem_weights_1 .. gmem_weights_{P-1} (P = the
# build's ROMA_WEIGHT_PORTS: roma_core.cpp bundles ddr_weights_k apart only for k < P), gmem_kv, and the others.
set masters [get_bd_intf_pins -of_objects $core -filter {MODE == Master}]
set weights {}
set kv {}
set other {}
foreach m $masters {
  set bundle [get_property NAME $m]
  if {[regexp {gmem_weights(_([0-9]))?$} $bundle -> _ k]} {
    lappend weights [list [expr {$k eq "" ? 0 : $k}] $m]
  } elseif {[regexp {gmem_kv$} $bundle]} { lappend kv $m } else { lappend other $m }
}
set weights [lsort -integer -index 0 $weights]
if {![llength $weights] || ![llength $kv] || ![llength $other]} {
  puts stderr "error: roma_core's m_axi bundles ([get_property NAME $masters]) are not the ones roma_core.cpp declares"
  exit 2
}
set want {}
for {set k 0} {$k < $weight_ports} {incr k} { lappend want $k }
if {[lmap w $weights {lindex $w 0}] ne $want} {
  set names [lmap k $want {expr {$k ? "m_axi_gmem_weights_$k" : "m_axi_gmem_weights"}}]
  puts stderr "error: roma_core's weight bundles are [get_property NAME [lmap w $weights {lindex $w 1}]], the board's\
    ROMA_WEIGHT_PORTS=$weight_ports wants $names: the IP was synthesised for another board (run the HLS step for\
    this board)"
  exit 2
}
set weights [lmap w $weights {lindex $w 1}]

set ctrl_sc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect ctrl_sc]
set_property -dict [list CONFIG.NUM_SI {1} CONFIG.NUM_MI {1}] $ctrl_sc
connect_bd_intf_net $ps_ctrl [get_bd_intf_pins $ctrl_sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins $ctrl_sc/M00_AXI] [get_bd_intf_pins $core/s_axi_control]

# One route per PS slave port: {port, the masters it serves}; weight bundle k on the k-th weight port.
set routes {}
foreach m $weights p $weight_hp { lappend routes [list [lindex $p 0] [list $m]] }
lappend routes [list [lindex $kv_hp 0] $kv] [list [lindex $other_hp 0] $other]
set scs [list ctrl_sc]
foreach r $routes {
  lassign $r port group
  set name sc_[string map {S_AXI_ "" _FPD ""} $port]
  set sc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect $name]
  set_property -dict [list CONFIG.NUM_SI [llength $group] CONFIG.NUM_MI {1}] $sc
  set i 0
  foreach m $group {
    connect_bd_intf_net $m [get_bd_intf_pins $sc/[format S%02d_AXI $i]]
    incr i
  }
  connect_bd_intf_net [get_bd_intf_pins $sc/M00_AXI] [get_bd_intf_pins $ps/$port]
  lappend scs $name
}

# Clocks: PL clock 0 drives the core, the reset block, the smartconnects and every AXI clock pin of the PS.
set clk_pins [list [get_bd_pins $core/ap_clk] [get_bd_pins $rst/slowest_sync_clk]]
foreach sc $scs { lappend clk_pins [get_bd_pins $sc/aclk] }
foreach p [get_bd_pins -of_objects $ps -filter {TYPE == clk && DIR == I}] { lappend clk_pins $p }
connect_bd_net $ps_clk {*}$clk_pins
set rst_pins [list [get_bd_pins $core/ap_rst_n]]
foreach sc $scs { lappend rst_pins [get_bd_pins $sc/aresetn] }
connect_bd_net [get_bd_pins $rst/peripheral_aresetn] {*}$rst_pins
connect_bd_net [get_bd_pins $core/interrupt] $ps_irq

# ---- addresses: the control registers in the GP window, all of DDR for every m_axi bundle ----
assign_bd_address
validate_bd_design
save_bd_design

if {$family eq "zynqmp"} {
  set actual [get_property CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ $ps]
} else {
  set actual [get_property CONFIG.PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ $ps]
}
puts "ROMA: PL clock 0 asked $clock_mhz MHz, the PS delivers $actual MHz"

# ---- synthesis, implementation, bitstream ----
set bd_file [get_files roma.bd]
generate_target all $bd_file
set wrapper [make_wrapper -files $bd_file -top]
add_files -norecurse $wrapper
set_property top roma_wrapper [current_fileset]
update_compile_order -fileset sources_1

launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
if {[get_property PROGRESS [get_runs synth_1]] ne "100%"} {
  puts stderr "error: synthesis failed (see $work/vivado/roma.runs/synth_1)"
  exit 1
}
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
  puts stderr "error: implementation failed (see $work/vivado/roma.runs/impl_1)"
  exit 1
}
set wns [get_property STATS.WNS [get_runs impl_1]]
puts "ROMA: worst negative slack $wns ns at $clock_mhz MHz"
if {$wns < 0 && !$allow_timing_fail} {
  puts stderr "error: timing not met at $clock_mhz MHz (WNS $wns ns); lower the board's clock_mhz or the tiles,\
    or set ROMA_ALLOW_TIMING_FAIL=1 to keep the bitstream anyway"
  exit 1
}

# ---- outputs: roma.bit + roma.hwh (PYNQ), roma.xsa (Vitis/PetaLinux) ----
set impl_dir [get_property DIRECTORY [get_runs impl_1]]
file copy -force $impl_dir/roma_wrapper.bit $work/roma.bit
set hwh [glob -nocomplain $work/vivado/roma.gen/sources_1/bd/roma/hw_handoff/roma.hwh \
           $work/vivado/roma.srcs/sources_1/bd/roma/hw_handoff/roma.hwh]
if {![llength $hwh]} {
  puts stderr "error: the block design's hardware handoff roma.hwh was not written"
  exit 1
}
file copy -force [lindex $hwh 0] $work/roma.hwh
write_hw_platform -fixed -include_bit -force $work/roma.xsa
puts "ROMA: wrote $work/roma.bit $work/roma.hwh $work/roma.xsa"
exit
