"""Weight-level diff of two versions, computed from the factors without dense matrices.

For one parameter, W_B − W_A = Σ_{e ∈ B∖A} U_e V_eᵀ − Σ_{e ∈ A∖B} U_e V_eᵀ = U Vᵀ with the
factors stacked (A's negated). With thin QR, U = Q_u R_u and V = Q_v R_v, so
U Vᵀ = Q_u (R_u R_vᵀ) Q_vᵀ: its Frobenius norm and rank are those of the small
R x R matrix M = R_u R_vᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.trees import minus
from ..model.delta import Factors
from .checkout import factors

if TYPE_CHECKING:
    from ..store import Store

RANK_RTOL = 1e-6


@dataclass(frozen=True)
class ParamDiff:
    """How one parameter differs between two versions."""

    param: str
    frobenius: float
    rank: int


def low_rank_norm_and_rank(U: torch.Tensor, V: torch.Tensor) -> tuple[float, int]:
    """Frobenius norm and numerical rank of U Vᵀ (U: (d_out, R), V: (d_in, R)), in float64."""
    U, V = U.double(), V.double()
    _, R_u = torch.linalg.qr(U)  # (R, R)
    _, R_v = torch.linalg.qr(V)  # (R, R)
    M = R_u @ R_v.T  # (R, R)
    s = torch.linalg.svdvals(M)
    scale = float((U.norm(dim=0) * V.norm(dim=0)).sum())  # size of the inputs, so cancellation reads as 0
    rank = int((s > RANK_RTOL * scale).sum()) if scale > 0 else 0
    frobenius = float(s.square().sum().sqrt()) if rank else 0.0
    return frobenius, rank


def param_diff(param: str, added: Sequence[Factors], removed: Sequence[Factors]) -> ParamDiff:
    """Diff of one parameter: ``added`` edits are in B only, ``removed`` in A only."""
    U = torch.cat([f.U.double() for f in added] + [-f.U.double() for f in removed], dim=1)  # (d_out, R)
    V = torch.cat([f.V.double() for f in added] + [f.V.double() for f in removed], dim=1)  # (d_in, R)
    frobenius, rank = low_rank_norm_and_rank(U, V)
    return ParamDiff(param, frobenius, rank)


@dataclass(frozen=True)
class VersionDiff:
    """Edits only in A, only in B, and per parameter how far the weights moved."""

    a: str
    b: str
    only_a: list[str]
    only_b: list[str]
    params: list[ParamDiff]

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "params": [{"param": p.param, "frobenius": p.frobenius, "rank": p.rank} for p in self.params],
        }


def diff_versions(store: Store, rev_a: str, rev_b: str) -> VersionDiff:
    """Edits only in A or only in B, and each touched parameter's ‖W_B − W_A‖_F and rank."""
    a, b = store.resolve(rev_a), store.resolve(rev_b)
    tree_a, tree_b = store.commit_tree(a), store.commit_tree(b)
    only_a, only_b = minus(tree_a, tree_b), minus(tree_b, tree_a)
    removed, added = factors(store, only_a), factors(store, only_b)
    params = [param_diff(p, added.get(p, []), removed.get(p, [])) for p in sorted(set(added) | set(removed))]
    return VersionDiff(a, b, only_a, only_b, params)
