"""Token positions of a subject inside a prompt, for any fast tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BaseModelError, SchemaError, SubjectNotInPromptError

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


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


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id (0 when it has none; padded positions are masked anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def target_ids(tokenizer: Any, target: str) -> list[int]:
    """Token ids of a target as it continues a prompt (with its leading space)."""
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise SchemaError(f"target {target!r} tokenizes to nothing; a target needs at least one token")
    return ids


def fill(prompt: str, subject: str) -> str:
    return prompt.replace("{}", subject)


def load_tokenizer(base: Checkpoint) -> Any:
    """The tokenizer saved with the base checkpoint."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base.path)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"the base at {base.path} has no loadable tokenizer: {exc}") from None
