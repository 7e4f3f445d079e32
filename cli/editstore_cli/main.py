"""The click application. Each command opens a Store, calls one library function and prints.

Errors the library raises on purpose (:class:`editstore.EditStoreError`) become a
one-line message on stderr and their exit code (2 for bad input); anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from editstore.core.config import COMPOSE_MODES, SETTINGS
from editstore.core.refs import REMOTES
from editstore.errors import EditStoreError

from .common import device_map_option, device_option, json_option, open_store, requests_option
from .output import echo_json, format_commit, format_show, print_table

if TYPE_CHECKING:
    from editstore.store import Store

# Commands whose modules import the edit methods, transformers' models or FAISS, loaded when named:
# `editstore log` or `checkout` never pays for them.
LAZY_COMMANDS = {  # name: (module:attribute, the first sentence of its help, which --help shows without importing it)
    "conflicts": ("editstore_cli.conflicts:conflicts", "List the conflicts inside version REV (default HEAD), or, with "
                  "--prompt/--subject/--target or --requests, check prospective edits against HEAD without committing "
                  "(exit 3 on a contradiction)."),
    "merge": ("editstore_cli.conflicts:merge", "Merge BRANCH into the current branch: the union of the two versions' "
              "edits, as a commit with two parents."),
    "demo": ("editstore_cli.demo:demo", "Build (or reuse) the fact world and walk through edit, log, eval, diff, revert "
             "and checkout."),
    "mend": ("editstore_cli.mend:mend", "MEND: editor networks that turn a fine-tuning gradient into an edit (train "
             "once per base)."),
    "edit": ("editstore_cli.editing:edit", "Compute an edit on the current version and commit it (one commit for a "
             "--requests batch); prints the commit id."),
    "stats": ("editstore_cli.editing:stats", "Second-moment statistics Σ = E[k kᵀ] of the edited modules' inputs."),
    "world": ("editstore_cli.world:world", "The fact world: a synthetic knowledge base and small LMs trained on it."),
    "remote": ("editstore_cli.remote:remote", "The remotes of this store: object storage (s3://BUCKET/PREFIX) or a shared "
               "directory."),
    "clone": ("editstore_cli.remote:clone", "Copy the history at URL into a new store in DIRECTORY/.editstore, with URL as "
              "its remote origin."),
    "fetch": ("editstore_cli.remote:fetch", "Bring REMOTE's branches (as REMOTE/BRANCH) and tags here, with every record "
              "and object they need."),
    "pull": ("editstore_cli.remote:pull", "Fetch REMOTE, then fast-forward the current branch to REMOTE/BRANCH or merge it "
             "(exit 3 on a contradiction, unless --ours, --theirs or --force)."),
    "push": ("editstore_cli.remote:push", "Send BRANCH (default: the current one) to REMOTE; refused unless it "
             "fast-forwards the remote's (exit 2: fetch first), or with --force."),
    "trace": ("editstore_cli.world:trace", "Causal tracing: which layer and token recover the answer when the subject "
              "is corrupted."),
}


NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click ≥ 8.2

# Our own bars say what is being loaded. transformers reads this when it is imported, which for a lazy
# command happens while click resolves it, before any callback runs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def hoist_store_option(args: list[str]) -> list[str]:
    """``--store DIR`` is the group's option; given after the command (``editstore log --store DIR``), as
    many users type it, it is moved to just before the command, where it wins over one given earlier."""
    command = next((i for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "--store")),
                   None)
    if command is None:
        return args
    head, rest, hoisted = args[:command], [], []
    i = command
    while i < len(args):
        if args[i] == "--":
            rest += args[i:]
            break
        if args[i] == "--store" and i + 1 < len(args):
            hoisted += args[i : i + 2]
            i += 2
            continue
        (hoisted if args[i].startswith("--store=") else rest).append(args[i])
        i += 1
    return head + hoisted + rest


class EditStoreGroup(click.Group):
    """Turns library errors into clean messages and exit codes; loads the LAZY_COMMANDS when named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attribute = LAZY_COMMANDS[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, with the LAZY_COMMANDS' help from the table, so ``--help`` imports none of them."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        shown = {name: self.commands.get(name) or click.Command(name, help=LAZY_COMMANDS[name][1]) for name in names}
        rows = [(name, cmd.get_short_help_str(limit)) for name, cmd in shown.items() if not cmd.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = hoist_store_option(args)
        for arg in args:  # bytes that are not UTF-8 arrive as lone surrogates, which no record can hold
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                raise click.UsageError(f"argument {arg.encode('utf-8', 'surrogateescape')!r} is not UTF-8 text") from None
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EditStoreError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's own usage errors, too, become one ``error:`` line (exit code 2)."""
        if not kwargs.pop("standalone_mode", True):
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NO_ARGS_IS_HELP as exc:  # a group typed alone: its help, as click prints it
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if isinstance(exc, click.UsageError) and exc.ctx else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=EditStoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_dir", type=click.Path(path_type=Path), envvar="EDITSTORE_DIR",
              help="Store directory (also $EDITSTORE_DIR).")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="editstore")
@click.pass_context
def cli(ctx: click.Context, store_dir: Path | None, verbose: int) -> None:
    """Version control for knowledge edits of transformer language models."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--base", required=True, help="Hugging Face model directory, or a Hub id org/name[@revision] in the "
              "local Hugging Face cache.")
@click.option("--download", is_flag=True, help="Fetch a Hub id's files that the local cache lacks (unless HF_HUB_OFFLINE).")
def init(base: str, download: bool) -> None:
    """Create a store for the base checkpoint BASE (default location: ./.editstore)."""
    from editstore.store import Store

    store = Store.init(base, click.get_current_context().find_root().params.get("store_dir"), download=download)
    click.echo(f"Initialised editstore in {store.root} for base {store.base.path} ({store.base_fingerprint[:12]})")
    store.close()


@cli.command("import-delta")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("--name", help="A short name for the edit.")
@click.pass_context
def import_delta(ctx: click.Context, file: Path, message: str, name: str | None) -> None:
    """Validate a delta safetensors FILE against the base and commit it as one edit."""
    from editstore import porcelain

    click.echo(porcelain.import_delta(open_store(ctx), file, message=message, name=name))


def ref_decorations(store: Store) -> dict[str, list[str]]:
    from editstore import porcelain

    current = store.current_branch()
    refs: dict[str, list[str]] = {}
    for b in porcelain.branches(store):
        refs.setdefault(b.commit, []).append(f"HEAD -> {b.name}" if b.current else b.name)
    for name, target in porcelain.tags(store).items():
        refs.setdefault(target, []).append(f"tag: {name}")
    for name, target in store.refs.under(REMOTES):  # origin/main, as git shows it
        refs.setdefault(target, []).append(name)
    if current is None:
        refs.setdefault(store.head(), []).insert(0, "HEAD")
    return refs


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("-n", "--max-count", type=click.IntRange(min=0), help="Show at most N commits.")
@json_option
@click.pass_context
def log(ctx: click.Context, rev: str, oneline: bool, max_count: int | None, as_json: bool) -> None:
    """Show the history reachable from REV (default HEAD), newest first."""
    store = open_store(ctx)
    entries = store.log(rev, limit=max_count)
    if as_json:
        echo_json([{"id": cid, **c.record()} for cid, c in entries])
        return
    refs = ref_decorations(store)
    for cid, c in entries:
        click.echo(format_commit(cid, c, refs, oneline=oneline))


@cli.command()
@click.argument("rev", default="HEAD")
@json_option
@click.pass_context
def show(ctx: click.Context, rev: str, as_json: bool) -> None:
    """Show a commit (and the edits it added or removed), an edit, or a trained editor."""
    from editstore import porcelain
    from editstore.evaluations import evaluations

    store = open_store(ctx)
    shown = porcelain.show(store, rev).to_json()
    if shown["type"] == "commit":
        shown["evaluations"] = evaluations(store, shown["id"])
    echo_json(shown) if as_json else click.echo(format_show(shown))


@cli.command()
@click.argument("name", required=False)
@click.argument("rev", default="HEAD")
@click.option("-d", "--delete", is_flag=True, help="Delete branch NAME.")
@json_option
@click.pass_context
def branch(ctx: click.Context, name: str | None, rev: str, delete: bool, as_json: bool) -> None:
    """List branches, create branch NAME at REV, or delete it with -d."""
    from editstore import porcelain

    store = open_store(ctx)
    if name is None:
        branches = porcelain.branches(store)
        if as_json:
            echo_json([{"name": b.name, "commit": b.commit, "current": b.current} for b in branches])
        for b in [] if as_json else branches:
            click.echo(f"{'*' if b.current else ' '} {b.name:20} {b.commit[:12]}")
    elif delete:
        porcelain.delete_branch(store, name)
        click.echo(f"Deleted branch {name}")
    else:
        click.echo(f"Created branch {name} at {porcelain.create_branch(store, name, rev)[:12]}")


@cli.command()
@click.argument("name")
@click.option("-c", "--create", is_flag=True, help="Create the branch at HEAD first.")
@click.pass_context
def switch(ctx: click.Context, name: str, create: bool) -> None:
    """Make branch NAME the current branch."""
    from editstore import porcelain

    porcelain.switch(open_store(ctx), name, create=create)
    click.echo(f"Switched to branch {name}")


@cli.command()
@click.argument("name", required=False)
@click.argument("rev", default="HEAD")
@click.pass_context
def tag(ctx: click.Context, name: str | None, rev: str) -> None:
    """List tags, or create tag NAME at REV."""
    from editstore import porcelain

    store = open_store(ctx)
    if name is None:
        for tag_name, target in porcelain.tags(store).items():
            click.echo(f"{tag_name:20} {target[:12]}")
        return
    click.echo(f"Tagged {porcelain.tag(store, name, rev)[:12]} as {name}")


@cli.command()
@click.argument("rev")
@click.pass_context
def reset(ctx: click.Context, rev: str) -> None:
    """Move the current branch to REV."""
    from editstore import porcelain

    store = open_store(ctx)
    click.echo(f"HEAD is now at {porcelain.reset(store, rev)[:12]}")


@cli.command()
@click.argument("rev")
@click.option("-m", "--message", help="Commit message (default: Revert \"...\").")
@click.pass_context
def revert(ctx: click.Context, rev: str, message: str | None) -> None:
    """Commit a new version without the edit REV (or without the edits commit REV introduced)."""
    from editstore import porcelain

    click.echo(porcelain.revert(open_store(ctx), rev, message=message))


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (missing or empty).")
@click.option("--compose", type=click.Choice(COMPOSE_MODES),
              help="sequential: W₀ + Σ U Vᵀ, the edit history exactly; batched: the edits re-solved jointly "
              "(each group of equal hparams order-free). Default: the store's checkout.compose.")
@device_option
@click.option("--link", is_flag=True, help="Hard-link unedited shards to the base where the filesystem cannot "
              "reflink them (instant; never save_pretrained into such a checkout: it would overwrite the base).")
@click.pass_context
def checkout(ctx: click.Context, rev: str, out: Path, compose: str | None, device: str, link: bool) -> None:
    """Write version REV as a Hugging Face directory that from_pretrained loads."""
    from tqdm import tqdm

    from editstore.compose.checkout import checkout_to

    store = open_store(ctx)
    params = len({p for e in store.edits(store.tree(rev)).values() for p in e.params})
    with tqdm(total=params, desc="composing", unit="param", disable=params == 0, delay=0.5) as bar:
        path = checkout_to(store, rev, out, compose=compose, device=device, link=link, progress=lambda _: bar.update())
    click.echo(f"Checked out {store.resolve(rev)[:12]} to {path}")


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("--peft", "peft_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory (missing or empty) for the LoRA adapter.")
@click.pass_context
def export(ctx: click.Context, rev: str, peft_dir: Path) -> None:
    """Write version REV's deltas as a PEFT LoRA adapter (PeftModel.from_pretrained(base, DIR))."""
    from editstore.export import export_peft

    store = open_store(ctx)
    path = export_peft(store, rev, peft_dir)
    click.echo(f"Exported {store.resolve(rev)[:12]} as a LoRA adapter to {path}")


@cli.command()
@click.argument("rev_a")
@click.argument("rev_b")
@click.option("--behavior", is_flag=True, help="Compare answers to probes instead of weights.")
@requests_option("Extra requests to probe (JSONL).")
@device_option
@json_option
@click.pass_context
def diff(ctx: click.Context, rev_a: str, rev_b: str, behavior: bool, requests_file: Path | None, device: str,
         as_json: bool) -> None:
    """Edits only in REV_A or REV_B, and per parameter ‖W_B − W_A‖_F and rank (or, with --behavior, answers)."""
    store = open_store(ctx)
    if behavior:
        show_behavior_diff(store, rev_a, rev_b, requests_file, device, as_json)
        return
    from editstore.compose.diff import diff_versions

    d = diff_versions(store, rev_a, rev_b)
    if as_json:
        echo_json(d.to_json())
        return
    for sign, edits in (("-", d.only_a), ("+", d.only_b)):
        for e in edits:
            name = store.edit(e).name
            click.echo(f"{sign} edit {e[:12]} {name or ''}".rstrip())
    table = Table("parameter", "‖ΔW‖_F", "rank", title=f"{rev_a} → {rev_b}")
    for p in d.params:
        table.add_row(p.param, f"{p.frobenius:.6g}", str(p.rank))
    print_table(table) if d.params else click.echo("no weight differences")


def show_behavior_diff(store: Store, rev_a: str, rev_b: str, requests_file: Path | None, device: str, as_json: bool) -> None:
    from editstore.behavior import behavior_diff, load_requests

    requests = load_requests(requests_file) if requests_file else []
    d = behavior_diff(store, rev_a, rev_b, requests=requests, device=device)
    if as_json:
        echo_json(d.to_json())
        return
    table = Table("kind", "prompt", f"{rev_a}", "p", f"{rev_b}", "p", title="probes whose answer changed")
    for c in d.changes:
        table.add_row(c.probe.kind, c.probe.prompt, c.answer_a, f"{c.p_a:.3f}", c.answer_b, f"{c.p_b:.3f}")
    print_table(table) if d.changes else click.echo("no probe changed its answer")
    summary = d.to_json()
    click.echo("changed: " + ", ".join(f"{k} {summary['n_changed'][k]}/{n}" for k, n in d.n_probes.items()))


@cli.command("eval")
@click.argument("rev", default="HEAD")
@requests_option("Requests to score (JSONL; default: the requests of the version's edits).")
@device_option
@device_map_option
@json_option
@click.pass_context
def eval_(ctx: click.Context, rev: str, requests_file: Path | None, device: str,
          device_map: str | dict[str, Any] | None, as_json: bool) -> None:
    """Efficacy, paraphrase, specificity (and top-1 variants) and recall of untouched facts of REV; on a
    translation world also the chrF of its held-out translations, by REV and by the base."""
    from editstore.behavior import evaluate_version, load_requests

    store = open_store(ctx)
    requests = load_requests(requests_file) if requests_file else None
    metrics = evaluate_version(store, rev, requests=requests, device=device, device_map=device_map).to_json()
    if as_json:
        echo_json(metrics)
        return
    table = Table("metric", "value", title=f"eval {rev} ({metrics['n_requests']} requests)")
    for key, value in metrics.items():
        if value is None and key.startswith("chrf"):  # not a translation world
            continue
        table.add_row(key, "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
    print_table(table)


@cli.command()
@click.option("--rebuild", is_flag=True, help="Also delete the derived state (the conflict index, the composed "
              "cache) and build the conflict index again from SQLite and the objects.")
@device_option
@click.pass_context
def fsck(ctx: click.Context, rebuild: bool, device: str) -> None:
    """Re-hash every object and check every record and ref; exit 1 on any fault."""
    from editstore.fsck import fsck as run_fsck
    from editstore.fsck import rebuild_derived

    store = open_store(ctx)
    report = run_fsck(store)
    if rebuild and report.ok:
        click.echo(f"rebuilt the conflict index: {rebuild_derived(store, device=device)} edits")
    for w in report.warnings:
        click.echo(f"warning: {w}")
    for e in report.errors:
        click.echo(f"error: {e}")
    click.echo(f"checked {report.objects} objects, {report.edits} edits, {report.commits} commits: "
               f"{'ok' if report.ok else f'{len(report.errors)} fault(s)'}")
    ctx.exit(0 if report.ok else 1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool) -> None:
    """Remove commits, edits and objects that no branch or tag reaches."""
    from editstore.fsck import gc as run_gc

    report = run_gc(open_store(ctx), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(report.commits)} commits, {len(report.edits)} edits, {len(report.objects)} objects, "
               f"{len(report.temporaries)} temporary files")
    if report.cache is not None:
        click.echo(f"cache: removed {report.cache.removed} composed parameters ({report.cache.freed_bytes} bytes), "
                   f"{report.cache.kept_bytes} bytes kept")


@cli.command()
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.pass_context
def config(ctx: click.Context, key: str | None, value: str | None) -> None:
    """Show every setting, print KEY's value, or set KEY to VALUE (checkout.*, cache.max_bytes, conflicts.*)."""
    store = open_store(ctx)
    if key is None:
        for name in SETTINGS:
            click.echo(f"{name} = {store.config(name)}")
    elif value is None:
        click.echo(store.config(key))
    else:
        click.echo(store.set_config(key, value))
