"""Rendering of records for the terminal: git-style text, tables, JSON."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from editstore.core.records import Commit


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def print_table(table: Table) -> None:
    Console(soft_wrap=True).print(table)


def decorations(commit_id: str, refs: dict[str, list[str]]) -> str:
    names = refs.get(commit_id, [])
    return f" ({', '.join(names)})" if names else ""


def format_commit(commit_id: str, commit: Commit, refs: dict[str, list[str]], *, oneline: bool) -> str:
    first_line = commit.message.splitlines()[0] if commit.message else ""
    if oneline:
        return f"{commit_id[:12]}{decorations(commit_id, refs)} [{commit.operation}] {first_line}"
    lines = [
        f"commit {commit_id}{decorations(commit_id, refs)}",
        *([f"Merge: {' '.join(p[:12] for p in commit.parents)}"] if len(commit.parents) > 1 else []),
        f"Operation: {commit.operation}",
        f"Author: {commit.author}",
        f"Date:   {commit.time}",
        "",
        *(f"    {line}" for line in (commit.message.splitlines() or [""])),
        "",
    ]
    return "\n".join(lines)


def format_show(shown: dict[str, Any]) -> str:
    if shown["type"] == "editor":
        m = shown["metrics"]
        return "\n".join([
            f"editor {shown['id']}",
            f"Method:   {shown['method']}",
            f"Modules:  {', '.join(shown['modules'])}",
            f"Created:  {shown['created']}",
            f"Training: {m.get('steps')} steps in {m.get('seconds')} s on {m.get('device')}, "
            f"validation loss {m.get('best_val_loss')}",
        ])
    if shown["type"] == "edit":
        lines = [f"edit {shown['id']}"]
        for key in ("name", "method", "rank", "author", "time", "delta"):
            lines.append(f"{key.capitalize() + ':':9} {shown[key]}")
        lines.append(f"{'Params:':9} {', '.join(shown['params'])}")
        for key in ("request", "hparams", "info"):
            if shown[key]:
                lines.append(f"{key.capitalize() + ':':9} {json.dumps(shown[key], sort_keys=True)}")
        return "\n".join(lines)
    lines = [
        f"commit {shown['id']}",
        f"Parents:   {' '.join(p[:12] for p in shown['parents']) or '(none)'}",
        f"Operation: {shown['operation']}",
        f"Author:    {shown['author']}",
        f"Date:      {shown['time']}",
        f"Edits:     {shown['size']} in tree",
        "",
        *(f"    {line}" for line in (shown["message"].splitlines() or [""])),
        "",
    ]
    lines += [f"+ {e['id'][:12]} {e['method']} {e['name'] or ''}".rstrip() for e in shown["added"]]
    lines += [f"- {e[:12]}" + (" (replaced)" if shown["operation"] == "replace" else "") for e in shown["removed"]]
    for ev in shown.get("evaluations", []):
        m = ev["metrics"]
        values = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
        lines.append(f"eval {ev['time']} ({m['n_requests']} requests): {values}")
    return "\n".join(lines)


@contextlib.contextmanager
def progress_bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A factory of tqdm bars on stderr, closed on exit: ``make(what, total)(n)`` advances by n."""
    from tqdm import tqdm

    bars: list[tqdm] = []

    def make(what: str, total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, desc=what, file=sys.stderr, delay=0.5)
        bars.append(bar)
        return bar.update

    try:
        yield make
    finally:
        for bar in bars:
            bar.close()
