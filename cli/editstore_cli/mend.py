"""``editstore mend``: meta-train MEND editors for the store's base, and list them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from tqdm import tqdm

from editstore.behavior import load_requests
from editstore.editors import editor_rows, train_mend
from editstore.methods import load_hparams, resolve_hparams

from .common import device_map_option, device_option, json_option, layers_option, open_store, requests_option
from .output import echo_json, print_table


@click.group()
def mend() -> None:
    """MEND: editor networks that turn a fine-tuning gradient into an edit (train once per base)."""


@mend.command("train")
@layers_option("Comma-separated layers to edit (default: the packaged hparams').")
@click.option("--steps", type=click.IntRange(1, 10**9), help="Meta-training steps at most (default: the hparams').")
@click.option("--hparams", "hparams_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="MEND hyperparameters JSON (default: the packaged file for the base's architecture).")
@requests_option("Training requests (JSONL with paraphrase_prompts and neighborhood_prompts; default: the fact "
                 "world's, minus the held-out subjects).")
@device_option
@device_map_option
@click.pass_context
def train(ctx: click.Context, layers: tuple[int, ...] | None, steps: int | None, hparams_file: Path | None,
          requests_file: Path | None, device: str, device_map: str | dict[str, Any] | None) -> None:
    """Meta-train an editor for the store's base and store it; prints its id."""
    store = open_store(ctx)
    hp = resolve_hparams(store.base, "mend", load_hparams(hparams_file) if hparams_file else None)
    if layers:
        hp = resolve_hparams(store.base, "mend", hp.replace(layers=layers))
    if steps:
        hp = hp.replace(**{"mend.steps": steps})
    requests = load_requests(requests_file) if requests_file else None
    with tqdm(total=hp.mend.steps, desc="meta-training", file=sys.stderr, delay=0.5) as bar:
        def advance(step: int, edit_loss: float, locality: float) -> None:
            bar.set_postfix(edit=f"{edit_loss:.3f}", locality=f"{locality:.4f}", refresh=False)
            bar.update()

        oid, metrics = train_mend(store, hp, requests=requests, device=device, progress=advance, device_map=device_map)
    click.echo(f"trained in {metrics['seconds']} s ({metrics['steps']} steps, validation loss {metrics['best_val_loss']})",
               err=True)
    click.echo(oid)


@mend.command("list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """The editors trained for the store's base (the newest is used by `edit --method mend`)."""
    rows = editor_rows(open_store(ctx))
    if as_json:
        echo_json(rows)
        return
    table = Table("editor", "modules", "steps", "validation loss", "seconds", "created")
    for r in rows:
        m = r["metrics"]
        table.add_row(r["id"][:12], ", ".join(r["modules"]), str(m.get("steps")), str(m.get("best_val_loss")),
                      str(m.get("seconds")), r["created"])
    print_table(table) if rows else click.echo("no editors")
