# Vitis HLS (2024.1): C simulation of tb/tb_kernels.cpp, then C synthesis of kernels/syn_kernels.cpp (top roma_syn_kernels).
#
#   ROMA_PART=... ROMA_CLOCK_NS=... ROMA_WORK=... [ROMA_CSIM_DATA=golden dir] vitis_hls -f run_hls_kernels.tcl
#   (make -C bitstreams hls-kernels BOARD=... sets them; golden data from tb/gen_kernels.py)
source [file join [file dirname [info script]] common.tcl]
roma_kernel kernels roma_syn_kernels
exit
