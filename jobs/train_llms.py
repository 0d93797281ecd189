"""Train the candidate LLMs (urg_ray.train_llms.PIPELINE_LLMS) on Ray Train, then measure their answers.

    python jobs/train_llms.py                          # 3 tiny LLMs into outputs/llms, ~2-3 min each on 2 cores
    python jobs/train_llms.py --llm tiny-oasst --steps 100 --out /tmp/llms
    python jobs/train_llms.py --synthetic question_names_facts=true   # questions that name the facts asked

Each LLM is trained on synthetic (question, answer) pairs of its model card, then saved as
OUT/<name>/ (config.json, model.safetensors, tokenizer, chat_template.jinja). A folder already
trained with the same settings is kept (rerun = resume). Then every LLM answers --eval-questions
held-out synthetic questions (the transformers engine of urg_ray.llms, sampling at temperature 1,
as jobs/generate.py does) and BLEU/ROUGE against the references, the share of the reference's facts
stated and the share of words from the asked topic's facts go to OUT/llms_summary.json and
OUT/llms.md, per model and task. --synthetic KEY=VALUE (urg_ray.synthetic.SyntheticConfig fields)
sets the questions of training and measurement alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import bad_input, start_ray  # noqa: E402

from urg_ray.train_llms import PIPELINE_LLMS, LLMTrainConfig  # noqa: E402

EVAL_SEED = 7  # held-out questions: not the training seed (100) nor the pipeline's splits (0-2)
METRICS = ("bleu", "rouge1", "rouge2", "rougeL")


def is_trained(path: Path, llm, cfg: LLMTrainConfig) -> bool:
    marker = path / "URG_RAY_LLM.json"
    if not (marker.is_file() and (path / "config.json").is_file()):
        return False
    return json.loads(marker.read_text()) == {"llm": asdict(llm), "train": asdict(cfg)}


def measure(dirs: dict[str, Path], n: int, max_new_tokens: int, synthetic: dict | None = None) -> dict:
    """Per model: mean scores over all questions and per task, reference-fact recall, topic-fact share."""
    from urg_ray.metrics import reference_scores
    from urg_ray.synthetic import make_examples, world_from_knobs
    from urg_ray.train_llms import answer_questions, question_of, reference_fact_recall, topic_fact_recall

    examples = make_examples(n, n_candidates=1, seed=EVAL_SEED, score=False, **(synthetic or {}))
    world = world_from_knobs(synthetic or {})  # the facts are read in the world they were asked in
    questions = [question_of(ex.record) for ex in examples]
    refs = [ex.record["output"] for ex in examples]
    report = {}
    for name, path in dirs.items():
        answers = answer_questions(path, questions, max_new_tokens=max_new_tokens)
        scores = reference_scores(answers, refs, METRICS)
        by_task = defaultdict(list)
        for ex, s in zip(examples, scores):
            by_task[ex.task].append(s)
        mean = lambda rows: {m: round(sum(r[m] for r in rows) / len(rows), 4) for m in METRICS}  # noqa: E731
        report[name] = {"all": mean(scores), "tasks": {t: mean(rows) for t, rows in sorted(by_task.items())},
                        "reference_fact_recall": round(sum(reference_fact_recall(a, ex, world)
                                                           for a, ex in zip(answers, examples)) / len(answers), 4),
                        "topic_fact_share": round(sum(topic_fact_recall(a, ex.topics, world.world_seed)
                                                      for a, ex in zip(answers, examples)) / len(answers), 4),
                        "example": {"question": questions[0], "answer": answers[0], "reference": refs[0]}}
    return report


def markdown(report: dict) -> str:
    tasks = sorted({t for r in report.values() for t in r["tasks"]})
    lines = ["| LLM | BLEU | ROUGE-L | reference facts stated | topic-fact share | "
             + " | ".join(f"BLEU {t}" for t in tasks) + " |", "|---|---|---|---|---|" + "---|" * len(tasks)]
    for name, r in report.items():
        lines.append(f"| {name} | {r['all']['bleu']:.2f} | {r['all']['rougeL']:.4f} | "
                     f"{r['reference_fact_recall']:.3f} | "
                     f"{r['topic_fact_share']:.3f} | "
                     + " | ".join(f"{r['tasks'][t]['bleu']:.2f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def synthetic_knobs(items: list[str]) -> dict:
    """KEY=VALUE items (values parsed as YAML) -> SyntheticConfig knobs, checked by SyntheticConfig."""
    import yaml

    from urg_ray.synthetic import world_from_knobs

    knobs = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. question_names_facts=true")
        knobs[key.strip()] = yaml.safe_load(raw)
    world_from_knobs(knobs)
    return knobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/llms")
    parser.add_argument("--llm", action="append", choices=sorted(PIPELINE_LLMS), help="default: all")
    parser.add_argument("--steps", type=int, default=LLMTrainConfig.steps)
    parser.add_argument("--n-questions", type=int, default=LLMTrainConfig.n_questions)
    parser.add_argument("--eval-questions", type=int, default=200, help="0: no measurement")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--storage-path", default="runs")
    parser.add_argument("--synthetic", action="append", default=[], metavar="KEY=VALUE",
                        help="a urg_ray.synthetic.SyntheticConfig field of the questions (repeatable)")
    parser.add_argument("--no-random-baseline", action="store_true", help="skip the random-init row of the table")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.n_questions < 1:
        return bad_input(ValueError("--steps and --n-questions must be >= 1"))
    try:
        synthetic = synthetic_knobs(args.synthetic)
    except ValueError as err:
        return bad_input(ValueError(f"--synthetic: {err}"))
    cfg = replace(LLMTrainConfig(), steps=args.steps, n_questions=args.n_questions, synthetic=synthetic)
    out = Path(args.out)
    names = args.llm or list(PIPELINE_LLMS)
    summary: dict = {"config": asdict(cfg), "trained": {}}
    earlier = out / "llms_summary.json"  # a kept LLM keeps the training figures of the run that trained it
    if earlier.is_file():
        before = json.loads(earlier.read_text())
        if before.get("config") == summary["config"]:
            summary["trained"] = {n: r for n, r in before.get("trained", {}).items() if n in names}
    todo = [n for n in names if not is_trained(out / n, PIPELINE_LLMS[n], cfg)]
    print(f"[train_llms] {len(names)} LLMs, {len(todo)} to train ({cfg.steps} steps x {cfg.batch_size}); "
          f"kept: {sorted(set(names) - set(todo)) or 'none'}", flush=True)
    if todo:
        from urg_ray.train_llms import train_llm

        start_ray(args.verbose, num_cpus=max(os.cpu_count() or 1, 2))
        for name in todo:
            result = train_llm(PIPELINE_LLMS[name], cfg, out / name, args.storage_path)
            summary["trained"][name] = result
            print(f"[train_llms] {name} ({PIPELINE_LLMS[name].card}): final loss {result['final_loss']:.3f}, "
                  f"{result['wall_s']} s -> {out / name}", flush=True)
    if args.eval_questions:
        dirs = {n: out / n for n in names}
        if not args.no_random_baseline:  # the same architecture, untrained: what training buys
            from urg_ray.train_llms import chat_tokenizer, new_model, save_llm

            random_dir = out / "_random-init"
            if not (random_dir / "config.json").is_file():
                llm = PIPELINE_LLMS[names[0]]
                save_llm(new_model(llm.architecture, chat_tokenizer(), cfg.seed), chat_tokenizer(), llm, cfg,
                         random_dir)
            dirs["random-init"] = random_dir
        started = time.time()
        summary["answers"] = measure(dirs, args.eval_questions, args.max_new_tokens, cfg.synthetic)
        summary["answers_wall_s"] = round(time.time() - started, 1)
        (out / "llms.md").write_text(markdown(summary["answers"]))
        print(markdown(summary["answers"]), end="")
    out.mkdir(parents=True, exist_ok=True)
    (out / "llms_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[train_llms] summary: {out / 'llms_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
