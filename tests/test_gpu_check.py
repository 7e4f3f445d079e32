"""benchmarks/gpu_check.sh on a machine without CUDA: it says so and exits 0 (where CUDA exists it runs
the CUDA tests and the GPU benchmarks instead, which a session with a GPU lent does)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the GPU checks (minutes)")
def test_the_gpu_check_script_skips_cleanly_without_cuda(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out.txt")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in (tmp_path / "out.txt").read_text()
