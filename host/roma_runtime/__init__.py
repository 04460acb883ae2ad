"""ROMA-FPGA host runtime: the quantized base model in ROM, LoRA and KV cache in writable memory."""

from .errors import RomaError

__version__ = "0.1.0"
__all__ = ["RomaError", "__version__"]
