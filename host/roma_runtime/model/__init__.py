"""Model import: GGUF and Hugging Face checkpoints into one in-memory form (config + weights + tokenizer data).

    config.py          ModelConfig: the facts of a model everything is sized from, checked within bounds
    weights.py         the weights in the numerics contract's form (QuantizedMatrix, LayerWeights, ModelWeights,
                       LoraAdapter)
    loader.py          LoadedModel, load_model: GGUF files, Hugging Face folders and build folders
    safetensors_io.py  the .safetensors reader
"""
