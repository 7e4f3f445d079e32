from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from editstore import Delta, Factors
from editstore.errors import InvalidDeltaError
from editstore.model.checkpoint import Checkpoint
from editstore.model.delta import FactorStacks
from editstore.model.synthetic import random_delta

from .conftest import GPT2_PARAMS


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), st.booleans())
def test_bytes_round_trip(d_out: int, d_in: int, r: int, with_keys: bool) -> None:
    f = Factors(
        torch.randn(d_out, r), torch.randn(d_in, r),
        torch.randn(d_in, 2) if with_keys else None, torch.randn(d_out, 2) if with_keys else None,
    )
    delta = Delta({"a.weight": f}, {"method": "test"})
    back = Delta.from_bytes(delta.to_bytes())
    assert back.metadata == {"method": "test"}
    g = back.factors["a.weight"]
    assert torch.equal(g.U, f.U) and torch.equal(g.V, f.V)
    assert (g.keys is None) == (not with_keys)


def test_bytes_are_canonical() -> None:
    """Same content, any construction order: same bytes, so the same content address."""
    a, b = Factors(torch.ones(3, 1), torch.ones(2, 1)), Factors(torch.zeros(4, 2), torch.ones(5, 2))
    one = Delta({"x.weight": a, "y.weight": b}, {"method": "m", "description": "d"})
    two = Delta({"y.weight": b, "x.weight": a}, {"description": "d", "method": "m"})
    assert one.to_bytes() == two.to_bytes()


def _bad(tmp_path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path, metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"w.U": torch.ones(3, 1)}, "needs both"),
        ({"w.U": torch.ones(3, 1), "w.V": torch.ones(2, 2)}, "columns"),
        ({"w.U": torch.ones(3, 0), "w.V": torch.ones(2, 0)}, "r ≥ 1"),
        ({"w.U": torch.tensor([[float("nan")]]), "w.V": torch.ones(1, 1)}, "NaN or Inf"),
        ({"w.U": torch.tensor([[float("inf")]]), "w.V": torch.ones(1, 1)}, "NaN or Inf"),
        ({"w.U": torch.ones(3, 1), "w.V": torch.ones(2, 1), "w.X": torch.ones(1, 1)}, "is not <param>"),
        ({"w.U": torch.ones(3), "w.V": torch.ones(2, 1)}, "2-D"),
        ({"w.U": torch.ones(3, 1, dtype=torch.int64), "w.V": torch.ones(2, 1)}, "must be float16, bfloat16"),
        ({"w.U": torch.ones(3, 1).to(torch.float8_e4m3fn), "w.V": torch.ones(2, 1)}, "float8_e4m3fn; delta factors"),
        ({"w.U": torch.ones(3, 1).to(torch.float8_e5m2), "w.V": torch.ones(2, 1)}, "float8_e5m2; delta factors"),
        ({"w.U": torch.ones(3, 1), "w.V": torch.ones(2, 1), "w.keys": torch.ones(2, 3)}, "together"),
    ],
)
def test_structural_errors(tmp_path: Path, tensors: dict, message: str) -> None:
    with pytest.raises(InvalidDeltaError, match=message):
        Delta.load(_bad(tmp_path, tensors))


def test_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(InvalidDeltaError, match="not a valid safetensors"):
        Delta.load(path)
    with pytest.raises(InvalidDeltaError, match="does not exist"):
        Delta.load(tmp_path / "nope.safetensors")


def test_header_schema_is_enforced(tmp_path: Path) -> None:
    tensors = {"w.U": torch.ones(3, 1), "w.V": torch.ones(2, 1)}
    with pytest.raises(InvalidDeltaError, match="header is invalid"):
        Delta.load(_bad(tmp_path, tensors, {"editstore": '{"format": "other", "version": 1}'}))
    with pytest.raises(InvalidDeltaError, match="format version 9"):
        Delta.load(_bad(tmp_path, tensors, {"editstore": '{"format": "editstore-delta", "version": 9}'}))


def test_fits_base(gpt2_dir: Path, llama_dir: Path) -> None:
    gpt2, llama = Checkpoint(gpt2_dir), Checkpoint(llama_dir)
    random_delta(gpt2, GPT2_PARAMS).check_fits(gpt2)
    with pytest.raises(InvalidDeltaError, match="computed for base"):
        random_delta(gpt2, GPT2_PARAMS).check_fits(llama)
    with pytest.raises(InvalidDeltaError, match="no parameter"):
        Delta({"nope.weight": Factors(torch.ones(2, 1), torch.ones(2, 1))}).check_fits(gpt2)
    with pytest.raises(InvalidDeltaError, match="only 2-D"):
        Delta({"transformer.h.0.ln_1.weight": Factors(torch.ones(32, 1), torch.ones(1, 1))}).check_fits(gpt2)


def test_conv1d_orientation_comes_from_module_type(gpt2_dir: Path) -> None:
    """c_fc is stored (in=32, out=128) by Conv1D; the delta must be U (128, r), V (32, r)."""
    gpt2 = Checkpoint(gpt2_dir)
    param = "transformer.h.1.mlp.c_fc.weight"
    assert gpt2.info(param).shape == (32, 128)
    Delta({param: Factors(torch.ones(128, 1), torch.ones(32, 1))}).check_fits(gpt2)
    with pytest.raises(InvalidDeltaError, match="128 x 32"):
        Delta({param: Factors(torch.ones(32, 1), torch.ones(128, 1))}).check_fits(gpt2)


def test_square_conv1d_is_not_guessed_from_shape(gpt2_dir: Path) -> None:
    """attn.c_proj is 32 x 32: shape says nothing, the module type says Conv1D."""
    gpt2 = Checkpoint(gpt2_dir)
    assert gpt2.info("transformer.h.0.attn.c_proj.weight").shape == (32, 32)
    assert gpt2.orientations["transformer.h.0.attn.c_proj.weight"] == "conv1d"


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([("a.weight",), ("b.weight",), ("a.weight", "b.weight")]),
                          st.integers(1, 3), st.sampled_from(DTYPES), st.booleans()), min_size=1, max_size=150),
       st.integers(1, 200), st.booleans())
def test_factor_stacks_concatenate_in_order(specs: list, expected: int, large: bool) -> None:
    """Any mix of parameters, ranks, stored dtypes and headers (more deltas than a batch, or deltas too
    large to batch): the stacks equal each delta's factors concatenated in order, in float32."""
    shapes = {"a.weight": (5, 7), "b.weight": (3, 4)}
    deltas = []
    for i, (params, r, dtype, with_keys) in enumerate(specs):
        g = torch.Generator().manual_seed(i)
        factors = {
            p: Factors(torch.randn(shapes[p][0], r, generator=g).to(dtype), torch.randn(shapes[p][1], r, generator=g).to(dtype),
                       torch.randn(shapes[p][1], 1, generator=g) if with_keys else None,
                       torch.randn(shapes[p][0], 1, generator=g) if with_keys else None)
            for p in params
        }
        deltas.append(Delta(factors, {"method": "test"}))
    stacks = FactorStacks(expected=expected)
    if large:
        stacks.BATCH_BYTES = 1  # every delta counts as large: moved straight from its bytes
    buffer = bytearray(max(len(d.to_bytes()) for d in deltas))
    for d in deltas:  # one buffer, overwritten by each delta, as ObjectStore.stream does
        data = d.to_bytes()
        buffer[: len(data)] = data
        stacks.add(memoryview(buffer)[: len(data)])
    got = stacks.factors()
    assert sorted(got) == sorted({p for d in deltas for p in d.factors})
    for p, f in got.items():
        U = torch.cat([d.factors[p].U.float() for d in deltas if p in d.factors], dim=1)
        V = torch.cat([d.factors[p].V.float() for d in deltas if p in d.factors], dim=1)
        assert f.U.dtype == f.V.dtype == torch.float32
        assert torch.equal(f.U, U) and torch.equal(f.V, V)
