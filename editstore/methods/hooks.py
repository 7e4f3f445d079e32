"""Forward hooks the edit methods compute with: read a module's input/output, add a low-rank delta.

The methods never write into the model they are given; an edit in progress is a hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from ..model.delta import Delta
from ..model.forward import run


def linear_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (d_out, d_in), b (d_out,)) of a Linear or Conv1D module, in float32."""
    w = module.weight.detach().float()
    W = w.T if isinstance(module, Conv1D) else w  # Conv1D stores (in, out)
    bias = getattr(module, "bias", None)
    b = bias.detach().float() if bias is not None else torch.zeros(W.shape[0], device=W.device)
    return W, b


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No parameter collects gradients inside the block; the flags are restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _hidden(output: Any) -> torch.Tensor:
    """The hidden states of a module output (blocks may return tuples)."""
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def patched(model: torch.nn.Module, updates: Mapping[str, Sequence[tuple[torch.Tensor, torch.Tensor]]]) -> Iterator[None]:
    """Inside the block, module ``name`` computes (W + Σ U Vᵀ) x + b for its list of (U, V).

    U is (d_out, r), V is (d_in, r); the weights themselves are not touched.
    """
    handles = []

    def make(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Any:
        U = torch.cat([u.float() for u, _ in pairs], dim=1).to(device)  # (d_out, Σr)
        V = torch.cat([v.float() for _, v in pairs], dim=1).to(device)  # (d_in, Σr)

        def hook(_m: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            return output + ((inputs[0].float() @ V) @ U.T).to(output.dtype)

        return hook

    try:
        for name, pairs in updates.items():
            if pairs:
                module = model.get_submodule(name)
                handles.append(module.register_forward_hook(make(list(pairs), module.weight.device)))
        yield
    finally:
        for h in handles:
            h.remove()


def as_updates(deltas: Iterable[Delta]) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The (U, V) pairs of ``deltas`` per module name, for :func:`patched`."""
    out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for delta in deltas:
        for param, f in delta.factors.items():
            out.setdefault(param.removesuffix(".weight"), []).append((f.U, f.V))
    return out


def as_keys(deltas: Iterable[Delta]) -> dict[str, torch.Tensor]:
    """The keys the ``deltas`` recorded, per module name, as (d_in, m) float64 (AlphaEdit's K_p)."""
    out: dict[str, list[torch.Tensor]] = {}
    for delta in deltas:
        for param, f in delta.factors.items():
            if f.keys is not None:
                out.setdefault(param.removesuffix(".weight"), []).append(f.keys)
    return {name: torch.cat(keys, dim=1).double() for name, keys in out.items()}


@torch.no_grad()
def capture(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    idx: Sequence[int],
    pad: int,
    *,
    inputs_of: Sequence[str] = (),
    outputs_of: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """One forward pass over ``rows``; per named module, its input (or output) at position idx[b] of row b.

    Positions count on the side the module runs on (:mod:`editstore.model.forward`): a decoder
    module of an encoder-decoder sees one position, 0. Returns ``{name: (len(rows), d)}`` in float32.
    """
    device = model_device(model)
    got: dict[str, torch.Tensor] = {}
    rows_i = torch.arange(len(rows), device=device)
    where = torch.tensor(list(idx), device=device)
    handles = []

    def grab(key: str, use_input: bool) -> Any:
        def hook(_m: Any, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            h = inputs[0] if use_input else _hidden(output)
            got[key] = h[rows_i, where].float()

        return hook

    try:
        for name in inputs_of:
            handles.append(model.get_submodule(name).register_forward_hook(grab(name, True)))
        for name in outputs_of:
            handles.append(model.get_submodule(name).register_forward_hook(grab(name, False)))
        run(model, rows, pad)
    finally:
        for h in handles:
            h.remove()
    return got
