"""Editing the translation world: four NMT tasks, single rank-one edits; prints one table.

    python benchmarks/translation.py [--edits 20] [--method rome]

The world (``editstore world build --arch marian``) translates NAME VERB ADJ NOUN into NAME NOUN ADJ
VERB. Each task edits what the model writes for the sentence's first source item (its first output
word), from one example sentence, with the packaged hparams (``rome-marian-world.json``: the
encoder MLP of layer 0 at the item's last token):

  rename       a name's transliteration replaced by another rendering (a mistranslated name fixed)
  keep         a name kept as it is, untranslated (copied), instead of transliterated
  delete       a name's rendering never produced again (a behaviour deletion: only the unwanted output given)
  formal       the source's "you", which leaves formality open, always rendered formal

Per edit: efficacy on the example sentence; generalisation on 10 other sentences with the same item
(for ``delete``: the rendering gone from them); locality, the share of 100 sentences without the item
whose translation is unchanged. Σ of the edited module's input comes from the world's source sentences.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--method", default="rome")
    args = parser.parse_args()

    from transformers import AutoTokenizer, MarianMTModel

    from editstore.methods import compute_edits, find_hparams
    from editstore.methods.hooks import as_updates, patched
    from editstore.model.stats import second_moment
    from editstore.world.translation import FORMAL, YOU, build_translation_world, lexicon, translate

    world = build_translation_world()
    model = MarianMTModel.from_pretrained(world).eval()
    tok = AutoTokenizer.from_pretrained(world)
    hp = find_hparams(args.method, json.loads((world / "config.json").read_text()))
    module = hp.module_name(hp.layers[0])
    sigma, _ = second_moment(model, tok, (world / "corpus.txt").read_text().splitlines()[:4000],
                             model.get_submodule(module))
    lex = lexicon(0)
    rng = random.Random(1)

    def sentence(subject: str) -> str:
        return f"{subject} {rng.choice(lex.verbs).source} {rng.choice(lex.adjectives).source} {rng.choice(lex.nouns).source}"

    unrelated = [sentence(rng.choice(lex.names).source) for _ in range(100)]

    def run(request: dict[str, Any], item: str, want: Any) -> tuple[bool, float, float, float]:
        """(efficacy, generalisation, locality, seconds) of one edit; ``want(first_word)`` says success."""
        example = request["prompt"].replace("{}", request["subject"])
        others = [sentence(item) for _ in range(10)]
        far = [s for s in unrelated if not s.startswith(item + " ")]
        before = translate(model, tok, far)
        start = time.perf_counter()
        deltas = compute_edits(model, tok, [request], hp, sigmas={module: sigma}).deltas
        seconds = time.perf_counter() - start
        with patched(model, as_updates(deltas)):
            edited, *general = [t.split()[0] for t in translate(model, tok, [example, *others])]
            after = translate(model, tok, far)
        locality = sum(a == b for a, b in zip(before, after)) / len(far)
        return want(edited), sum(map(want, general)) / len(general), locality, seconds

    tasks: dict[str, list[tuple[bool, float, float, float]]] = {"rename": [], "keep": [], "delete": [], "formal": []}
    names = list(lex.names)
    for i in range(args.edits):
        name, other = names[i], names[(i + 30) % len(names)]
        prompt = sentence("{}")
        rendering, new = name.target[0], other.target[0]
        tasks["rename"].append(run({"prompt": prompt, "subject": name.source, "target_new": new,
                                    "target_true": rendering}, name.source, lambda w, n=new: w == n))
        tasks["keep"].append(run({"prompt": prompt, "subject": name.source, "target_new": name.source,
                                  "target_true": rendering}, name.source, lambda w, s=name.source: w == s))
        tasks["delete"].append(run({"prompt": prompt, "subject": name.source, "target_true": rendering},
                                   name.source, lambda w, r=rendering: w != r))
        tasks["formal"].append(run({"prompt": sentence("{}"), "subject": YOU, "target_new": FORMAL}, YOU,
                                   lambda w: w == FORMAL))

    table = Table(title=f"translation world: {args.edits} single {args.method} edits per task (first output word)")
    for column in ("task", "efficacy", "generalisation", "locality", "s / edit"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, rows in tasks.items():
        eff, gen, loc, sec = zip(*rows)
        table.add_row(task, f"{statistics.mean(eff):.3f}", f"{statistics.mean(gen):.3f}", f"{statistics.mean(loc):.3f}",
                      f"{statistics.mean(sec):.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
