"""editstore: version control for knowledge edits of transformer language models."""

from .delta import Delta, Factors
from .errors import EditStoreError
from .store import NewEdit, Store
from .editing import edit  # noqa: E402  (needs Store)

__all__ = ["Delta", "EditStoreError", "Factors", "NewEdit", "Store", "edit"]
__version__ = "0.1.0"
