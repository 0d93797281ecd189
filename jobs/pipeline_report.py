"""The pipeline's report stage (jobs/pipeline.py `_report`): the test table, URG against its best
member with a paired bootstrap interval, where the fused answers' facts come from, and each LLM's
answers per task, written to the results folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline import PipelineConfig


class ReportError(RuntimeError):
    pass


def write_report(cfg: PipelineConfig, d: Path, results: Path) -> None:
    """results/README.md (+ eval.json, llms.md): the test table, URG vs its best member with a
    paired bootstrap interval per metric, and each LLM's answers per task."""
    import shutil

    from urg_ray.evaluation import paired_bootstrap
    from urg_ray.evaluation_report import BOUNDS_NOTE, fact_sources_markdown

    evaluation = json.loads((d / "eval" / "eval.json").read_text())
    records = json.loads((d / "eval" / "eval_records.json").read_text())
    per_record = records["rows"]
    metrics = [m for m in evaluation["metrics"] if m != "gpt_rank"]
    rows = {r["name"]: r for r in evaluation["rows"]}
    members = [n for n in cfg.llms if n in per_record and n in rows]  # models that answered every test question
    if not members:
        raise ReportError(f"{d / 'eval' / 'eval.json'}: none of the LLMs {cfg.llms} has a row (every test record "
                          f"lacks one of their answers?); rows: {sorted(rows)}")
    best = max(members, key=lambda n: rows[n]["scores"]["bleu"])
    results.mkdir(parents=True, exist_ok=True)
    for name in ("eval.json", "eval.md"):
        shutil.copy(d / "eval" / name, results / name)
    for name in ("llms.md", "llms_summary.json"):
        shutil.copy(d / "llms" / name, results / name)
    lines = [f"# The closed loop: {', '.join(members)} -> vLLM -> URG (jobs/pipeline.py)", "",
             f"{evaluation['n_records']} held-out test questions; candidates sampled by the trained tiny LLMs on "
             "vLLM (ray.data.llm), URG trained on their scored train-split answers. "
             "Full table: [eval.md](eval.md).", "",
             "| row | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    shown = [n for n, r in rows.items() if r["kind"] != "oracle" or n == "Oracle (bleu)"]  # the rest: eval.md
    lines += [f"| {name} | " + " | ".join(f"{rows[name]['scores'][m]:.4g}" for m in metrics) + " |" for name in shown]
    lines += ["", BOUNDS_NOTE + " Here the facts are those each generated answer states "
              "(urg_ray.synthetic_facts.stated_facts; a garbled fact counts as none).", ""]
    ensemble = [n for n in rows if rows[n]["kind"] in ("rank", "fusion") and n in per_record]
    margins = {(row, m): paired_bootstrap(per_record[row][m], per_record[best][m])
               for row in ensemble for m in metrics if m in per_record[row] and m in per_record[best]}
    lines += [f"## Does the ensemble beat its best member ({best}, by test BLEU)?", ""]
    if ("URG", "bleu") in margins:
        b = margins["URG", "bleu"]
        verdict = ("yes" if b["low"] > 0 else "no, it is worse" if b["high"] < 0 else "no: the interval includes 0")
        lines += [f"URG fusion minus {best}: {b['mean']:+.2f} BLEU, 95% interval [{b['low']:+.2f}, {b['high']:+.2f}] "
                  f"({verdict}).", ""]
    lines += ["Paired bootstrap (10,000 resamples of the test questions, 95%) of row minus best member:", "",
              "| row | metric | mean difference | 95% interval |", "|---|---|---|---|"]
    lines += [f"| {row} | {m} | {b['mean']:+.4g} | [{b['low']:+.4g}, {b['high']:+.4g}] |"
              for (row, m), b in margins.items()]
    if records.get("texts") and (d / "scored" / "test.facts.jsonl").is_file():
        from urg_ray.synthetic import world_from_knobs
        from urg_ray.synthetic_facts import fact_sources, read_facts

        facts_file = d / "scored" / "test.facts.jsonl"
        try:
            sources = fact_sources(records["texts"], records["ids"], read_facts(facts_file),
                                   world_from_knobs(cfg.synthetic), shown=records.get("shown"))
        except ValueError as err:
            raise ReportError(f"{facts_file} and {d / 'eval' / 'eval_records.json'}: {err}") from None
        lines += ["", *fact_sources_markdown(sources)]  # the table of eval.md
    llms = json.loads((d / "llms" / "llms_summary.json").read_text())
    lines += ["", "## The candidate LLMs (jobs/train_llms.py), on held-out synthetic questions", "",
              "Sampled at temperature 1 (the transformers engine of urg_ray.llms); BLEU per task. "
              "Full: [llms.md](llms.md).", "",
              (d / "llms" / "llms.md").read_text(), "", "Training: " + json.dumps(llms.get("config", {})), ""]
    if (results / "notes.md").is_file():
        lines += ["Notes on what the LLMs and this run show: [notes.md](notes.md).", ""]
    stamps = {p.stem: json.loads(p.read_text()).get("wall_s") for p in sorted((d / "stamps").glob("*.json"))}
    lines += ["Wall time per stage (s, the stamps of the last invocation: a stage kept from an earlier run shows "
              "its rerun): " + json.dumps(stamps), ""]
    (results / "README.md").write_text("\n".join(lines))
