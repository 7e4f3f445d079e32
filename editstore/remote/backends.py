"""Where a remote keeps its files: object storage through obstore, or a plain directory.

Both offer the three writes a remote needs: put a file only if it is absent (objects and records,
which never change), replace a file only if it still holds the version read before (refs: a
compare-and-swap), and read or list. On S3 (and the services that speak its API: MinIO,
SeaweedFS, Ceph, R2) the swap is a conditional write, ``If-Match`` on the ETag read, and the create
is ``If-None-Match: *``; obstore exposes both (``mode="create"``, ``mode={"e_tag": ...}``), which is
why it is the client here (fsspec has no common conditional-write API). A directory has no ETags:
its creates are hard links that fail on an existing name, its swaps compare and rename under an
advisory lock.

S3 credentials and region come from the standard AWS environment variables and, for what they do
not set, from the AWS shared files (``~/.aws/credentials`` and ``~/.aws/config``, profile
``$AWS_PROFILE`` or ``default``); the endpoint from ``$AWS_ENDPOINT_URL``, the profile's
``endpoint_url`` or the store setting ``remote.endpoint_url``.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ..errors import RemoteError


@dataclass(frozen=True)
class Found:
    """A file read from a remote and the version a later swap must name."""

    data: bytes
    version: str


class Backend(Protocol):
    """The operations a remote's storage offers; paths are relative, with ``/`` separators."""

    url: str

    def get(self, path: str) -> Found | None:
        """The file and its version, or None when it does not exist."""

    def create(self, path: str, data: bytes) -> bool:
        """Write ``data`` at ``path`` unless something is there; False when it was."""

    def swap(self, path: str, data: bytes, version: str | None) -> bool:
        """Replace the file at ``path`` if it still has ``version`` (None: create it if absent); False when
        another writer got there first."""

    def list(self, prefix: str) -> list[str]:
        """The paths below ``prefix`` (a folder, ending in ``/``)."""


# ---------------------------------------------------------------------- object storage


def _aws_files() -> dict[str, str]:
    """What the AWS shared files say for the profile: access key, secret, session token, region, endpoint."""
    profile = os.environ.get("AWS_PROFILE", "default")
    home = Path.home() / ".aws"
    credentials = configparser.ConfigParser()
    credentials.read(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", home / "credentials"))
    config = configparser.ConfigParser()
    config.read(os.environ.get("AWS_CONFIG_FILE", home / "config"))
    section = "default" if profile == "default" else f"profile {profile}"
    out: dict[str, str] = {}
    if credentials.has_section(profile):
        for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            if credentials.has_option(profile, key):
                out[key] = credentials.get(profile, key)
    if config.has_section(section):
        for key in ("region", "endpoint_url", "aws_access_key_id", "aws_secret_access_key"):
            if config.has_option(section, key):
                out.setdefault(key, config.get(section, key))
    return out


def _s3_options(endpoint: str | None) -> dict[str, Any]:
    """obstore's S3 options from the environment, the AWS files and the store's endpoint setting."""
    files = _aws_files()
    options: dict[str, Any] = {}
    env = os.environ
    if not env.get("AWS_ACCESS_KEY_ID") and "aws_access_key_id" in files:
        options["access_key_id"] = files["aws_access_key_id"]
        options["secret_access_key"] = files.get("aws_secret_access_key", "")
        if "aws_session_token" in files:
            options["session_token"] = files["aws_session_token"]
    if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
        options["region"] = files.get("region", "us-east-1")
    chosen = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or files.get("endpoint_url") or endpoint
    if chosen:
        options["endpoint"] = chosen
        options["client_options"] = {"allow_http": chosen.startswith("http://")}
    return options


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


class ObjectStoreBackend:
    """A bucket and prefix of an S3-compatible service."""

    def __init__(self, url: str, *, endpoint: str | None = None) -> None:
        from obstore.store import S3Store

        parsed = urlparse(url)
        self.url = url
        prefix = parsed.path.strip("/")
        retry: Any = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}  # a wrong endpoint fails in seconds
        try:
            self.store = S3Store(parsed.netloc, prefix=prefix or None, retry_config=retry, **_s3_options(endpoint))
        except Exception as exc:  # obstore's configuration errors: unknown keys, a malformed endpoint
            raise RemoteError(f"cannot use remote {url}: {exc}") from None

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """obstore's failures as one clear :class:`RemoteError` (credentials, bucket, network)."""
        from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError

        try:
            yield
        except FileNotFoundError:
            raise
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise RemoteError(f"{self.url}: {what} was refused (missing or wrong credentials, or no such bucket): "
                              f"{_first_line(exc)}") from None
        except (BaseError, OSError, RuntimeError) as exc:  # connection refused, DNS, timeouts, no credentials
            text = str(exc)
            if "169.254.169.254" in text or "credential" in text.lower():
                raise RemoteError(f"{self.url}: no credentials found for {what} (set AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY, or an AWS profile)") from None
            raise RemoteError(f"{self.url}: {what} failed: {_first_line(exc)}") from None

    def get(self, path: str) -> Found | None:
        import obstore

        with self._errors(f"reading {path}"):
            try:
                result = obstore.get(self.store, path)
            except FileNotFoundError:
                return None
            return Found(bytes(result.bytes()), str(result.meta["e_tag"]))

    def create(self, path: str, data: bytes) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with self._errors(f"writing {path}"):
            try:
                obstore.put(self.store, path, data, mode="create")
            except (AlreadyExistsError, PreconditionError):
                return False
            return True

    def swap(self, path: str, data: bytes, version: str | None) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        if version is None:
            return self.create(path, data)
        with self._errors(f"updating {path}"):
            try:
                obstore.put(self.store, path, data, mode={"e_tag": version})
            except (PreconditionError, NotFoundError, AlreadyExistsError, FileNotFoundError):
                return False
            return True

    def list(self, prefix: str) -> list[str]:
        import obstore

        with self._errors(f"listing {prefix}"):
            return [str(meta["path"]) for batch in obstore.list(self.store, prefix) for meta in batch]


# ---------------------------------------------------------------------- a directory


def _os_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """A directory backend's method whose operating-system errors (a read-only or full disk, a permission)
    become :class:`RemoteError`."""

    @functools.wraps(method)
    def guarded(self: DirectoryBackend, *args: Any) -> Any:
        try:
            return method(self, *args)
        except OSError as exc:
            raise RemoteError(f"remote {self.url}: {exc}") from None

    return guarded


class DirectoryBackend:
    """A remote in a directory (a shared disk): creates by hard link, swaps by rename under a lock. An
    operating-system error (a read-only or full disk, a permission) is a :class:`RemoteError`."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        if not root.is_dir():
            raise RemoteError(f"remote {url}: {root} is not a directory (create it first: the remote is not made "
                              "by accident)")

    def _path(self, path: str) -> Path:
        return self.root.joinpath(*path.split("/"))

    @_os_errors
    def get(self, path: str) -> Found | None:
        try:
            data = self._path(path).read_bytes()
        except FileNotFoundError:
            return None
        return Found(data, hashlib.sha256(data).hexdigest())

    def _staged(self, target: Path, data: bytes) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    @_os_errors
    def create(self, path: str, data: bytes) -> bool:
        target = self._path(path)
        if target.exists():
            return False
        tmp = self._staged(target, data)
        try:
            os.link(tmp, target)  # fails on an existing name: a create that no other writer can race
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    @_os_errors
    def swap(self, path: str, data: bytes, version: str | None) -> bool:
        target = self._path(path)
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get(path)
            if (current.version if current else None) != version:
                return False
            os.replace(self._staged(target, data), target)
            return True

    @_os_errors
    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".tmp-"))


def directory_of(url: str) -> Path | None:
    """The directory a ``file://`` URL or a plain path names; None for an ``s3://`` URL. A URL of any other
    scheme, or an ``s3://`` one without a bucket, is a :class:`RemoteError`. Connects to nothing."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise RemoteError(f"remote URL {url!r} names no bucket (s3://BUCKET/PREFIX)")
        return None
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "":
        return Path(url).resolve()
    raise RemoteError(f"remote URL {url!r}: editstore speaks s3://BUCKET/PREFIX, file:///PATH or a directory path")


def open_backend(url: str, *, endpoint: str | None = None) -> Backend:
    """The backend for ``url``: ``s3://BUCKET/PREFIX``, ``file:///PATH`` or a directory path."""
    directory = directory_of(url)
    return ObjectStoreBackend(url, endpoint=endpoint) if directory is None else DirectoryBackend(directory, url)
