"""Content-addressed blob storage under ``<store>/objects``.

A blob is named by the sha256 of its bytes and stored at ``objects/ab/cdef...``.
Writes go to a temporary file in ``objects/tmp``, are fsynced, and renamed into
place, so a reader never sees a partial object and a crash leaves at most a
stray temporary file (removed by ``gc``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import CorruptObjectError
from .hashing import HEX_ID_LENGTH, is_hex, sha256_bytes

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectStore:
    """Immutable blobs addressed by sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def path(self, oid: str) -> Path:
        """Where the object ``oid`` lives (whether or not it exists)."""
        return self.root / oid[:2] / oid[2:]

    def exists(self, oid: str) -> bool:
        """True when the object is present."""
        return self.path(oid).is_file()

    def write(self, data: bytes) -> str:
        """Store ``data`` and return its id; writing existing content is a no-op."""
        oid = sha256_bytes(data)
        target = self.path(oid)
        if target.is_file():
            return oid
        self.tmp.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="obj-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        log.debug("wrote object %s (%d bytes)", oid, len(data))
        return oid

    def read(self, oid: str, *, verify: bool = True) -> bytes:
        """Bytes of the object; with ``verify`` the hash is checked."""
        try:
            data = self.path(oid).read_bytes()
        except FileNotFoundError:
            raise CorruptObjectError(f"object {oid} is missing from {self.root}") from None
        if verify and sha256_bytes(data) != oid:
            raise CorruptObjectError(f"object {oid} is corrupt: its content hash does not match its name")
        return data

    def stream(self, oids: Iterable[str]) -> Iterator[memoryview]:
        """The hash-verified bytes of each object in turn, read into one reused buffer.

        For reading many objects fast (a checkout reads every delta of a version): no
        allocation per object. Each view is valid only until the next one is yielded.
        """
        buffer = bytearray(1 << 20)
        root = str(self.root)
        for oid in oids:
            try:
                fd = os.open(f"{root}/{oid[:2]}/{oid[2:]}", os.O_RDONLY)  # not self.path(): pathlib is slow here
            except FileNotFoundError:
                raise CorruptObjectError(f"object {oid} is missing from {self.root}") from None
            try:
                size = os.fstat(fd).st_size
                if size > len(buffer):
                    buffer = bytearray(size)
                view = memoryview(buffer)[:size]
                got = 0
                while got < size and (n := os.readv(fd, [view[got:]])):
                    got += n
            finally:
                os.close(fd)
            if got != size or sha256_bytes(view) != oid:
                raise CorruptObjectError(f"object {oid} is corrupt: its content hash does not match its name")
            yield view

    def delete(self, oid: str) -> None:
        """Remove an object (used by ``gc``)."""
        self.path(oid).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        """Ids of every stored object."""
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if sub.name == "tmp" or not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                oid = sub.name + f.name
                if len(oid) == HEX_ID_LENGTH and is_hex(oid):
                    yield oid

    def temporaries(self) -> list[Path]:
        """Leftover temporary files from interrupted writes."""
        return sorted(self.tmp.glob("obj-*")) if self.tmp.is_dir() else []
