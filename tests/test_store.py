"""History, refs and revisions on a real store (SQLite + objects) over a tiny GPT-2."""

from pathlib import Path

import pytest

from editstore import Store
from editstore.core.db import FORMAT_VERSION
from editstore.core.paths import find_store
from editstore.errors import (
    AmbiguousRevisionError,
    NotInTreeError,
    RefError,
    RevisionError,
    StoreExistsError,
    StoreNotFoundError,
    UnknownRevisionError,
)
from editstore.model.synthetic import random_delta
from editstore.porcelain import (
    ShownCommit,
    ShownEdit,
    branches,
    create_branch,
    delete_branch,
    import_delta,
    reset,
    revert,
    show,
    switch,
    tag,
)

from .conftest import GPT2_PARAMS


def commit_random(store: Store, seed: int, name: str | None = None) -> str:
    return import_delta(store, random_delta(store.base, GPT2_PARAMS[:2], seed=seed), message=f"edit {seed}", name=name)


def test_init_creates_main_with_root_commit(gpt2_store: Store) -> None:
    assert gpt2_store.current_branch() == "main"
    [(cid, root)] = gpt2_store.log()
    assert root.operation == "init" and root.parents == ()
    assert gpt2_store.tree() == []
    with pytest.raises(StoreExistsError):
        Store.init(gpt2_store.base.path, gpt2_store.root)


def test_history_and_revisions(gpt2_store: Store) -> None:
    ids = [commit_random(gpt2_store, s) for s in range(3)]
    assert gpt2_store.head() == ids[-1]
    assert gpt2_store.resolve("HEAD~1") == ids[1]
    assert gpt2_store.resolve("main^^") == ids[0]
    assert gpt2_store.resolve(ids[1][:6]) == ids[1]
    assert gpt2_store.resolve(ids[1].upper()) == ids[1]
    assert [c for c, _ in gpt2_store.log()][:3] == ids[::-1]
    assert len(gpt2_store.tree()) == 3
    edit_id = gpt2_store.tree()[1]
    assert gpt2_store.resolve_object(edit_id[:8]) == ("edit", edit_id)
    with pytest.raises(RevisionError, match="names an edit"):
        gpt2_store.resolve(edit_id)
    with pytest.raises(UnknownRevisionError, match="history has only"):
        gpt2_store.resolve("HEAD~10")
    with pytest.raises(UnknownRevisionError, match="at least 4"):
        gpt2_store.resolve(ids[0][:3])
    with pytest.raises(UnknownRevisionError):
        gpt2_store.resolve("nosuchbranch")


def test_ambiguous_prefix(gpt2_store: Store) -> None:
    """Make commits (revert of revert is cheap) until two ids share 4 hex chars; P(none in 3000) ≈ e^-68."""
    commit_random(gpt2_store, 0)
    seen: dict[str, str] = {}
    for _ in range(3000):
        cid = revert(gpt2_store, "HEAD")
        if cid[:4] in seen:
            break
        seen[cid[:4]] = cid
    with pytest.raises(AmbiguousRevisionError, match="ambiguous"):
        gpt2_store.resolve_object(cid[:4])
    assert gpt2_store.resolve(cid[:12]) == cid


def test_branches_tags_switch_reset(gpt2_store: Store) -> None:
    first = commit_random(gpt2_store, 0)
    create_branch(gpt2_store, "feature")
    tag(gpt2_store, "v1")
    switch(gpt2_store, "feature")
    second = commit_random(gpt2_store, 1)
    assert gpt2_store.resolve("feature") == second
    assert gpt2_store.resolve("main") == first
    assert gpt2_store.resolve("v1") == first
    assert [b.name for b in branches(gpt2_store) if b.current] == ["feature"]
    with pytest.raises(RefError, match="current branch"):
        delete_branch(gpt2_store, "feature")
    with pytest.raises(RefError, match="already exists"):
        create_branch(gpt2_store, "main")
    with pytest.raises(RefError, match="not a valid"):
        tag(gpt2_store, "a..b")
    reset(gpt2_store, "v1")
    assert gpt2_store.head() == first
    switch(gpt2_store, "main")
    delete_branch(gpt2_store, "feature")
    with pytest.raises(RefError, match="no branch"):
        switch(gpt2_store, "feature")
    switch(gpt2_store, "other", create=True)
    assert gpt2_store.current_branch() == "other"


def test_revert_edit_and_commit(gpt2_store: Store) -> None:
    ids = [commit_random(gpt2_store, s, name=f"e{s}") for s in range(3)]
    e0, e1, e2 = gpt2_store.tree()
    revert(gpt2_store, e1)
    assert gpt2_store.tree() == [e0, e2]
    assert gpt2_store.commit(gpt2_store.head()).message == "Revert edit e1"
    with pytest.raises(NotInTreeError):
        revert(gpt2_store, e1)
    with pytest.raises(NotInTreeError):
        revert(gpt2_store, ids[1])  # the commit that added e1: already reverted
    revert_commit = gpt2_store.head()
    revert(gpt2_store, revert_commit)  # reverting the revert brings e1 back, where it was
    assert gpt2_store.tree() == [e0, e1, e2]
    revert(gpt2_store, ids[0], message="drop the first")
    assert gpt2_store.tree() == [e1, e2]
    shown = show(gpt2_store, "HEAD")
    assert isinstance(shown, ShownCommit)
    assert shown.commit.operation == "revert" and shown.removed == [e0] and shown.commit.message == "drop the first"


def test_show_edit_and_commit(gpt2_store: Store) -> None:
    cid = commit_random(gpt2_store, 7, name="seven")
    shown = show(gpt2_store, cid[:10])
    assert isinstance(shown, ShownCommit) and [e.name for e in shown.added] == ["seven"]
    edit = show(gpt2_store, shown.added[0].id)
    assert isinstance(edit, ShownEdit) and edit.edit.method == "random" and edit.edit.rank == 2
    assert list(edit.edit.params) == sorted(GPT2_PARAMS[:2])
    as_json = show(gpt2_store, cid).to_json()  # what `show --json` prints
    assert as_json["type"] == "commit" and as_json["added"][0]["name"] == "seven" and as_json["size"] == 1


def test_find_store_walks_up(tmp_path: Path, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDITSTORE_DIR", raising=False)
    Store.init(gpt2_dir).close()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_store() == tmp_path / ".editstore"
    monkeypatch.setenv("EDITSTORE_DIR", str(tmp_path / "elsewhere"))  # the CLI reads it; the library does not
    assert find_store() == tmp_path / ".editstore"
    with pytest.raises(StoreNotFoundError):
        find_store(tmp_path / "elsewhere")
    monkeypatch.delenv("EDITSTORE_DIR")
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(StoreNotFoundError, match="editstore init"):
        find_store(start=Path("/"))


def test_records_match_their_schemas(gpt2_store: Store) -> None:
    from editstore.core.schema import validate

    commit_random(gpt2_store, 1, name="one")
    revert(gpt2_store, "HEAD")
    for cid, c in gpt2_store.log():
        validate(c.record(), "commit-record")
        assert c.id == cid
    for row in gpt2_store.db["edits"].rows:
        validate(gpt2_store.edit(row["id"]).record(), "edit-record")


def test_api_deltas_are_validated_before_anything_is_written(gpt2_store: Store) -> None:
    import torch

    from editstore import Delta, Factors
    from editstore.errors import InvalidDeltaError, SchemaError
    from editstore.store import NewEdit

    from .conftest import snapshot

    p = GPT2_PARAMS[0]
    before = snapshot(gpt2_store.root)
    bad = [
        Delta({p: Factors(torch.full((32, 1), float("nan")), torch.ones(128, 1))}),
        Delta({p: Factors(torch.ones(32, 1), torch.ones(128, 2))}),
        Delta({}),
    ]
    for delta in bad:
        with pytest.raises(InvalidDeltaError):
            import_delta(gpt2_store, delta, message="bad")
    good = random_delta(gpt2_store.base, [p])
    with pytest.raises(SchemaError):
        gpt2_store.record_edits([NewEdit(good, "rome", request={"prompt": "no slot", "subject": "x"})], message="m")
    assert snapshot(gpt2_store.root) == before


def test_writer_lock_is_reentrant(gpt2_store: Store) -> None:
    with gpt2_store.locked():
        commit_random(gpt2_store, 1)
    assert len(gpt2_store.tree()) == 1


def test_init_refuses_a_file_and_leaves_no_staging_file(tmp_path: Path, gpt2_dir: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreExistsError, match="not a directory"):
        Store.init(gpt2_dir, tmp_path / "file")
    Store.init(gpt2_dir, tmp_path / "new").close()
    assert (tmp_path / "new" / "store.db").is_file()
    assert not list((tmp_path / "new").glob(".store.db.tmp-*"))


def test_an_older_store_is_upgraded_on_open(tmp_path: Path, gpt2_dir: Path) -> None:
    """A version-1 store (no stats, embeddings or conflicts tables) gains them and keeps its history."""
    with Store.init(gpt2_dir, tmp_path / "s") as store:
        import_delta(store, random_delta(store.base, GPT2_PARAMS[:1]), message="one")
        head = store.head()
        for table in ("stats", "embeddings", "conflicts", "editors"):
            store.db[table].drop()
        store.db.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
        store.db.conn.commit()
    with Store.open(tmp_path / "s") as store:
        assert store.head() == head
        assert {"stats", "embeddings", "conflicts", "editors"} <= set(store.db.table_names())
        assert store.db.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()[0] == str(FORMAT_VERSION)


def test_merge_base_is_the_nearest_best_common_ancestor(gpt2_store: Store) -> None:
    """A criss-cross history: two best common ancestors, the nearest (then the smaller id) wins, as the
    definition computed by brute force (a common ancestor no other common ancestor descends from) says."""
    from editstore.merge import ancestors, merge, merge_base

    s = gpt2_store

    def commit(seed: int) -> str:
        return import_delta(s, random_delta(s.base, GPT2_PARAMS[:1], seed=seed), message=str(seed))

    base = commit(1)
    create_branch(s, "q")
    p1 = commit(2)
    switch(s, "q")
    q1 = commit(3)
    switch(s, "main")
    p2 = merge(s, "q").commit  # parents p1, q1
    switch(s, "q")
    q2 = merge(s, p1).commit  # parents q1, p1
    for a, b in [(p2, q2), (p2, q1), (p1, q1), (q2, base), (p2, p2)]:
        da, db = ancestors(s, a), ancestors(s, b)
        common = set(da) & set(db)
        best = {c for c in common if not any(c != o and c in ancestors(s, o) for o in common)}
        assert merge_base(s, a, b) == min(best, key=lambda c: (da[c] + db[c], c))
    assert merge_base(s, p2, q2) in {p1, q1}
    assert merge_base(s, p1, q1) == base
