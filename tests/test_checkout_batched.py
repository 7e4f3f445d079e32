"""`checkout --compose batched` on the GPT-2 fact world: a version's edits re-solved jointly (issue 4, point 1)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from editstore import Store
from editstore.compose.checkout import checkout, composition
from editstore.compose.resolve import batched_factors, linear_base_weight, plan
from editstore.core.inputs import read_jsonl
from editstore.editing import edit
from editstore.methods import find_hparams
from editstore.methods.hparams import Hparams
from editstore.moments import sigmas_for
from editstore.porcelain import revert

from .conftest import SAMPLES, invoke

N = 5


@pytest.fixture(scope="module")
def requests(world: Path) -> list[dict]:
    return read_jsonl(world / "requests.jsonl")[7::97][:N]


def hparams(world: Path, method: str, **changes: object) -> Hparams:
    config = json.loads((world / "config.json").read_text())
    return find_hparams(method, config).replace(**{"stats.samples": SAMPLES, **changes})


def edited(store: Store, compose: str) -> dict[str, torch.Tensor]:
    """The edited parameters of HEAD, composed in memory."""
    params = {p for e in store.tree() for p in store.edit(e).params}
    state = checkout(store, device="cpu", compose=compose).state_dict()
    return {p: state[p].clone() for p in sorted(params)}


def assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], base: Store) -> None:
    assert a.keys() == b.keys()
    for p in a:
        w0 = base.base.read_tensor(p)
        da, db = a[p] - w0, b[p] - w0  # compare the updates, not the (much larger) weights
        assert (da - db).norm() <= 1e-4 * db.norm(), p


@pytest.mark.parametrize(("method", "layers"), [("emmet", [1]), ("memit", [0, 1])], ids=["emmet-1-layer", "memit-2-layers"])
def test_after_revert_batched_checkout_equals_a_batch_edit_of_the_rest(
    tmp_path: Path, world: Path, requests: list[dict], method: str, layers: list[int]
) -> None:
    hp = hparams(world, method, layers=layers)
    with Store.init(world, tmp_path / "a") as a:
        edit(a, requests, method=method, hparams=hp, device="cpu")
        # one batch: the joint re-solve is the sum of its per-request columns
        assert_weights_close(edited(a, "batched"), edited(a, "sequential"), a)
        revert(a, a.tree()[2])
        reverted = edited(a, "batched")
    with Store.init(world, tmp_path / "b") as b:
        edit(b, requests[:2] + requests[3:], method=method, hparams=hp, device="cpu")
        fresh = edited(b, "sequential")
        assert_weights_close(reverted, fresh, b)


def test_in_memory_batched_checkout_holds_one_model_at_a_time(
    tmp_path: Path, world: Path, requests: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-layer re-solve loads a model for its forward passes: it is let go before the version's is loaded."""
    import editstore.compose.materialise

    live: list[int] = []
    real = editstore.compose.materialise.from_pretrained

    def counting(*args: object, **kwargs: object) -> torch.nn.Module:
        gc.collect()
        live.append(sum(isinstance(o, PreTrainedModel) for o in gc.get_objects()))
        return real(*args, **kwargs)

    with Store.init(world, tmp_path / "s") as store:
        edit(store, requests[:2], method="memit", hparams=hparams(world, "memit", layers=[0, 1]), device="cpu")
        monkeypatch.setattr(editstore.compose.materialise, "from_pretrained", counting)
        assert checkout(store, device="cpu", compose="batched") is not None
    assert len(live) == 2 and live[1] == live[0], live  # the re-solve's model, then the version's


def test_batched_composition_does_not_depend_on_the_order_of_edits(tmp_path: Path, world: Path, requests: list[dict]) -> None:
    """Sequential ROME edits, re-solved as batched ROME: any order of the tree gives the same weights."""
    with Store.init(world, tmp_path / "s") as store:
        hp = hparams(world, "rome")
        for r in requests[:3]:
            edit(store, [r], method="rome", hparams=hp, device="cpu")
        edit(store, [requests[3]], method="ft", device="cpu")  # no keys: added as it is
        tree = store.tree()
        fixed, groups = plan(store, tree)
        assert [len(g.edits) for g in groups] == [3] and tuple(fixed) == store.edit(tree[3]).params
        forward = batched_factors(store, tree, device=torch.device("cpu"))
        backward = batched_factors(store, tree[::-1], device=torch.device("cpu"))
        assert forward.keys() == backward.keys()
        for p in forward:
            dense = [sum(f.dense() for f in fs) for fs in (forward[p], backward[p])]
            torch.testing.assert_close(dense[0], dense[1], rtol=1e-4, atol=1e-6)
        # batched ROME writes every edit's key to its target exactly: its residual δ on the base's value
        # (rebased targets, the default), or the target it computed on its own version (stored targets)
        param = f"{hp.module_name(hp.layers[0])}.weight"
        K = groups[0].stacked(param, "keys")
        W = linear_base_weight(store.base, param)  # (d_out, d_in): the weight solved on, the base and the FT edit
        W += sum(f.U.double() @ f.V.double().T for f in fixed.get(param, []))
        linear = (lambda w: w.T) if store.base.orientations[param] == "conv1d" else (lambda w: w)  # noqa: E731
        rebased = W @ K + groups[0].stacked(param, "residuals")
        torch.testing.assert_close(linear(edited(store, "batched")[param].double()) @ K, rebased, rtol=1e-4, atol=1e-4)
        store.set_config("checkout.targets", "stored")
        T = groups[0].stacked(param, "targets")
        assert (T - rebased).norm() > 1e-3 * (T - W @ K).norm()  # the later edits' targets carry the earlier ones
        torch.testing.assert_close(linear(edited(store, "batched")[param].double()) @ K, T, rtol=1e-4, atol=1e-4)
    invoke("--store", tmp_path / "s", "config", "checkout.targets", "latest", code=2)


def test_checkout_lambda_e_softens_the_re_solve_of_a_rome_history(tmp_path: Path, world: Path, requests: list[dict]) -> None:
    """``checkout.lambda_e`` solves a ROME group as EMMET: λ_e → 0 is batched ROME (exact), λ_e > 0 the
    regularised least squares R Kᵀ (K Kᵀ + λ_e Σ)⁻¹, which no longer writes each key exactly."""
    with Store.init(world, tmp_path / "s") as store:
        hp = hparams(world, "rome")
        for r in requests[:4]:
            edit(store, [r], method="rome", hparams=hp, device="cpu")
        param = f"{hp.module_name(hp.layers[0])}.weight"
        group = plan(store, store.tree())[1][0]
        W0 = linear_base_weight(store.base, param)  # (d_out, d_in)
        K, R = group.stacked(param, "keys"), group.stacked(param, "residuals")  # (d_in, 4), (d_out, 4)
        T = W0 @ K + R  # the rebased targets
        conv = store.base.orientations[param] == "conv1d"
        linear = (lambda w: w.T) if conv else (lambda w: w)  # noqa: E731  (state dict → (d_out, d_in))
        exact = linear(edited(store, "batched")[param].double())
        keys = composition(store, store.tree(), compose="batched", device=torch.device("cpu")).keys

        store.set_config("checkout.lambda_e", "1e-9")
        assert composition(store, store.tree(), compose="batched", device=torch.device("cpu")).keys != keys
        torch.testing.assert_close(linear(edited(store, "batched")[param].double()), exact, rtol=1e-4, atol=1e-5)

        store.set_config("checkout.lambda_e", "100")
        soft = linear(edited(store, "batched")[param].double())
        sigma = sigmas_for(store, hp, None, device=torch.device("cpu"))[hp.module_name(hp.layers[0])].double()
        expected = W0 + R @ torch.linalg.solve(K @ K.T + 100 * hp.solver.mom2_weight * sigma, K).T
        torch.testing.assert_close(soft, expected, rtol=1e-4, atol=1e-5)
        assert (soft @ K - T).norm() > 1e-2 * R.norm()  # the constraints are soft now
        assert (soft - W0).norm() < (exact - W0).norm()
    invoke("--store", tmp_path / "s", "config", "checkout.lambda_e", "-1", code=2)
    assert invoke("--store", tmp_path / "s", "config", "checkout.lambda_e").strip() == "100.0"


def test_compose_mode_from_the_cli_and_the_store_setting(tmp_path: Path, world: Path, requests: list[dict]) -> None:
    store_dir = tmp_path / "store"
    invoke("init", "--base", world, "--store", store_dir)
    with Store(store_dir) as store:
        edit(store, requests[:2], method="emmet", hparams=hparams(world, "emmet"), device="cpu")
        revert(store, store.tree()[0])
    invoke("--store", store_dir, "checkout", "HEAD", "--out", tmp_path / "b", "--compose", "batched")
    assert json.loads((tmp_path / "b" / "editstore.json").read_text())["compose"] == "batched"
    assert invoke("--store", store_dir, "config", "checkout.compose").strip() == "sequential"
    invoke("--store", store_dir, "config", "checkout.compose", "batched")
    invoke("--store", store_dir, "config", "cache.max_bytes", "0")  # c is solved again, not read from b's cache
    invoke("--store", store_dir, "checkout", "HEAD", "--out", tmp_path / "c")
    assert json.loads((tmp_path / "c" / "editstore.json").read_text())["compose"] == "batched"
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "c" / "model.safetensors").read_bytes()
    invoke("--store", store_dir, "config", "checkout.compose", "jointly", code=2)
    invoke("--store", store_dir, "config", "no.such.key", "1", code=2)
    invoke("--store", store_dir, "checkout", "HEAD", "--out", tmp_path / "d", "--compose", "jointly", code=2)
    assert not (tmp_path / "d").exists()
