"""What an edit request asks for: a new target to write, or an output to stop producing.

A request with ``target_new`` moves the fact to it (CounterFact style). A request with
only ``target_true`` is a behaviour deletion, as in rank-one editing of NMT models: the
model must stop producing ``target_true`` for the prompt, whatever it produces instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Required, TypedDict

from ..errors import SchemaError, SubjectNotInPromptError
from .schema import validate


class Neighbour(TypedDict):
    """A prompt about another subject whose answer an edit must not change."""

    prompt: str
    target: str


class EditRequest(TypedDict, total=False):
    """One edit request (``schemas/edit-request.schema.json``): the prompt holds ``{}`` where the subject
    goes; with ``target_new`` the fact moves to it, without it ``target_true`` must stop being produced.

    A typed dict: mypy checks its keys, and at run time it stays the JSON object it was read as, so the
    methods index it like one. Requests are validated where they enter (:func:`check_requests`, the
    readers of request files); inside the library they are trusted.
    """

    prompt: Required[str]
    subject: Required[str]
    target_new: str
    target_true: str
    reference: str  # the positive example: the whole right output for the prompt
    paraphrase_prompts: list[str]
    neighborhood_prompts: list[Neighbour]
    relation: str
    case_id: int | str


def is_deletion(request: EditRequest) -> bool:
    """True when the request suppresses its ``target_true`` instead of writing a ``target_new``."""
    return not request.get("target_new")


def as_deletion(request: EditRequest) -> dict[str, Any]:
    """The request as a behaviour deletion of its ``target_true`` (its ``target_new`` dropped)."""
    return {k: v for k, v in request.items() if k != "target_new"}


def edit_target(request: EditRequest) -> tuple[str, str]:
    """("write", target_new) or ("suppress", target_true), case and spacing normalised."""
    kind, text = ("suppress", request.get("target_true")) if is_deletion(request) else ("write", request["target_new"])
    return kind, " ".join(str(text or "").casefold().split())


def describe_target(request: EditRequest) -> str:
    """``Paris``, or ``not Paris`` for a deletion."""
    return f"not {request.get('target_true')}" if is_deletion(request) else str(request.get("target_new"))


def normalise_subject(subject: str) -> str:
    """Case- and whitespace-insensitive form of a subject, for exact matching."""
    return " ".join(subject.casefold().split())


def check_requests(requests: Sequence[EditRequest]) -> None:
    """Schema-valid, with a target_new to write or a target_true to suppress; raises a named error for the first bad one."""
    if not requests:
        raise SchemaError("no edit requests")
    for i, r in enumerate(requests, 1):
        if isinstance(r.get("prompt"), str) and "{}" not in r["prompt"]:
            raise SubjectNotInPromptError(f"edit request {i}: the prompt {r['prompt']!r} has no {{}} where the subject goes")
        validate(r, "edit-request", what=f"edit request {i}")
        if not str(r.get("target_new") or r.get("target_true") or "").strip():
            raise SchemaError(f"edit request {i} has neither a target_new nor a target_true to suppress")
