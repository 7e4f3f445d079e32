"""The conflict index on real FAISS: flat and IVF, sync (adds and removals), persistence and its hash check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from editstore.conflicts.index import ConflictIndex


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make(tmp_path: Path, n: int, flat_max: int) -> tuple[ConflictIndex, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    sem, keys = unit(rng.standard_normal((n, 16))), unit(rng.standard_normal((n, 8)))
    ids = [f"edit{i}" for i in range(n)]
    index = ConflictIndex(tmp_path / "index", "test", "base", flat_max)
    index.sync(ids, semantic=lambda new: {e: sem[int(e[4:])] for e in new},
               keys=lambda new: {e: {"w": keys[int(e[4:])][None]} for e in new})
    return index, sem, keys, ids


def test_flat_index_finds_each_vector_and_forgets_removed_edits(tmp_path: Path) -> None:
    index, sem, keys, ids = make(tmp_path, 50, flat_max=1000)
    assert not index.semantic.approximate
    near = index.neighbours(sem[:5], 3)
    assert [row[0][0] for row in near] == ids[:5] and all(abs(row[0][1] - 1) < 1e-5 for row in near)
    assert index.key_neighbours("w", keys[7:8], 1)[0][0][0] == ids[7]
    assert index.sync(ids[1:], semantic=lambda new: {}, keys=lambda new: {})  # a revert of edit0
    assert ids[0] not in {e for e, _ in index.neighbours(sem[:1], 10)[0]}
    assert not index.sync(ids[1:], semantic=lambda new: {}, keys=lambda new: {})  # nothing to do
    np.testing.assert_allclose(index.semantic_vectors([ids[3]])[ids[3]], sem[3], atol=1e-6)


def test_above_flat_max_the_index_is_ivf_and_survives_a_save(tmp_path: Path) -> None:
    index, sem, keys, ids = make(tmp_path, 400, flat_max=100)
    assert index.semantic.approximate and index.keys["w"].approximate
    index.sync(ids[10:], semantic=lambda new: {}, keys=lambda new: {})
    index.save()
    loaded = ConflictIndex.load(tmp_path / "index", backend="test", base="base", flat_max=100)
    assert loaded is not None and loaded.semantic.size == 390 and loaded.tree == index.tree
    assert loaded.neighbours(sem[20:21], 1)[0][0][0] == ids[20]
    assert ids[0] not in {e for e, _ in loaded.neighbours(sem[:1], 10)[0]}
    np.testing.assert_allclose(loaded.semantic_vectors([ids[30]])[ids[30]], sem[30], atol=1e-6)
    assert ConflictIndex.load(tmp_path / "index", backend="other", base="base", flat_max=100) is None
    (tmp_path / "index" / "manifest.json").write_text("{")
    assert ConflictIndex.load(tmp_path / "index", backend="test", base="base", flat_max=100) is None


def test_growing_past_flat_max_keeps_every_row_and_removes_all_rows_of_an_edit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sem = unit(rng.standard_normal((300, 16)))
    keys = unit(rng.standard_normal((300, 3, 8)))  # three key columns per edit
    ids = [f"edit{i}" for i in range(300)]
    index = ConflictIndex(tmp_path / "index", "test", "base", flat_max=400)

    def sync(tree: list[str]) -> None:
        index.sync(tree, semantic=lambda new: {e: sem[int(e[4:])] for e in new},
                   keys=lambda new: {e: {"w": keys[int(e[4:])]} for e in new})

    sync(ids[:100])  # flat
    assert not index.keys["w"].approximate and index.keys["w"].size == 300
    sync(ids)  # the keys grow past flat_max: rebuilt as IVF from what they held plus the new rows
    assert not index.semantic.approximate and index.keys["w"].approximate and index.keys["w"].size == 900
    for row in range(3):  # every key column of an early edit is still its own
        assert index.key_neighbours("w", keys[5, row][None], 1)[0][0] == (ids[5], pytest.approx(1.0, abs=1e-5))
    sync(ids[1:])
    assert index.keys["w"].size == 897 and ids[0] not in {e for e, _ in index.key_neighbours("w", keys[0], 5)[0]}
