"""Sequential composition and the solvers, directly: W₀ + Σ U Vᵀ in either storage layout, the order
of reading factors, and each registered method's closed form reached through the locate driver."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editstore.compose.sequential import apply_factors, concat_factors
from editstore.methods.hparams import packaged_hparams
from editstore.methods.locate import solve
from editstore.methods.registry import REGISTRY, method
from editstore.model.checkpoint import CONV1D, LINEAR
from editstore.model.delta import Factors


def factors(d_out: int, d_in: int, ranks: list[int], seed: int = 0) -> list[Factors]:
    g = torch.Generator().manual_seed(seed)
    return [Factors(torch.randn(d_out, r, generator=g), torch.randn(d_in, r, generator=g)) for r in ranks]


@pytest.mark.parametrize("orientation", [LINEAR, CONV1D])
def test_apply_factors_adds_the_sum_of_u_v_transposed_in_the_weight_layout(orientation: str) -> None:
    fs = factors(6, 4, [1, 2, 1])
    dense = sum(f.U @ f.V.T for f in fs)  # (d_out, d_in)
    w0 = torch.randn(6, 4) if orientation == LINEAR else torch.randn(4, 6)
    out = apply_factors(w0.clone(), fs, orientation=orientation, device=torch.device("cpu"))
    assert torch.allclose(out, w0 + (dense if orientation == LINEAR else dense.T), atol=1e-5)


def test_apply_factors_keeps_the_weight_dtype() -> None:
    w0 = torch.randn(6, 4).to(torch.bfloat16)
    out = apply_factors(w0, factors(6, 4, [2]), orientation=LINEAR, device=torch.device("cpu"))
    assert out.dtype == torch.bfloat16 and out.shape == (6, 4)


def test_concat_factors_stacks_in_order() -> None:
    fs = factors(5, 3, [1, 2])
    U, V = concat_factors(fs)
    assert U.shape == (5, 3) and V.shape == (3, 3)
    assert torch.equal(U[:, :1], fs[0].U) and torch.equal(V[:, 1:], fs[1].V)


def system(n: int, d_in: int = 12, d_out: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Keys K (d_in, n), residuals R (d_out, n), and Σ of rank 6 spanned by B (d_in, 6): the preserved
    directions, whose complement is AlphaEdit's null space."""
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(d_in, n, generator=g, dtype=torch.float64)  # (d_in, n)
    R = torch.randn(d_out, n, generator=g, dtype=torch.float64)  # (d_out, n)
    B = torch.randn(d_in, 6, generator=g, dtype=torch.float64)  # (d_in, 6)
    return K, R, B @ B.T + 1e-3 * torch.eye(d_in, dtype=torch.float64), B


@pytest.mark.parametrize("name", sorted(m.name for m in REGISTRY.values() if m.locate))
def test_each_locate_method_is_solved_by_its_registered_closed_form(name: str) -> None:
    hp = next(h for h in packaged_hparams() if h.method == name)
    K, R, sigma, B = system(3)
    sol = solve(hp, K, R, sigma)
    delta = sol.U @ sol.V.T  # (d_out, d_in)
    residual = float((delta @ K - R).norm() / R.norm())
    assert sol.U.shape == (8, 3) and sol.V.shape == (12, 3)  # one column per request
    kind = method(name).solver
    if kind == "equality" and not (method(name).batched and hp.solver.lambda_e):
        assert residual < 1e-8  # written exactly
    elif kind == "null_space":
        assert float((delta @ B).norm() / delta.norm()) < 1e-8  # nothing written on the preserved directions
        assert residual < 1.0
    else:
        assert residual < 1.0  # a trade against Σ, toward R


def test_rome_writes_exactly_whatever_lambda_e_its_hparams_carry() -> None:
    rome = next(h for h in packaged_hparams() if h.method == "rome")
    K, R, sigma, _ = system(1)
    soft = rome.replace(solver=dataclasses.replace(rome.solver, lambda_e=10.0))
    sol = solve(soft, K, R, sigma)
    assert torch.allclose(sol.U @ sol.V.T @ K, R)


def test_alphaedit_leaves_the_prior_keys_alone() -> None:
    alpha = next(h for h in packaged_hparams() if h.method == "alphaedit")
    K, R, _, B = system(3)
    sigma = torch.eye(12, dtype=torch.float64) * 1e-4  # all null space: only the prior keys' term (soft, against α) protects
    prior = 10 * torch.randn(12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # (d_in, 2)
    free = solve(alpha, K, R, sigma).U @ solve(alpha, K, R, sigma).V.T
    kept = solve(alpha, K, R, sigma, prior)
    held = kept.U @ kept.V.T
    assert (held @ prior).norm() < 0.1 * (free @ prior).norm()
