# Vitis HLS (2024.1): C simulation of tb/tb_lora_unit.cpp, then C synthesis of kernels/syn_lora_unit.cpp (top roma_syn_lora_unit).
#
#   ROMA_PART=... ROMA_CLOCK_NS=... ROMA_WORK=... [ROMA_CSIM_DATA=golden dir] vitis_hls -f run_hls_lora_unit.tcl
#   (make -C bitstreams hls-kernels BOARD=... sets them; golden data from tb/gen_lora_unit.py)
source [file join [file dirname [info script]] common.tcl]
roma_kernel lora_unit roma_syn_lora_unit
exit
