"""``editstore edit`` and ``editstore stats``: computing edits and the statistics they need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from editstore.compose.sequential import resolve_device
from editstore.editing import edit as run_edit
from editstore.methods import METHODS, load_hparams
from editstore.moments import import_npz, read_corpus, stats_modules, stats_rows, stream_stats
from editstore.porcelain import show

from .common import (
    device_map_option,
    device_option,
    json_option,
    layers_option,
    open_store,
    read_requests,
    request_options,
)
from .output import echo_json, progress_bars


@click.command()
@request_options
@click.option("--method", type=click.Choice(METHODS), default="rome", show_default=True)
@click.option("--hparams", "hparams_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Hyperparameters JSON (default: the packaged file for the base's architecture).")
@click.option("-m", "--message", help="Commit message (default: the first request).")
@click.option("--force", is_flag=True, help="Commit even when the edit contradicts the current version "
              "(the conflict is recorded with the commit).")
@click.option("--replace", is_flag=True, help="Update a fact: the live edits the request contradicts leave the "
              "version in the same commit (log and show name them).")
@device_option
@device_map_option
@json_option
@click.pass_context
def edit(ctx: click.Context, prompt: str | None, subject: str | None, target: str | None, suppress: str | None,
         target_true: str | None, requests_file: Path | None, method: str, hparams_file: Path | None,
         message: str | None, force: bool, replace: bool, device: str, device_map: str | dict[str, Any] | None,
         as_json: bool) -> None:
    """Compute an edit on the current version and commit it (one commit for a --requests batch); prints the
    commit id. --suppress makes it a behaviour deletion (rome, memit, emmet, alphaedit). An edit that
    contradicts the current version is refused with exit code 3 unless --force, or --replace to update the fact."""
    requests = read_requests(prompt, subject, target, suppress, target_true, requests_file)
    hparams = load_hparams(hparams_file) if hparams_file else None
    store = open_store(ctx)
    with progress_bars() as bars:
        commit = run_edit(store, requests, method=method, hparams=hparams, message=message, device=device,
                          force=force, replace=replace, progress=bars, device_map=device_map)
    if not as_json:
        click.echo(commit)
        return
    shown = show(store, commit).to_json()
    edits = store.edits([e["id"] for e in shown["added"]])
    echo_json({"commit": commit, "operation": shown["operation"], "replaced": shown["removed"],
               "edits": [{"id": e, "method": r.method, "request": r.request, "replaces": r.info.get("replaces", [])}
                         for e, r in edits.items()]})


@click.group()
def stats() -> None:
    """Second-moment statistics Σ = E[k kᵀ] of the edited modules' inputs."""


@stats.command("compute")
@click.option("--corpus", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Plain text (one text per line) or JSONL with a \"text\" field.")
@click.option("--samples", type=click.IntRange(1, 2**31 - 1), default=100_000, show_default=True, help="Texts to stream (at most).")
@click.option("--module", "modules", multiple=True, help="Module name (repeatable).")
@layers_option("Comma-separated layers of the method's module template (e.g. 3,4,5).")
@click.option("--method", type=click.Choice(METHODS), default="memit", show_default=True,
              help="Whose hparams give the module template and default layers.")
@device_option
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Processes sharing the corpus (launched with torchrun; gloo on CPUs, nccl on GPUs).")
@click.pass_context
def stats_compute(ctx: click.Context, corpus: Path, samples: int, modules: tuple[str, ...], layers: tuple[int, ...] | None,
                  method: str, device: str, nproc: int) -> None:
    """Stream CORPUS through the base and store Σ per module."""
    store = open_store(ctx)
    names = stats_modules(store, modules=modules, method_name=method, layers=layers)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # launch the processes, each running this command
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
                "editstore", "--store", str(store.root), "stats", "compute", "--corpus", str(corpus),
                "--samples", str(samples), "--device", device, *(f"--module={m}" for m in names)]
        ctx.exit(subprocess.run(argv).returncode)
    with progress_bars() as bars:
        rows = stream_stats(store, names, read_corpus(corpus), samples, device=resolve_device(device), progress=bars)
    if os.environ.get("RANK", "0") != "0":
        return  # one of several processes: the first reports
    for row in rows:
        click.echo(f"{row.module}: {row.count} positions, object {row.object[:12]}")


@stats.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--module", required=True, help="The module the statistics are of, e.g. transformer.h.17.mlp.c_proj.")
@click.pass_context
def stats_import(ctx: click.Context, file: Path, module: str) -> None:
    """Import an original ROME/MEMIT .npz (mom2.mom2, mom2.count) for MODULE."""
    row = import_npz(open_store(ctx), module, file)
    click.echo(f"{row.module}: {row.count} positions imported, object {row.object[:12]}")


@stats.command("list")
@click.pass_context
def stats_list(ctx: click.Context) -> None:
    """The stored statistics."""
    for r in stats_rows(open_store(ctx)):
        click.echo(f"{r.object[:12]} {r.module} from {r.source} ({r.samples} samples, {r.count} positions, {r.created})")
