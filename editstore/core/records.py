"""Frozen records of edits and commits; each id is the sha256 of its canonical record."""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from .hashing import sha256_json

if TYPE_CHECKING:
    import torch

    from .requests import EditRequest


def now() -> str:
    """The current UTC time, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def author() -> str:
    """``EDITSTORE_AUTHOR``, else the login name."""
    env = os.environ.get("EDITSTORE_AUTHOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def tree_id(edits: list[str]) -> str:
    """The id of an ordered list of edit ids."""
    return sha256_json(edits)


class Record:
    """Shared behaviour of frozen records: canonical dict, content id, SQLite row."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ()  # stored as JSON text in SQLite
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ()  # tuples in Python, lists in JSON

    def record(self) -> dict[str, Any]:
        """The canonical record (what the id hashes)."""
        d = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if k in self.TUPLE_FIELDS else v for k, v in d.items()}

    @property
    def id(self) -> str:
        return sha256_json(self.record())

    def row(self) -> dict[str, Any]:
        """The table row: id plus the record, JSON fields as text."""
        r = self.record()
        return {"id": self.id, **{k: json.dumps(v) if k in self.JSON_FIELDS else v for k, v in r.items()}}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Any:
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            v = json.loads(row[f.name]) if f.name in cls.JSON_FIELDS else row[f.name]
            values[f.name] = tuple(v) if f.name in cls.TUPLE_FIELDS else v
        return cls(**values)


@dataclass(frozen=True)
class Edit(Record):
    """One recorded edit: request, method, hyperparameters and the delta object it produced."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("request", "hparams", "params", "info")
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("params",)

    base: str
    name: str | None
    method: str
    request: EditRequest | None
    hparams: dict[str, Any] | None
    delta: str
    params: tuple[str, ...]
    rank: int
    info: dict[str, Any]
    author: str
    time: str


@dataclass(frozen=True)
class Commit(Record):
    """One version: parents, the tree (ordered edits) it holds, and how it was made."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("parents",)
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("parents",)

    base: str
    parents: tuple[str, ...]
    tree: str
    operation: str
    message: str
    author: str
    time: str


def embedding_row(edit: str, backend: str, vector: torch.Tensor) -> dict[str, Any]:
    """A row of the ``embeddings`` table (raw little-endian float32 bytes, no pickle)."""
    return {"edit": edit, "backend": backend, "vector": vector.detach().float().cpu().numpy().astype("<f4").tobytes()}


def conflict_row(commit_id: str, edit: str, conflict: dict[str, Any]) -> dict[str, Any]:
    """A row of the ``conflicts`` table: ``conflict`` (:meth:`Conflict.to_json`) of ``edit``, made in ``commit_id``."""
    return {"commit_id": commit_id, "edit": edit, "other": conflict.get("other"), "kind": conflict["kind"],
            "score": conflict["score"], "param": conflict.get("param"), "detail": json.dumps(conflict)}
