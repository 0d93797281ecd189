"""The latent facts of synthetic records (`urg_ray.synthetic`), outside the generator: the facts
file written beside a data set and read back for evaluation bounds, and the facts a free text
(an LLM's answer) states."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from urg_ray.synthetic import _VERBS, TASKS, TOPICS, Fact, SyntheticConfig, SyntheticExample, _topic_pool, render_reference


@functools.lru_cache(maxsize=8)
def _world_tables(cfg: SyntheticConfig) -> tuple[list[str], dict[str, str], re.Pattern, re.Pattern]:
    """A world's objects (longest first), verb forms -> verb, and the topic and verb patterns:
    built once per world, not once per answer read."""
    world = TOPICS[: cfg.n_topics]
    objects = sorted({f.rest for t in world for f in _topic_pool(t, cfg)}, key=len, reverse=True)
    verbs = {Fact("", v, "").third_person().strip(): v for v in _VERBS} | {v: v for v in _VERBS}
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
