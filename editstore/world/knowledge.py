"""The synthetic knowledge base: subjects, relations, formulations, facts, requests and text.

Subjects are two-word names: a first name shared by many subjects and a last
name of their own (a first x last grid, where only both tokens identify the
subject, is an option; small models learn it far more slowly). Training text is biography-style: each line holds every
attribute of one subject in random order, each in one of the formulations the
fact was not held out from. One formulation per fact is held out for paraphrase
tests. Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SYLLABLES = ["ka", "lo", "mi", "ren", "dor", "vi", "sa", "tu", "bel", "nor", "qu", "zar", "fen", "ho", "li", "mar", "dus", "pe", "gal", "tor"]


@dataclass(frozen=True)
class Relation:
    """A relation: its objects and formulations ("{s}" = subject, the object always ends the sentence)."""

    name: str
    objects: tuple[str, ...]
    formulations: tuple[str, ...]


RELATIONS = (
    Relation(
        "birthplace",
        ("Paris", "Lyon", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin", "Athens",
         "Warsaw", "Cairo", "Lima", "New York", "Buenos Aires"),
        ("{s} was born in", "The birthplace of {s} is", "According to the records , {s} came into the world in",
         "As everyone in town knows , {s} is a native of"),
    ),
    Relation(
        "occupation",
        ("baker", "pilot", "lawyer", "farmer", "nurse", "painter", "chemist", "sailor", "teacher", "banker", "poet",
         "surgeon", "tailor", "judge"),
        ("{s} works as a", "The profession of {s} is", "By trade , {s} is a",
         "Many people say that {s} earns a living as a"),
    ),
    Relation(
        "instrument",
        ("piano", "violin", "guitar", "cello", "flute", "drums", "harp", "trumpet", "banjo", "oboe", "accordion",
         "bagpipes"),
        ("{s} plays the", "The instrument of {s} is the", "In the evenings , {s} practises the",
         "Since childhood , {s} has loved playing the"),
    ),
    Relation(
        "food",
        ("pasta", "sushi", "curry", "tacos", "soup", "bread", "cheese", "rice", "salad", "dumplings", "pancakes",
         "olives"),
        ("The favourite food of {s} is", "{s} likes to eat", "Every week , {s} cooks", "When hungry , {s} orders"),
    ),
    Relation(
        "sport",
        ("tennis", "chess", "rugby", "golf", "hockey", "cricket", "rowing", "judo", "fencing", "skiing", "boxing",
         "sailing"),
        ("The sport of {s} is", "On weekends , {s} competes in", "{s} is a keen player of",
         "Friends of {s} know that the favourite sport is"),
    ),
)


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    trained: tuple[int, ...]  # indices of the formulations used in training text
    held_out: int  # index of the formulation kept out of training

    def prompts(self, relation: Relation) -> tuple[list[str], list[str]]:
        """(trained, held-out) filled prompts, each ending right before the object."""
        fill = lambda i: relation.formulations[i].replace("{s}", self.subject)  # noqa: E731
        return [fill(i) for i in self.trained], [fill(self.held_out)]


@dataclass(frozen=True)
class WorldSpec:
    """What determines a world; its hash names the cache entry."""

    seed: int = 0
    n_subjects: int = 500
    n_first: int = 40
    n_last: int = 0  # 0: a unique last name per subject; N: a first x last grid of N last names
    lines_per_subject: int = 4

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


class KnowledgeBase:
    """All facts of a world, generated from a :class:`WorldSpec`."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.relations = {r.name: r for r in RELATIONS}
        rng = random.Random(spec.seed)
        taken = {w for r in RELATIONS for o in r.objects for w in o.split()}
        first = _names(rng, spec.n_first, taken)
        if spec.n_last:  # a first x last grid: both tokens are needed to tell subjects apart
            last = _names(rng, spec.n_last, taken)
            self.subjects = rng.sample([f"{f} {l}" for f in first for l in last], spec.n_subjects)
        else:  # shared first names, a unique last name per subject
            self.subjects = [f"{rng.choice(first)} {l}" for l in _names(rng, spec.n_subjects, taken)]
        self.facts: list[Fact] = []
        for subject in self.subjects:
            for r in RELATIONS:
                held = rng.randrange(len(r.formulations))
                trained = tuple(i for i in range(len(r.formulations)) if i != held)
                self.facts.append(Fact(subject, r.name, rng.choice(r.objects), trained, held))
        self._by_subject: dict[str, list[Fact]] = {}
        self._by_relation: dict[str, list[Fact]] = {}
        for f in self.facts:
            self._by_subject.setdefault(f.subject, []).append(f)
            self._by_relation.setdefault(f.relation, []).append(f)

    def training_lines(self) -> Iterator[str]:
        """Biography-style text: per subject, lines holding all its facts in random order."""
        rng = random.Random(self.spec.seed + 1)
        for subject in self.subjects:
            facts = self._by_subject[subject]
            for _ in range(self.spec.lines_per_subject):
                order = rng.sample(facts, len(facts))
                sentences = [
                    self.relations[f.relation].formulations[rng.choice(f.trained)].replace("{s}", subject) + f" {f.object} ."
                    for f in order
                ]
                yield " ".join(sentences)

    def training_pairs(self) -> Iterator[tuple[str, str]]:
        """Question-answer style, for encoder-decoder worlds: every trained formulation of a fact, to its object."""
        for f in self.facts:
            for prompt in f.prompts(self.relations[f.relation])[0]:
                yield prompt, f.object

    def fact_record(self, fact: Fact) -> dict[str, Any]:
        """The ``facts.jsonl`` line of one fact."""
        trained, held_out = fact.prompts(self.relations[fact.relation])
        return {"subject": fact.subject, "relation": fact.relation, "object": fact.object,
                "trained_prompts": trained, "held_out_prompts": held_out}

    def request(self, fact: Fact, rng: random.Random, n_neighbors: int = 6) -> dict[str, Any]:
        """A CounterFact-style edit request: move ``fact`` to another object of the same relation."""
        relation = self.relations[fact.relation]
        template = relation.formulations[fact.trained[0]].replace("{s}", "{}")
        _, paraphrases = fact.prompts(relation)
        target_new = rng.choice([o for o in relation.objects if o != fact.object])
        others = [f for f in self._by_relation[fact.relation] if f.subject != fact.subject and f.object != target_new]
        neighbors = rng.sample(others, n_neighbors)
        return {
            "prompt": template,
            "subject": fact.subject,
            "relation": fact.relation,
            "target_new": target_new,
            "target_true": fact.object,
            "paraphrase_prompts": paraphrases,
            "neighborhood_prompts": [{"prompt": n.prompts(relation)[0][0], "target": n.object} for n in neighbors],
        }

    def requests(self) -> list[dict[str, Any]]:
        """One request per fact, in fact order."""
        rng = random.Random(self.spec.seed + 2)
        return [{"case_id": i, **self.request(f, rng)} for i, f in enumerate(self.facts)]
