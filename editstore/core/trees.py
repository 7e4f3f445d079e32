"""Trees as lists: a version's edit ids in order, and the two list operations history needs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def minus(items: Iterable[str], other: Iterable[str]) -> list[str]:
    """``items`` without those in ``other``, order kept."""
    drop = set(other)
    return [i for i in items if i not in drop]


def reinsert(tree: Sequence[str], items: Sequence[str], order: Sequence[str]) -> list[str]:
    """``tree`` with ``items`` put back where ``order`` (an earlier tree) had them: each after the nearest
    edit before it in ``order`` that ``tree`` holds, so reverting a commit that took edits out restores its
    parent's tree exactly when nothing else changed."""
    out, held = list(tree), set(tree)
    position = {e: i for i, e in enumerate(order)}
    for item in items:
        before = order[: position[item]] if item in position else []
        anchor = next((e for e in reversed(before) if e in held), None)
        out.insert(out.index(anchor) + 1 if anchor is not None else 0, item)
        held.add(item)
    return out
