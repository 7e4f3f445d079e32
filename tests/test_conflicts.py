"""Conflict detection and merging (issue 5) on the GPT-2 fact world, through the real store, FAISS and CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from editstore import Store
from editstore.conflicts.checks import INDEX_DIR, check_prospective, version_conflicts
from editstore.conflicts.detect import ConflictError
from editstore.conflicts.index import ConflictIndex
from editstore.core.inputs import read_jsonl
from editstore.core.schema import validate
from editstore.editing import edit
from editstore.porcelain import reset, revert
from editstore.world.conflict_cases import conflict_cases, distinct_subject_requests

from .conftest import snapshot
from .test_checkout_batched import hparams
from .test_edit import invoke


@pytest.fixture(scope="module")
def stored_and_cases(world: Path) -> tuple[list[dict], list]:
    stored, free = distinct_subject_requests(read_jsonl(world / "requests.jsonl"), 4, seed=3)
    return stored, conflict_cases(stored, free, seed=3)


@pytest.fixture
def store(tmp_path: Path, world: Path, stored_and_cases: tuple) -> Store:
    stored, _ = stored_and_cases
    s = Store.init(world, tmp_path / "store")
    edit(s, stored[:3], method="memit", hparams=hparams(world, "memit"), device="cpu")
    yield s
    s.close()


def kinds_for(store: Store, request: dict) -> set[str]:
    found, _ = check_prospective(store, [request])
    return {c.kind for c in found}


def test_each_kind_is_found_with_its_evidence(store: Store, stored_and_cases: tuple) -> None:
    stored, cases = stored_and_cases
    tree = store.tree()
    by_label = {}
    for case in cases:
        if case.stored is not None and case.stored >= 3:
            continue  # the fourth request is not in the store
        by_label.setdefault(case.label, case)
    found, _ = check_prospective(store, [by_label["contradiction"].request])
    [c] = [c for c in found if c.kind == "contradiction"]
    assert c.other == tree[by_label["contradiction"].stored] and c.other_request["subject"] == c.request["subject"]
    assert c.score >= 0.55 and c.to_json()["kind"] == "contradiction"
    assert "duplicate" in kinds_for(store, by_label["duplicate"].request)
    near = kinds_for(store, by_label["other-subject"].request) | kinds_for(store, by_label["other-relation"].request)
    assert not near & {"contradiction", "duplicate"}
    # semantic: the same fact under another spelling of the subject (its last name alone) is a close neighbour
    first = stored[0]
    alias = {"prompt": first["prompt"], "subject": first["subject"].split()[-1], "target_new": "Oslo"}
    store.set_config("conflicts.semantic_threshold", "0.75")  # such aliases score 0.79 to 0.9 on this world
    found, _ = check_prospective(store, [alias])
    assert [(c.kind, c.other) for c in found if c.kind == "semantic"] == [("semantic", tree[0])]
    # interference: another fact of an edited subject writes to the same memory slot of the edited layer
    other_relation = by_label["other-relation"]
    edit(store, [other_relation.request], method="memit", hparams=hparams(store.base.path, "memit"), device="cpu")
    new = store.tree()[-1]
    pairs = {(c.edit, c.other) for c in version_conflicts(store) if c.kind == "interference"}
    assert (new, tree[other_relation.stored]) in pairs


def test_a_contradiction_is_refused_and_leaves_the_store_unchanged(store: Store, stored_and_cases: tuple) -> None:
    _, cases = stored_and_cases
    contradiction = next(c for c in cases if c.label == "contradiction" and c.stored == 0)
    before = snapshot(store.root)
    with pytest.raises(ConflictError) as info:
        edit(store, [contradiction.request], method="rome", hparams=hparams(store.base.path, "rome"), device="cpu")
    assert info.value.exit_code == 3 and "contradiction" in str(info.value)
    assert snapshot(store.root) == before
    out = invoke("--store", store.root, "edit", "--prompt", contradiction.request["prompt"], "--subject",
                 contradiction.request["subject"], "--target", contradiction.request["target_new"], code=3)
    assert out == ""
    assert snapshot(store.root) == before
    # --force commits it and records the conflict
    invoke("--store", store.root, "edit", "--prompt", contradiction.request["prompt"], "--subject",
           contradiction.request["subject"], "--target", contradiction.request["target_new"], "--force")
    rows = list(store.db["conflicts"].rows)
    assert [r["kind"] for r in rows] == ["contradiction"] and rows[0]["commit_id"] == store.head()
    listed = json.loads(invoke("--store", store.root, "conflicts", "--json"))
    assert any(c["kind"] == "contradiction" and c["edit"] == store.tree()[-1] for c in listed)
    for c in listed + [json.loads(r["detail"]) for r in rows]:
        validate(c, "conflict")
    # the prospective check from the CLI
    checked = invoke("--store", store.root, "conflicts", "--prompt", contradiction.request["prompt"], "--subject",
                     contradiction.request["subject"], "--target", "Oslo", "--json", code=3)
    assert {c["kind"] for c in json.loads(checked)} >= {"contradiction"}


def test_revert_removes_an_edit_from_the_index_and_a_deleted_index_is_rebuilt(store: Store, stored_and_cases: tuple) -> None:
    _, cases = stored_and_cases
    duplicate = next(c for c in cases if c.label == "duplicate" and c.stored == 1)
    assert "duplicate" in kinds_for(store, duplicate.request)  # builds and persists the index
    reverted = store.tree()[1]
    revert(store, reverted)
    index = ConflictIndex.load(store.root / INDEX_DIR, backend="model:2,4", base=store.base_fingerprint, flat_max=20000)
    assert index is not None and reverted not in index.ids and len(index.ids) == 2  # synced by the revert itself
    assert "duplicate" not in kinds_for(store, duplicate.request)
    shutil.rmtree(store.root / INDEX_DIR)
    out = invoke("--store", store.root, "fsck", "--rebuild")
    assert "rebuilt the conflict index: 2 edits" in out
    # a corrupt index file is not trusted: it is rebuilt
    faiss_file = next((store.root / INDEX_DIR).glob("semantic.faiss"))
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    assert ConflictIndex.load(store.root / INDEX_DIR, backend="model:2,4", base=store.base_fingerprint,
                              flat_max=20000) is None
    assert "contradiction" in kinds_for(store, next(c for c in cases if c.label == "contradiction" and c.stored == 0).request)


def test_merge_is_three_way_so_a_revert_on_one_side_stays(store: Store, stored_and_cases: tuple) -> None:
    stored, _ = stored_and_cases
    root = store.root
    first = store.tree()[0]
    invoke("--store", root, "branch", "side")
    revert(store, first)  # main drops an edit the side branch still has
    invoke("--store", root, "switch", "side")
    edit(store, [stored[3]], method="rome", hparams=hparams(store.base.path, "rome"), device="cpu")
    side_edit = store.tree()[-1]
    invoke("--store", root, "switch", "main")
    out = json.loads(invoke("--store", root, "merge", "side", "--json"))
    assert out["added"] == [side_edit] and first not in store.tree()


def test_merge_with_and_without_conflicts(store: Store, stored_and_cases: tuple) -> None:
    stored, cases = stored_and_cases
    root = store.root
    invoke("--store", root, "branch", "side")
    invoke("--store", root, "switch", "side")
    edit(store, [stored[3]], method="rome", hparams=hparams(store.base.path, "rome"), device="cpu")  # a new fact on the side branch
    side_edit = store.tree()[-1]
    invoke("--store", root, "switch", "main")
    out = json.loads(invoke("--store", root, "merge", "side", "--json"))
    merged = store.commit(store.head())
    assert merged.operation == "merge" and len(merged.parents) == 2 and out["added"] == [side_edit]
    assert store.tree()[-1] == side_edit and not out["conflicts"]
    invoke("--store", root, "merge", "side", code=2)  # already merged

    # a contradiction between the branches stops the merge unless resolved
    contradiction = next(c for c in cases if c.label == "contradiction" and c.stored == 3)
    invoke("--store", root, "switch", "side")
    other_target = "Oslo" if contradiction.request["target_new"] != "Oslo" else "Lima"
    edit(store, [{**contradiction.request, "target_new": other_target}],
         method="rome", hparams=hparams(store.base.path, "rome"), device="cpu", force=True)
    theirs = store.tree()[-1]
    invoke("--store", root, "switch", "main")
    edit(store, [contradiction.request], method="rome", hparams=hparams(store.base.path, "rome"), device="cpu", force=True)
    ours = store.tree()[-1]
    before = snapshot(root)
    invoke("--store", root, "merge", "side", code=3)
    assert snapshot(root) == before
    out = json.loads(invoke("--store", root, "merge", "side", "--ours", "--json"))
    assert out["dropped"] == [theirs] and ours in store.tree() and theirs not in store.tree()
    reset(store, "HEAD~1")
    out = json.loads(invoke("--store", root, "merge", "side", "--theirs", "--json"))
    assert out["dropped"] == [ours] and theirs in store.tree() and ours not in store.tree()
    reset(store, "HEAD~1")
    out = json.loads(invoke("--store", root, "merge", "side", "--force", "--json"))
    assert {ours, theirs} <= set(store.tree()) and any(c["kind"] == "contradiction" for c in out["conflicts"])
    assert any(r["kind"] == "contradiction" for r in store.db["conflicts"].rows_where("commit_id = ?", [store.head()]))


def test_deletions_conflict_only_with_the_target_they_suppress() -> None:
    from editstore.conflicts.detect import fact_conflict

    write = lambda t: {"prompt": "{} was born in", "subject": "Ada", "target_new": t}  # noqa: E731
    delete = lambda t: {"prompt": "{} was born in", "subject": "Ada", "target_true": t}  # noqa: E731
    assert fact_conflict(write("Paris"), write(" paris ")) == "duplicate"
    assert fact_conflict(write("Paris"), write("Rome")) == "contradiction"
    assert fact_conflict(delete("Paris"), delete("Paris")) == "duplicate"
    assert fact_conflict(delete("Paris"), write("Paris")) == "contradiction" == fact_conflict(write("Paris"), delete("Paris"))
    assert fact_conflict(delete("Paris"), write("Berlin")) is None  # Berlin already is "not Paris"
    assert fact_conflict(delete("Paris"), delete("London")) is None
