"""Revision syntax: ``HEAD``, branch and tag names, full ids, hex prefixes (≥ 4), ``REV~N`` and ``REV^``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RefError, UnknownRevisionError

MIN_PREFIX = 4
_SUFFIX = re.compile(r"(~\d*|\^+)$")
_REF_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class Revision:
    """A parsed revision: a name (ref, id or prefix) and how many first-parent steps back."""

    name: str
    back: int = 0


def parse_revision(text: str) -> Revision:
    """Split ``main~2^`` into ``Revision("main", 3)``."""
    text = text.strip()
    back = 0
    while (m := _SUFFIX.search(text)) is not None:
        suffix = m.group(1)
        if suffix.startswith("~"):
            back += int(suffix[1:]) if len(suffix) > 1 else 1
        else:
            back += len(suffix)
        text = text[: m.start()]
    if not text:
        raise UnknownRevisionError("empty revision")
    return Revision(text, back)


def check_ref_name(name: str) -> None:
    """Raise :class:`RefError` unless ``name`` is a usable branch or tag name."""
    if (
        not _REF_NAME.match(name)
        or name == "HEAD"
        or ".." in name
        or "//" in name
        or name.endswith(("/", ".", ".lock"))
    ):
        raise RefError(f"{name!r} is not a valid branch or tag name")
