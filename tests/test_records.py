"""Records: each id is the sha256 of the canonical record; rows round-trip; ids change with any field."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from editstore.core.hashing import canonical_json
from editstore.core.records import Commit, Edit, tree_id

EDIT = Edit(base="b" * 64, name="capital", method="rome",
            request={"prompt": "{} is the capital of", "subject": "Paris", "target_new": "Italy"},
            hparams={"method": "rome", "layers": [1]}, delta="d" * 64, params=("w.weight",), rank=1,
            info={"source": "x"}, author="ada", time="2026-01-01T00:00:00.000000+00:00")
COMMIT = Commit(base="b" * 64, parents=("p" * 64,), tree=tree_id([EDIT.id]), operation="edit", message="m",
                author="ada", time="2026-01-01T00:00:00.000000+00:00")


def test_the_id_is_the_sha256_of_the_canonical_record() -> None:
    for record in (EDIT, COMMIT):
        assert record.id == hashlib.sha256(canonical_json(record.record()).encode("utf-8")).hexdigest()
    assert tree_id(["a", "b"]) != tree_id(["b", "a"])  # a tree is ordered


def test_rows_round_trip() -> None:
    assert Edit.from_row(EDIT.row()) == EDIT
    assert Commit.from_row(COMMIT.row()) == COMMIT
    assert json.loads(COMMIT.row()["parents"]) == list(COMMIT.parents)


def test_every_field_is_part_of_the_id() -> None:
    changed = {"base": "c" * 64, "name": None, "method": "memit", "request": None, "hparams": None, "delta": "e" * 64,
               "params": ("v.weight",), "rank": 2, "info": {}, "author": "bob", "time": "2026-01-02"}
    ids = {dataclasses.replace(EDIT, **{k: v}).id for k, v in changed.items()}
    assert len(ids) == len(changed) and EDIT.id not in ids
