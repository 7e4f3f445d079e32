"""Finding the transformer blocks and their MLP / attention sub-modules.

For an encoder-decoder the blocks found are the encoder's (the first stack of
``num_hidden_layers`` blocks), where a prompt's subject is read.
"""

from __future__ import annotations

import torch

MLP_NAMES = ("mlp", "feed_forward", "ffn", "layer.1.DenseReluDense", "fc2")  # ..., T5 encoder, BART/Marian
ATTN_NAMES = ("attn", "self_attn", "attention", "layer.0.SelfAttention")


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of blocks (``transformer.h``, ``model.layers``, ``encoder.block``, ...)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def child(block: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module:
    """The first of the (dotted) sub-module ``names`` that ``block`` has."""
    for name in names:
        try:
            return block.get_submodule(name)
        except AttributeError:
            continue
    raise ValueError(f"{type(block).__name__} has none of the sub-modules {names}")
