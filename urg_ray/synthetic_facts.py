"""The latent facts of synthetic records (`urg_ray.synthetic`), outside the generator: the facts
file written beside a data set and read back for evaluation bounds (with the config of the world
it was made in beside it), and the facts a free text (an LLM's answer) states."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from urg_ray.synthetic import WORLD_KNOBS, SyntheticConfig, SyntheticExample, knobs_file, world_from_knobs
from urg_ray.synthetic_world import TASKS, TOPICS, VERBS, Fact, render_reference, topic_pool


@functools.lru_cache(maxsize=8)
def _world_tables(cfg: SyntheticConfig) -> tuple[list[str], dict[str, str], re.Pattern, re.Pattern]:
    """A world's objects (longest first), verb forms -> verb, and the topic and verb patterns:
    built once per world, not once per answer read."""
    world = TOPICS[: cfg.n_topics]
    objects = sorted({f.rest for t in world for f in topic_pool(t, cfg)}, key=len, reverse=True)
    verbs = {Fact("", v, "").third_person().strip(): v for v in VERBS} | {v: v for v in VERBS}
    topic_re = re.compile(r"\b(" + "|".join(world) + r")\b")
    verb_re = re.compile(r"\b(" + "|".join(sorted(verbs, key=len, reverse=True)) + r") ")
    return objects, verbs, topic_re, verb_re


def stated_facts(text: str, topics: tuple[str, ...], config: SyntheticConfig | None = None) -> tuple[Fact, ...]:
    """The facts a free text (e.g. an LLM's answer) states, in order: each verb of the world (third
    person or base form) followed by an object some fact of the world has, about the topic last
    named before it (default ``topics[0]``). A garbled object states no fact; right and wrong
    facts both count (compare with the reference's)."""
    objects, verbs, topic_re, verb_re = _world_tables(config or SyntheticConfig())
    lowered = text.lower()
    named = [(m.start(), m.group(1)) for m in topic_re.finditer(lowered)]
    facts = []
    for m in verb_re.finditer(lowered):
        rest = next((o for o in objects if lowered.startswith(o, m.end())
                     and not lowered[m.end() + len(o): m.end() + len(o) + 1].isalpha()), None)
        if rest is not None:
            subject = next((t for start, t in reversed(named) if start < m.start()), topics[0])
            facts.append(Fact(subject, verbs[m.group(1)], rest))
    return tuple(facts)


def facts_path(records_path: str | os.PathLike) -> str:
    """Where :func:`write_facts` puts the facts of a records file: ``test.jsonl`` -> ``test.facts.jsonl``."""
    path = os.fspath(records_path)
    stem = path[: -len(".jsonl")] if path.endswith(".jsonl") else path
    return f"{stem}.facts.jsonl"


def world_path(facts_file: str | os.PathLike) -> str:
    """Where :func:`write_world_config` puts the world of a facts file: ``test.facts.jsonl`` -> ``test.world.yaml``."""
    path = os.fspath(facts_file)
    stem = next((path[: -len(s)] for s in (".facts.jsonl", ".jsonl") if path.endswith(s)), path)
    return f"{stem}.world.yaml"


def write_world_config(path: str | os.PathLike, config: SyntheticConfig) -> None:
    """Every field of the SyntheticConfig a data set was made with (not only the knobs given, so a
    later change of a default cannot change the world it is read in): a YAML mapping that
    :func:`urg_ray.synthetic.knobs_file` reads back, as datasets keep a dataset's config beside its data."""
    import dataclasses

    import yaml

    from urg_ray.durable import atomic_write

    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    with atomic_write(path) as f:
        f.write("# the urg_ray.synthetic.SyntheticConfig this data set was made with (jobs/make_data.py)\n")
        f.write(yaml.safe_dump(fields, sort_keys=True))


def world_of(facts_file: str | os.PathLike, synthetic: str | None) -> tuple[SyntheticConfig, str | None]:
    """The SyntheticConfig a facts file is read in, and the file it came from: `synthetic` (knobs
    as jobs/make_data.py was given them), else the config written beside the facts
    (:func:`world_path`), else the default world (None). Both given: their worlds (``WORLD_KNOBS``,
    the only fields that decide which facts a text states) must agree, else a ValueError naming
    both files and the fields."""
    beside = world_path(facts_file)
    given = [f for f in (synthetic, beside if os.path.isfile(beside) else None) if f]
    configs = {}
    for f in given:
        try:
            configs[f] = world_from_knobs(knobs_file(f))
        except ValueError as err:
            raise ValueError(err if str(err).startswith(str(f)) else f"{f}: {err}") from None
    if len(configs) == 2:
        a, b = configs.values()
        differ = [f"{k} {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in WORLD_KNOBS if getattr(a, k) != getattr(b, k)]
        if differ:
            raise ValueError(f"--synthetic {synthetic} and {beside} (the config {os.fspath(facts_file)} was made "
                             f"with) describe different worlds ({', '.join(differ)}); drop --synthetic, or give "
                             f"the knobs the facts were made with")
    return (configs[given[0]], given[0]) if given else (world_from_knobs({}), None)


def _fact_list(facts: Iterable[Fact]) -> list[list[str]]:
    return [[f.subject, f.verb, f.rest] for f in facts]


def write_facts(path: str | os.PathLike, examples: Iterable[SyntheticExample]) -> int:
    """One JSON line per example: its record's id and the latent facts behind it; returns the count."""
    from urg_ray.durable import atomic_write

    count = 0
    with atomic_write(path) as f:
        for ex in examples:
            line = {"id": ex.record["id"], "task": ex.task, "topics": list(ex.topics),
                    "reference_facts": _fact_list(ex.reference_facts),
                    "candidate_facts": [_fact_list(facts) for facts in ex.candidate_facts],
                    "candidate_topics": [list(ex.topics_of(i)) for i in range(len(ex.candidate_facts))],
                    "kinds": list(ex.kinds)}
            f.write(json.dumps(line) + "\n")
            count += 1
    return count


def read_facts(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A facts file (:func:`write_facts`) as {record id: its line}; a bad line raises DataError
    naming ``file:line`` and the field."""
    from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

    from urg_ray.data import DataError, iter_json

    class FactsLine(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str
        task: str
        topics: list[str]
        reference_facts: list[tuple[str, str, str]]
        candidate_facts: list[list[tuple[str, str, str]]]
        candidate_topics: list[list[str]]
        kinds: list[str]

        @field_validator("task")
        @classmethod
        def _known_task(cls, value: str) -> str:
            if value not in TASKS:
                raise ValueError(f"unknown task {value!r}; known: {TASKS}")
            return value

    lines: dict[str, dict[str, Any]] = {}
    for number, value in iter_json(path):
        try:
            line = FactsLine.model_validate(value).model_dump()
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "<line>"
            raise DataError(f"{path}:{number}: field {field!r}: {first['msg']}") from None
        if line["id"] in lines:
            raise DataError(f"{path}:{number}: field 'id': {line['id']!r} appears twice")
        lines[line["id"]] = line
    return lines


def attach_facts(record: Mapping[str, Any], facts: Mapping[str, Any]) -> SyntheticExample:
    """The :class:`SyntheticExample` of ``record`` (a dict as ``make_dataset`` writes it, scored)
    from its line of a facts file; raises ValueError when the two do not belong together."""
    def as_facts(rows: Sequence[Sequence[str]]) -> tuple[Fact, ...]:
        return tuple(Fact(*row) for row in rows)

    n = len(record["candidates"])
    lengths = {len(facts["candidate_facts"]), len(facts["candidate_topics"]), len(facts["kinds"])}
    example = SyntheticExample(dict(record), facts["task"], tuple(facts["topics"]), as_facts(facts["reference_facts"]),
                               tuple(as_facts(c) for c in facts["candidate_facts"]), tuple(facts["kinds"]),
                               tuple(tuple(t) for t in facts["candidate_topics"]))
    if record["id"] != facts["id"] or lengths != {n} or record["output"] != render_reference(
            example.task, example.topics, example.reference_facts):
        raise ValueError(f"record {record['id']!r}: its facts (id {facts['id']!r}) do not render its output with "
                         f"{n} candidates: the facts file belongs to another data set")
    return example


def world_mismatch(facts: Mapping[str, Mapping[str, Any]], config: SyntheticConfig | None = None) -> str | None:
    """None when every reference fact of a facts file (:func:`read_facts`) is a fact of the world
    ``config`` describes (its topics, ``pool_size`` and ``world_seed``), else what is not: facts
    read in another world are misread (:func:`stated_facts` knows its world's objects only)."""
    cfg = config or SyntheticConfig()
    known = {f for t in TOPICS[: cfg.n_topics] for f in topic_pool(t, cfg)}
    for record_id, line in facts.items():
        for row in line["reference_facts"]:
            if Fact(*row) not in known:
                return (f"record {record_id!r}: reference fact {tuple(row)} is no fact of the synthetic world "
                        f"(n_topics={cfg.n_topics}, pool_size={cfg.pool_size}, world_seed={cfg.world_seed})")
    return None


def fact_sources(texts: Mapping[str, Sequence[str]], ids: Sequence[str], facts: Mapping[str, Mapping[str, Any]],
                 config: SyntheticConfig | None = None,
                 shown: Mapping[str, Sequence[Sequence[int]]] | None = None) -> dict[str, dict[str, float]]:
    """Where the right facts of fused answers come from: from the candidates a fuser was shown
    (combining), or from elsewhere (other candidates, or its memory of the world it learned).

    ``texts``: fused row -> its answer per test record, in ``ids`` order; ``facts``: record id ->
    its facts line (:func:`read_facts`); ``shown``: fused row -> per record, the candidate indices
    the fuser was shown (``FusionResult.selected``). A candidate's facts are its latent facts. Per
    fused row: ``stated``, the share of the reference's facts it states (:func:`stated_facts`),
    per record, averaged; ``shown_hold``, the same share for all its shown candidates together
    (the most a fuser copying whole facts from them can state); and, of its right facts pooled
    over the records, the shares ``from_shown`` (in a shown candidate), ``from_other_candidates``
    (only in candidates it was not shown) and ``in_no_candidate``. A row without ``shown`` has
    ``stated`` and ``in_no_candidate`` only. Two reference rows: ``best candidate`` (the one
    holding most of the reference) and ``any candidate`` (all together)."""
    absent = [i for i in ids if i not in facts]
    if absent:
        raise ValueError(f"no facts for test record {absent[0]!r}")
    for name, rows in texts.items():
        if len(rows) != len(ids):
            raise ValueError(f"row {name!r} has {len(rows)} records, the test set {len(ids)}")
    for name, rows in (shown or {}).items():
        if len(rows) != len(ids):
            raise ValueError(f"row {name!r}: shown candidates for {len(rows)} records, the test set has {len(ids)}")
    unknown = sorted(set(shown or {}) - set(texts))
    if unknown:
        raise ValueError(f"shown candidates for rows {unknown} with no fused texts; fused rows: {sorted(texts)}")
    lines = [facts[i] for i in ids]
    refs = [{Fact(*f) for f in line["reference_facts"]} for line in lines]
    held = [[{Fact(*f) for f in c} & ref for c in line["candidate_facts"]] for line, ref in zip(lines, refs)]
    anywhere = [set().union(*c) for c in held]

    def share(hits: Sequence[set[Fact]]) -> float:  # per record, averaged
        return round(sum(len(h) / max(1, len(r)) for h, r in zip(hits, refs)) / max(1, len(refs)), 4)

    found = {"best candidate": {"stated": share([max(c, key=len, default=set()) for c in held])},
             "any candidate": {"stated": share(anywhere)}}
    for name, row in texts.items():
        right = [set(stated_facts(t, tuple(line["topics"]), config)) & ref for t, line, ref in zip(row, lines, refs)]
        n_right = max(1, sum(map(len, right)))
        pooled = lambda sets: round(sum(map(len, sets)) / n_right, 4)  # noqa: E731  of the right facts, pooled
        found[name] = {"stated": share(right)}
        if shown and name in shown:
            from_shown = []
            for record_id, indices, c in zip(ids, shown[name], held):
                if any(not 0 <= i < len(c) for i in indices):
                    raise ValueError(f"row {name!r}, record {record_id!r}: shown candidates {list(indices)} "
                                     f"out of range for its {len(c)} candidates")
                from_shown.append(set().union(*(c[i] for i in indices)))
            found[name] |= {"shown_hold": share(from_shown),
                            "from_shown": pooled([h & s for h, s in zip(right, from_shown)]),
                            "from_other_candidates": pooled([(h & a) - s
                                                             for h, a, s in zip(right, anywhere, from_shown)])}
        found[name]["in_no_candidate"] = pooled([h - a for h, a in zip(right, anywhere)])
    return found
