"""Several edits of one subject: they share a key, so each later edit keeps the earlier ones' facts and
a batched checkout gives the subject's key one target serving all its live edits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.compose.resolve import plan
from editstore.core.inputs import read_jsonl
from editstore.editing import companions, edit
from editstore.model.evaluate import evaluate_requests
from editstore.model.tokens import load_tokenizer
from editstore.porcelain import reset, revert

from .test_checkout_batched import hparams

N_SUBJECTS = 4


@pytest.fixture(scope="module")
def pairs(world: Path) -> tuple[list[dict], list[dict]]:
    """Two requests (different relations) for each of a few subjects."""
    by_subject: dict[str, list[dict]] = {}
    for r in read_jsonl(world / "requests.jsonl"):
        by_subject.setdefault(r["subject"], []).append(r)
    subjects = sorted(by_subject)[7 :: 97][:N_SUBJECTS]
    return [by_subject[s][0] for s in subjects], [by_subject[s][2] for s in subjects]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, world: Path, pairs: tuple) -> Store:
    first, second = pairs
    s = Store.init(world, tmp_path_factory.mktemp("same") / "store")
    hp = hparams(world, "rome")
    for r in first + second:  # one commit each: every subject's second edit comes after all the first ones
        edit(s, [r], method="rome", hparams=hp, device="cpu")
    yield s
    s.close()


def efficacy(store: Store, requests: list[dict], compose: str, rev: str = "HEAD") -> float:
    model = checkout(store, rev, device="cpu", compose=compose)
    return evaluate_requests(model, load_tokenizer(store.base), requests).efficacy


def test_a_later_edit_of_a_subject_keeps_the_earlier_ones(store: Store, pairs: tuple) -> None:
    first, second = pairs
    tree = store.tree()
    assert [len(c) for c in companions(store, tree[:N_SUBJECTS], second)] == [1] * N_SUBJECTS
    assert companions(store, tree, first[:1]) == [[first[0], second[0]]]
    # every locate edit carries the residual the re-solve sums; each subject's two edits form one set
    _, [group] = plan(store, tree)
    assert sorted(map(sorted, group.rebased_subjects(every=False))) == [[i, i + N_SUBJECTS] for i in range(N_SUBJECTS)]
    for compose in ("sequential", "batched"):
        assert efficacy(store, first, compose) >= 0.75, compose
        assert efficacy(store, second, compose) >= 0.75, compose


def test_one_target_per_subject_key_in_the_re_solve(store: Store) -> None:
    _, [group] = plan(store, store.tree())
    param = f"{group.hp.module_name(group.hp.layers[0])}.weight"
    K = group.stacked(param, "keys")
    current = torch.randn(group.stacked(param, "targets").shape, dtype=torch.float64)
    values = group.rebased_values(current, group.stacked(param, "targets"), group.rebased_subjects(every=False))
    residuals = group.stacked(param, "residuals")
    for i in range(N_SUBJECTS):
        cols = [i, i + N_SUBJECTS]
        assert torch.allclose(values[:, cols], current[:, cols] + residuals[:, cols].sum(1, keepdim=True))
    assert K.shape[1] == values.shape[1] == 2 * N_SUBJECTS


def test_reverting_one_edit_of_a_subject_leaves_the_other(store: Store, pairs: tuple) -> None:
    first, second = pairs
    before = store.head()
    reverted = store.tree()[N_SUBJECTS]  # the second edit of the first subject
    revert(store, reverted)
    try:
        _, [group] = plan(store, store.tree())
        assert len(group.rebased_subjects(every=False)) == N_SUBJECTS - 1
        model = checkout(store, device="cpu", compose="batched")
        tok = load_tokenizer(store.base)
        assert evaluate_requests(model, tok, first[:1]).efficacy == 1.0
        assert evaluate_requests(model, tok, second[:1]).efficacy == 0.0
    finally:
        reset(store, before)
