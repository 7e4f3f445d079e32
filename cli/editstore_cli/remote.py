"""``editstore remote``, ``clone``, ``fetch``, ``pull`` and ``push``: sharing a store's history."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from editstore.remote import sync

from .common import json_option, open_store
from .output import echo_json, progress_bars


def _summary(summary: sync.Summary, verb: str) -> None:
    for name, (old, new) in summary.refs.items():
        click.echo(f"{name}: {(old or '(new)')[:12]} -> {(new or '')[:12]}")
    click.echo(f"{verb} {summary.commits} commits, {summary.edits} edits, {summary.objects} objects "
               f"({summary.bytes / 2**20:.1f} MiB)")


@click.group()
def remote() -> None:
    """The remotes of this store: object storage (s3://BUCKET/PREFIX) or a shared directory."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.pass_context
def remote_add(ctx: click.Context, name: str, url: str) -> None:
    """Add remote NAME at URL: s3://BUCKET/PREFIX, file:///PATH or a directory path."""
    sync.add_remote(open_store(ctx), name, url)


@remote.command("remove")
@click.argument("name")
@click.pass_context
def remote_remove(ctx: click.Context, name: str) -> None:
    """Remove remote NAME and its remote-tracking branches."""
    sync.remove_remote(open_store(ctx), name)


@remote.command("list")
@json_option
@click.pass_context
def remote_list(ctx: click.Context, as_json: bool) -> None:
    """The remotes and their URLs."""
    known = sync.remotes(open_store(ctx))
    if as_json:
        echo_json(known)
    for name, url in known.items() if not as_json else ():
        click.echo(f"{name}\t{url}")


@click.command()
@click.argument("url")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A local copy of the base checkpoint (else the one the remote holds, pushed with --with-base).")
@click.option("--endpoint", help="S3 endpoint URL (MinIO, SeaweedFS, Ceph...), kept as the store's remote.endpoint_url.")
def clone(url: str, directory: Path, base: Path | None, endpoint: str | None) -> None:
    """Copy the history at URL into a new store in DIRECTORY/.editstore, with URL as its remote origin."""
    with progress_bars() as bars:
        store = sync.clone(url, directory, base=base, endpoint=endpoint, progress=bars)
    click.echo(f"Cloned {url} into {store.root} (HEAD at {store.head()[:12]})")
    store.close()


@click.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin")
@json_option
@click.pass_context
def fetch(ctx: click.Context, remote_name: str, as_json: bool) -> None:
    """Bring REMOTE's branches (as REMOTE/BRANCH) and tags here, with every record and object they need."""
    with progress_bars() as bars:
        summary = sync.fetch(open_store(ctx), remote_name, progress=None if as_json else bars)
    echo_json(summary.to_json()) if as_json else _summary(summary, "fetched")


@click.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin")
@click.argument("branch", required=False)
@click.option("--ours", "resolution", flag_value="ours", help="On a contradiction keep our edit, drop theirs.")
@click.option("--theirs", "resolution", flag_value="theirs", help="On a contradiction keep their edit, drop ours.")
@click.option("--force", "resolution", flag_value="force", help="Keep both sides and record the conflicts.")
@json_option
@click.pass_context
def pull(ctx: click.Context, remote_name: str, branch: str | None, resolution: str | None, as_json: bool) -> None:
    """Fetch REMOTE, then fast-forward the current branch to REMOTE/BRANCH or merge it (exit 3 on a
    contradiction, unless --ours, --theirs or --force)."""
    with progress_bars() as bars:
        result = sync.pull(open_store(ctx), remote_name, branch, resolution=resolution,
                           progress=None if as_json else bars)
    if as_json:
        echo_json({"fetched": result.fetched.to_json(), "how": result.how, "commit": result.commit})
        return
    _summary(result.fetched, "fetched")
    click.echo(f"{result.how}: HEAD at {result.commit[:12]}")


@click.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin")
@click.argument("branch", required=False)
@click.option("--force", is_flag=True, help="Replace the remote's branch even when it has commits this store lacks.")
@click.option("--with-base", is_flag=True, help="Also upload the base checkpoint's files (so clone needs no --base).")
@json_option
@click.pass_context
def push(ctx: click.Context, remote_name: str, branch: str | None, force: bool, with_base: bool, as_json: bool) -> None:
    """Send BRANCH (default: the current one) to REMOTE; refused unless it fast-forwards the remote's
    (exit 2: fetch first), or with --force."""
    with progress_bars() as bars:
        summary = sync.push(open_store(ctx), remote_name, branch, force=force, with_base=with_base,
                            progress=None if as_json else bars)
    echo_json(summary.to_json()) if as_json else _summary(summary, "pushed")
    if not summary.refs and not as_json:
        print("everything up to date", file=sys.stderr)
