"""Options and helpers every command module shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from editstore import Store

store_option = click.option(
    "--store",
    "store_dir",
    type=click.Path(path_type=Path),
    help="Store directory (default: $EDITSTORE_DIR, else .editstore here or in a parent).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                             help="Where to compute: auto is CUDA when available.")


def requests_option(help: str) -> Any:
    return click.option("--requests", "requests_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help=help)


def open_store(ctx: click.Context, store_dir: Path | None) -> Store:
    store = Store.open(store_dir or ctx.obj.get("store"))
    ctx.call_on_close(store.close)
    return store
