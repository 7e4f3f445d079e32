"""Revision syntax: ``HEAD``, branch and tag names, full ids, hex prefixes (≥ 4), ``REV~N`` and ``REV^``.

Also the rules a new branch or tag name must follow, those of ``git check-ref-format``
with a narrower alphabet: ASCII letters, digits and ``. _ - /`` (so no whitespace,
control characters, ``~ ^ : ? * [`` or backslashes, nor the ``@{`` of git's reflog syntax); no
empty component, no component that starts with ``.`` or ends with ``.lock``, no ``..``,
no leading ``-``, no trailing ``/`` or ``.``, not ``HEAD``, at most ``MAX_REF_NAME``
characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import AmbiguousRevisionError, RefError, RevisionError, UnknownRevisionError
from .hashing import HEX_ID_LENGTH, is_hex
from .refs import HEAD, HEADS, REMOTES, TAGS, Refs

if TYPE_CHECKING:
    import sqlite_utils

MIN_PREFIX = 4
MAX_REF_NAME = 255  # characters, as a file name (git keeps a ref as a file)
MAX_REVISION = 1024  # characters of a whole revision, suffixes included
MAX_BACK = 10**9  # first-parent steps one revision may go back
_SUFFIX = re.compile(r"(~\d*|\^+)$")
_REF_CHARS = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass(frozen=True)
class Revision:
    """A parsed revision: a name (ref, id or prefix) and how many first-parent steps back."""

    name: str
    back: int = 0


def parse_revision(text: str) -> Revision:
    """Split ``main~2^`` into ``Revision("main", 3)``; :class:`RevisionError` for text that cannot be one."""
    if not text:
        raise UnknownRevisionError("empty revision (name a branch, tag, id or HEAD)")
    if len(text) > MAX_REVISION:
        raise RevisionError(f"a revision has at most {MAX_REVISION} characters, not {len(text)}")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise RevisionError(f"revision {text!r} holds whitespace or control characters")
    name, back = text, 0
    while (m := _SUFFIX.search(name)) is not None:
        suffix = m.group(1)
        digits = suffix[1:].lstrip("0") if suffix.startswith("~") else ""
        if len(digits) > len(str(MAX_BACK)):  # refused before int() reads a number of any length
            raise RevisionError(f"{text}: ~N takes at most {MAX_BACK} steps")
        back += (int(suffix[1:]) if len(suffix) > 1 else 1) if suffix.startswith("~") else len(suffix)
        if back > MAX_BACK:
            raise RevisionError(f"{text} goes back more than {MAX_BACK} commits")
        name = name[: m.start()]
    if not name:
        raise UnknownRevisionError(f"{text}: ~ and ^ need a revision before them, like HEAD~1")
    return Revision(name, back)


def check_ref_name(name: str) -> None:
    """Raise :class:`RefError` unless ``name`` is a usable branch or tag name (rules in the module docstring)."""
    problem = ref_name_problem(name)
    if problem:
        raise RefError(f"{name!r} is not a valid branch or tag name: {problem}")


def ref_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a branch or tag name, or None when it can."""
    if not name:
        return "it is empty"
    if len(name) > MAX_REF_NAME:
        return f"it has {len(name)} characters, at most {MAX_REF_NAME} are allowed"
    if not _REF_CHARS.fullmatch(name):
        return "use ASCII letters, digits and . _ - / only"
    if name == "HEAD":
        return "HEAD is reserved"
    if name.startswith("-"):
        return "it must not start with '-'"
    if ".." in name:
        return "it must not contain '..'"
    if name.endswith(("/", ".")):
        return "it must not end with '/' or '.'"
    for component in name.split("/"):
        if not component:
            return "it must not contain '//' or start with '/'"
        if component.startswith("."):
            return "no part between slashes may start with '.'"
        if component.endswith(".lock"):
            return "no part between slashes may end with '.lock'"
    return None


def lookup(db: sqlite_utils.Database, refs: Refs, name: str) -> tuple[str, str]:
    """``("commit", id)``, ``("edit", id)`` or ``("editor", id)`` for a revision's name (no ``~``/``^``):
    HEAD, a branch, a tag, a remote-tracking branch (``origin/main``), or a full id or unique prefix of a
    commit, edit or trained editor."""
    if name == HEAD:
        return "commit", refs.head()
    for prefix in (HEADS, TAGS, REMOTES):  # main, v1, origin/main
        ref = refs.get(prefix + name)
        if ref is not None and ref.target is not None:
            return "commit", ref.target
    text = name.lower()
    if not is_hex(text) or len(text) > HEX_ID_LENGTH:
        raise UnknownRevisionError(f"unknown revision {name!r} (not a branch, tag or id)")
    if len(text) < MIN_PREFIX:
        raise UnknownRevisionError(f"unknown revision {name!r}; id prefixes need at least {MIN_PREFIX} characters")
    matches = [
        (kind, row[0])
        for kind, table in (("commit", "commits"), ("edit", "edits"), ("editor", "editors"))
        for row in db.execute(f"SELECT id FROM {table} WHERE id >= ? AND id < ?", [text, text + "g"])
    ]
    if not matches:
        raise UnknownRevisionError(f"unknown revision {name!r}")
    if len(matches) > 1:
        listed = ", ".join(f"{k} {i[:12]}" for k, i in matches[:5])
        raise AmbiguousRevisionError(f"revision {name!r} is ambiguous: {listed}")
    return matches[0]
