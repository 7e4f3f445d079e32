from pathlib import Path

from editstore import Store
from editstore.fsck import fsck, gc
from editstore.model.synthetic import random_delta
from editstore.porcelain import import_delta, reset, tag

from .conftest import GPT2_PARAMS


def test_clean_store_passes(gpt2_store: Store) -> None:
    for s in range(3):
        import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS, seed=s), message=str(s))
    report = fsck(gpt2_store)
    assert report.ok and not report.warnings
    assert (report.objects, report.edits, report.commits) == (3, 3, 4)


def test_corrupt_object_and_broken_ref_are_faults(gpt2_store: Store) -> None:
    import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS), message="x")
    oid = gpt2_store.edit(gpt2_store.tree()[0]).delta
    path = gpt2_store.objects.path(oid)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    gpt2_store.db.execute("UPDATE refs SET target = ? WHERE name = 'refs/heads/main'", ["f" * 64])
    gpt2_store.db.conn.commit()
    report = fsck(gpt2_store)
    assert not report.ok
    assert any("corrupt" in e for e in report.errors)
    assert any("missing commit" in e for e in report.errors)


def test_gc_drops_unreachable_after_reset(gpt2_store: Store) -> None:
    root = gpt2_store.head()
    import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS, seed=1), message="keep")
    tag(gpt2_store, "keep")
    import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS, seed=2), message="drop")
    dropped_edit, dropped_commit = gpt2_store.tree()[-1], gpt2_store.head()
    with gpt2_store.db.atomic():  # derived rows that belong to the edit and commit gc removes
        gpt2_store.db["embeddings"].insert({"edit": dropped_edit, "backend": "b", "vector": b"\0" * 8})
        gpt2_store.db["conflicts"].insert({"commit_id": dropped_commit, "edit": dropped_edit, "kind": "duplicate",
                                           "score": 1.0, "detail": "{}"})
    reset(gpt2_store, "keep")
    (gpt2_store.objects.tmp / "obj-leftover").write_bytes(b"partial")
    dry = gc(gpt2_store, dry_run=True)
    assert (len(dry.commits), len(dry.edits), len(dry.objects), len(dry.temporaries)) == (1, 1, 1, 1)
    assert len(list(gpt2_store.objects)) == 2
    done = gc(gpt2_store)
    assert done.commits == dry.commits
    assert len(list(gpt2_store.objects)) == 1
    assert gpt2_store.db["embeddings"].count == 0 and gpt2_store.db["conflicts"].count == 0
    report = fsck(gpt2_store)
    assert report.ok and not report.warnings
    assert [c for c, _ in gpt2_store.log()][-1] == root


def test_unreferenced_object_is_a_warning(tmp_path: Path, gpt2_store: Store) -> None:
    gpt2_store.objects.write(b"orphan from a crash between object write and commit")
    report = fsck(gpt2_store)
    assert report.ok and any("not referenced" in w for w in report.warnings)


def test_missing_object_and_dangling_head_are_faults(gpt2_store: Store) -> None:
    import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS), message="x")
    gpt2_store.objects.delete(gpt2_store.edit(gpt2_store.tree()[0]).delta)
    gpt2_store.db.execute("UPDATE refs SET symbolic = 'refs/heads/gone' WHERE name = 'HEAD'")
    gpt2_store.db.conn.commit()
    errors = fsck(gpt2_store).errors
    assert any("is missing" in e for e in errors) and any("does not exist" in e for e in errors)


def test_gc_keeps_what_a_detached_head_reaches(gpt2_store: Store) -> None:
    import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS, seed=1), message="one")
    gpt2_store.db.execute("UPDATE refs SET symbolic = NULL, target = ? WHERE name = 'HEAD'", [gpt2_store.head()])
    gpt2_store.db.conn.commit()
    reset(gpt2_store, "HEAD")  # detached: reset moves HEAD itself
    import_delta(gpt2_store, random_delta(gpt2_store.base, GPT2_PARAMS, seed=2), message="two, detached")
    report = gc(gpt2_store)
    assert report.commits == [] and report.objects == []
    assert fsck(gpt2_store).ok
