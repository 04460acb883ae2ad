"""Model import: GGUF and Hugging Face checkpoints into one in-memory form (config + weights + tokenizer data)."""

from .config import ModelConfig
from .loader import LoadedModel, load_model, resolve_model_path
from .weights import LayerWeights, ModelWeights, QuantizedMatrix

__all__ = [
    "ModelConfig",
    "LoadedModel",
    "load_model",
    "resolve_model_path",
    "LayerWeights",
    "ModelWeights",
    "QuantizedMatrix",
]
