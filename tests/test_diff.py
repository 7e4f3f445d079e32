import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editstore.compose.diff import low_rank_norm_and_rank, param_diff
from editstore.model.delta import Factors


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(0, 3), st.integers(0, 10_000))
def test_norm_and_rank_match_dense(n_added: int, n_removed: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    added = [Factors(torch.randn(12, 2, generator=g), torch.randn(9, 2, generator=g)) for _ in range(n_added)]
    removed = [Factors(torch.randn(12, 1, generator=g), torch.randn(9, 1, generator=g)) for _ in range(n_removed)]
    dense = sum(f.U.double() @ f.V.double().T for f in added) - sum(
        (f.U.double() @ f.V.double().T for f in removed), torch.zeros(12, 9, dtype=torch.float64)
    )
    d = param_diff("p", added, removed)
    assert d.frobenius == pytest.approx(float(dense.norm()), rel=1e-9)
    assert d.rank == int(torch.linalg.matrix_rank(dense))


def test_cancelling_edits_have_rank_zero() -> None:
    f = Factors(torch.randn(8, 1), torch.randn(5, 1))
    assert param_diff("p", [f], [f]).rank == 0
    assert param_diff("p", [f], [f]).frobenius == 0.0
    assert low_rank_norm_and_rank(torch.zeros(4, 1), torch.zeros(3, 1)) == (0.0, 0)
