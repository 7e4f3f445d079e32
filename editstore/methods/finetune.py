"""FT, the constrained fine-tuning baseline (FT-L of Zhu et al. 2020, as in the ROME paper).

One down-projection gets a dense ΔW trained on the target NLL of the edit prompt, each
entry clamped to ±ε after every step. The stored delta is its truncated SVD at the rank
that keeps ``energy`` of ‖ΔW‖². The model passed in is never written to (ΔW is a hook).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..core.requests import EditRequest
from ..model.delta import Delta, Factors
from ..model.forward import target_logits
from ..model.tokens import fill, pad_id, target_ids
from .hooks import frozen, linear_weight, model_device, patched
from .hparams import Hparams
from .locate import EditResult

log = logging.getLogger(__name__)


def finetune(
    model: torch.nn.Module,
    tokenizer: Any,
    request: EditRequest,
    hp: Hparams,
    *,
    pending: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> EditResult:
    """The delta of fine-tuning ``hp.layers[0]``'s module on one request; ``model`` is left unchanged."""
    name = hp.module_name(hp.layers[0])
    module = model.get_submodule(name)
    device = model_device(model)
    prompt = tokenizer(fill(request["prompt"], request["subject"]))["input_ids"]
    t_ids = target_ids(tokenizer, request["target_new"])
    tgt = torch.tensor(t_ids, device=device)
    d_out, d_in = linear_weight(module)[0].shape
    D = torch.zeros(d_out, d_in, device=device, requires_grad=True)
    ft = hp.finetune

    def add(_m: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output + (inputs[0].float() @ D.T).to(output.dtype)

    def nll() -> torch.Tensor:
        logp = target_logits(model, [prompt], [t_ids], pad_id(tokenizer))[0][0].float().log_softmax(-1)  # (k, V)
        return -logp[torch.arange(len(t_ids), device=device), tgt].sum()

    with patched(model, pending or {}):
        handle = module.register_forward_hook(add)
        try:
            with frozen(model), torch.enable_grad():
                with torch.no_grad():
                    before = float(nll())
                opt = torch.optim.Adam([D], lr=ft.lr)
                for _ in range(ft.steps):
                    loss = nll()
                    if loss.item() < hp.targets.nll_stop:
                        break
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if ft.norm_constraint > 0:
                        with torch.no_grad():
                            D.clamp_(-ft.norm_constraint, ft.norm_constraint)
                with torch.no_grad():
                    after = float(nll())
        finally:
            handle.remove()
    U, V = truncated_svd(D.detach().double(), ft.energy)
    log.info("FT %s: NLL %.3f -> %.3f, rank %d", name, before, after, U.shape[1])
    delta = Delta({f"{name}.weight": Factors(U.float().cpu(), V.float().cpu())}, {"method": "ft", "layers": [hp.layers[0]]})
    return EditResult([delta], [before], [after])


def truncated_svd(D: torch.Tensor, energy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U S, V) of the smallest rank r with Σ_{i<r} s_i² ≥ energy · Σ s_i²; at least rank 1."""
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    total = (S**2).sum()
    r = 1 if total == 0 else min(int(((S**2).cumsum(0) / total < energy).sum()) + 1, S.shape[0])
    return U[:, :r] * S[:r], Vh[:r].T
