"""Batched composition (DESIGN §5): re-solve a version's edits jointly from their stored keys and targets.

A tree's edits fall into groups of equal hyperparameters (method, layers, solver,
statistics). Each group becomes one joint solve with its method's closed form: a
group of MEMIT or EMMET edits is one MEMIT or EMMET batch, a group of ROME edits is
batched ROME (EMMET with λ_e = 0, or the store's ``checkout.lambda_e``), AlphaEdit keeps
its null-space projection. Edits that carry no keys (fine-tuning, imported deltas) cannot
be re-solved and are added as they are, first; the groups follow in the order of their
first edit in the tree, each solved on top of what came before.

A single-layer group needs no model: at the subject token the block writes
``a + W k`` (``a`` does not depend on W), and the stored target value is
``T = W_e k + r_e = z − a`` (W_e the weight when the edit was made), so the residual
against the weight W it is solved on now is ``T − W K``. A multi-layer group re-runs
MEMIT's spread (:func:`editstore.methods.locate.spread`) from each edit's stored z,
with forward passes for the keys of later layers, on the base loaded in memory.

Edits of one subject share a key (its last token), so solving their own targets side by
side would average them: each target was computed for its own request only. When a group
holds several edits of a subject that carry their residuals δ (the change each asked of
the block's output at the subject), every key of that subject gets one target, the
current value plus the sum of their δs: ``W k + Σ δ`` (one layer), ``h_L + Σ δ`` as z
(several). An edit committed after another of its subject was optimised to keep the
earlier one's fact as well (:mod:`editstore.methods.locate`), so its δ is the increment
on top of it, and the sum is what the newest edit asked for; once one of them is
reverted, its δ leaves the sum and the others' values stand.

A group's solution depends only on its set of (key, target) pairs, so it does not
depend on the order of its edits, and a version with an edit reverted equals a batch
edit of the remaining requests whenever their targets were computed on the same model
(as in one batch). Groups that share a weight are solved in the order of their
first edits, so across groups the order still matters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .behavior import load_tokenizer
from .checkout import load_model
from .checkpoint import CONV1D, Checkpoint
from .delta import Delta, Factors
from .editing import sigmas_for
from .evaluate import pad_id
from .hashing import sha256_json
from .methods.hooks import patched
from .methods.hparams import Hparams
from .methods.locate import solve, spread
from .methods.solvers import Solution
from .methods.targets import context_prefixes, outputs_at_subject, tokenize_request
from .index import normalise_subject

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

LOCATE_METHODS = ("rome", "memit", "emmet", "alphaedit")



@dataclass
class Group:
    """Edits that share hyperparameters and are solved as one batch."""

    hp: Hparams
    edits: list[str] = field(default_factory=list)
    deltas: list[Delta] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def stacked(self, param: str, part: str) -> torch.Tensor:
        """The group's ``part`` (keys, targets or hidden) of ``param``, columns side by side, float64."""
        return torch.cat([getattr(d.factors[param], part).double() for d in self.deltas], dim=1)

    def shared_subjects(self) -> list[list[int]]:
        """The columns of each subject with several edits in the group that all carry residuals."""
        last = f"{self.hp.module_name(self.hp.layers[-1])}.weight"
        by_subject: dict[str, list[int]] = {}
        for i, (delta, request) in enumerate(zip(self.deltas, self.requests)):
            if request.get("subject") and delta.factors[last].residuals is not None:
                by_subject.setdefault(normalise_subject(request["subject"]), []).append(i)
        return [cols for cols in by_subject.values() if len(cols) > 1]

    def shared_values(self, current: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` (d, n), whose columns of a subject with several edits become ``current`` (d, n), the
        value there now, plus the sum of that subject's residuals."""
        residuals = self.stacked(f"{self.hp.module_name(self.hp.layers[-1])}.weight", "residuals").to(current)
        values = values.clone()
        for cols in self.shared_subjects():
            values[:, cols] = current[:, cols] + residuals[:, cols].sum(1, keepdim=True)
        return values


def _resolvable(delta: Delta, hp: Hparams | None) -> bool:
    """Keys and targets on every factor, exactly the hparams' modules, and z when it spans layers."""
    if hp is None or hp.method not in LOCATE_METHODS or any(f.keys is None for f in delta.factors.values()):
        return False
    params = {f"{hp.module_name(layer)}.weight" for layer in hp.layers}
    last = delta.factors.get(f"{hp.module_name(hp.layers[-1])}.weight")
    return set(delta.factors) == params and (len(hp.layers) == 1 or (last is not None and last.hidden is not None))


def plan(store: Store, tree: Sequence[str]) -> tuple[dict[str, list[Factors]], list[Group]]:
    """Split ``tree`` into the factors added as they are and the groups to re-solve, in tree order."""
    fixed: dict[str, list[Factors]] = {}
    groups: dict[str, Group] = {}
    parsed: dict[str, Hparams] = {}  # each distinct hparams validated once
    records = store.edits(tree)
    for eid in tree:
        edit = records[eid]
        delta = store.load_delta(eid, record=edit)
        key = sha256_json(edit.hparams) if edit.hparams else ""
        if key and key not in parsed:
            parsed[key] = Hparams.from_json(edit.hparams)
        hp = parsed.get(key) if edit.method in LOCATE_METHODS else None
        if not _resolvable(delta, hp):
            for param, f in delta.factors.items():
                fixed.setdefault(param, []).append(f)
            continue
        group = groups.setdefault(key, Group(hp))
        group.edits.append(eid)
        group.deltas.append(delta)
        group.requests.append(edit.request or {})
    return fixed, list(groups.values())


def linear_base_weight(base: Checkpoint, param: str) -> torch.Tensor:
    """The base weight of ``param`` in nn.Linear orientation (d_out, d_in), float64."""
    w = base.read_tensor(param).double()
    return w.T if base.orientations[param] == CONV1D else w


def solve_single_layer(
    hp: Hparams, W: torch.Tensor, K: torch.Tensor, T: torch.Tensor, sigma: torch.Tensor
) -> Solution:
    """Joint solution for keys K (d_in, n) and target values T (d_out, n) on weight W (d_out, d_in), float64."""
    return solve(hp, K, T - W @ K, sigma.double())


def batched_factors(
    store: Store,
    tree: Sequence[str],
    *,
    device: torch.device,
    lambda_e: float = 0.0,
) -> dict[str, list[Factors]]:
    """Per parameter, the factors of the re-solved version: fixed ones, then one solution per group.

    ``lambda_e``: groups of ROME edits are solved as EMMET with this λ_e (0: batched ROME, each edit exact).
    """
    fixed, groups = plan(store, tree)
    if not groups:
        return fixed
    tokenizer = load_tokenizer(store)
    solved: dict[str, list[Factors]] = {}
    model = None
    for group in groups:
        hp = group.hp
        if hp.method == "rome" and lambda_e:
            hp = hp.replace(method="emmet", **{"solver.lambda_e": lambda_e})
        sigmas = sigmas_for(store, hp, tokenizer, device=device)
        if len(hp.layers) == 1:
            name = hp.module_name(hp.layers[0])
            param = f"{name}.weight"
            W = linear_base_weight(store.base, param).to(device)
            for f in fixed.get(param, []) + solved.get(param, []):
                W += f.U.to(W) @ f.V.to(W).T
            K = group.stacked(param, "keys").to(device)  # (d_in, n)
            T = group.shared_values(W @ K, group.stacked(param, "targets").to(device))  # (d_out, n)
            sol = solve_single_layer(hp, W, K, T, sigmas[name])
            layers = [(name, sol)]
        else:
            if model is None:
                model = load_model(store.base, fixed, device=device, base_hashes=store.base_hashes())
            updates = {p.removesuffix(".weight"): [(f.U, f.V) for f in fs] for p, fs in solved.items()}
            with patched(model, updates):
                prefixes = context_prefixes(model, tokenizer, hp.prefixes)
            prompts = [tokenize_request(tokenizer, r, prefixes) for r in group.requests]
            z = group.stacked(f"{hp.module_name(hp.layers[-1])}.weight", "hidden").to(device)  # (d, n)
            if group.shared_subjects():
                with patched(model, updates):
                    h = outputs_at_subject(model, prompts, hp.block_name(hp.layers[-1]), pad_id(tokenizer))  # (n, d)
                z = group.shared_values(h.double().T, z)
            z = z.T  # (n, d)
            per_layer, _ = spread(model, prompts, z, hp, pad=pad_id(tokenizer), sigmas=sigmas, prior_keys=None,
                                  updates=updates)
            layers = [(s.name, s.solution) for s in per_layer]
        for name, sol in layers:
            if sol.pseudo_inverse:
                log.warning("%s: the joint solve of %d edits needed a pseudo-inverse", name, len(group.edits))
            solved.setdefault(f"{name}.weight", []).append(Factors(sol.U.float().cpu(), sol.V.float().cpu()))
        log.info("re-solved %d %s edit(s) jointly on %s", len(group.edits), hp.method, ", ".join(n for n, _ in layers))
    return {p: fixed.get(p, []) + solved.get(p, []) for p in sorted(set(fixed) | set(solved))}

