"""What an edit request asks for: a new target to write, or an output to stop producing.

A request with ``target_new`` moves the fact to it (CounterFact style). A request with
only ``target_true`` is a behaviour deletion, as in rank-one editing of NMT models: the
model must stop producing ``target_true`` for the prompt, whatever it produces instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import SchemaError, SubjectNotInPromptError
from .schema import validate


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


def normalise_subject(subject: str) -> str:
    """Case- and whitespace-insensitive form of a subject, for exact matching."""
    return " ".join(subject.casefold().split())


def check_requests(requests: Sequence[dict[str, Any]]) -> None:
    """Schema-valid, with a target_new to write or a target_true to suppress; raises a named error for the first bad one."""
    if not requests:
        raise SchemaError("no edit requests")
    for i, r in enumerate(requests, 1):
        if isinstance(r.get("prompt"), str) and "{}" not in r["prompt"]:
            raise SubjectNotInPromptError(f"edit request {i}: the prompt {r['prompt']!r} has no {{}} where the subject goes")
        validate(r, "edit-request", what=f"edit request {i}")
        if not str(r.get("target_new") or r.get("target_true") or "").strip():
            raise SchemaError(f"edit request {i} has neither a target_new nor a target_true to suppress")
