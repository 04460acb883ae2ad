"""The numpy golden model: the executable specification of the accelerator's numerics."""

from .model import GoldenModel, KVCache
from .numerics import group_dot, quantize_activations, quantized_matmul

__all__ = ["GoldenModel", "KVCache", "group_dot", "quantize_activations", "quantized_matmul"]
