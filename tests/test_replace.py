"""Updating a fact: ``editstore edit --replace`` takes out the live edits it contradicts, in one commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editstore import Store
from editstore.compose.checkout import checkout
from editstore.conflicts.detect import ConflictError
from editstore.core.inputs import read_jsonl
from editstore.core.records import tree_id
from editstore.editing import edit
from editstore.model.evaluate import score_pairs
from editstore.model.tokens import load_tokenizer
from editstore.porcelain import revert
from editstore.world.conflict_cases import conflict_cases, distinct_subject_requests

from .conftest import snapshot
from .test_checkout_batched import hparams
from .test_edit import invoke


@pytest.fixture(scope="module")
def cases(world: Path) -> tuple[list[dict], list]:
    stored, free = distinct_subject_requests(read_jsonl(world / "requests.jsonl"), 3, seed=11)
    return stored, conflict_cases(stored, free, seed=11)


@pytest.fixture
def store(tmp_path: Path, world: Path, cases: tuple) -> Store:
    stored, _ = cases
    s = Store.init(world, tmp_path / "store")
    edit(s, stored, method="memit", hparams=hparams(world, "memit"), device="cpu")
    yield s
    s.close()


def top1(store: Store, rev: str, pairs: list[tuple[str, str]]) -> list[bool]:
    model = checkout(store, rev, device="cpu")
    return [s.top1 for s in score_pairs(model, load_tokenizer(store.base), pairs)]


def cli_edit(store: Store, request: dict, *flags: str, code: int = 0) -> str:
    return invoke("--store", store.root, "edit", "--prompt", request["prompt"], "--subject", request["subject"],
                  "--target", request["target_new"], "--method", "rome", *flags, code=code)


def test_replace_updates_a_fact_in_one_commit(store: Store, cases: tuple) -> None:
    stored, all_cases = cases
    update = next(c for c in all_cases if c.label == "contradiction" and c.stored == 0).request
    old_tree, old_head = store.tree(), store.head()
    replaced = old_tree[0]
    out = json.loads(cli_edit(store, update, "--replace", "--json"))
    assert out["operation"] == "replace" and out["replaced"] == [replaced]
    [new] = out["edits"]
    assert new["replaces"] == [replaced] and new["request"]["target_new"] == update["target_new"]
    assert store.tree() == old_tree[1:] + [new["id"]] and store.commit(store.head()).parents == (old_head,)
    assert store.edit(new["id"]).info["replaces"] == [replaced]
    assert not list(store.db["conflicts"].rows)  # the contradiction it resolved is not recorded as one
    # log and show say what it replaced
    assert f"replaces {replaced[:12]}" in invoke("--store", store.root, "log", "--oneline").splitlines()[0]
    shown = invoke("--store", store.root, "show")
    assert "Operation: replace" in shown and f"- {replaced[:12]} (replaced)" in shown
    assert json.loads(invoke("--store", store.root, "show", new["id"], "--json"))["info"]["replaces"] == [replaced]
    # the newest target holds and the replaced one does not; the other edits are still there
    old = stored[0]
    prompt = update["prompt"].replace("{}", update["subject"])
    assert top1(store, "HEAD", [(prompt, update["target_new"]), (prompt, old["target_new"])]) == [True, False]
    # reverting the update commit gives exactly the version before it
    revert(store, "HEAD")
    assert store.tree() == old_tree
    assert store.commit(store.head()).tree == tree_id(old_tree)


def test_reverting_the_replacing_edit_removes_only_it(store: Store, cases: tuple) -> None:
    _, all_cases = cases
    update = next(c for c in all_cases if c.label == "contradiction" and c.stored == 1).request
    old_tree = store.tree()
    edit(store, [update], method="rome", hparams=hparams(store.base.path, "rome"), device="cpu", replace=True)
    new = store.tree()[-1]
    revert(store, new)
    assert store.tree() == [old_tree[0], old_tree[2]]


def test_without_replace_a_contradiction_is_refused_and_bad_input_leaves_the_store_unchanged(
    store: Store, cases: tuple
) -> None:
    _, all_cases = cases
    update = next(c for c in all_cases if c.label == "contradiction" and c.stored == 0).request
    before = snapshot(store.root)
    assert cli_edit(store, update, code=3) == ""
    filled = update["prompt"].replace("{}", update["subject"])
    assert cli_edit(store, {**update, "prompt": filled, "subject": "Nobody Here"}, "--replace", code=2) == ""
    assert cli_edit(store, {**update, "target_new": " "}, "--replace", code=2) == ""
    assert snapshot(store.root) == before
    # two requests of one batch that contradict each other still refuse the commit, --replace or not
    other = {**update, "target_new": next(o for o in ("Paris", "Lyon") if o != update["target_new"])}
    with pytest.raises(ConflictError):
        edit(store, [update, other], method="rome", hparams=hparams(store.base.path, "rome"), device="cpu",
             replace=True)
    assert snapshot(store.root) == before
    # a --replace without anything to replace is a plain edit
    free = next(c for c in all_cases if c.label == "other-subject").request
    edit(store, [free], method="rome", hparams=hparams(store.base.path, "rome"), device="cpu", replace=True)
    assert store.commit(store.head()).operation == "edit" and "replaces" not in store.edit(store.tree()[-1]).info
