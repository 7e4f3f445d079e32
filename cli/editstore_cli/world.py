"""``editstore world build`` and ``editstore trace``: the fact world and causal tracing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from tqdm import tqdm

from editstore.world.build import ARCHES, SIZES

from .common import device_map_option
from .output import echo_json, print_table


def finite(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # NaN passes FloatRange's comparisons
        raise click.BadParameter("nan is not a number", param=param)
    return value


@click.group()
def world() -> None:
    """The fact world: a synthetic knowledge base and small LMs trained on it."""


@world.command("build")
@click.option("--arch", type=click.Choice([*ARCHES, "marian"]), default="gpt2", show_default=True,
              help="marian: the translation world (two synthetic languages and a Marian NMT model).")
@click.option("--size", type=click.Choice(SIZES), default="small", show_default=True,
              help="small: 500 subjects, the demo's and the tests' world; large: 2,000 subjects, for benchmarks at scale.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the model trains (not part of the cache key).")
@click.option("--out", type=click.Path(path_type=Path), help="Directory to build into (default: the user cache).")
@click.option("--force", is_flag=True, help="Rebuild even when a matching world exists.")
def build(arch: str, size: str, seed: int, device: str, out: Path | None, force: bool) -> None:
    """Generate the knowledge base, train the model, print the world's directory."""
    from editstore.world.build import build_world, world_config

    bar = None

    def on_epoch(epoch: int, total: int, loss: float) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, desc=f"training {arch} world", unit="epoch", file=sys.stderr)
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.update()

    if arch == "marian":
        from editstore.world.translation import build_translation_world

        if size != "small":
            raise click.UsageError("the translation world has one size")
        path = build_translation_world(seed=seed, out=out, force=force, on_epoch=on_epoch, device=device)
        if bar:
            bar.close()
        info = json.loads((path / "world.json").read_text())
        click.echo(f"translation world: {info['pairs']} training pairs; trained in {info['seconds']} s; held-out token "
                   f"accuracy {info['accuracy']['token']:.3f}, exact {info['accuracy']['exact']:.3f}, chrF "
                   f"{info['accuracy']['chrf']:.1f}", err=True)
        click.echo(str(path))
        return
    config = world_config(arch, seed, size)  # an UnknownWorldError (exit 2) for a size the architecture lacks
    path = build_world(config=config, out=out, force=force, on_epoch=on_epoch, device=device)
    if bar:
        bar.close()
    info = json.loads((path / "world.json").read_text())
    click.echo(
        f"world: {info['n_subjects']} subjects, {info['n_facts']} facts; trained in {info['train_seconds']} s; "
        f"recall {info['recall']['trained']:.3f} trained, {info['recall']['held_out']:.3f} held out",
        err=True,
    )
    click.echo(str(path))


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="HF model directory.")
@click.option("--prompt", required=True, help="The prompt, with the subject filled in (or {} for it).")
@click.option("--subject", required=True, help="The subject, which must occur in the prompt.")
@click.option("--answer", help="The answer to trace (default: the model's greedy next token).")
@click.option("--samples", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Noise samples.")
@click.option("--noise", type=click.FloatRange(0, 1000, min_open=True), default=3.0, callback=finite, show_default=True,
              help="Noise scale, in embedding std units.")
@click.option("--out", type=click.Path(path_type=Path), help="Save a heatmap PNG here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@device_map_option
def trace(model_dir: Path, prompt: str, subject: str, answer: str | None, samples: int, noise: float,
          out: Path | None, as_json: bool, device_map: str | dict[str, Any] | None) -> None:
    """Causal tracing: which layer and token recover the answer when the subject is corrupted."""
    from transformers import AutoTokenizer

    from editstore.compose.materialise import dispatched
    from editstore.model.checkpoint import Checkpoint, from_pretrained
    from editstore.trace import KINDS, causal_trace, save_heatmap

    base = Checkpoint(model_dir)  # a clear error for a non-HF directory
    model = dispatched(base, device_map) if device_map is not None else from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    result = causal_trace(model, tokenizer, prompt.replace("{}", subject), subject, answer=answer,
                          samples=samples, noise=noise)
    if out:
        save_heatmap(result, out)
    if as_json:
        echo_json(result.to_json())
        return
    click.echo(f"answer {result.answer!r}: p clean {result.p_clean:.4f}, subject corrupted {result.p_corrupted:.4f}")
    for kind in KINDS:
        table = Table("token", *[f"L{i}" for i in range(result.recovery[kind].shape[0])], title=f"recovery, restoring {kind} output")
        for t, tok in enumerate(result.tokens):
            mark = "*" if result.subject[0] <= t < result.subject[1] else ""
            table.add_row(tok + mark, *[f"{v:.2f}" for v in result.recovery[kind][:, t].tolist()])
        print_table(table)
        layer, token = result.peak(kind)
        click.echo(f"peak ({kind}): layer {layer}, token {result.tokens[token]!r}")
    if out:
        click.echo(f"heatmap saved to {out}")
