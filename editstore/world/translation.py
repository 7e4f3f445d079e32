"""The translation world's languages: a synthetic source and target language and their parallel sentences.

The two languages have their own vocabularies (words made of disjoint syllable sets) and their own
word order: the source says NAME VERB ADJ NOUN (subject, verb, object, the adjective first); the
target says NAME NOUN ADJ VERB (subject, object, verb, the adjective after its noun), so translating
is never copying word by word. What a translation model must learn, and what an edit may then have
to change, is all here:

- names are transliterated syllable by syllable (source ``ka`` is always target ``ko``, ...);
- a few terms (product names) are kept as they are, copied into the target; a name the source
  quotes (``ki NAME``) is kept too (the target drops the quote), so the model has learnt to copy
  names, and an edit can make it copy one name everywhere;
- some nouns have two renderings, chosen by the kind of verb they follow (a noun is "bought" in one
  rendering and "visited" in another);
- the source's plain "you" (``yu``) leaves formality open: the target marks it with a formal or an
  informal pronoun, both seen in training, which an edit can fix to one. The source's polite and
  familiar pronouns (``yuna``, ``yuti``) choose it, so the model reads formality from the source
  pronoun, as a real model reads a gender or formality cue from its context.

Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..behavior import HELD_OUT_FILE
from ..compose.sequential import resolve_device
from ..core.hashing import sha256_json
from ..model.translate import chrf, translate
from ..moments import CORPUS_FILE
from .build import WORLD_FILE, cache_root, is_world, staged_world, write_jsonl
from .tokenizer import build_tokenizer
from .train import TrainSpec, train_lm

SOURCE_SYLLABLES = ("ka", "lo", "mi", "ren", "dor", "vi", "sa", "tu", "bel", "nor", "qu", "zar", "fen", "ho")
TARGET_SYLLABLES = ("ko", "la", "mu", "ran", "dex", "wi", "so", "ti", "bal", "nix", "kwe", "zor", "fan", "hu")
TRANSLITERATION = dict(zip(SOURCE_SYLLABLES, TARGET_SYLLABLES))
YOU = "yu"  # the source's plain second-person pronoun: formality left open
YOU_FORMAL, YOU_INFORMAL = "yuna", "yuti"  # its polite and familiar ones
FORMAL, INFORMAL = "vosk", "tek"  # the target's two
QUOTE = "ki"  # the source's quote before a name: the name is kept (copied), not transliterated


@dataclass(frozen=True)
class Word:
    """A source word and its target renderings (one, or two chosen by the verb's kind)."""

    source: str
    target: tuple[str, ...]


@dataclass(frozen=True)
class Verb:
    source: str
    target: str
    kind: int  # 0 or 1: which rendering an ambiguous noun takes after it


@dataclass(frozen=True)
class Lexicon:
    names: tuple[Word, ...]  # transliterated
    kept: tuple[str, ...]  # copied unchanged
    nouns: tuple[Word, ...]  # the first ``ambiguous`` have two renderings
    adjectives: tuple[Word, ...]
    verbs: tuple[Verb, ...]
    ambiguous: int


@dataclass(frozen=True)
class Pair:
    """A source sentence, its translation, and what fills each slot (for probes and edit requests)."""

    source: str
    target: str
    subject: str  # the source's subject: a name, a kept term or a pronoun (after QUOTE for a quoted name)
    noun: str
    verb: str


def _words(rng: random.Random, syllables: tuple[str, ...], n: int, taken: set[str], length: tuple[int, int]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(*length)))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def lexicon(seed: int = 0, *, names: int = 120, kept: int = 8, nouns: int = 40, ambiguous: int = 6,
            adjectives: int = 12, verbs: int = 16) -> Lexicon:
    """The two languages' vocabularies for ``seed``."""
    rng = random.Random(seed)
    source: set[str] = {YOU, YOU_FORMAL, YOU_INFORMAL, QUOTE}
    target: set[str] = {FORMAL, INFORMAL}
    name_words = _words(rng, SOURCE_SYLLABLES, names, source, (2, 3))
    # a name and its transliteration; capitalised in both languages, so names are told apart from words
    named = tuple(Word(n.capitalize(), ("".join(TRANSLITERATION[s] for s in _split(n)).capitalize(),))
                  for n in name_words)
    kept_terms = tuple(w.upper() for w in _words(rng, SOURCE_SYLLABLES, kept, source, (2, 2)))
    noun_src = _words(rng, SOURCE_SYLLABLES, nouns, source, (2, 2))
    noun_tgt = _words(rng, TARGET_SYLLABLES, nouns + ambiguous, target, (2, 2))
    noun_words = tuple(Word(s, (noun_tgt[i], noun_tgt[nouns + i]) if i < ambiguous else (noun_tgt[i],))
                       for i, s in enumerate(noun_src))
    adj = tuple(Word(s, (t,)) for s, t in zip(_words(rng, SOURCE_SYLLABLES, adjectives, source, (3, 3)),
                                              _words(rng, TARGET_SYLLABLES, adjectives, target, (3, 3))))
    verb = tuple(Verb(s, t, i % 2) for i, (s, t) in enumerate(zip(_words(rng, SOURCE_SYLLABLES, verbs, source, (1, 2)),
                                                                  _words(rng, TARGET_SYLLABLES, verbs, target, (1, 2)))))
    return Lexicon(named, kept_terms, noun_words, adj, verb, ambiguous)


def _split(word: str) -> list[str]:
    """The source syllables of ``word`` (unique: no syllable is the prefix of another)."""
    out, i = [], 0
    ordered = sorted(SOURCE_SYLLABLES, key=len, reverse=True)
    while i < len(word):
        syllable = next(s for s in ordered if word.startswith(s, i))
        out.append(syllable)
        i += len(syllable)
    return out


def render(noun: Word, verb: Verb) -> str:
    """The target rendering of ``noun`` after ``verb`` (the verb's kind picks an ambiguous noun's)."""
    return noun.target[verb.kind] if len(noun.target) > 1 else noun.target[0]


def sentence(lex: Lexicon, rng: random.Random) -> Pair:
    """One parallel sentence: a name (transliterated, or quoted and kept), a kept term or "you" as subject;
    a verb; an adjective and a noun."""
    draw = rng.random()
    noun, adj, verb = rng.choice(lex.nouns), rng.choice(lex.adjectives), rng.choice(lex.verbs)
    quote = ""
    if draw < 0.6:
        name = rng.choice(lex.names)
        subject, subject_t = name.source, name.target[0]
    elif draw < 0.7:  # a quoted name is copied
        subject = subject_t = rng.choice(lex.names).source
        quote = QUOTE + " "
    elif draw < 0.8:
        subject = subject_t = rng.choice(lex.kept)
    elif draw < 0.9:
        subject, subject_t = YOU, rng.choice((FORMAL, INFORMAL))  # the source leaves formality open
    else:
        subject, subject_t = rng.choice(((YOU_FORMAL, FORMAL), (YOU_INFORMAL, INFORMAL)))
    source = f"{quote}{subject} {verb.source} {adj.source} {noun.source}"
    target = f"{subject_t} {render(noun, verb)} {adj.target[0]} {verb.target}"
    return Pair(source, target, subject, noun.source, verb.source)


def corpus(lex: Lexicon, n: int, seed: int = 0) -> list[Pair]:
    """``n`` parallel sentences for ``seed``."""
    rng = random.Random(seed)
    return [sentence(lex, rng) for _ in range(n)]


# ---------------------------------------------------------------------- the world: languages and a Marian model

TRAIN_PAIRS = 12000  # parallel sentences the model learns from
HELD_OUT_PAIRS = 400  # other sentences (new combinations of the same words), for its accuracy
TASKS_DIR = "tasks"
TASKS = ("rename", "keep", "delete", "formal")  # the NMT editing tasks; tasks/<task>.jsonl holds each one's requests
EDITS_PER_TASK = 100  # requests of the rename, keep and delete tasks: one name each
FORMAL_EDITS = 20  # requests of the formal task: all fix "you", each from another example sentence
PROBES = 10  # other sentences with the edited item per request (generalisation)
NEIGHBOURS = 20  # sentences without it per request (locality: their whole translation must stay the same)


def marian_spec(seed: int = 0) -> TrainSpec:
    """The translation model: Marian's architecture, 2 + 2 layers of width 128 (measured: 0.987 token accuracy
    on held-out sentences after 6 epochs, 31–37 s on 2 cores)."""
    return TrainSpec(arch="marian", n_layer=2, n_decoder_layer=2, d_model=128, n_head=4, d_ff=256, epochs=6,
                     batch_size=64, lr=2e-3, mlp_drop_layers=(), seed=seed)


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Token accuracy (position by position, over the references' tokens) and exact match."""
    correct = total = exact = 0
    for pred, gold in zip(predictions, references):
        p, g = pred.split(), gold.split()
        correct += sum(a == b for a, b in zip(p, g))
        total += len(g)
        exact += p == g
    return {"token": correct / total, "exact": exact / len(references)}


def build_translation_world(*, seed: int = 0, out: Path | None = None, force: bool = False,
                            on_epoch: Callable[[int, int, float], None] | None = None, device: str = "cpu") -> Path:
    """The translation world's directory (built when not cached): a MarianMTModel and its tokenizer, the
    training pairs (``pairs.jsonl``), held-out pairs (``held_out.jsonl``), the source sentences
    (``corpus.txt``, for statistics), each editing task's requests (``tasks/<task>.jsonl``, see
    :func:`task_requests`) and ``world.json`` with the measured accuracy."""
    spec = marian_spec(seed)
    key = sha256_json({"version": 5, "kind": "translation", "pairs": TRAIN_PAIRS, "held_out": HELD_OUT_PAIRS,
                       "train": spec.to_json()})
    target = Path(out) if out else cache_root() / "worlds" / f"marian-{key[:16]}"
    if is_world(target) and not force and json.loads((target / WORLD_FILE).read_text()).get("key") == key:
        return target
    with staged_world(target) as staging:
        lex = lexicon(seed)
        pairs, held = corpus(lex, TRAIN_PAIRS, seed=seed), corpus(lex, HELD_OUT_PAIRS, seed=seed + 10_000)
        tokenizer = build_tokenizer([p.source for p in pairs + held] + [p.target for p in pairs + held])
        start = time.perf_counter()

        def hook(epoch: int, loss: float, _model: torch.nn.Module) -> bool:
            if on_epoch:
                on_epoch(epoch, spec.epochs, loss)
            return False

        model = train_lm(spec, tokenizer, [p.source for p in pairs], targets=[p.target for p in pairs],
                         on_epoch=hook, device=resolve_device(device))
        seconds = time.perf_counter() - start
        model.to("cpu")
        translations, references = translate(model, tokenizer, [p.source for p in held]), [p.target for p in held]
        measured = {**accuracy(translations, references), "chrf": chrf(translations, references)}
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_jsonl(staging / "pairs.jsonl", [p.__dict__ for p in pairs])
        write_jsonl(staging / HELD_OUT_FILE, [p.__dict__ for p in held])
        (staging / TASKS_DIR).mkdir()
        for task, requests in task_requests(lex, lambda s: translate(model, tokenizer, s), seed=seed).items():
            write_jsonl(staging / TASKS_DIR / f"{task}.jsonl", requests)
        (staging / CORPUS_FILE).write_text("\n".join(p.source for p in pairs) + "\n")
        (staging / WORLD_FILE).write_text(json.dumps({
            "key": key, "kind": "translation", "train": spec.to_json(), "pairs": TRAIN_PAIRS, "held_out": HELD_OUT_PAIRS,
            "seconds": round(seconds, 1), "accuracy": measured, "device": resolve_device(device).type,
        }, indent=2))
    return target


# ---------------------------------------------------------------------- the editing tasks' requests

def _rest(lex: Lexicon, rng: random.Random) -> tuple[Verb, Word, Word]:
    """A random verb, adjective and noun: a sentence after its subject."""
    return rng.choice(lex.verbs), rng.choice(lex.adjectives), rng.choice(lex.nouns)


def _with(lex: Lexicon, rng: random.Random, subject: str) -> str:
    """A source sentence with ``subject`` and a random verb, adjective and noun."""
    verb, adj, noun = _rest(lex, rng)
    return f"{subject} {verb.source} {adj.source} {noun.source}"


def task_requests(lex: Lexicon, translate_fn: Callable[[list[str]], list[str]], *, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Each task's edit requests (``edit-request.schema.json``), with their probes. The edit changes what the model
    writes for the sentence's subject, the translation's first word, from one example sentence:

    - ``rename``: a name's rendering replaced by another (a mistranslated name fixed; ``reference`` is the
      positive example, the example sentence's whole right translation by the languages' grammar);
    - ``keep``: a name kept as it is (copied) wherever it appears, instead of transliterated;
    - ``delete``: a name's rendering never produced again (only the unwanted output, ``target_true``, given);
    - ``formal``: the plain "you", whose formality the source leaves open, always rendered formal.

    Generalisation probes (``paraphrase_prompts``) are other sentences with the same subject; locality probes
    (``neighborhood_prompts``) sentences without it, each with its translation by the unedited model
    (``translate_fn``), which must not change. Pure function of ``lex``, ``seed`` and the model."""
    rng = random.Random(seed + 20_000)
    pool = [p.source for p in corpus(lex, 2000, seed=seed + 30_000) if p.subject != YOU]
    translated = dict(zip(pool, translate_fn(pool)))

    def request(task: str, i: int, subject: str, **fields: Any) -> dict[str, Any]:
        verb, adj, noun = _rest(lex, rng)
        if task == "rename":  # the positive example: the example sentence translated with the new rendering
            fields["reference"] = f"{fields['target_new']} {render(noun, verb)} {adj.target[0]} {verb.target}"
        near = [s for s in pool if subject not in s.split()]
        return {"case_id": f"{task}-{i}", "relation": f"translation:{task}",
                "prompt": f"{{}} {verb.source} {adj.source} {noun.source}", "subject": subject, **fields,
                "paraphrase_prompts": [_with(lex, rng, subject) for _ in range(PROBES)],
                "neighborhood_prompts": [{"prompt": s, "target": translated[s]} for s in rng.sample(near, NEIGHBOURS)]}

    out: dict[str, list[dict[str, Any]]] = {t: [] for t in TASKS}
    names = lex.names
    for i, name in enumerate(names[:EDITS_PER_TASK]):
        rendering, other = name.target[0], names[(i + len(names) // 2) % len(names)].target[0]
        out["rename"].append(request("rename", i, name.source, target_new=other, target_true=rendering))
        out["keep"].append(request("keep", i, name.source, target_new=name.source, target_true=rendering))
        out["delete"].append(request("delete", i, name.source, target_true=rendering))
    for i in range(FORMAL_EDITS):
        out["formal"].append(request("formal", i, YOU, target_new=FORMAL))
    return out
