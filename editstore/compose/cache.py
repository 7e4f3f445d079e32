"""The composed-parameter cache: derived state under ``<store>/cache/`` (DESIGN §3, §5).

An entry is one composed parameter, in the base dtype and layout, exactly the bytes a
checkout writes. Its key is the sha256 of what determines those bytes: the mode
(sequential or batched), the parameter, the base tensor's hash, the edits it was
composed from (sequential: the delta objects touching this parameter, in order;
batched: the whole tree) and the device type. So a neighbouring version that leaves a
parameter alone hits the same entry.

Each entry is a safetensors file whose header holds the sha256 of the tensor bytes; a
read recomputes it and drops the entry on a mismatch, so a corrupt entry is never
used. Writes go to a temporary file and are renamed into place. The cache is trimmed
to the store's ``cache.max_bytes``, least recently used first (a hit refreshes the
file's mtime), after each checkout and by ``editstore gc``; deleting it loses nothing.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file as st_save_file

from ..core.hashing import sha256_bytes
from ..model.checkpoint import DTYPES, raw_view, safetensors_header

log = logging.getLogger(__name__)

TENSOR = "weight"


@dataclass(frozen=True)
class TrimReport:
    """What a trim removed and what is left."""

    removed: int
    freed_bytes: int
    kept_bytes: int


class ComposedCache:
    """Composed parameters by key, verified on read, bounded to ``max_bytes`` (0 disables the cache)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key[2:]}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor for ``key``, or None when absent or failing its hash (then it is removed).

        The tensor is a private (copy-on-write) memory map of the entry: nothing is copied,
        no file descriptor stays open, and writing to it never changes the file.
        """
        path = self.path(key)
        if not self.enabled or not path.is_file():
            return None
        try:
            data = torch.from_file(str(path), shared=False, size=path.stat().st_size, dtype=torch.uint8)
        except (OSError, RuntimeError) as exc:  # unreadable now (permissions, no memory): not proof of corruption
            log.warning("cannot read cache entry %s (%s)", path.name, exc)
            return None
        try:
            raw = raw_view(data)
            header, start = safetensors_header(raw)
            entry = header[TENSOR]
            begin, end = (start + offset for offset in entry["data_offsets"])
            want = (header.get("__metadata__") or {}).get("sha256")
            dtype = DTYPES[entry["dtype"]]
            shape = [int(n) for n in entry["shape"]]
            ok = end <= len(raw) and (end - begin) == math.prod(shape) * dtype.itemsize
            ok = ok and want == sha256_bytes(raw[begin:end])
            tensor = data[begin:end].view(dtype).reshape(shape) if ok else None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            log.warning("dropping unreadable cache entry %s (%s)", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        if tensor is None:
            log.warning("dropping cache entry %s: its bytes do not match their hash", path.name)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # least recently used goes first
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Store ``tensor`` (CPU) under ``key``; never raises for a full disk, the cache is optional."""
        if not self.enabled or tensor.numel() * tensor.element_size() > self.max_bytes:
            return
        path = self.path(key)
        tensor = tensor.detach().cpu().contiguous()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            os.close(fd)
        except OSError as exc:
            log.warning("could not cache a composed parameter (%s)", exc)
            return
        try:
            st_save_file({TENSOR: tensor}, tmp, metadata={"sha256": sha256_bytes(raw_view(tensor))})
            os.replace(tmp, path)
        except (OSError, SafetensorError) as exc:
            Path(tmp).unlink(missing_ok=True)
            log.warning("could not cache a composed parameter (%s)", exc)

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("??/*.safetensors")) if self.root.is_dir() else []

    def trim(self, max_bytes: int | None = None) -> TrimReport:
        """Remove least recently used entries (and stale temporaries) until at most ``max_bytes`` remain."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        for tmp in self.root.glob("??/.tmp-*") if self.root.is_dir() else []:
            tmp.unlink(missing_ok=True)
        stats = sorted(((p.stat().st_mtime, p.stat().st_size, p) for p in self.entries()), key=lambda e: e[0])
        total = sum(size for _, size, _ in stats)
        removed = freed = 0
        for _, size, path in stats:
            if total <= limit:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
            freed += size
        return TrimReport(removed, freed, total)
