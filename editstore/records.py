"""Frozen records of edits and commits; each id is the sha256 of its canonical record."""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from .hashing import sha256_json


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


@dataclass(frozen=True)
class Edit:
    """One recorded edit: request, method, hyperparameters and the delta object it produced."""

    base: str
    name: str | None
    method: str
    request: dict[str, Any] | None
    hparams: dict[str, Any] | None
    delta: str
    params: tuple[str, ...]
    rank: int
    info: dict[str, Any]
    author: str
    time: str

    def record(self) -> dict[str, Any]:
        """The canonical record (what the id hashes)."""
        d = asdict(self)
        d["params"] = list(self.params)
        return d

    @property
    def id(self) -> str:
        return sha256_json(self.record())

    def row(self) -> dict[str, Any]:
        """The ``edits`` table row."""
        r = self.record()
        for key in ("request", "hparams", "params", "info"):
            r[key] = json.dumps(r[key])
        return {"id": self.id, **r}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Edit:
        return cls(
            base=row["base"],
            name=row["name"],
            method=row["method"],
            request=json.loads(row["request"]),
            hparams=json.loads(row["hparams"]),
            delta=row["delta"],
            params=tuple(json.loads(row["params"])),
            rank=row["rank"],
            info=json.loads(row["info"]),
            author=row["author"],
            time=row["time"],
        )


@dataclass(frozen=True)
class Commit:
    """One version: parents, the tree (ordered edits) it holds, and how it was made."""

    base: str
    parents: tuple[str, ...]
    tree: str
    operation: str
    message: str
    author: str
    time: str

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["parents"] = list(self.parents)
        return d

    @property
    def id(self) -> str:
        return sha256_json(self.record())

    def row(self) -> dict[str, Any]:
        r = self.record()
        r["parents"] = json.dumps(r["parents"])
        return {"id": self.id, **r}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Commit:
        return cls(
            base=row["base"],
            parents=tuple(json.loads(row["parents"])),
            tree=row["tree"],
            operation=row["operation"],
            message=row["message"],
            author=row["author"],
            time=row["time"],
        )
