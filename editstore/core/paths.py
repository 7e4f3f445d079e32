"""Directories: finding a store as git finds a repository, and creating the store's and output directories."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
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


@contextlib.contextmanager
def staged_directory(target: Path, what: str, *, replaceable: bool = False) -> Iterator[Path]:
    """A staging directory beside ``target`` that becomes ``target`` when the block succeeds; on any failure it
    is removed and ``target`` is left as it was. ``target`` must be missing or empty, unless ``replaceable``
    (an older build of the same thing, replaced whole). ``what`` names it in errors."""
    if not replaceable:
        check_output_dir(target)
    staging = target.parent / f".{target.name}.editstore-tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    make_dir(staging, what)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target) if replaceable else target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
