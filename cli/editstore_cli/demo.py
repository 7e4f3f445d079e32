"""``editstore demo``: the main job on the embedded default, the fact world, in a few minutes.

Every step runs the real command in-process and says what it shows.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from pathlib import Path

import click
import torch

from editstore.core.inputs import read_jsonl
from editstore.model.tokens import fill
from editstore.world.build import build_world

SINGLE = 3  # ROME edits, one commit each
BATCH = 20  # requests of the one MEMIT commit


def say(text: str) -> None:
    click.secho(f"\n# {text}", fg="cyan", err=False)


def run(*args: object, expect: int = 0) -> None:
    """Run one editstore command in-process, showing it the way a user would type it."""
    from .main import cli

    argv = [str(a) for a in args]
    click.secho("$ editstore " + shlex.join(argv), bold=True)
    code = cli.main(argv, prog_name="editstore", standalone_mode=False)  # returns ctx.exit's code
    if (code or 0) != expect:
        raise SystemExit(code or 1)
    if expect:
        click.secho(f"(exit code {code}, as expected)", dim=True)


def _one_per_subject(requests: list[dict]) -> list[dict]:
    """Requests on distinct subjects, cycling through the relations."""
    seen: set[str] = set()
    out = []
    for i, r in enumerate(requests):
        if r["subject"] not in seen and i % 5 == len(seen) % 5:
            seen.add(r["subject"])
            out.append(r)
    return out


def _request_lines(requests: list[dict]) -> str:
    return "\n".join(json.dumps(r) for r in requests) + "\n"


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to put the store and checkout (default: a temporary directory, removed after).")
@click.option("--arch", type=click.Choice(["gpt2", "llama"]), default="gpt2", show_default=True)
def demo(workdir: Path | None, arch: str) -> None:
    """Build (or reuse) the fact world and walk through edit, log, eval, diff, revert and checkout."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="editstore-demo-") as tmp:
            _demo(Path(tmp), arch)
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        _demo(workdir, arch)


def _demo(workdir: Path, arch: str) -> None:
    start = time.perf_counter()
    say(f"The fact world: a synthetic knowledge base and a small {arch} trained on it (built once, then cached).")
    run("world", "build", "--arch", arch)  # a progress bar while it trains; the world's directory after
    world = build_world(arch)  # now cached
    store = workdir / "store"
    requests = _one_per_subject(read_jsonl(world / "requests.jsonl"))  # edits of one subject share its key
    single, batch = requests[:SINGLE], requests[SINGLE : SINGLE + BATCH]
    (workdir / "batch.jsonl").write_text(_request_lines(batch))
    (workdir / "all.jsonl").write_text(_request_lines(single + batch))

    say("A store records edits over one base checkpoint, like a git repository over a tree.")
    run("init", "--base", world, "--store", store)
    run("--store", store, "tag", "base")

    say("The base does not know the counterfactuals yet: efficacy is P(new target) > P(true target).")
    run("--store", store, "eval", "--requests", workdir / "all.jsonl")

    say("ROME: one rank-one edit per fact, each committed on its own. The first edit computes the "
        "second-moment statistics of the edited layer from the world's corpus and stores them.")
    for r in single:
        run("--store", store, "edit", "--prompt", r["prompt"], "--subject", r["subject"],
            "--target", r["target_new"], "--target-true", r["target_true"])

    say(f"MEMIT: {BATCH} facts solved jointly in one commit (one rank-one delta per fact, so each can be reverted).")
    run("--store", store, "edit", "--method", "memit", "--requests", workdir / "batch.jsonl", "-m", f"{BATCH} facts at once")

    first = single[0]
    say(f"A contradiction is caught before it lands: {first['subject']} again, in a formulation the edit never "
        "saw, with another answer. Nothing is committed (exit code 3; --force would commit it and record why).")
    run("--store", store, "edit", "--prompt", first["paraphrase_prompts"][0], "--subject", first["subject"],
        "--target", first["target_true"], expect=3)

    say("The history.")
    run("--store", store, "log", "--oneline")

    say("Behaviour of HEAD on all edited facts, and recall of facts no edit touched.")
    run("--store", store, "eval")

    say("What the batch changed in the weights (norm and rank of ΔW per parameter, from the factors).")
    run("--store", store, "diff", "HEAD~1", "HEAD")

    say("Which answers changed between the base and HEAD.")
    run("--store", store, "diff", "--behavior", "base", "HEAD")

    say(f"Revert the second ROME edit out of order: {single[1]['subject']} goes back to {single[1]['target_true']}.")
    from editstore import Store

    with Store.open(store) as s:
        second = next(e for e in s.tree("HEAD") if (s.edit(e).request or {}).get("subject") == single[1]["subject"])
    run("--store", store, "revert", second[:12])
    run("--store", store, "log", "--oneline", "-n", "2")

    out = workdir / "checkout"
    say("Check HEAD out as a Hugging Face directory and load it with from_pretrained.")
    run("--store", store, "checkout", "HEAD", "--out", out)
    _query(out, single + batch[:2], reverted=single[1])
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


def _query(path: Path, requests: list[dict], *, reverted: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    click.secho(f">>> AutoModelForCausalLM.from_pretrained({str(path)!r})", bold=True)
    for r in requests:
        prompt = fill(r["prompt"], r["subject"])
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).split(".")[0].strip()
        note = "reverted" if r is reverted else "edit"
        click.echo(f"{prompt!r} -> {answer!r}   ({note}: {r['target_new']!r}, was {r['target_true']!r})")
