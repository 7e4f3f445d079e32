"""editstore: version control for knowledge edits of transformer language models."""

from typing import Any

from .errors import EditStoreError
from .model.delta import Delta, Factors
from .store import NewEdit, Store

__all__ = ["Delta", "EditStoreError", "Factors", "NewEdit", "Store", "edit"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``editstore.edit`` is imported on first use: it brings the edit methods and transformers' model
    classes, which a checkout, a log or a diff never needs."""
    if name == "edit":
        from .editing import edit

        return edit
    raise AttributeError(f"module 'editstore' has no attribute {name!r}")
