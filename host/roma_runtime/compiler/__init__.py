"""The compiler: a model in, a build folder out (build.py: compile_model), in the format artifact/ defines.

    build.py         compile_model and the build's writers
    quantization/    the weights' fit: quantize, calibrate, mixed precision, LoftQ, the calibration corpus
    placement/       the placement plan (plan.py) and the synthesized top's footprint (footprint.py)
    flow.py          the bitstream flow's parameters per board
"""
