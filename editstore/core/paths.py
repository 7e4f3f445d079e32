"""Directories editstore creates for the user: the store's own, and output directories."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputDirError


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
