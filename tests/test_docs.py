"""The documentation site builds with warnings as errors: every page in the nav, every internal link
resolving, the API reference generated from the docstrings and the CLI reference from the click app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_documentation_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "editstore checkout" in cli and "--compose" in cli  # generated from the click application
    assert "set_if_equals" in (tmp_path / "site" / "reference" / "index.html").read_text()
    assert not (tmp_path / "site" / "hooks.py").exists()
