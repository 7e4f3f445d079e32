"""Finding the transformer blocks and their MLP / attention sub-modules of a decoder model."""

from __future__ import annotations

import torch

MLP_NAMES = ("mlp", "feed_forward", "ffn")
ATTN_NAMES = ("attn", "self_attn", "attention")


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks (``transformer.h``, ``model.layers``, ``gpt_neox.layers``, ...)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def child(block: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module:
    for name in names:
        if hasattr(block, name):
            return getattr(block, name)
    raise ValueError(f"{type(block).__name__} has none of the sub-modules {names}")
