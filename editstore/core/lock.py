"""The writer lock: an advisory ``flock`` on ``<store>/lock`` so writers serialize."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import LockTimeoutError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def writer_lock(path: Path, *, timeout: float = 120.0, poll: float = 0.02) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` for the block; wait up to ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeoutError(f"another editstore process has held {path} for over {timeout:.0f} s") from None
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
