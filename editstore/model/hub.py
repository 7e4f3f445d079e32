"""Bases named by Hugging Face Hub id (``org/name`` or ``org/name@revision``), resolved in the local
Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME``) with huggingface_hub.

Offline by default: a base that is not in the cache is an error naming the id, as a version-control
command should not start a multi-gigabyte download by surprise. ``download=True`` (``init --download``)
fetches what is missing, unless ``HF_HUB_OFFLINE`` forbids it, as transformers does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BaseModelError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class HubBase:
    """A base resolved from the Hub cache: its id, the revision asked for, the commit it resolved to."""

    repo_id: str
    revision: str
    commit: str
    path: Path


def is_hub_id(text: str) -> bool:
    """True when ``text`` reads as ``org/name[@revision]`` and is not an existing directory."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def resolve(name: str, *, download: bool = False) -> HubBase:
    """The snapshot directory of ``org/name[@revision]`` (default revision ``main``) in the local cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    repo_id, _, revision = name.partition("@")
    revision = revision or "main"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    home = os.environ.get("HF_HOME")
    cache = os.environ.get("HF_HUB_CACHE") or (str(Path(home) / "hub") if home else None)  # read now, not at import
    try:
        path = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                      local_files_only=not download or offline))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        hint = "" if download and not offline else " (pass --download to fetch it)"
        raise BaseModelError(f"{repo_id}@{revision} is not in the local Hugging Face cache{hint}") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise BaseModelError(f"cannot resolve {repo_id}@{revision}: {str(exc).splitlines()[0]}") from None
    return HubBase(repo_id, revision, path.name, path)
