"""Statistics computed by two real torch.distributed processes (gloo on CPU), launched by torchrun
through ``stats compute --nproc 2``: the same Σ as one process computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from editstore import Store
from editstore.moments import find_stats, load_sigma, read_corpus, stream_stats

MODULES = ["transformer.h.1.mlp.c_proj", "transformer.h.2.mlp.c_proj"]


def test_two_processes_store_the_statistics_one_process_computes(tmp_path: Path, world: Path) -> None:
    corpus = read_corpus(world / "corpus.txt")
    with Store.init(world, tmp_path / "one") as one:
        single = stream_stats(one, MODULES, corpus, 301, device=torch.device("cpu"))  # an odd count: unequal shares
        expected = {r.module: (r, load_sigma(one, r)) for r in single}
    Store.init(world, tmp_path / "two").close()
    argv = [sys.executable, "-m", "editstore", "--store", str(tmp_path / "two"), "stats", "compute",
            "--corpus", str(world / "corpus.txt"), "--samples", "301", "--device", "cpu", "--nproc", "2",
            *(f"--module={m}" for m in MODULES)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("positions") == len(MODULES)  # only the first process reports
    with Store.open(tmp_path / "two") as two:
        for module, (row, sigma) in expected.items():
            got = find_stats(two, module, corpus.digest, 301)
            assert got is not None and got.count == row.count
            diff = (load_sigma(two, got) - sigma).abs().max() / sigma.abs().max()
            assert diff <= 1e-6, (module, float(diff))
            assert got.object == row.object  # float64 sums in another order, cast to float32: the same bytes
