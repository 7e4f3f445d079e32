"""The ``evaluations`` table: metrics of a version, stored against its commit by ``editstore eval``.

Reading them needs SQLite only (``show`` prints them); computing them is :mod:`editstore.behavior`'s.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .core.hashing import sha256_json
from .core.records import now

if TYPE_CHECKING:
    from .core.requests import EditRequest
    from .store import Store


def record_evaluation(store: Store, commit_id: str, requests: list[EditRequest], metrics: dict[str, Any]) -> None:
    """Store ``metrics`` of ``commit_id`` on ``requests``."""
    with store.locked(), store.db.atomic():
        store.db["evaluations"].insert(
            {"commit_id": commit_id, "requests": sha256_json(requests), "n_requests": len(requests),
             "metrics": json.dumps(metrics), "time": now()}
        )


def evaluations(store: Store, commit_id: str) -> list[dict[str, Any]]:
    """Stored evaluations of a commit, oldest first."""
    rows = store.db["evaluations"].rows_where("commit_id = ?", [commit_id], order_by="id")
    return [{"time": r["time"], "requests": r["requests"], "metrics": json.loads(r["metrics"])} for r in rows]
