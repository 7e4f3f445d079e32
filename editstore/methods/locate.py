"""Locate-then-edit: ROME, MEMIT, EMMET and AlphaEdit share this driver and differ in the solver.

1. the target: δ at the last edited layer's subject token (:mod:`.targets`), z = h_L + δ;
2. for each edited layer l, ascending, with the updates of lower layers in place:
   keys K_l (mean over prefixes), residual R_l = (z − h_L) / (layers left), and the
   solver's Δ_l = U Vᵀ (:mod:`.solvers`);
3. each request becomes its own delta: column i of every layer's U and V, with its key
   and target value (W_l k_i + r_i), for a multi-layer edit z_i, and δ_i, kept so a checkout
   can re-solve a version jointly (:mod:`editstore.compose.resolve`).

A request can come with companions: the live requests of an earlier edit of its subject.
Its δ is then optimised for them too (they share the subject's key), so the value it asks
for serves every live fact of the subject.

The model passed in is never written to: updates in progress are forward hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.requests import EditRequest
from ..errors import MissingStatsError
from ..model.delta import Delta, Factors
from ..model.tokens import pad_id
from .hooks import linear_weight, model_device, patched
from .hparams import Hparams
from .registry import method
from .solvers import Solution, equality, least_squares, null_space, null_space_projector
from .targets import Prompts, context_prefixes, mean_keys, optimise_deltas, outputs_at_subject, tokenize_request

log = logging.getLogger(__name__)

Updates = Mapping[str, Sequence[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class EditResult:
    """One delta per request, and what the solve said about itself."""

    deltas: list[Delta]
    nll_before: list[float]
    nll_after: list[float]
    info: dict[str, Any] = field(default_factory=dict)


def locate_and_edit(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    hp: Hparams,
    *,
    sigmas: Mapping[str, torch.Tensor],
    prior_keys: Mapping[str, torch.Tensor] | None = None,
    pending: Updates | None = None,
    companions: Sequence[Sequence[EditRequest]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EditResult:
    """Solve ``requests`` jointly with ``hp.method``'s solver; ``model`` is left unchanged.

    ``sigmas``: Σ (d_in, d_in) per edited module name. ``prior_keys``: per module, keys of
    earlier edits (d_in, m) that AlphaEdit keeps out of the way. ``pending``: low-rank
    updates not in the weights yet (earlier requests of a sequential batch). ``companions``: per
    request, the requests of earlier live edits of its subject, whose targets its δ must keep.
    """
    missing = [hp.module_name(layer) for layer in hp.layers if hp.module_name(layer) not in sigmas]
    if missing:
        raise MissingStatsError(f"{hp.method} needs the second-moment statistics of {', '.join(missing)}")
    pad = pad_id(tokenizer)
    updates: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {k: list(v) for k, v in (pending or {}).items()}
    with patched(model, updates):
        prefixes = context_prefixes(model, tokenizer, hp.prefixes)
        prompts = [tokenize_request(tokenizer, r, prefixes, companions=c, kl_at=hp.targets.kl_at)
                   for r, c in zip(requests, companions or [()] * len(requests))]
        deltas, nll0, nll1 = optimise_deltas(
            model, tokenizer, prompts, hp.module_name(hp.layers[-1]), hp.targets, progress=progress
        )
        z = outputs_at_subject(model, prompts, hp.block_name(hp.layers[-1]), pad) + deltas  # (n, d)
    per_layer, pinv = spread(model, prompts, z, hp, pad=pad, sigmas=sigmas, prior_keys=prior_keys, updates=updates)
    multi = len(per_layer) > 1
    out = []
    for j in range(len(requests)):
        col = slice(j, j + 1)
        factors = {
            f"{s.name}.weight": Factors(
                *(t[:, col].float().cpu().contiguous() for t in (s.solution.U, s.solution.V, s.keys, s.targets)),
                hidden=z[col].T.float().cpu().contiguous() if multi and s is per_layer[-1] else None,
                residuals=deltas[col].T.float().cpu().contiguous() if s is per_layer[-1] else None,
            )
            for s in per_layer
        }
        out.append(Delta(factors, {"method": hp.method, "layers": list(hp.layers)}))
    return EditResult(out, nll0.tolist(), nll1.tolist(), {"pseudo_inverse": True} if pinv else {})


@dataclass(frozen=True)
class LayerSolve:
    """One edited layer's joint solution, with the keys K (d_in, n) and target values W K + R it solved for."""

    name: str
    solution: Solution
    keys: torch.Tensor
    targets: torch.Tensor


def spread(
    model: torch.nn.Module,
    prompts: Sequence[Prompts],
    z: torch.Tensor,
    hp: Hparams,
    *,
    pad: int,
    sigmas: Mapping[str, torch.Tensor],
    prior_keys: Mapping[str, torch.Tensor] | None,
    updates: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
) -> tuple[list[LayerSolve], bool]:
    """MEMIT's loop: write z (n, d), the target hidden state of the last edited block, over ``hp.layers``.

    For each layer ascending, with the updates so far in place: keys, residual
    (z − h_L) / (layers left), the solver's Δ, appended to ``updates``. Returns the
    per-layer solutions and whether a pseudo-inverse was needed.
    """
    device = model_device(model)
    last_block = hp.block_name(hp.layers[-1])
    per_layer: list[LayerSolve] = []
    pinv = False
    for i, layer in enumerate(hp.layers):
        name = hp.module_name(layer)
        with patched(model, updates):
            K = mean_keys(model, prompts, name, pad, hp.prefixes.unprefixed_weight).double().T  # (d_in, n)
            h = outputs_at_subject(model, prompts, last_block, pad)  # (n, d)
        R = ((z.to(h) - h) / (len(hp.layers) - i)).double().T  # (d_out, n)
        W = effective_weight(model, name, updates.get(name, ()))  # (d_out, d_in), float64
        solution = solve(hp, K, R, sigmas[name].to(device).double(), (prior_keys or {}).get(name))
        pinv |= solution.pseudo_inverse
        updates.setdefault(name, []).append((solution.U.float(), solution.V.float()))
        per_layer.append(LayerSolve(name, solution, K, W @ K + R))
        log.info("%s layer %d: |R| %.3f, |ΔK - R|/|R| %.2e", hp.method, layer, R.norm(),
                 (solution.U @ (solution.V.T @ K) - R).norm() / R.norm())
    return per_layer, pinv


def effective_weight(model: torch.nn.Module, name: str, pending: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """W + Σ U Vᵀ of module ``name`` in float64, (d_out, d_in)."""
    W, _ = linear_weight(model.get_submodule(name))
    W = W.double()
    for U, V in pending:
        W = W + U.to(W) @ V.to(W).T
    return W


def solve(hp: Hparams, K: torch.Tensor, R: torch.Tensor, sigma: torch.Tensor, prior: torch.Tensor | None = None) -> Solution:
    """``hp.method``'s closed form for keys K (d_in, n) and residuals R (d_out, n), in float64."""
    s, solver = hp.solver, method(hp.method).solver
    if solver == "least_squares":
        return least_squares(K, R, s.mom2_weight * sigma)
    if solver == "equality":  # one request at a time (ROME) is written exactly; a batch (EMMET) may soften by λ_e
        return equality(K, R, s.mom2_weight * sigma, s.lambda_e if method(hp.method).batched else 0.0)
    if solver == "null_space":
        P = null_space_projector(sigma, s.null_space_threshold)
        K_prior = prior.to(K) if prior is not None else K.new_zeros(K.shape[0], 0)
        return null_space(K, R, P, K_prior, s.alpha)
    raise ValueError(f"{hp.method} is not a locate-then-edit method")
