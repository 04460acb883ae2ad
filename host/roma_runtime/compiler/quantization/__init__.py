"""Quantization: the weights' fit (RTN, GPTQ, GPTAQ), calibration, mixed precision, LoftQ and the corpus."""
