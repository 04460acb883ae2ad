"""The build artifact and the hardware contract: the bottom layer, which imports only the utilities (errors,
tempfiles, progress, cpu) and the model's plain data (model/config.py, model/weights.py).

    build.py         a build folder as every reader sees it: file names, the sealed manifest, verify and read
    brom_image.py    the B-ROM image of one weight matrix (NAME.bin/.dat), the q8 scale format
    ddr_image.py     the DDR weight image (ddr_weights.bin) of the tensors streamed from DDR
    uram_image.py    the URAM load image (uram_weights.bin) of the tensors the core holds in URAM
    lora_image.py    one LoRA slot's contents in the core's LoRA memory
    model_header.py  roma_model.h, the dimensions the HLS kernels are compiled with
    interface.py     roma_core.h's registers, commands and errors, parsed from the header the package ships
    hwh.py           the overlay's .hwh (the core's VLNV and register map) as PYNQ parses it
    boards.py        the boards' facts (boards.json) the planner, the bitstream flow and the driver use
"""
