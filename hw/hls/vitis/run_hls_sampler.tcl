# Vitis HLS (2024.1): C simulation of tb/tb_sampler.cpp, then C synthesis of kernels/syn_sampler.cpp (top roma_syn_sampler).
#
#   ROMA_PART=... ROMA_CLOCK_NS=... ROMA_WORK=... [ROMA_CSIM_DATA=golden dir] vitis_hls -f run_hls_sampler.tcl
#   (make -C bitstreams hls-kernels BOARD=... sets them; golden data from tb/gen_sampler.py)
source [file join [file dirname [info script]] common.tcl]
roma_kernel sampler roma_syn_sampler
exit
