"""Conflict detection (DESIGN §6): does an edit fight one that is already there?

Four kinds, each with its evidence (the other edit, a score):

- ``contradiction``: the same subject (case- and space-insensitive) and the same
  relation with a different target, or with the target the other suppresses (a behaviour
  deletion); ``duplicate``: the same with the same target, or the same output suppressed
  (:func:`fact_conflict`: two deletions of different outputs, or a target and the deletion
  of another output, are compatible).
  The relation is recognised across formulations by the cosine of the relation half
  of the prompt embeddings (:func:`editstore.conflicts.embeddings.relation_similarity`), at
  least ``conflicts.relation_threshold``.
- ``semantic``: a nearest neighbour of the prompt embedding (FAISS) within
  ``conflicts.semantic_threshold`` with a different target, not already one of the above
  (another spelling of the subject, say).
- ``interference``: the cosine of whitened keys (Σ^{-1/2} k) with an edit on the same
  parameter is at least ``conflicts.interference_threshold``: both write to the same
  memory slot (two facts of one subject at one layer do).

Contradictions stop ``editstore edit`` (exit 3) unless ``--force``; the other kinds
are reported and recorded with the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.requests import describe_target, edit_target, normalise_subject
from ..errors import EditStoreError
from .embeddings import relation_similarity
from .index import ConflictIndex

if TYPE_CHECKING:
    from ..core.requests import EditRequest
    from ..store import Store

log = logging.getLogger(__name__)

BLOCKING = ("contradiction",)
NEIGHBOURS = 10


class ConflictError(EditStoreError):
    """An edit contradicts the current version; nothing was committed."""

    exit_code = 3

    def __init__(self, conflicts: Sequence[Conflict]) -> None:
        self.conflicts = list(conflicts)
        lines = "".join(f"\n  {c.describe()}" for c in self.conflicts)
        super().__init__(f"the edit contradicts the current version; nothing was committed (--force commits it){lines}")


@dataclass(frozen=True)
class Conflict:
    """One conflict: ``request`` (of edit ``edit``, or a prospective one) against ``other``."""

    kind: str
    request: EditRequest
    other: str | None  # the other edit's id; None for another request of the same batch
    other_request: EditRequest | None
    score: float
    edit: str | None = None
    param: str | None = None

    def describe(self) -> str:
        mine = fact(self.request)
        theirs = fact(self.other_request) if self.other_request else "(no request)"
        who = f"edit {self.other[:12]}" if self.other else "another request of this batch"
        where = f" on {self.param}" if self.param else ""
        return f"{self.kind}: {mine} vs {who}: {theirs}{where} (score {self.score:.3f})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "edit": self.edit, "request": self.request, "other": self.other,
                "other_request": self.other_request, "score": round(self.score, 4), "param": self.param}


@dataclass(frozen=True)
class Thresholds:
    """Cosines from which a pair is a conflict (the store's ``conflicts.*_threshold`` settings)."""

    relation: float
    semantic: float
    interference: float

    @classmethod
    def of(cls, store: Store) -> Thresholds:
        return cls(*(float(store.config(f"conflicts.{k}_threshold")) for k in ("relation", "semantic", "interference")))


def fact(request: EditRequest) -> str:
    """``'filled prompt' -> 'target'``."""
    prompt = request.get("prompt", "").replace("{}", request.get("subject", ""))
    return f"{prompt!r} -> {describe_target(request)!r}"


def same_target(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Both write the same target, or both suppress the same output."""
    return edit_target(a) == edit_target(b)


def fact_conflict(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """What two requests about the same fact are to each other: "duplicate" (the same target, or the
    same output suppressed), "contradiction" (two targets, or a target the other suppresses), or None
    (compatible: two outputs suppressed, or a target other than the suppressed one)."""
    (kind_a, text_a), (kind_b, text_b) = edit_target(a), edit_target(b)
    if text_a == text_b:
        return "duplicate" if kind_a == kind_b else "contradiction"
    return "contradiction" if kind_a == kind_b == "write" else None


def tree_requests(store: Store, tree: Sequence[str]) -> dict[str, EditRequest]:
    """The requests of ``tree``'s edits that have one, by edit id."""
    return {e: r.request for e, r in store.edits(tree).items() if r.request}


@dataclass
class Checker:
    """Checks requests against one version: its index and its edits' requests (no database access)."""

    index: ConflictIndex
    requests: Mapping[str, dict[str, Any]]  # edit id -> request, for the version's edits
    thresholds: Thresholds

    def __post_init__(self) -> None:
        self.by_subject: dict[str, list[str]] = {}
        for e, r in self.requests.items():
            self.by_subject.setdefault(normalise_subject(r["subject"]), []).append(e)

    def check(
        self,
        requests: Sequence[EditRequest],
        vectors: torch.Tensor,
        keys: Sequence[Mapping[str, np.ndarray]] | None = None,
        *,
        edits: Sequence[str | None] | None = None,
    ) -> list[Conflict]:
        """Conflicts of ``requests`` (with embeddings ``vectors`` and, optionally, whitened keys per
        parameter) with the version and with each other. ``edits``: their ids when they are the
        version's own edits."""
        edits = list(edits) if edits is not None else [None] * len(requests)
        found: list[Conflict] = []
        for i, request in enumerate(requests):
            facts = self._facts(request, vectors[i], skip=edits[i])
            found += [Conflict(kind, request, e, self.requests[e], s, edits[i]) for kind, e, s in facts]
            found += self._semantic(request, vectors[i], {e for _, e, _ in facts} | {edits[i]}, edits[i])
        if edits[0] is None:
            found += self._within(requests, vectors)
        return found + (self.interference(requests, keys, found, edits=edits) if keys else [])

    def interference(
        self,
        requests: Sequence[EditRequest],
        keys: Sequence[Mapping[str, np.ndarray]],
        found: Sequence[Conflict] = (),
        *,
        edits: Sequence[str | None] | None = None,
    ) -> list[Conflict]:
        """Interference of each request's whitened keys (per parameter) with the version's edits,
        leaving out pairs ``found`` already holds as a contradiction or duplicate."""
        edits = list(edits) if edits is not None else [None] * len(requests)
        out = []
        for i, request in enumerate(requests):
            seen = {c.other for c in found if c.request is request and c.kind in ("contradiction", "duplicate")}
            for param, rows in keys[i].items():
                out += self._interference(request, param, rows, seen | {edits[i]}, edits[i])
        return out

    def _facts(self, request: EditRequest, vector: torch.Tensor, skip: str | None) -> list[tuple[str, str, float]]:
        """(kind, other edit, relation cosine) for same-subject edits of the same relation."""
        candidates = [e for e in self.by_subject.get(normalise_subject(request["subject"]), []) if e != skip]
        stored = self.index.semantic_vectors(candidates)
        candidates = [e for e in candidates if e in stored]
        if not candidates:
            return []
        sims = relation_similarity(vector[None], torch.from_numpy(np.stack([stored[e] for e in candidates])))[0]
        kinds = [fact_conflict(request, self.requests[e]) for e in candidates]
        return [(k, e, float(s)) for k, e, s in zip(kinds, candidates, sims.tolist()) if k and s >= self.thresholds.relation]

    def _semantic(self, request: EditRequest, vector: torch.Tensor, seen: set, edit: str | None) -> list[Conflict]:
        [near] = self.index.neighbours(vector[None].numpy(), NEIGHBOURS)
        return [
            Conflict("semantic", request, e, self.requests.get(e), s, edit)
            for e, s in near
            if s >= self.thresholds.semantic and e not in seen and e in self.requests
            and not same_target(request, self.requests[e])
        ]

    def _interference(self, request: EditRequest, param: str, rows: np.ndarray, seen: set,
                      edit: str | None) -> list[Conflict]:
        best: dict[str, float] = {}
        for near in self.index.key_neighbours(param, rows, NEIGHBOURS):
            for e, s in near:
                if s >= self.thresholds.interference and e not in seen:
                    best[e] = max(best.get(e, -1.0), s)
        return [Conflict("interference", request, e, self.requests.get(e), s, edit, param) for e, s in best.items()]

    def _within(self, requests: Sequence[EditRequest], vectors: torch.Tensor) -> list[Conflict]:
        """Contradictions and duplicates between the requests of one batch."""
        out = []
        for i in range(len(requests)):
            for j in range(i):
                if normalise_subject(requests[i]["subject"]) != normalise_subject(requests[j]["subject"]):
                    continue
                kind = fact_conflict(requests[i], requests[j])
                s = float(relation_similarity(vectors[i][None], vectors[j][None])[0, 0])
                if kind and s >= self.thresholds.relation:
                    out.append(Conflict(kind, requests[i], None, requests[j], s))
        return out


def blocking(conflicts: Sequence[Conflict]) -> list[Conflict]:
    """The conflicts that stop an edit."""
    return [c for c in conflicts if c.kind in BLOCKING]
