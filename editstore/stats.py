"""Second-moment statistics Σ = E[k kᵀ] of modules' inputs over a text corpus, in one streaming pass."""

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
    modules: torch.nn.Module | Sequence[torch.nn.Module],
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[Any, int]:
    """(Σ (d_in, d_in) float64 per module, number of token positions) of the modules' inputs over ``texts``.

    Given one module, returns its Σ alone; given a sequence, a list in the same order.
    Runs on the model's device; padding positions are left out.
    """
    single = isinstance(modules, torch.nn.Module)
    mods = [modules] if single else list(modules)
    device = next(model.parameters()).device
    acc: list[torch.Tensor | None] = [None] * len(mods)
    count = 0
    current_mask: list[torch.Tensor] = []

    def grab(i: int) -> Callable[..., None]:
        def hook(_m: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            k = inputs[0][current_mask[0].bool()].double()  # (tokens, d_in)
            acc[i] = k.T @ k if acc[i] is None else acc[i] + k.T @ k

        return hook

    handles = [m.register_forward_pre_hook(grab(i)) for i, m in enumerate(mods)]
    try:
        for i in range(0, len(texts), batch_size):
            ids, mask = right_pad([tokenizer(t)["input_ids"] for t in texts[i : i + batch_size]], pad_id(tokenizer))
            current_mask[:] = [mask.to(device)]
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            count += int(mask.sum())
            if progress:
                progress(len(texts[i : i + batch_size]))
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise ValueError("no text to compute statistics from")
    sigmas = [a / count for a in acc]
    return (sigmas[0] if single else sigmas), count
