"""editstore: version control for knowledge edits of transformer language models.

The package is layered; each layer imports only those below it:

- ``errors``: the named exceptions every layer raises;
- ``core/``: content addressing, objects, records, the SQLite database, refs, revisions, settings,
  schemas and edit requests (no torch);
- ``model/``: checkpoints, deltas and running models (torch, transformers);
- ``methods/``: the edit methods (ROME, MEMIT, EMMET, AlphaEdit, MEND, FT), which never see a store;
- ``store``: the repository (records, refs, history);
- ``compose/``: composition, the composed-parameter cache and checkout; ``conflicts/``: conflict
  detection and its index; ``moments``: second-moment statistics in a store;
- the porcelain: ``porcelain`` (import, revert, show, branches and tags), ``editing`` (``edit``), ``merge``, ``behavior``, ``editors``, ``export``, ``fsck``, ``trace``;
- ``world/``: the synthetic fact worlds the benchmarks and tests edit.

The names below are imported on first use, so ``import editstore`` costs nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compose.checkout import checkout, checkout_to
    from .compose.diff import diff_versions
    from .editing import edit
    from .errors import EditStoreError
    from .model.delta import Delta, Factors
    from .porcelain import (
        branches,
        create_branch,
        delete_branch,
        import_delta,
        reset,
        revert,
        show,
        switch,
        tag,
        tags,
    )
    from .store import NewEdit, Store

__all__ = [
    "Delta", "EditStoreError", "Factors", "NewEdit", "Store", "branches", "checkout", "checkout_to", "create_branch",
    "delete_branch", "diff_versions", "edit", "import_delta", "reset", "revert", "show", "switch", "tag", "tags",
]
__version__ = "0.1.0"

_HOMES = {"Delta": ".model.delta", "Factors": ".model.delta", "EditStoreError": ".errors", "NewEdit": ".store",
          "Store": ".store", "edit": ".editing", "checkout": ".compose.checkout", "checkout_to": ".compose.checkout",
          "diff_versions": ".compose.diff"}
_HOMES.update((name, ".porcelain") for name in __all__ if name not in _HOMES)


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is used."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'editstore' has no attribute {name!r}")
