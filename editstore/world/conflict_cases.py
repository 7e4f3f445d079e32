"""Labelled conflict cases from the fact world, for tests and ``benchmarks/conflicts.py``.

For a stored edit (subject s, relation R, one formulation, target t):

- ``contradiction``: s and R in another formulation, another object of R;
- ``duplicate``: s and R in another formulation, t again;
- ``other-subject`` (a near miss): R in some formulation for a subject that has no edit;
- ``other-relation`` (a near miss): s with another relation and one of its objects.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.requests import EditRequest
from ..methods.splits import one_per_subject
from .knowledge import RELATIONS

KINDS = ("contradiction", "duplicate", "other-subject", "other-relation")
EXPECTED = {"contradiction": "contradiction", "duplicate": "duplicate", "other-subject": None, "other-relation": None}


@dataclass(frozen=True)
class Case:
    label: str  # one of KINDS
    request: EditRequest
    stored: int | None  # index of the stored request it is about (None for other-subject)


def _request(formulation: str, subject: str, target: str) -> dict[str, Any]:
    return {"prompt": formulation.replace("{s}", "{}"), "subject": subject, "target_new": target}


def conflict_cases(stored: Sequence[dict[str, Any]], free_subjects: Sequence[str], *, seed: int = 0) -> list[Case]:
    """One case of every kind per stored request (world requests with ``relation``)."""
    rng = random.Random(seed)
    relations = {r.name: r for r in RELATIONS}
    cases = []
    for i, r in enumerate(stored):
        rel = relations[r["relation"]]
        others = [f for f in rel.formulations if f.replace("{s}", "{}") != r["prompt"]]
        other_objects = [o for o in rel.objects if o != r["target_new"]]
        cases.append(Case("contradiction", _request(rng.choice(others), r["subject"], rng.choice(other_objects)), i))
        cases.append(Case("duplicate", _request(rng.choice(others), r["subject"], r["target_new"]), i))
        cases.append(Case("other-subject", _request(rng.choice(rel.formulations), rng.choice(free_subjects),
                                                    rng.choice(rel.objects)), None))
        other_rel = rng.choice([x for x in RELATIONS if x.name != rel.name])
        cases.append(Case("other-relation", _request(rng.choice(other_rel.formulations), r["subject"],
                                                     rng.choice(other_rel.objects)), i))
    return cases


def distinct_subject_requests(requests: Sequence[EditRequest], n: int, *, seed: int = 0) -> tuple[list[dict], list[str]]:
    """``n`` requests on distinct subjects, and the subjects that no chosen request is about."""
    rng = random.Random(seed)
    pool = list(requests)
    rng.shuffle(pool)
    chosen = one_per_subject(pool)[:n]
    free = sorted({r["subject"] for r in requests} - {r["subject"] for r in chosen})
    return chosen, free
