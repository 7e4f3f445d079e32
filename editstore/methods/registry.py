"""The edit methods, each declared once: what it needs and what it can do.

Every place that asks a question about a method (does it need Σ, can it delete a behaviour, can a
batched checkout re-solve its edits, which closed form solves it) asks :func:`method`. Importing
this module costs nothing: the methods' code lives in the modules the registry names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.requests import EditRequest, is_deletion
from ..errors import EditStoreError, HparamsError


class UnknownMethodError(EditStoreError):
    """The method is not one of :data:`METHODS`."""


@dataclass(frozen=True)
class Method:
    """One edit method.

    ``batched``: it solves a batch of requests jointly (else one request after another, each with the
    earlier ones in place); ``needs_statistics``: it needs Σ = E[k kᵀ] of the edited modules' inputs;
    ``can_delete``: it can suppress a ``target_true`` (a behaviour deletion) instead of writing a
    ``target_new``; ``locate``: a locate-then-edit method, whose edits store their keys and targets so a
    batched checkout can re-solve them; ``solver``: its closed form in :mod:`editstore.methods.solvers`
    (``equality``: W K = V exactly, or softened by λ_e; ``least_squares``: MEMIT's; ``null_space``:
    AlphaEdit's); ``prior_keys``: it needs the keys of the version's earlier edits (AlphaEdit projects
    them out).
    """

    name: str
    paper: str
    batched: bool
    needs_statistics: bool
    can_delete: bool
    locate: bool
    solver: str | None = None
    prior_keys: bool = False


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("rome", "Meng et al. 2022, ROME", batched=False, needs_statistics=True, can_delete=True, locate=True,
           solver="equality"),
    Method("memit", "Meng et al. 2023, MEMIT", batched=True, needs_statistics=True, can_delete=True, locate=True,
           solver="least_squares"),
    Method("emmet", "Gupta et al. 2024, EMMET", batched=True, needs_statistics=True, can_delete=True, locate=True,
           solver="equality"),
    Method("alphaedit", "Fang et al. 2025, AlphaEdit", batched=True, needs_statistics=True, can_delete=True,
           locate=True, solver="null_space", prior_keys=True),
    Method("ft", "Zhu et al. 2020, constrained fine-tuning", batched=False, needs_statistics=False,
           can_delete=False, locate=False),
    Method("mend", "Mitchell et al. 2022, MEND", batched=False, needs_statistics=False, can_delete=False,
           locate=False),
)}
METHODS = tuple(REGISTRY)


def method(name: str) -> Method:
    """The method ``name``; :class:`UnknownMethodError` naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def require_writes(name: str, requests: Sequence[EditRequest]) -> None:
    """:class:`HparamsError` when ``requests`` hold a behaviour deletion that method ``name`` cannot do."""
    if not method(name).can_delete and any(is_deletion(r) for r in requests):
        deleting = ", ".join(m.name for m in REGISTRY.values() if m.can_delete)
        raise HparamsError(f"{name} writes a target_new; a behaviour deletion needs {deleting}")
