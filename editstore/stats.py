"""Second-moment statistics Σ = E[k kᵀ] of one module's inputs over a text corpus."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .evaluate import pad_id, right_pad


@torch.no_grad()
def second_moment(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    module: torch.nn.Module,
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """(Σ (d_in, d_in) in float64, number of token positions) of ``module``'s input over ``texts``."""
    device = next(model.parameters()).device
    acc: torch.Tensor | None = None
    count = 0
    current_mask: list[torch.Tensor] = []

    def grab(_m: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal acc, count
        k = inputs[0][current_mask[0].bool()].double()  # (tokens, d_in)
        acc = k.T @ k if acc is None else acc + k.T @ k
        count += k.shape[0]

    handle = module.register_forward_pre_hook(grab)
    try:
        for i in range(0, len(texts), batch_size):
            ids, mask = right_pad([tokenizer(t)["input_ids"] for t in texts[i : i + batch_size]], pad_id(tokenizer))
            current_mask[:] = [mask.to(device)]
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            if progress:
                progress(len(texts[i : i + batch_size]))
    finally:
        handle.remove()
    if acc is None:
        raise ValueError("no text to compute statistics from")
    return acc / count, count
