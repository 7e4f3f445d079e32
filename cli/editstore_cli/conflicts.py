"""``editstore conflicts`` and ``editstore merge``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich.table import Table

from editstore.compose.sequential import resolve_device
from editstore.conflicts.checks import check_prospective, version_conflicts
from editstore.conflicts.detect import Conflict, ConflictError, blocking, fact
from editstore.merge import merge as run_merge
from editstore.methods import METHODS

from .common import device_option, json_option, open_store, read_requests, request_options
from .output import echo_json, print_table


def conflict_table(conflicts: Sequence[Conflict], title: str) -> Table:
    table = Table("kind", "edit", "prompt -> target", "other", "other prompt -> target", "score", title=title)
    for c in conflicts:
        theirs = fact(c.other_request) if c.other_request else "(no request)"
        table.add_row(c.kind, (c.edit or "(new)")[:12], fact(c.request), (c.other or "(batch)")[:12], theirs,
                      f"{c.score:.3f}" + (f" on {c.param}" if c.param else ""))
    return table


@click.command()
@click.argument("rev", required=False)
@request_options
@click.option("--method", type=click.Choice(METHODS), default="rome", show_default=True,
              help="For a prospective edit: the method whose edited modules interference is checked at.")
@device_option
@json_option
@click.pass_context
def conflicts(ctx: click.Context, rev: str | None, prompt: str | None, subject: str | None, target: str | None,
              suppress: str | None, target_true: str | None, requests_file: Path | None, method: str, device: str,
              as_json: bool) -> None:
    """List the conflicts inside version REV (default HEAD), or, with --prompt/--subject/--target or
    --requests, check prospective edits against HEAD without committing (exit 3 on a contradiction)."""
    store = open_store(ctx)
    requests = read_requests(prompt, subject, target, suppress, target_true, requests_file, required=False)
    if requests and rev is not None:
        raise click.UsageError("give REV or a prospective edit, not both")
    if requests:
        found, _ = check_prospective(store, requests, method=method, device=resolve_device(device))
        title = "conflicts of the prospective edit(s) with HEAD"
    else:
        rev = "HEAD" if rev is None else rev  # an empty REV is an error, not HEAD
        found = version_conflicts(store, rev, device=resolve_device(device))
        title = f"conflicts inside {rev}"
    if as_json:
        echo_json([c.to_json() for c in found])
    elif found:
        print_table(conflict_table(found, title))
    else:
        click.echo("no conflicts")
    if requests and blocking(found):
        ctx.exit(ConflictError.exit_code)


@click.command()
@click.argument("branch")
@click.option("--ours", "resolution", flag_value="ours", help="On a contradiction keep our edit, drop theirs.")
@click.option("--theirs", "resolution", flag_value="theirs", help="On a contradiction keep their edit, drop ours.")
@click.option("--force", "resolution", flag_value="force", help="Keep both sides and record the conflicts.")
@click.option("-m", "--message", help="Commit message (default: Merge BRANCH).")
@device_option
@json_option
@click.pass_context
def merge(ctx: click.Context, branch: str, resolution: str | None, message: str | None, device: str, as_json: bool) -> None:
    """Merge BRANCH into the current branch: the union of the two versions' edits, as a commit with two
    parents. Contradictions between the branches stop the merge (exit 3) unless --ours, --theirs or --force."""
    store = open_store(ctx)
    result = run_merge(store, branch, resolution=resolution, message=message, device=resolve_device(device))
    if as_json:
        echo_json({"commit": result.commit, "added": result.added, "dropped": result.dropped,
                   "conflicts": [c.to_json() for c in result.conflicts]})
        return
    if result.conflicts:
        print_table(conflict_table(result.conflicts, "conflicts recorded with the merge"))
    click.echo(f"merged {branch}: {len(result.added)} edit(s) in, {len(result.dropped)} dropped")
    click.echo(result.commit)
