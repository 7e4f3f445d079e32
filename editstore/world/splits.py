"""Which of the fact world's subjects are held out from training learned editors (MEND).

A quarter of the subjects, chosen by a hash of the name, are held out: MEND's editor is
meta-trained on requests about the others, and its benchmark row is measured on requests
about these, so the facts it is scored on were never seen while training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


def held_out(subject: str) -> bool:
    """True for the subjects kept out of editor training."""
    return hashlib.sha256(subject.encode("utf-8")).digest()[0] % 4 == 0


def training_requests(requests: Sequence[dict[str, Any]], val_size: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) requests about subjects that are not held out; validation subjects are not in train."""
    pool = [r for r in requests if not held_out(r["subject"])]
    val_subjects: list[str] = []
    for r in pool:
        if r["subject"] not in val_subjects and len(val_subjects) < val_size:
            val_subjects.append(r["subject"])
    val = [r for r in pool if r["subject"] in val_subjects]
    seen: set[str] = set()
    val = [r for r in val if not (r["subject"] in seen or seen.add(r["subject"]))]
    return [r for r in pool if r["subject"] not in set(val_subjects)], val


def held_out_requests(requests: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` requests about distinct held-out subjects."""
    seen: set[str] = set()
    out = [r for r in requests if held_out(r["subject"]) and not (r["subject"] in seen or seen.add(r["subject"]))]
    return out[:n]
