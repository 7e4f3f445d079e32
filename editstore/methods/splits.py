"""Subject-disjoint splits of edit requests for learned editors (MEND): which subjects are held out.

A quarter of the subjects, chosen by a hash of the name, are held out: MEND's editor is
meta-trained on requests about the others, and its benchmark row is measured on requests
about these, so the facts it is scored on were never seen while training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..core.requests import EditRequest


def one_per_subject(requests: Sequence[EditRequest]) -> list[dict[str, Any]]:
    """The first request of each subject, in order."""
    seen: set[str] = set()
    return [r for r in requests if not (r["subject"] in seen or seen.add(r["subject"]))]


def held_out(subject: str) -> bool:
    """True for the subjects kept out of editor training."""
    return hashlib.sha256(subject.encode("utf-8")).digest()[0] % 4 == 0


def _validation(subject: str) -> bool:
    """One in eight of the subjects that are not held out: the validation split."""
    return hashlib.sha256(subject.encode("utf-8")).digest()[1] % 8 == 0


def training_requests(requests: Sequence[EditRequest], val_size: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) requests about subjects that are not held out, on disjoint subjects.

    Validation takes ``val_size`` requests spread over its subjects and relations. No
    training request keeps a neighbourhood prompt about a held-out or validation subject,
    so their prompts are never seen in training, not even as locality prompts.
    """
    pool = [r for r in requests if not held_out(r["subject"])]
    val_pool = [r for r in pool if _validation(r["subject"])]
    val = val_pool[:: max(1, len(val_pool) // max(val_size, 1))][:val_size]
    unseen = {r["subject"] for r in requests if held_out(r["subject"]) or _validation(r["subject"])}
    train = []
    for r in pool:
        if r["subject"] in unseen:
            continue
        near = [n for n in r.get("neighborhood_prompts", []) if not any(s in n["prompt"] for s in unseen)]
        train.append({**r, "neighborhood_prompts": near})
    return train, val


def held_out_requests(requests: Sequence[EditRequest], n: int) -> list[dict[str, Any]]:
    """``n`` requests about distinct held-out subjects."""
    return one_per_subject([r for r in requests if held_out(r["subject"])])[:n]


def split_by_subject(requests: Sequence[EditRequest], val_size: int) -> tuple[list[dict], list[dict]]:
    """A user's requests as (train, validation) on disjoint subjects (about one in eight for validation)."""
    val_pool = [r for r in requests if _validation(r["subject"])]
    val = val_pool[:: max(1, len(val_pool) // max(val_size, 1))][:val_size]
    return [r for r in requests if not _validation(r["subject"])], val
