"""How much room a world's MLPs give subject-keyed edits: the geometry of the subjects' keys.

    python benchmarks/keys.py [--arch gpt2] [--size small|large] [--layers 0 1 2]
                              [--world KEY=JSON ...] [--train KEY=JSON ...]

For every subject, the key an edit would write at (the input of the MLP's output projection at
the subject's last token, in the prompt "{subject} was born in") at each layer; then, over all
subjects, the participation ratio (Σλ)² / Σλ² of the keys' second moment (the number of
directions they really use), the same for the keys whitened by Σ^{-1/2} (Σ from the world's
corpus, the geometry a ROME or MEMIT update sees), and the mean and 99th percentile of |cos|
between two subjects' whitened keys: how much one subject's write leaks onto another's key.
A history of n edits spans about min(n, rank) whitened directions; once that nears the
participation ratio, every other subject's key lies in the span the edits rewrote.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from editstore.core.inputs import read_jsonl
from editstore.methods.hooks import capture
from editstore.model.checkpoint import from_pretrained
from editstore.model.stats import second_moment
from editstore.model.tokens import pad_id, subject_span
from editstore.moments import CORPUS_FILE
from editstore.world.bench import design, settings
from editstore.world.build import SIZES, build_world


def participation(second: torch.Tensor) -> float:
    """(Σλ)² / Σλ² of a symmetric PSD matrix."""
    ev = torch.linalg.eigvalsh(second.double()).clamp(min=0)
    return float(ev.sum() ** 2 / (ev**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="gpt2", choices=["gpt2"])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--world", nargs="+", default=[], metavar="KEY=JSON", help="Change the world's WorldSpec.")
    parser.add_argument("--train", nargs="+", default=[], metavar="KEY=JSON", help="Change the world model's TrainSpec.")
    args = parser.parse_args()
    path = build_world(config=design(args.arch, args.size, world=settings(args.world), train=settings(args.train)))
    model, tok = from_pretrained(path), AutoTokenizer.from_pretrained(path)
    subjects = sorted({f["subject"] for f in read_jsonl(path / "facts.jsonl")})
    spans = [subject_span(tok, f"{s} was born in", s) for s in subjects]
    rows, last = [ids for ids, _, _ in spans], [end - 1 for _, _, end in spans]
    names = [f"transformer.h.{layer}.mlp.c_proj" for layer in args.layers]
    keys: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(0, len(rows), 256):
        got = capture(model, rows[i : i + 256], last[i : i + 256], pad_id(tok), inputs_of=names)
        for n in names:
            keys[n].append(got[n])
    corpus = (path / CORPUS_FILE).read_text().splitlines()
    sigmas, _ = second_moment(model, tok, corpus, [model.get_submodule(n) for n in names])
    table = Table("layer", "d_in", "subjects", "participation ratio (raw)", "whitened", "mean |cos| whitened",
                  "99th pct |cos|", title=f"subject keys, {args.arch} {args.size} world")
    for layer, n, sigma in zip(args.layers, names, sigmas):
        K = torch.cat(keys[n]).double()  # (subjects, d_in)
        ev, vecs = torch.linalg.eigh(sigma.double())
        inv_sqrt = vecs @ torch.diag(ev.clamp(min=ev.max() * 1e-10) ** -0.5) @ vecs.T
        white = K @ inv_sqrt  # (subjects, d_in)
        unit = torch.nn.functional.normalize(white, dim=1)
        cos = (unit @ unit.T).abs()
        off = cos[~torch.eye(len(K), dtype=torch.bool)]
        table.add_row(str(layer), str(K.shape[1]), str(len(K)), f"{participation(K.T @ K):.0f}",
                      f"{participation(white.T @ white):.0f}", f"{off.mean():.3f}",
                      f"{off.quantile(0.99) if off.numel() < 16_000_000 else off[::7].quantile(0.99):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
