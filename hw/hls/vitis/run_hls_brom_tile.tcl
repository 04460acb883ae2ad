# Vitis HLS (2024.1): C simulation of tb/tb_brom_tile.cpp, then C synthesis of kernels/syn_brom_tile.cpp (top roma_syn_brom_tile).
#
#   ROMA_PART=... ROMA_CLOCK_NS=... ROMA_WORK=... [ROMA_CSIM_DATA=golden dir] vitis_hls -f run_hls_brom_tile.tcl
#   (make -C bitstreams hls-kernels BOARD=... sets them; golden data from tb/gen_brom_tile.py)
source [file join [file dirname [info script]] common.tcl]
roma_kernel brom_tile roma_syn_brom_tile
exit
