"""Refs: compare-and-swap updates on the refs table, and the HEAD-moved contract a commit follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from editstore import Store
from editstore.core.refs import HEAD, HEADS, Refs
from editstore.errors import HeadMovedError
from editstore.model.synthetic import random_delta
from editstore.porcelain import create_branch, import_delta, switch

from .conftest import GPT2_PARAMS, snapshot


def test_set_if_equals_moves_a_ref_only_from_the_expected_commit(gpt2_store: Store) -> None:
    refs = gpt2_store.refs
    root = refs.head()
    other = import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS[:1]), message="one")
    with gpt2_store.db.atomic():
        assert not refs.set_if_equals(HEADS + "main", root, "f" * 64)  # main holds `other` now
        assert refs.get(HEADS + "main").target == other
        assert refs.set_if_equals(HEAD, other, root)  # through HEAD's symbolic step, onto main
    assert refs.get(HEADS + "main").target == root and refs.get(HEAD).symbolic == HEADS + "main"
    assert not refs.set_if_equals(HEADS + "missing", None, root)


def test_add_if_new_and_remove_if_equals(gpt2_store: Store) -> None:
    refs: Refs = gpt2_store.refs
    head = refs.head()
    with gpt2_store.db.atomic():
        assert refs.add_if_new(HEADS + "b", head)
        assert not refs.add_if_new(HEADS + "b", "0" * 64)
        assert not refs.remove_if_equals(HEADS + "b", "0" * 64)
        assert refs.remove_if_equals(HEADS + "b", head)
        assert not refs.remove_if_equals(HEADS + "b", None)
    assert refs.under(HEADS) == [("main", head)]


def test_a_commit_made_against_a_moved_head_lands_nowhere(tmp_path: Path, gpt2_dir: Path) -> None:
    """Two handles on one store: the second computes on HEAD, the first moves HEAD, the second's commit
    is refused by the swap and leaves the store as the first left it."""
    with Store.init(gpt2_dir, tmp_path / "s") as first, Store.open(tmp_path / "s") as second:
        stale = second.head()
        import_delta(first, random_delta(first.base, GPT2_PARAMS[:1], seed=1), message="first")
        before = snapshot(tmp_path / "s")
        with pytest.raises(HeadMovedError):
            second.write_commit([], operation="edit", message="late", parents=[stale], expected_head=stale)
        assert snapshot(tmp_path / "s") == before


def test_switch_moves_head_to_another_branch_and_commits_follow_it(gpt2_store: Store) -> None:
    create_branch(gpt2_store, "side")
    switch(gpt2_store, "side")
    cid = import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS[:1]), message="on side")
    assert gpt2_store.refs.get(HEADS + "side").target == cid
    assert gpt2_store.refs.get(HEADS + "main").target != cid
