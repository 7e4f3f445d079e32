"""What an edit request asks for: a new target to write, or an output to stop producing.

A request with ``target_new`` moves the fact to it (CounterFact style). A request with
only ``target_true`` is a behaviour deletion, as in rank-one editing of NMT models: the
model must stop producing ``target_true`` for the prompt, whatever it produces instead.
"""

from __future__ import annotations

from typing import Any


def is_deletion(request: dict[str, Any]) -> bool:
    """True when the request suppresses its ``target_true`` instead of writing a ``target_new``."""
    return not request.get("target_new")


def as_deletion(request: dict[str, Any]) -> dict[str, Any]:
    """The request as a behaviour deletion of its ``target_true`` (its ``target_new`` dropped)."""
    return {k: v for k, v in request.items() if k != "target_new"}


def edit_target(request: dict[str, Any]) -> tuple[str, str]:
    """("write", target_new) or ("suppress", target_true), case and spacing normalised."""
    kind, text = ("suppress", request.get("target_true")) if is_deletion(request) else ("write", request["target_new"])
    return kind, " ".join(str(text or "").casefold().split())


def describe_target(request: dict[str, Any]) -> str:
    """``Paris``, or ``not Paris`` for a deletion."""
    return f"not {request.get('target_true')}" if is_deletion(request) else str(request.get("target_new"))
