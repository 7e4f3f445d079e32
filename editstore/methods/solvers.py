"""The closed forms of the locate-then-edit methods, in float64 (DESIGN §4).

Columns are edits: K (d_in, n) keys, R (d_out, n) residuals (what each key's output
must move by), C (d_in, d_in) the preservation term built from Σ. Every solver returns
(U, V) with Δ = U Vᵀ and column i belonging to edit i, so a batch is stored as one
rank-one edit per request and each can be reverted on its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Solution:
    U: torch.Tensor  # (d_out, n)
    V: torch.Tensor  # (d_in, n)
    pseudo_inverse: bool = False  # the system was singular and was solved in the least-squares sense


def least_squares(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor) -> Solution:
    """MEMIT: Δ = R Kᵀ (C + K Kᵀ)⁻¹, the minimiser of ‖Δ K − R‖² + tr(Δ C Δᵀ); C = λΣ."""
    A = C + K @ K.T
    return Solution(R, _solve_spd(A, K))


def equality(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, lambda_e: float) -> Solution:
    """EMMET: Δ = R (Kᵀ C⁻¹ K + λ_e I)⁻¹ Kᵀ C⁻¹; with λ_e = 0, Δ K = R exactly (batched ROME).

    A batch larger than the key dimension is solved in the equivalent d_in × d_in form
    Δ = R Kᵀ (K Kᵀ + λ_e C)⁻¹ (MEMIT's form with λΣ = λ_e C), so 10,000 edits cost one
    d_in × d_in solve. With λ_e = 0 such a batch over-determines Δ: it is solved with the
    pseudo-inverse (least squares over the constraints), and the solution says so; the
    same happens when Kᵀ C⁻¹ K is numerically singular (keys that repeat).
    """
    d_in, n = K.shape
    if n > d_in:
        A = K @ K.T + lambda_e * C
        if lambda_e > 0:
            return Solution(R, _solve_spd(A, K))
        log.warning("EMMET: %d equality constraints on %d-dim keys; solving with the pseudo-inverse", n, d_in)
        return Solution(R, torch.linalg.pinv(A, hermitian=True) @ K, pseudo_inverse=True)
    CinvK = _solve_spd(C, K)  # (d_in, n)
    M = K.T @ CinvK + lambda_e * torch.eye(n, dtype=K.dtype, device=K.device)  # (n, n), symmetric
    if torch.linalg.cond(M) > 1e12:
        log.warning("EMMET: the %d x %d constraint system is singular; solving with the pseudo-inverse", n, n)
        return Solution(R @ torch.linalg.pinv(M, hermitian=True), CinvK, pseudo_inverse=True)
    return Solution(torch.linalg.solve(M, R.T).T, CinvK)  # R M⁻¹


def null_space_projector(sigma: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's P = Û Ûᵀ over the eigenvectors of Σ whose eigenvalue is below ``threshold``.

    The eigendecomposition is the costly part of a single AlphaEdit edit, and a history edits
    against the same Σ over and over, so the last few projectors are kept, keyed by Σ's bytes.
    """
    sigma = sigma.detach().double()
    key = (hashlib.blake2b(sigma.cpu().numpy().tobytes(), digest_size=16).hexdigest(), threshold, str(sigma.device))
    if key not in _PROJECTORS:
        values, vectors = torch.linalg.eigh(sigma)
        small = vectors[:, values < threshold]
        log.info("AlphaEdit: null space of dimension %d of %d (τ = %g)", small.shape[1], sigma.shape[0], threshold)
        _PROJECTORS[key] = small @ small.T
        while len(_PROJECTORS) > 4:
            _PROJECTORS.popitem(last=False)
    _PROJECTORS.move_to_end(key)
    return _PROJECTORS[key].clone()


_PROJECTORS: OrderedDict[tuple[str, float, str], torch.Tensor] = OrderedDict()  # the last few P, newest last


def null_space(K: torch.Tensor, R: torch.Tensor, P: torch.Tensor, K_prior: torch.Tensor, alpha: float) -> Solution:
    """AlphaEdit: Δ = R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + α I)⁻¹, written as Δ = R (X⁻¹ P K)ᵀ, X = P(K Kᵀ + K_p K_pᵀ) + αI.

    Every row of Δ lies in the null space of the preserved keys (Δ k₀ ≈ 0), and earlier
    edits' keys K_p are kept out of the update's way.
    """
    d_in = K.shape[0]
    X = P @ (K @ K.T + K_prior @ K_prior.T) + alpha * torch.eye(d_in, dtype=K.dtype, device=K.device)
    return Solution(R, torch.linalg.solve(X, P @ K))


def _solve_spd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A⁻¹ B for a symmetric positive (semi-)definite A; least squares when A is singular."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    log.warning("a %d x %d preservation matrix is singular; solving in the least-squares sense", *A.shape)
    return torch.linalg.lstsq(A, B).solution if A.device.type == "cpu" else torch.linalg.pinv(A, hermitian=True) @ B
