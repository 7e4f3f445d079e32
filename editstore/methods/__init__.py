"""Edit methods: each computes deltas from edit requests and leaves the model it is given unchanged.

ROME, FT and MEND edit one request after another (each with the earlier ones in place);
MEMIT, EMMET and AlphaEdit solve a batch jointly. Every request becomes one delta.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..core.requests import EditRequest
from ..errors import HparamsError
from ..model.checkpoint import Checkpoint
from .finetune import finetune
from .hooks import as_updates
from .hparams import Hparams, find_hparams, load_hparams
from .locate import EditResult, locate_and_edit
from .mend import Editor, mend_deltas
from .registry import METHODS, Method, method, require_writes

__all__ = ["METHODS", "EditResult", "Method", "method", "Hparams", "compute_edits", "edited_modules", "find_hparams",
           "load_hparams"]


def edited_modules(hp: Hparams) -> list[str]:
    """Names of the modules ``hp`` edits (the ones that need Σ, except for FT and MEND)."""
    return [hp.module_name(layer) for layer in hp.layers]


def compute_edits(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    hp: Hparams,
    *,
    sigmas: Mapping[str, torch.Tensor] | None = None,
    prior_keys: Mapping[str, torch.Tensor] | None = None,
    editor: Editor | None = None,
    companions: Sequence[Sequence[EditRequest]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EditResult:
    """One delta per request, by ``hp.method``; ``model`` is left unchanged. MEND needs its trained ``editor``.

    ``companions``: per request, the requests of earlier live edits of its subject; the locate-then-edit
    methods optimise its target value to keep them too (:mod:`.locate`); the others ignore them.

    Raises :class:`HparamsError` for a behaviour deletion that ``hp.method`` cannot do (FT, MEND).
    """
    require_writes(hp.method, requests)
    if hp.method == "mend":
        if editor is None:
            raise ValueError("MEND needs a trained editor")
        deltas, before, after = mend_deltas(model, tokenizer, requests, editor, progress=progress)
        return EditResult(deltas, before, after)
    if method(hp.method).batched:
        return locate_and_edit(model, tokenizer, requests, hp, sigmas=sigmas or {}, prior_keys=prior_keys,
                               companions=companions, progress=progress)
    deltas, before, after, info = [], [], [], {}
    for i, request in enumerate(requests):
        pending = as_updates(deltas)  # the earlier requests of the sequence, in place
        if method(hp.method).locate:  # ROME
            res = locate_and_edit(model, tokenizer, [request], hp, sigmas=sigmas or {}, pending=pending,
                                  companions=[companions[i]] if companions else None)
        else:
            res = finetune(model, tokenizer, request, hp, pending=pending)
        deltas += res.deltas
        info.update(res.info)
        before += res.nll_before
        after += res.nll_after
        if progress:
            progress(1)
    return EditResult(deltas, before, after, info)


def resolve_hparams(base: Checkpoint, method: str, hparams: Hparams | None = None) -> Hparams:
    """The caller's hparams or the packaged ones for the base; checked against the base's modules."""
    hp = hparams or find_hparams(method, base.config)
    if hp.method != method:
        raise HparamsError(f"the hparams are for {hp.method}, not {method}")
    for layer in hp.layers:
        for name in (hp.module_name(layer), hp.block_name(layer)):
            if not any(t.startswith(f"{name}.") for t in base.tensors):
                raise HparamsError(f"the base has no module {name} (hparams {hp.architecture}, layers {list(hp.layers)})")
    return hp
