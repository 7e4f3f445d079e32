"""Token positions of a subject inside a prompt, for any fast tokenizer."""

from __future__ import annotations

from typing import Any

from ..errors import SubjectNotInPromptError


def subject_span(tokenizer: Any, prompt: str, subject: str, *, search_from: int = 0) -> tuple[list[int], int, int]:
    """(input ids, first subject token, one past the last) for ``subject`` in the filled ``prompt``.

    The first occurrence at or after character ``search_from`` counts (a prefix before the
    prompt proper may mention the subject too).
    """
    start_char = prompt.find(subject, search_from)
    if not subject or start_char < 0:
        raise SubjectNotInPromptError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    end_char = start_char + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    positions = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end_char and b > start_char]
    if not positions:
        raise SubjectNotInPromptError(f"subject {subject!r} covers no token of {prompt!r}")
    return enc["input_ids"], positions[0], positions[-1] + 1
