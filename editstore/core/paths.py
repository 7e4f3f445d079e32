"""Directories: finding a store as git finds a repository, and creating the store's and output directories."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputDirError, StoreNotFoundError

STORE_DIRNAME = ".editstore"
DB_FILE = "store.db"


def check_output_dir(out: Path) -> None:
    """``out`` must be missing or an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputDirError(f"--out {out} exists and is not an empty directory")


def make_dir(path: Path, what: str) -> None:
    """Create ``path`` and its parents; :class:`OutputDirError` naming ``what`` when that cannot be done."""
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create {what}: {exc.strerror or exc}") from None


def find_store(explicit: str | Path | None = None, *, start: Path | None = None) -> Path:
    """The store directory: ``explicit``, else ``.editstore`` in ``start`` (default: the working directory)
    or its nearest ancestor that has one."""
    if explicit:
        root = Path(explicit)
        if not (root / DB_FILE).is_file():
            raise StoreNotFoundError(f"no editstore store at {root}")
        return root.resolve()
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / STORE_DIRNAME / DB_FILE).is_file():
            return directory / STORE_DIRNAME
    raise StoreNotFoundError(
        f"no editstore store in {here} or any parent; run `editstore init --base MODEL_DIR` or pass --store"
    )
