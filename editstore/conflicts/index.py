"""The conflict index: FAISS indexes over the edits of the current version (derived state, DESIGN §6).

``<store>/index/`` holds, for the tree HEAD points at:

- ``semantic.faiss``: the prompt embeddings of its edits (:mod:`editstore.conflicts.embeddings`),
  inner product over unit vectors;
- ``keys-<hash>.faiss``, one per edited parameter: each edit's keys whitened by the
  module's statistics (Σ^{-1/2} k, unit length), so an inner product is the cosine
  ROME's rank-one updates interfere by (Δ₁ k₂ ∝ k₁ᵀ Σ⁻¹ k₂);
- ``manifest.json``: the tree, the embedding backend, the base, the id of every
  edit in the FAISS indexes and the sha256 of every file.

A flat index up to ``conflicts.flat_max`` vectors, an IVF index above, where a
flat search stops being fast: trained on the vectors at hand with √n lists, 32 of
them probed, and trained again once it holds four times what it was trained on. The embeddings themselves live in SQLite (``embeddings``), so a rebuild
needs no model unless an edit's embedding is missing. The index is synced to a tree
by adding and removing ids; a manifest that names another tree is synced, and one
whose files do not match their hashes (or that is missing) is rebuilt: never
trusted blindly.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch

from ..core.hashing import sha256_bytes, sha256_json
from ..core.records import tree_id

if TYPE_CHECKING:
    from ..model.delta import Delta
    from ..store import Store

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 2
NPROBE = 32
ROWS = 256  # FAISS id = edit number · ROWS + row: an edit's key columns are rows of their own


@dataclass
class VectorIndex:
    """One FAISS inner-product index with editstore's int ids: flat, or IVF above ``flat_max``."""

    dim: int
    flat_max: int
    index: Any = None

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def approximate(self) -> bool:
        return not isinstance(self.index, faiss.IndexIDMap2)

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        if not len(ids):
            return
        grown = self.approximate and self.size + len(ids) > 4 * self.index.nlist**2
        if grown or (not self.approximate and self.size + len(ids) > self.flat_max):
            self._to_ivf(vectors)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> None:
        ids = np.fromiter(ids, dtype=np.int64)
        if len(ids):  # an array selector: the one IVF's hash-table direct map takes
            self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` nearest per row; id -1 pads when fewer exist."""
        if self.size == 0:
            n = len(vectors)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, self.size))

    def _to_ivf(self, incoming: np.ndarray) -> None:
        """Rebuild as IVF, trained on what the index holds plus ``incoming``."""
        ids = self._ids()
        held = self.index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), dtype=np.float32)
        sample = np.concatenate([held, incoming]).astype(np.float32)
        nlist = max(1, int(math.sqrt(len(sample))))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = 1  # √n lists: fewer points per list than FAISS's default asks for
        ivf.train(sample)
        ivf.nprobe = NPROBE
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.add_with_ids(held, ids)
        self.index = ivf
        log.info("conflict index: %d vectors, IVF with %d lists", len(sample), nlist)

    def _ids(self) -> np.ndarray:
        """The ids the index holds."""
        if self.approximate:
            lists = self.index.invlists
            return np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                                   for i in range(self.index.nlist)] or [np.zeros(0, dtype=np.int64)])
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, flat_max: int) -> VectorIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = NPROBE
        return cls(index.d, flat_max, index)


@dataclass
class ConflictIndex:
    """The semantic and key indexes of one tree, with the FAISS ids of its edits."""

    root: Path
    backend: str
    base: str
    flat_max: int
    tree: str = tree_id([])
    ids: dict[str, int] = field(default_factory=dict)  # edit id -> FAISS id
    next_id: int = 0
    semantic: VectorIndex | None = None
    keys: dict[str, VectorIndex] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # edits still without a prompt embedding
    whitening: dict[str, str | None] = field(default_factory=dict)  # param -> stats object its keys were whitened by

    @functools.cached_property
    def edits(self) -> dict[int, str]:
        """Edit number -> edit id (recomputed after each sync); a FAISS id // ROWS is an edit number."""
        return {i: e for e, i in self.ids.items()}

    # ------------------------------------------------------------ persistence

    @classmethod
    def load(cls, root: Path, *, backend: str, base: str, flat_max: int) -> ConflictIndex | None:
        """The saved index, or None when missing, for another backend or base, or failing a hash."""
        path = root / MANIFEST
        if not path.is_file():
            return None
        try:
            m = json.loads(path.read_text())
            if m.get("format") != FORMAT or m["backend"] != backend or m["base"] != base:
                log.info("conflict index was built for another format, backend or base; rebuilding")
                return None
            files = {name: (root / name).read_bytes() for name in m["files"]}
            if any(sha256_bytes(files[name]) != digest for name, digest in m["files"].items()):
                log.warning("conflict index files do not match their hashes; rebuilding")
                return None
            index = cls(root, backend, base, flat_max, m["tree"], dict(m["ids"]), int(m["next_id"]),
                        pending=list(m["pending"]), whitening=dict(m["whitening"]))
            if "semantic.faiss" in files:
                index.semantic = VectorIndex.from_bytes(files["semantic.faiss"], flat_max)
            index.keys = {param: VectorIndex.from_bytes(files[_keys_file(param)], flat_max) for param in m["params"]}
        except (OSError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            log.warning("conflict index unreadable (%s); rebuilding", exc)
            return None
        return index

    def save(self) -> None:
        """Write the FAISS files, then the manifest that names their hashes (each by rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        parts = ([("semantic.faiss", self.semantic)] if self.semantic else []) + [
            (_keys_file(p), v) for p, v in sorted(self.keys.items())
        ]
        for name, vectors in parts:
            data = vectors.to_bytes()
            _write_atomic(self.root / name, data)
            files[name] = sha256_bytes(data)
        manifest = {"format": FORMAT, "backend": self.backend, "base": self.base, "tree": self.tree,
                    "next_id": self.next_id, "ids": self.ids, "pending": self.pending, "params": sorted(self.keys),
                    "whitening": self.whitening, "files": files}
        _write_atomic(self.root / MANIFEST, json.dumps(manifest).encode())
        for stale in set(p.name for p in self.root.glob("*.faiss")) - set(files):
            (self.root / stale).unlink(missing_ok=True)

    # ------------------------------------------------------------ contents

    def sync(
        self,
        tree: Sequence[str],
        *,
        semantic: Callable[[list[str]], dict[str, np.ndarray]],
        keys: Callable[[list[str]], dict[str, dict[str, np.ndarray]]],
    ) -> bool:
        """Make the index hold exactly ``tree``'s edits; True when anything changed.

        ``semantic(edits)`` returns a unit vector for each edit it can (the others stay
        pending and are asked for again at the next sync); ``keys(edits)`` per edit, per
        parameter, its whitened keys (rows).
        """
        wanted = set(tree)
        gone = [e for e in self.ids if e not in wanted]
        new = [e for e in dict.fromkeys(tree) if e not in self.ids]
        gone_ids = [number * ROWS + row for number in (self.ids.pop(e) for e in gone) for row in range(ROWS)]
        for vectors in ([self.semantic] if self.semantic else []) + list(self.keys.values()):
            vectors.remove(gone_ids)
        for e in new:
            self.ids[e] = self.next_id
            self.next_id += 1
        asked = new + [e for e in self.pending if e in wanted]
        sem = semantic(asked) if asked else {}
        if sem:
            rows = list(sem)
            matrix = np.stack([sem[e] for e in rows])
            if self.semantic is None:
                self.semantic = VectorIndex(matrix.shape[1], self.flat_max)
            self.semantic.add([self.ids[e] * ROWS for e in rows], matrix)
        by_param: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for e, per_param in (keys(new) if new else {}).items():
            for param, rows in per_param.items():
                if len(rows) > ROWS:
                    log.warning("edit %s has %d keys on %s; the first %d are indexed", e[:12], len(rows), param, ROWS)
                    rows = rows[:ROWS]
                ids, vectors = by_param.setdefault(param, ([], []))
                ids += [self.ids[e] * ROWS + row for row in range(len(rows))]
                vectors.append(rows)
        for param, (ids, vectors) in by_param.items():
            matrix = np.concatenate(vectors)
            if param not in self.keys:
                self.keys[param] = VectorIndex(matrix.shape[1], self.flat_max)
            self.keys[param].add(ids, matrix)
        self.__dict__.pop("edits", None)
        pending = [e for e in asked if e not in sem]
        changed = bool(new or gone or sem) or pending != self.pending or self.tree != tree_id(list(tree))
        self.pending, self.tree = pending, tree_id(list(tree))
        if changed:
            log.info("conflict index synced: +%d -%d edits (%d in all)", len(new), len(gone), len(self.ids))
        return changed

    def semantic_vectors(self, edits: Sequence[str]) -> dict[str, np.ndarray]:
        """The prompt embeddings the index holds for ``edits`` (those it has)."""
        if self.semantic is None:
            return {}
        pending = set(self.pending)
        return {e: self.semantic.index.reconstruct(self.ids[e] * ROWS) for e in edits if e in self.ids and e not in pending}

    def neighbours(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per row of ``vectors``, the ``k`` nearest edits by prompt embedding: (edit id, cosine)."""
        return self._resolve(self.semantic, vectors, k)

    def key_neighbours(self, param: str, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Per row, the ``k`` edits on ``param`` whose whitened keys are nearest: (edit id, cosine)."""
        return self._resolve(self.keys.get(param), vectors, k)

    def _resolve(self, index: VectorIndex | None, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        if index is None or index.size == 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = index.search(vectors, k)
        edits = self.edits
        out = []
        for row_scores, row_ids in zip(scores, ids):
            best: dict[str, float] = {}
            for s, i in zip(row_scores, row_ids):
                e = edits.get(int(i) // ROWS) if i >= 0 else None
                if e is not None and s > best.get(e, -2.0):
                    best[e] = float(s)
            out.append(sorted(best.items(), key=lambda kv: -kv[1]))
        return out


def _keys_file(param: str) -> str:
    return f"keys-{sha256_json(param)[:16]}.faiss"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


# ------------------------------------------------------------ the store's vectors


def embedding_rows(store: Store, edits: Sequence[str], backend: str) -> dict[str, np.ndarray]:
    """Stored prompt embeddings of ``edits`` for ``backend`` (float32 vectors)."""
    out: dict[str, np.ndarray] = {}
    ids = list(edits)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        rows = store.db.execute(
            f"SELECT edit, vector FROM embeddings WHERE backend = ? AND edit IN ({', '.join('?' * len(chunk))})",
            [backend, *chunk],
        )
        out.update((e, np.frombuffer(blob, dtype=np.float32)) for e, blob in rows)
    return out


_INVERSE_SQRT: dict[str, torch.Tensor] = {}  # stats object id -> Σ^{-1/2}: content-addressed, so never stale
_INVERSE_SQRT_KEPT = 8


class Whitener:
    """Σ^{-1/2} per module from the store's statistics, to whiten keys.

    The eigendecomposition is kept per stats object (for the process), so every
    check, sync and edit that whitens with the same Σ computes it once.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: dict[str, Any] = {}  # module -> its stats row (or None), looked up once

    def _row(self, module: str) -> Any:
        if module not in self._rows:
            from ..moments import find_stats

            self._rows[module] = find_stats(self.store, module, None, 0)
            if self._rows[module] is None:
                log.info("no statistics for %s: its keys are compared unwhitened", module)
        return self._rows[module]

    def source(self, param: str) -> str | None:
        """The stats object the keys of ``param`` are whitened by (None: unwhitened)."""
        row = self._row(param.removesuffix(".weight"))
        return row.object if row else None

    def __call__(self, module: str) -> torch.Tensor | None:
        from ..moments import load_sigma

        row = self._row(module)
        if row is None:
            return None
        if row.object not in _INVERSE_SQRT:
            sigma = load_sigma(self.store, row).double()
            values, vectors = torch.linalg.eigh(sigma)
            floor = values.clamp(min=0).mean() * 1e-6
            while len(_INVERSE_SQRT) >= _INVERSE_SQRT_KEPT:
                _INVERSE_SQRT.pop(next(iter(_INVERSE_SQRT)))
            _INVERSE_SQRT[row.object] = (vectors * values.clamp(min=floor).rsqrt()) @ vectors.T
        return _INVERSE_SQRT[row.object]

    def whiten(self, param: str, keys: torch.Tensor) -> np.ndarray:
        """Keys (d_in, n) of ``param`` as unit rows (n, d_in) after Σ^{-1/2}."""
        w = self(param.removesuffix(".weight"))
        k = keys.double()
        if w is not None:
            k = w @ k
        return torch.nn.functional.normalize(k.T, dim=-1).float().numpy()


def whitened_keys(delta: Delta, whitener: Whitener) -> dict[str, np.ndarray]:
    """Per parameter, the keys ``delta`` recorded, whitened (parameters without keys are left out)."""
    return {p: whitener.whiten(p, f.keys) for p, f in delta.factors.items() if f.keys is not None}


def delta_keys(store: Store, edits: Sequence[str], whitener: Whitener) -> dict[str, dict[str, np.ndarray]]:
    """Per edit, per parameter, its recorded keys whitened (edits without keys are left out)."""
    rows = store.edits(edits)
    out: dict[str, dict[str, np.ndarray]] = {}
    for e in edits:
        per = whitened_keys(store.load_delta(e, record=rows[e]), whitener)
        if per:
            out[e] = per
    return out
