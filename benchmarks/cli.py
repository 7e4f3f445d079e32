"""How long the everyday commands take as a user types them: whole processes, Python's start and
every import inside the clock. Prints one table.

    python benchmarks/cli.py [--commits 1000] [--repeat 7] [--workdir DIR]

A store on a tiny GPT-2 base gets --commits commits of one random rank-one edit each (built once
through the library, not timed). Each command then runs --repeat times as a fresh process of the
installed ``editstore`` console script (the script itself, not a shell shim in front of it), the
commands taking turns round by round; the table shows the median, fastest and slowest wall seconds.
``python -c pass`` runs beside them: the floor any Python command pays.

Bars on two idle cores: ``editstore --help`` ≤ 0.3 s; ``log``, ``show``, ``branch``, ``tag`` and
``config`` on a 1,000-commit store ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from editstore.porcelain import create_branch, tag


def build_store(root: Path, commits: int) -> Path:
    """A store of ``commits`` one-edit commits over a tiny GPT-2, plus a branch and a tag."""
    from tqdm import tqdm

    from editstore import NewEdit, Store
    from editstore.model.synthetic import random_delta, tiny_model

    base = tiny_model("gpt2", root / "base")
    store = Store.init(base, root / "store")
    params = ["transformer.h.0.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.weight"]
    for i in tqdm(range(commits), desc="commits", unit="commit"):
        delta = random_delta(store.base, [params[i % 2]], seed=i)
        store.record_edits([NewEdit(delta, "random", name=f"edit-{i}")], message=f"edit {i}")
    create_branch(store, "feature", "HEAD~10")
    tag(store, "v1", "HEAD~100")
    store.close()
    return root / "store"


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    script = Path(sysconfig.get_path("scripts")) / "editstore"
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        store = build_store(Path(tmp), args.commits)
        env = {**os.environ, "EDITSTORE_DIR": str(store)}
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "editstore --help": [str(script), "--help"],
            "editstore log": [str(script), "log"],
            "editstore log --oneline -n 20": [str(script), "log", "--oneline", "-n", "20"],
            "editstore show HEAD": [str(script), "show", "HEAD"],
            "editstore branch": [str(script), "branch"],
            "editstore tag": [str(script), "tag"],
            "editstore config": [str(script), "config"],
        }
        for argv in cases.values():  # one untimed run each: the page cache holds every file afterwards
            run(argv, env)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, argv in cases.items():
                times[name].append(run(argv, env))

    table = Table(title=f"whole commands, {args.commits}-commit store, {args.repeat} runs each (seconds)")
    for column in ("command", "median", "fastest", "slowest"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, values in times.items():
        table.add_row(name, f"{statistics.median(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
