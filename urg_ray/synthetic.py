"""Seeded, learnable MixInstruct-format ensembles for CPU-scale training, tests and demos.

The generative story, and why each part is there:

* **A fixed world**: each topic ("kiln", "harbor", ...) owns a pool of short facts ("keeps the
  warm clay near the river") from a closed vocabulary of a few hundred words. Pools depend
  only on ``world_seed``, so all splits share one world a small tokenizer covers (:func:`corpus`).
  The world and how its facts read live in `urg_ray.synthetic_world`.
* **A question** shows its task type in its wording (define / list / steps / compare /
  benefits) and names a topic (two for compare; sometimes in ``input``). The reference is K
  facts from the topic's pool in a random order, in the task's template: the question names
  the pool, only the candidates tell which facts in which order, so a fuser must read them.
  With ``question_names_facts`` the question also names what is asked (the topic and verb of
  each fact, in order: "... Say what the kiln does to keep and warm."), so the question and the
  world determine the reference: an LLM that learned the world can be right (urg_ray.train_llms).
* **Candidate models** carry MixInstruct's model names and an error rate per (model, task)
  (:data:`MODEL_CARDS`), so no model is best everywhere. A model drops whole facts or replaces
  them with wrong ones (mostly from the same topic: only agreement between candidates exposes
  them). Errors are partly shared (``error_correlation``), partly independent, so the union of
  the top-3's facts usually beats the best candidate: fusion can beat the oracle, which
  token-level noise would not allow (it leaves the best of 8 candidates near-perfect).
* **Coverage** (``coverage``, ``complementary``): by default every candidate answers the whole
  question. With ``coverage`` < 1 each one states only a share of the reference's facts, and
  ``complementary`` spreads those shares evenly over the candidates, so that no candidate, even
  without its style, holds most of the reference and only combining candidates recovers it.
* **Each model has a style** (opening, fillers, punctuation habit, bullets, sign-off), as real
  LLM answers do, so a ranker can learn who is good at what; ``style_strength=0`` removes it.
* **Noise**: some candidates are off-topic (``off_topic_rate``) or degenerate into loops,
  refusals or truncation (``degenerate_rate``), so ranking and noise robustness (ERM) matter.
* ``scores`` come from :func:`urg_ray.metrics.reference_scores` against ``output``.

The latent facts travel beside the records, never in them (`urg_ray.synthetic_facts.write_facts`):
evaluation reads them back (`read_facts`, `attach_facts`) for bounds no trained model is needed for,
the style-stripped candidates (:func:`strip_style`) and ideal fusions (:func:`ideal_fusion`).

All randomness comes from ``random.Random`` instances; no global state is touched.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from urg_ray.metrics import reference_scores
from urg_ray.synthetic_world import TASKS, TOPICS, VERBS, Fact, facts_asked, render, render_reference, topic_pool


@dataclass(frozen=True)
class Style:
    """How a model dresses its answers: the signal a ranker can use to tell models apart."""

    opening: str = ""
    closing: str = ""
    fillers: tuple[str, ...] = ()
    end: str = "."  # its habit for ending a sentence (used on about half of them)
    bullet: str = ""  # prefix of each sentence
    joiner: str = " "


# MixInstruct's candidate models (``n_candidates`` picks the first n): the probability that the
# model gets one fact wrong, per task in TASKS order, and its style. Each task has a different
# best model; vicuna is a solid generalist, best nowhere.
MODEL_CARDS: dict[str, tuple[tuple[float, ...], Style]] = {
    #                                    define list  steps compare benefits
    "oasst-sft-4-pythia-12b-epoch-3.5": ((0.05, 0.35, 0.30, 0.45, 0.25),
                                         Style("Sure!", "Hope that helps.", ("Also,",))),
    "koala-7B-HF": ((0.40, 0.10, 0.45, 0.30, 0.35), Style("Well,", "", ("basically,",))),
    "alpaca-native": ((0.40, 0.35, 0.10, 0.50, 0.45), Style()),
    "llama-7b-hf-baize-lora-bf16": ((0.45, 0.40, 0.35, 0.10, 0.30), Style("As an AI,", "", ("Moreover,",))),
    "flan-t5-xxl": ((0.25, 0.50, 0.55, 0.40, 0.50), Style(end=",")),
    "stablelm-tuned-alpha-7b": ((0.50, 0.45, 0.40, 0.35, 0.10), Style("Of course.", end="!")),
    "vicuna-13b-1.1": ((0.25, 0.25, 0.25, 0.30, 0.25),
                       Style("Certainly!", "I hope this helps!", ("Additionally,",))),
    "dolly-v2-12b": ((0.45, 0.35, 0.25, 0.45, 0.35), Style("Answer:", "", ("basically",))),
    "moss-moon-003-sft": ((0.35, 0.45, 0.50, 0.15, 0.40), Style("Hi!", bullet="* ", joiner="\n")),
    "chatglm-6b": ((0.40, 0.30, 0.45, 0.40, 0.15), Style("In short,", "That is all.", ("Furthermore,",))),
    "mpt-7b": ((0.55, 0.50, 0.45, 0.50, 0.45), Style("", "and so on", ("um,", "so,"))),
    "mpt-7b-instruct": ((0.35, 0.40, 0.30, 0.35, 0.30), Style("Key points:", bullet="- ", joiner="\n")),
}
MODELS = tuple(MODEL_CARDS)
REFUSALS = ("I am sorry, but I cannot answer that.", "I do not know.", "Please ask again.")

INSTRUCTIONS = {
    "define": ("What is a {0}?", "Define the word {0}.", "Explain what a {0} is."),
    "list": ("List some facts about the {0}.", "Tell me a few facts about the {0}.", "Give me facts about the {0}."),
    "steps": ("What are the steps to use a {0}?", "Explain step by step how to work with a {0}.",
              "How do I use a {0}? Give the steps."),
    "compare": ("Compare the {0} and the {1}.", "What is the difference between a {0} and a {1}?"),
    "benefits": ("What are the benefits of a {0}?", "Why should I use a {0}?", "Name the advantages of a {0}."),
}
INSTRUCTIONS_WITH_INPUT = {
    "define": "Define the following word.", "list": "List some facts about the following thing.",
    "steps": "Explain the steps to use the following thing.", "compare": "Compare the following two things.",
    "benefits": "What are the benefits of the following thing?",
}


WORLD_KNOBS = ("n_topics", "pool_size", "world_seed")  # the SyntheticConfig fields that make the world


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator; the defaults run and leave room for both ranking and fusion."""

    tasks: tuple[str, ...] = TASKS  # task mix: task types drawn uniformly from these
    n_topics: int = 40  # topics used, the first n of TOPICS
    pool_size: int = 10  # facts the world knows per topic
    min_facts: int = 3  # facts per reference answer, drawn uniformly in [min, max]
    max_facts: int = 5
    error_scale: float = 1.0  # multiplies every error rate in MODEL_CARDS (capped at 0.95)
    error_correlation: float = 0.3  # chance a model's error draw on a fact is the one all share
    drop_share: float = 0.5  # of the errors, share that drops a fact (the rest replace it)
    wrong_same_topic: float = 0.7  # a replacing fact comes from the same topic's pool
    off_topic_rate: float = 0.05  # candidates answering about another topic
    degenerate_rate: float = 0.05  # candidates that loop, refuse or are cut off
    style_strength: float = 1.0  # chance each style element is applied (0 = no style)
    filler_rate: float = 0.3  # chance of a filler word before a non-first sentence
    input_rate: float = 0.2  # questions whose topic goes to ``input``
    # share of the reference's facts each candidate covers (rounded, at least 1); 1 = all of them
    coverage: float = 1.0
    # with coverage < 1: give each candidate the facts the others cover least (ties at random), so
    # every fact is covered about equally often; else each candidate's share is a random subset
    complementary: bool = False
    max_words: int = 60  # candidate texts are cut at this many words
    # the question names each reference fact's topic and verb (in order), so it determines the
    # reference; a wrong fact then keeps the asked verb with another fact's object
    question_names_facts: bool = False
    # questions ask about TOPICS[start:stop] only (None: all n_topics); the world stays whole (every
    # topic's facts, the wrong facts drawn from it), so splits can ask about topics apart
    question_topics: tuple[int, int] | None = None
    shuffle_candidates: bool = False  # MixInstruct keeps a fixed model order
    world_seed: int = 0  # the world (fact pools); keep it equal across splits
    metrics: tuple[str, ...] = ("bleu", "rouge1", "rouge2", "rougeL", "rougeLsum")

    def __post_init__(self) -> None:
        if self.question_topics is not None:  # a YAML list; a tuple keeps the config hashable
            object.__setattr__(self, "question_topics", tuple(self.question_topics))
        rates = ("error_correlation", "drop_share", "wrong_same_topic", "off_topic_rate", "degenerate_rate",
                 "style_strength", "filler_rate", "input_rate", "coverage")
        bad_rates = [r for r in rates if not 0.0 <= getattr(self, r) <= 1.0]
        checks = [(not bad_rates, f"{', '.join(bad_rates)} must be in [0, 1]"),
                  (self.off_topic_rate + self.degenerate_rate <= 1.0, "off_topic_rate + degenerate_rate > 1"),
                  (bool(self.tasks) and set(self.tasks) <= set(TASKS), f"tasks must be a subset of {TASKS}"),
                  (3 <= self.n_topics <= len(TOPICS), f"n_topics must be in [3, {len(TOPICS)}]"),
                  (1 <= self.min_facts <= self.max_facts <= self.pool_size <= len(VERBS),
                   f"need 1 <= min_facts <= max_facts <= pool_size <= {len(VERBS)}"),
                  (self.error_scale >= 0 and self.max_words >= 5, "need error_scale >= 0 and max_words >= 5"),
                  (self.coverage > 0, "coverage must be > 0"),
                  (self.question_topics is None or (len(self.question_topics) == 2 and 0 <= self.question_topics[0]
                                                    and self.question_topics[0] + 2 <= self.question_topics[1]
                                                    <= self.n_topics),
                   "question_topics must be [start, stop] with 0 <= start, start + 2 <= stop <= n_topics "
                   f"({self.n_topics})")]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError(f"SyntheticConfig: {'; '.join(problems)}")


@dataclass(frozen=True)
class SyntheticExample:
    """A record plus the latent facts that produced it (for analysis, tests and headroom)."""

    record: dict[str, Any]
    task: str
    topics: tuple[str, ...]
    reference_facts: tuple[Fact, ...]
    candidate_facts: tuple[tuple[Fact, ...], ...]  # facts each candidate states, right or wrong
    kinds: tuple[str, ...]  # per candidate: "normal", "off_topic" or "degenerate"
    # per candidate, the topics its template names (an off-topic answer's own); () = ``topics`` for all
    candidate_topics: tuple[tuple[str, ...], ...] = ()

    def topics_of(self, i: int) -> tuple[str, ...]:
        return self.candidate_topics[i] if self.candidate_topics else self.topics


def ideal_fusion(example: SyntheticExample, top_k: int = 3, metric: str = "bleu") -> str:
    """The correct facts stated by the true top-k candidates (by ``metric``), in reference order.

    What a perfect fuser of the true top-k would write; scoring above the oracle (the best
    candidate) shows the data leaves room for fusion.
    """
    cands = example.record["candidates"]
    best = sorted(range(len(cands)), key=lambda i: -cands[i]["scores"][metric])[:top_k]
    return fuse_facts(example, best)


def fuse_facts(example: SyntheticExample, indices: Iterable[int]) -> str:
    """The union of the correct facts that the candidates at ``indices`` state, in reference
    order and wording: a perfect fusion of exactly those candidates (e.g. a ranker's top-k)."""
    stated = {f for i in indices for f in example.candidate_facts[i]}
    return render_reference(example.task, example.topics, tuple(f for f in example.reference_facts if f in stated))


def strip_style(example: SyntheticExample, i: int) -> str:
    """Candidate ``i`` without its model's style: the facts it states, right and wrong, in its own
    order, in the reference's wording (what it says, as the reference would say it)."""
    return render_reference(example.task, example.topics_of(i), example.candidate_facts[i])


def _reference(rng: random.Random, topics: tuple[str, ...], pools: dict[str, tuple[Fact, ...]],
               cfg: SyntheticConfig) -> tuple[Fact, ...]:
    k = rng.randint(cfg.min_facts, cfg.max_facts)
    if len(topics) == 1:
        return tuple(rng.sample(pools[topics[0]], k))
    first, second = rng.sample(pools[topics[0]], (k + 1) // 2), rng.sample(pools[topics[1]], k // 2)
    return tuple(f for pair in zip(first, [*second, None]) for f in pair if f is not None)  # A, B, A, ...


def _model_facts(rng: random.Random, error_rate: float, reference: tuple[Fact, ...], shared: list[float],
                 pools: dict[str, tuple[Fact, ...]], cfg: SyntheticConfig,
                 known: tuple[Fact, ...] | None = None) -> tuple[Fact, ...]:
    """The reference (or the part a candidate covers) with each fact kept, dropped or replaced at
    the model's error rate; a replacing fact is never one of ``known`` (default: ``reference``)."""
    facts: list[Fact] = []
    for fact, shared_draw in zip(reference, shared):
        draw = shared_draw if rng.random() < cfg.error_correlation else rng.random()
        if draw >= error_rate:
            facts.append(fact)
        elif rng.random() >= cfg.drop_share:  # replace it with a plausible wrong fact
            source = fact.subject if rng.random() < cfg.wrong_same_topic else rng.choice(
                [t for t in pools if t != fact.subject])
            wrong = [f for f in pools[source] if f not in (known or reference)]
            if cfg.question_names_facts:  # the asked verb, misremembered: another fact's object
                wrong = [f for f in wrong if f.rest != fact.rest]
            if wrong:  # (a pool no larger than the answer has nothing wrong to offer)
                choice = rng.choice(wrong)
                verb = fact.verb if cfg.question_names_facts else choice.verb
                facts.append(Fact(fact.subject, verb, choice.rest))
    return tuple(facts) or (rng.choice(reference),)


def _styled(rng: random.Random, sentences: list[str], facts: tuple[Fact, ...], style: Style,
            cfg: SyntheticConfig) -> list[tuple[str, Fact | None]]:
    """Dress sentences in a model's style: pieces of text, each with the fact it states."""
    def on() -> bool:  # one draw per style element
        return rng.random() < cfg.style_strength

    bullet = style.bullet if on() else ""
    pieces: list[tuple[str, Fact | None]] = []
    if style.opening and on():
        pieces.append((style.opening, None))
        if not style.opening.endswith((".", "!", "?", ":")):  # "Well, unlike ..."
            sentences = [sentences[0][0].lower() + sentences[0][1:], *sentences[1:]]
    for i, (sentence, fact) in enumerate(zip(sentences, facts)):
        if i > 0 and style.fillers and rng.random() < cfg.filler_rate * cfg.style_strength:
            sentence = f"{rng.choice(style.fillers)} {sentence[0].lower()}{sentence[1:]}"
        end = style.end if rng.random() < 0.5 * cfg.style_strength else "."  # a habit, not a rule
        pieces.append((f"{bullet}{sentence}{end}", fact))
    if style.closing and on():
        pieces.append((style.closing, None))
    return pieces


def _assemble(pieces: list[tuple[str, Fact | None]], joiner: str, max_words: int) -> tuple[str, tuple[Fact, ...]]:
    """Join pieces, cutting at ``max_words`` words; a fact counts only if its piece is whole."""
    texts, facts, used = [], [], 0
    for text, fact in pieces:
        words = text.split(" ")
        if used + len(words) > max_words:
            texts.append(" ".join(words[: max_words - used]))
            break
        texts.append(text)
        used += len(words)
        facts += [fact] if fact is not None else []
    return joiner.join(t for t in texts if t), tuple(facts)


def _coverage(rng: random.Random, n_facts: int, n_candidates: int, cfg: SyntheticConfig) -> list[tuple[int, ...]]:
    """Per candidate, the positions of the reference facts it covers (``coverage``, ``complementary``)."""
    share = max(1, int(cfg.coverage * n_facts + 0.5))
    if not cfg.complementary:
        return [tuple(sorted(rng.sample(range(n_facts), share))) for _ in range(n_candidates)]
    covered_by = [0] * n_facts
    covers = []
    for _ in range(n_candidates):
        least = sorted(range(n_facts), key=lambda p: (covered_by[p], rng.random()))[:share]
        for p in least:
            covered_by[p] += 1
        covers.append(tuple(sorted(least)))
    return covers


def _candidate(rng: random.Random, model: str, task: str, topics: tuple[str, ...], reference: tuple[Fact, ...],
               shared: list[float], pools: dict[str, tuple[Fact, ...]],
               cfg: SyntheticConfig, covered: tuple[int, ...] | None = None
               ) -> tuple[str, tuple[Fact, ...], str, tuple[str, ...]]:
    """One model's answer: (text, facts it states, kind, topics its template names). ``covered``:
    the positions of the reference facts it knows (None: all)."""
    rates, style = MODEL_CARDS[model]
    draw = rng.random()
    if draw < cfg.off_topic_rate:
        kind, topics = "off_topic", tuple(rng.sample([t for t in pools if t not in topics], len(topics)))
        facts = _reference(rng, topics, pools, cfg)
        facts = facts if covered is None else facts[: len(covered)]
    else:
        kind = "degenerate" if draw < cfg.off_topic_rate + cfg.degenerate_rate else "normal"
        error_rate = min(0.95, cfg.error_scale * rates[TASKS.index(task)])
        if covered is None:
            facts = _model_facts(rng, error_rate, reference, shared, pools, cfg)
        else:
            facts = _model_facts(rng, error_rate, tuple(reference[p] for p in covered), [shared[p] for p in covered],
                                 pools, cfg, known=reference)
    pieces = _styled(rng, render(task, topics, facts), facts, style, cfg)
    max_words = cfg.max_words
    if kind == "degenerate":
        mode = rng.choice(("repeat", "empty", "truncate"))
        if mode == "repeat":  # a loop on the first fact
            first = next(p for p in pieces if p[1] is not None)
            pieces = [first] * (max_words // len(first[0].split(" ")) + 1)
        elif mode == "empty":
            pieces = [(style.opening or rng.choice(REFUSALS), None)]
        else:  # cut off within its first half
            max_words = rng.randint(3, max(3, sum(len(p[0].split(" ")) for p in pieces) // 2))
    text, stated = _assemble(pieces, style.joiner, max_words)
    return text, stated, kind, topics


def _config(config: SyntheticConfig | None, knobs: dict[str, Any]) -> SyntheticConfig:
    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    if set(knobs) - names:
        raise ValueError(f"unknown SyntheticConfig knobs {sorted(set(knobs) - names)}; known: {sorted(names)}")
    return dataclasses.replace(config or SyntheticConfig(), **knobs)


def typed_knob(key: str, value: Any, where: str) -> Any:
    """A SyntheticConfig field's value, typed like its default (YAML lists -> tuples, ints -> floats)."""
    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    if key not in names:
        raise ValueError(f"{where}: unknown knob {key!r}; known: {sorted(names)}")
    default = getattr(SyntheticConfig(), key)
    if default is None:  # an optional pair (question_topics): null, or a YAML list of two ints
        if value is None:
            return None
        if isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
            return tuple(value)
        raise ValueError(f"{where}: {key} needs a list of two ints or null (default null), got {value!r}")
    if isinstance(default, tuple):
        value = tuple(value) if isinstance(value, list) else (value,)
    elif isinstance(default, float) and type(value) is int:
        value = float(value)
    if type(value) is not type(default):
        raise ValueError(f"{where}: {key} needs a {type(default).__name__} (default {default!r}), got {value!r}")
    return value


def knobs_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of SyntheticConfig fields (jobs/configs/study-synthetic.yaml) -> overrides."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of SyntheticConfig fields, got {type(data).__name__}")
    return {key: typed_knob(key, value, f"{path}: {key}") for key, value in data.items()}


def world_from_knobs(knobs: dict[str, Any]) -> SyntheticConfig:
    """The SyntheticConfig that `knobs` from outside (a config file, a command line) describe; an
    unknown name or a bad value is a ValueError saying which."""
    try:
        return _config(None, knobs)
    except TypeError as err:  # e.g. coverage: abc
        raise ValueError(str(err)) from None


def make_examples(n: int, n_candidates: int = 8, seed: int = 0, config: SyntheticConfig | None = None,
                  id_prefix: str | None = None, score: bool = True, **knobs: Any) -> list[SyntheticExample]:
    """Like :func:`make_dataset`, with each record's latent facts; ``score=False`` skips scoring."""
    cfg = _config(config, knobs)
    if not 1 <= n_candidates <= len(MODELS):
        raise ValueError(f"n_candidates must be in [1, {len(MODELS)}], got {n_candidates}")
    prefix = f"synthetic/{seed}" if id_prefix is None else id_prefix
    rng = random.Random(seed)
    pools = {t: topic_pool(t, cfg) for t in TOPICS[: cfg.n_topics]}
    asked = list(pools)[slice(*cfg.question_topics)] if cfg.question_topics else list(pools)
    models = list(MODELS[:n_candidates])
    examples = []
    for i in range(n):
        task = rng.choice(cfg.tasks)
        topics = tuple(rng.sample(asked, 2 if task == "compare" else 1))
        if rng.random() < cfg.input_rate:
            instruction, input_text = INSTRUCTIONS_WITH_INPUT[task], " and ".join(topics)
        else:
            instruction, input_text = rng.choice(INSTRUCTIONS[task]).format(*topics), ""
        reference = _reference(rng, topics, pools, cfg)
        if cfg.question_names_facts:
            instruction = f"{instruction} {facts_asked(topics, reference)}"
        shared = [rng.random() for _ in reference]  # error draws common to all models
        order = rng.sample(models, len(models)) if cfg.shuffle_candidates else models
        covers = _coverage(rng, len(reference), len(order), cfg) if cfg.coverage < 1 else [None] * len(order)
        answers = [_candidate(rng, m, task, topics, reference, shared, pools, cfg, covered)
                   for m, covered in zip(order, covers)]
        record = {
            "id": f"{prefix}/{i}", "instruction": instruction, "input": input_text,
            "output": render_reference(task, topics, reference),
            "candidates": [{"decoding_method": "top_p_sampling", "model": m, "text": text, "scores": {}}
                           for m, (text, *_) in zip(order, answers)],
            "cmp_results": "null",
        }
        examples.append(SyntheticExample(record, task, topics, reference, tuple(a[1] for a in answers),
                                         tuple(a[2] for a in answers), tuple(a[3] for a in answers)))
    if score:  # one batched call: the ROUGE scorer caches each reference's tokens
        cands = [(c, ex.record["output"]) for ex in examples for c in ex.record["candidates"]]
        scores = reference_scores([c["text"] for c, _ in cands], [ref for _, ref in cands], cfg.metrics)
        for (cand, _), cand_scores in zip(cands, scores):
            cand["scores"] = cand_scores
    return examples


def make_dataset(n: int, n_candidates: int = 8, seed: int = 0, config: SyntheticConfig | None = None,
                 id_prefix: str | None = None, **knobs: Any) -> list[dict[str, Any]]:
    """``n`` MixInstruct records with ``n_candidates`` scored candidates each.

    ``config`` and/or keyword ``knobs`` (fields of :class:`SyntheticConfig`) set the generator;
    knobs override ``config``. Deterministic for a seed; ids are ``f"{id_prefix}/{i}"``
    (default prefix ``synthetic/<seed>``).
    """
    return [ex.record for ex in make_examples(n, n_candidates, seed, config, id_prefix, **knobs)]


def corpus(n_records: int = 2000, seed: int = 0, n_candidates: int = len(MODELS),
           config: SyntheticConfig | None = None, **knobs: Any) -> Iterator[str]:
    """Text to train a tokenizer on: every topic's fact pool, then the questions, references
    and candidate texts of ``n_records`` (unscored) records."""
    cfg = _config(config, knobs)
    for topic in TOPICS[: cfg.n_topics]:
        yield render_reference("list", (topic,), topic_pool(topic, cfg))
    for ex in make_examples(n_records, n_candidates, seed, cfg, score=False):
        rec = ex.record
        yield from (t for t in (rec["instruction"], rec["input"], rec["output"]) if t)
        yield from (c["text"] for c in rec["candidates"])
