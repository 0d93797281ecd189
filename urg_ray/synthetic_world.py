"""The fixed world of the synthetic data (`urg_ray.synthetic`) and how its facts read.

Each topic ("kiln", "harbor", ...) owns a pool of short facts ("keeps the warm clay near the
river") from a closed vocabulary of a few hundred words; a pool depends only on the world's
``world_seed`` and ``pool_size``, so all splits share one world. A fact reads the same wherever
it is stated: in a reference (:func:`render_reference`), in a candidate before its model's style,
and in a question that names the facts it asks for (:func:`facts_asked`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from urg_ray.synthetic import SyntheticConfig

TASKS = ("define", "list", "steps", "compare", "benefits")
TOPICS = tuple("""kiln harbor lantern orchard glacier violin compass bakery beehive canoe
telescope volcano greenhouse library bridge windmill garden museum river desert forest castle
market island satellite printer bicycle kettle piano tractor lighthouse meadow canyon reef
tunnel festival village engine camera battery""".split())
VERBS = tuple("""hold keep carry warm cool mix build store guide protect shape clean measure
grow feed move join split press turn fill cover mark lift pull push bend fold dry heat share
count gather trade plant burn melt weave carve paint repair test watch follow open close catch
collect sort wash polish balance""".split())
_ADJECTIVES = tuple("""warm cold dry wet bright dark heavy quiet loud small large old young soft
hard sharp smooth rough narrow wide thin thick clean fresh golden silver green red blue round
square hollow solid early late rare common simple careful steady gentle strong deep shallow
tall short long sweet bitter salty wooden brittle""".split())
_NOUNS = tuple("""water sand stone clay rope glass metal wood salt grain seed leaf root wire
paper cloth oil smoke steam ice wind shadow wheel gear frame handle blade shell feather thread
bell lamp map path wall roof door window floor field hill valley coast fish bird horse sheep
bread honey milk fruit flower tool coin letter song story crowd guest worker child season
morning evening storm rain snow basket ladder mirror pocket""".split())
_PREPOSITIONS = ("near", "under", "over", "beside", "behind", "through", "across", "into", "with", "for")
_DETERMINERS = ("the", "a", "some", "every", "")


@dataclass(frozen=True)
class Fact:
    """One fact: its subject topic and a verb phrase, e.g. ('kiln', 'keep', 'the warm clay')."""

    subject: str
    verb: str
    rest: str

    def third_person(self) -> str:
        v = self.verb
        if v.endswith(("s", "sh", "ch", "x", "z")):
            return f"{v}es {self.rest}"
        return f"{v[:-1]}ies {self.rest}" if v.endswith("y") and v[-2] not in "aeiou" else f"{v}s {self.rest}"

    def base(self) -> str:
        return f"{self.verb} {self.rest}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def topic_pool(topic: str, cfg: SyntheticConfig) -> tuple[Fact, ...]:
    """The facts the world knows about ``topic``: fixed by (world_seed, topic, pool_size)."""
    rng = random.Random(f"urg-synthetic-world/{cfg.world_seed}/{topic}")
    facts = []
    for verb in rng.sample(VERBS, cfg.pool_size):  # distinct verbs keep facts apart
        det, adj = rng.choice(_DETERMINERS), rng.choice(_ADJECTIVES)
        det = _article(adj) if det == "a" else det
        words = [det, adj, rng.choice(_NOUNS)] if det else [adj, rng.choice(_NOUNS)]
        if rng.random() < 0.35:
            words += [rng.choice(_PREPOSITIONS), "the", rng.choice(_NOUNS)]
        facts.append(Fact(topic, verb, " ".join(words)))
    return tuple(facts)


def render(task: str, topics: tuple[str, ...], facts: tuple[Fact, ...]) -> list[str]:
    """The task template's sentences (capitalised, no final punctuation) stating ``facts``."""
    sentences = []
    for i, fact in enumerate(facts):
        t = topics[0]
        if task == "define":
            s = f"{_article(t)} {t} is a thing that {fact.third_person()}" if i == 0 else f"it {fact.third_person()}"
        elif task == "list":
            s = f"the {fact.subject} {fact.third_person()}"
        elif task == "steps":
            s = f"{'first' if i == 0 else 'finally' if i == len(facts) - 1 else 'next'}, {fact.base()}"
        elif task == "compare":
            other = next((o for o in topics if o != fact.subject), topics[-1])
            s = f"unlike the {other}, the {fact.subject} {fact.third_person()}"
        elif task == "benefits":
            s = f"{_article(t)} {t} helps you {fact.base()}" if i == 0 else f"it also helps you {fact.base()}"
        else:
            raise ValueError(f"unknown task {task!r}; known: {TASKS}")
        sentences.append(s[0].upper() + s[1:])
    return sentences


def render_reference(task: str, topics: tuple[str, ...], facts: tuple[Fact, ...]) -> str:
    """The reference-style text of ``facts``: one sentence per fact, no model style."""
    return " ".join(s + "." for s in render(task, topics, facts))


def facts_asked(topics: tuple[str, ...], facts: tuple[Fact, ...]) -> str:
    """The sentence a ``question_names_facts`` question ends with: each topic's verbs, in the
    reference's order (a compare reference alternates its two topics, so this fixes its order)."""
    def listed(words: list[str]) -> str:
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"

    parts = [f"what the {t} does to {listed([f.verb for f in facts if f.subject == t])}"
             for t in topics if any(f.subject == t for f in facts)]
    return f"Say {', and '.join(parts)}."
