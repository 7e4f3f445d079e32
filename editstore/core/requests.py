"""What an edit request asks for: a new target to write, or an output to stop producing.

A request with ``target_new`` moves the fact to it (CounterFact style). A request with
only ``target_true`` is a behaviour deletion, as in rank-one editing of NMT models: the
model must stop producing ``target_true`` for the prompt, whatever it produces instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import HparamsError

DELETING_METHODS = ("rome", "memit", "emmet", "alphaedit")  # the ones whose value optimisation can suppress


def is_deletion(request: dict[str, Any]) -> bool:
    """True when the request suppresses its ``target_true`` instead of writing a ``target_new``."""
    return not request.get("target_new")


def as_deletion(request: dict[str, Any]) -> dict[str, Any]:
    """The request as a behaviour deletion of its ``target_true`` (its ``target_new`` dropped)."""
    return {k: v for k, v in request.items() if k != "target_new"}


def require_writes(method: str, requests: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`HparamsError` when ``method`` cannot do one of ``requests`` (a deletion)."""
    if method not in DELETING_METHODS and any(is_deletion(r) for r in requests):
        raise HparamsError(f"{method} writes a target_new; a behaviour deletion needs {', '.join(DELETING_METHODS)}")


def edit_target(request: dict[str, Any]) -> tuple[str, str]:
    """("write", target_new) or ("suppress", target_true), case and spacing normalised."""
    kind, text = ("suppress", request.get("target_true")) if is_deletion(request) else ("write", request["target_new"])
    return kind, " ".join(str(text or "").casefold().split())


def describe_target(request: dict[str, Any]) -> str:
    """``Paris``, or ``not Paris`` for a deletion."""
    return f"not {request.get('target_true')}" if is_deletion(request) else str(request.get("target_new"))
