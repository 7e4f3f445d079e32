"""Edit methods: each computes deltas from edit requests and leaves the model it is given unchanged.

ROME, FT and MEND edit one request after another (each with the earlier ones in place);
MEMIT, EMMET and AlphaEdit solve a batch jointly. Every request becomes one delta.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..core.requests import require_writes
from .finetune import finetune
from .hooks import as_updates
from .hparams import METHODS, Hparams, find_hparams, load_hparams
from .locate import EditResult, locate_and_edit
from .mend import Editor, mend_deltas

SEQUENTIAL = ("rome", "ft")
NO_STATISTICS = ("ft", "mend")  # methods that need no second-moment statistics

__all__ = ["METHODS", "NO_STATISTICS", "EditResult", "Hparams", "compute_edits", "edited_modules", "find_hparams",
           "load_hparams"]


def edited_modules(hp: Hparams) -> list[str]:
    """Names of the modules ``hp`` edits (the ones that need Σ, except for FT and MEND)."""
    return [hp.module_name(layer) for layer in hp.layers]


def compute_edits(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[dict[str, Any]],
    hp: Hparams,
    *,
    sigmas: Mapping[str, torch.Tensor] | None = None,
    prior_keys: Mapping[str, torch.Tensor] | None = None,
    editor: Editor | None = None,
    companions: Sequence[Sequence[dict[str, Any]]] | None = None,
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
    if hp.method not in SEQUENTIAL:
        return locate_and_edit(model, tokenizer, requests, hp, sigmas=sigmas or {}, prior_keys=prior_keys,
                               companions=companions, progress=progress)
    deltas, before, after, info = [], [], [], {}
    for i, request in enumerate(requests):
        pending = as_updates(deltas)  # the earlier requests of the sequence, in place
        if hp.method == "rome":
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
