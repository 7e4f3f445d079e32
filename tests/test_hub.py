"""Bases named by Hub id, resolved in a Hugging Face cache laid out as huggingface_hub lays it out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from editstore import Store
from editstore.model import hub

from .conftest import invoke

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``org/tiny-gpt2`` in a temporary cache: models--org--tiny-gpt2/{refs/main, snapshots/COMMIT/...}."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny-gpt2"
    shutil.copytree(gpt2_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded, whatever the test asks
    return cache


def test_a_hub_id_resolves_in_the_cache_and_is_recorded(hub_cache: Path, tmp_path: Path, gpt2_dir: Path) -> None:
    assert hub.is_hub_id("org/tiny-gpt2") and not hub.is_hub_id(str(gpt2_dir)) and not hub.is_hub_id("not an id")
    with Store.init("org/tiny-gpt2", tmp_path / "s") as store:
        assert store.base.path == (hub_cache / "models--org--tiny-gpt2" / "snapshots" / COMMIT).resolve()
        row = store.db.execute("SELECT value FROM meta WHERE key = 'base.hub'").fetchone()
        assert json.loads(row[0]) == {"id": "org/tiny-gpt2", "revision": "main", "commit": COMMIT}
        with Store.init(gpt2_dir, tmp_path / "t") as same:
            assert same.base_fingerprint == store.base_fingerprint
    with Store.init(f"org/tiny-gpt2@{COMMIT}", tmp_path / "u") as pinned:
        assert pinned.base.path.name == COMMIT


def test_a_hub_id_missing_from_the_cache_is_a_clear_error(hub_cache: Path, tmp_path: Path) -> None:
    out = invoke("init", "--base", "org/absent", "--store", tmp_path / "s", code=2)
    assert out == "" and not (tmp_path / "s" / "store.db").exists()
    with pytest.raises(Exception, match="org/absent@main is not in the local Hugging Face cache"):
        Store.init("org/absent", tmp_path / "s")
    with pytest.raises(Exception, match="org/tiny-gpt2@v2 is not in the local Hugging Face cache"):
        Store.init("org/tiny-gpt2@v2", tmp_path / "s", download=True)  # HF_HUB_OFFLINE wins over --download
