"""Second-moment statistics Σ = E[k kᵀ] of modules' inputs over a text corpus, in one streaming pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .forward import is_encoder_decoder, right_pad, run
from .tokens import pad_id

BATCH = 32  # texts per forward pass


@torch.no_grad()
def second_moment(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    modules: torch.nn.Module | Sequence[torch.nn.Module],
    *,
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
    reduce: Callable[[list[torch.Tensor], list[int]], tuple[list[torch.Tensor], list[int]]] | None = None,
) -> tuple[Any, Any]:
    """(Σ (d_in, d_in) float64, number of keys) of each module's inputs over ``texts``.

    Given one module, returns its Σ and count alone; given a sequence, lists in the same
    order. Runs on the model's device. A causal LM's or an encoder's module sees every
    token of a text (padding left out); an encoder-decoder's decoder module sees the one
    position that produces the first output token (:func:`editstore.model.forward.run`), which is
    where decoder edits read their keys.

    ``reduce``: given each module's sum of k kᵀ (float64) and count over ``texts``, the totals over every
    process's share of the corpus (see :func:`editstore.moments.stream_stats`); Σ is then their quotient.
    """
    single = isinstance(modules, torch.nn.Module)
    mods = [modules] if single else list(modules)
    acc: list[torch.Tensor | None] = [None] * len(mods)
    counts = [0] * len(mods)
    current_mask: list[torch.Tensor] = []

    decoder = set(map(id, model.get_decoder().modules())) if is_encoder_decoder(model) else set()

    def grab(i: int) -> Callable[..., None]:
        def hook(_m: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]  # (B, T, d_in); T = 1 on the decoder side
            k = (x[:, 0] if id(mods[i]) in decoder else x[current_mask[0]]).double()  # (keys, d_in)
            acc[i] = k.T @ k if acc[i] is None else acc[i] + k.T @ k
            counts[i] += k.shape[0]

        return hook

    device = next(model.parameters()).device
    handles = [m.register_forward_pre_hook(grab(i)) for i, m in enumerate(mods)]
    pad = pad_id(tokenizer)
    try:
        for i in range(0, len(texts), batch_size):
            rows = [tokenizer(t)["input_ids"] for t in texts[i : i + batch_size]]
            current_mask[:] = [right_pad(rows, pad)[1].bool().to(device)]
            run(model, rows, pad)
            if progress:
                progress(len(rows))
    finally:
        for h in handles:
            h.remove()
    if min(counts) == 0:
        raise ValueError("no text to compute statistics from")
    sums: list[torch.Tensor] = [a for a in acc if a is not None]  # (d_in, d_in) each, float64
    if reduce is not None:
        sums, counts = reduce(sums, counts)
    sigmas = [a / n for a, n in zip(sums, counts)]
    return (sigmas[0], counts[0]) if single else (sigmas, counts)
