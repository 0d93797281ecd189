"""The whole loop, one command: candidate LLMs -> vLLM answers -> scores -> URG -> evaluation -> serve config.

    python jobs/pipeline.py                                  # jobs/configs/pipeline.yaml into outputs/pipeline
    python jobs/pipeline.py --config jobs/configs/pipeline-smoke.yaml --dir /tmp/p   # minutes, not an hour
    python jobs/pipeline.py --from train                     # redo train and every stage after it
    python jobs/pipeline.py --list                           # the stages and whether each is done

Stages, each a command run in a subprocess (see `stages`): data (synthetic questions with
references), llms (jobs/train_llms.py), generate (jobs/generate.py: the trained LLMs on vLLM via
ray.data.llm), score (jobs/score.py), split (the scored answers into train/dev/test), train
(jobs/train.py: URG on those candidates), evaluate (jobs/evaluate.py on test), report (the table
with a bootstrap interval, into --results), serve-config (DIR/serve.yaml for `serve run`).

Resume: a finished stage leaves DIR/stamps/STAGE.json (its command, written after its outputs
exist); a rerun skips a stage whose stamp names the same command and whose outputs exist, and
reruns every stage after one it reruns. A failed stage stops the pipeline with exit 1 and a line
naming the stage, its command and its inputs; fix it and rerun: finished stages are skipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

JOBS = Path(__file__).resolve().parent
PY = sys.executable
DEFAULT_CONFIG = JOBS / "configs" / "pipeline.yaml"
SPLITS = ("train", "dev", "test")


@dataclass
class Stage:
    name: str
    command: list[str]
    inputs: list[str] = field(default_factory=list)  # files or folders it reads (named when it fails)
    outputs: list[str] = field(default_factory=list)  # what must exist for it to count as done
    heavy: bool = True  # starts Ray / trains / loads models: run under --wrap (the light steps run bare)


class StageFailed(RuntimeError):
    pass


def stamp_of(stamps: Path, stage: Stage) -> Path:
    return stamps / f"{stage.name}.json"


def is_done(stamps: Path, stage: Stage) -> bool:
    stamp = stamp_of(stamps, stage)
    if not stamp.is_file():
        return False
    try:
        same = json.loads(stamp.read_text()).get("command") == stage.command
    except ValueError:
        return False
    return same and all(Path(p).exists() for p in stage.outputs)


def run_stages(stages: list[Stage], stamps: Path, redo_from: str | None = None, wrap: list[str] = ()) -> list[str]:
    """Run the stages in order, skipping the done ones (until one runs: then all after it run),
    each command prefixed by `wrap` (e.g. flock LOCKFILE; not part of the stamp). Returns the names of the stages that ran; raises StageFailed naming the stage and its inputs."""
    names = [s.name for s in stages]
    if redo_from is not None and redo_from not in names:
        raise StageFailed(f"--from {redo_from}: no such stage; stages: {', '.join(names)}")
    stamps.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    for i, stage in enumerate(stages):
        forced = redo_from is not None and i >= names.index(redo_from)
        if not ran and not forced and is_done(stamps, stage):
            print(f"[pipeline] {stage.name}: done, skipped", flush=True)
            continue
        stamp_of(stamps, stage).unlink(missing_ok=True)
        missing = [p for p in stage.inputs if not Path(p).exists()]
        if missing:
            raise StageFailed(f"stage {stage.name}: input {missing[0]} does not exist")
        print(f"[pipeline] {stage.name}: {shlex.join(stage.command)}", flush=True)
        started = time.time()
        rc = subprocess.call([*wrap, *stage.command] if stage.heavy else stage.command)
        if rc != 0:
            raise StageFailed(f"stage {stage.name} failed (exit {rc}) on input {', '.join(stage.inputs) or '-'}; "
                              f"command: {shlex.join(stage.command)}")
        absent = [p for p in stage.outputs if not Path(p).exists()]
        if absent:
            raise StageFailed(f"stage {stage.name} exited 0 but did not write {absent[0]}")
        wall = round(time.time() - started, 1)
        stamp_of(stamps, stage).write_text(json.dumps({"command": stage.command, "wall_s": wall}))
        print(f"[pipeline] {stage.name}: done in {wall} s", flush=True)
        ran.append(stage.name)
    return ran


def stages(cfg: dict, d: Path, config_path: str, results: Path) -> list[Stage]:
    """The pipeline's stages for config `cfg` (jobs/configs/pipeline.yaml) and work folder `d`."""
    me = [PY, str(JOBS / "pipeline.py"), "--config", config_path, "--dir", str(d)]
    data, llms, gen, scored = d / "data", d / "llms", d / "generate", d / "scored"
    llm_names = list(cfg["llms"])
    t = cfg["train"]
    split_files = {s: str(scored / f"{s}.jsonl") for s in SPLITS}
    return [
        Stage("data", [*me, "_data"], [], [str(data / "prompts.jsonl"), str(d / "generate.yaml")], heavy=False),
        Stage("llms", [PY, str(JOBS / "train_llms.py"), "--out", str(llms), "--storage-path", str(d / "runs"),
                       "--steps", str(cfg["llm_steps"]), "--eval-questions", str(cfg["llm_eval_questions"]),
                       *[a for n in llm_names for a in ("--llm", n)]],
              [], [str(llms / n / "config.json") for n in llm_names] + [str(llms / "llms_summary.json")]),
        Stage("generate", [PY, str(JOBS / "generate.py"), "--config", str(d / "generate.yaml"),
                           "--set", f"prompts={data / 'prompts.jsonl'}", "--out", str(gen)],
              [str(data / "prompts.jsonl"), *[str(llms / n) for n in llm_names]], [str(gen / "candidates.jsonl")]),
        Stage("score", [PY, str(JOBS / "score.py"), "--set", f"input={gen / 'candidates.jsonl'}",
                        "--out", str(d / "score")],
              [str(gen / "candidates.jsonl")], [str(d / "score" / "candidates.jsonl")]),
        Stage("split", [*me, "_split"], [str(d / "score" / "candidates.jsonl")], list(split_files.values()), heavy=False),
        Stage("train", [PY, str(JOBS / "train.py"), "--config", t["config"], *[a for kv in t.get("set", [])
                        for a in ("--set", kv)],
                        "--set", f"data.train_file={split_files['train']}", "--set", f"data.dev_file={split_files['dev']}",
                        "--set", f"data.test_file={split_files['test']}", "--set", "data.synthetic=false",
                        "--set", f"train.storage_path={d / 'runs'}", "--out", str(d / "train")],
              [split_files["train"], split_files["dev"]], [str(d / "train" / "model")]),
        Stage("evaluate", [PY, str(JOBS / "evaluate.py"), "--config", t["config"], "--urg", f"URG={d / 'train' / 'model'}",
                           "--test-file", split_files["test"], "--out", str(d / "eval")],
              [str(d / "train" / "model"), split_files["test"]], [str(d / "eval" / "eval.json")]),
        Stage("report", [*me, "_report", "--results", str(results)],
              [str(d / "eval" / "eval.json"), str(llms / "llms_summary.json")], [str(results / "README.md")], heavy=False),
        Stage("serve-config", [*me, "_serve_config"], [str(d / "train" / "model")], [str(d / "serve.yaml")], heavy=False),
    ]


# ---- the pipeline's own small steps (run as stages, in a subprocess like the jobs) ------------
def make_data(cfg: dict, d: Path) -> None:
    """Synthetic splits (references + the cards' own answers, for reference) and one prompts file
    for all three splits, so each LLM's vLLM engine starts once."""
    from urg_ray.data import write_records
    from urg_ray.synthetic import make_dataset

    prompts = []
    for offset, split in enumerate(SPLITS):
        records = make_dataset(cfg["n"][split], n_candidates=len(cfg["llms"]), seed=cfg["seed"] + offset, id_prefix=split)
        write_records(d / "data" / f"{split}.jsonl", records)
        prompts += [{k: r[k] for k in ("id", "instruction", "input", "output")} for r in records]
    with open(d / "data" / "prompts.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in prompts)
    gen = yaml.safe_load(Path(cfg["generate_config"]).read_text())
    template = gen.pop("model_template")
    gen["models"] = [{**template, "name": n, "source": str((d / "llms" / n).resolve())} for n in cfg["llms"]]  # Ray workers may not share our cwd
    (d / "generate.yaml").write_text(yaml.safe_dump(gen, sort_keys=False))


def split_scored(d: Path) -> None:
    """score/candidates.jsonl -> scored/{train,dev,test}.jsonl by id prefix ("train/12")."""
    from urg_ray.data import read_records, write_records

    records = read_records(d / "score" / "candidates.jsonl")
    for split in SPLITS:
        write_records(d / "scored" / f"{split}.jsonl",
                      [r.model_dump() for r in records if r.id.startswith(f"{split}/") and len(r.candidates) > 1])


def serve_config(cfg: dict, d: Path) -> None:
    """serve/app.yaml with these LLMs (transformers engines: one Serve replica each) and this URG."""
    app = yaml.safe_load((JOBS.parent / "serve" / "app.yaml").read_text())
    args = app["applications"][0]["args"]
    args["urg"]["model"] = str((d / "train" / "model").resolve())
    args["urg"]["max_new_tokens"] = 128  # as jobs/evaluate.py fuses
    args["candidates"] = [{"name": n, "kind": "transformers", "model_source": str((d / "llms" / n).resolve()),
                           "max_tokens": 96, "temperature": 1.0} for n in cfg["llms"]]  # as generated for training
    app["applications"][0]["deployments"] = [
        dep for dep in app["applications"][0]["deployments"] if not dep["name"].startswith("Candidate-")
    ] + [{"name": f"Candidate-{n}", "ray_actor_options": {"num_cpus": 0.25}} for n in cfg["llms"]]
    (d / "serve.yaml").write_text("# written by jobs/pipeline.py: the ensemble of this pipeline run\n"
                                  + yaml.safe_dump(app, sort_keys=False))


def write_report(cfg: dict, d: Path, results: Path) -> None:
    """results/README.md (+ eval.json, llms.md): the test table, URG vs its best member with a
    paired bootstrap interval per metric, and each LLM's answers per task."""
    import shutil

    from urg_ray.evaluation import paired_bootstrap

    evaluation = json.loads((d / "eval" / "eval.json").read_text())
    per_record = json.loads((d / "eval" / "eval_records.json").read_text())["rows"]
    metrics = [m for m in evaluation["metrics"] if m != "gpt_rank"]
    rows = {r["name"]: r for r in evaluation["rows"]}
    members = [n for n in cfg["llms"] if n in per_record]  # models that answered every test question
    best = max(members, key=lambda n: rows[n]["scores"]["bleu"])
    results.mkdir(parents=True, exist_ok=True)
    for name in ("eval.json", "eval.md"):
        shutil.copy(d / "eval" / name, results / name)
    shutil.copy(d / "llms" / "llms.md", results / "llms.md")
    lines = [f"# The closed loop: {', '.join(members)} -> vLLM -> URG (jobs/pipeline.py)", "",
             f"{evaluation['n_records']} held-out test questions; candidates sampled by the trained tiny LLMs on "
             "vLLM (ray.data.llm), URG trained on their scored train-split answers. Full table: [eval.md](eval.md).", "",
             "| row | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {name} | " + " | ".join(f"{r['scores'][m]:.4g}" for m in metrics) + " |" for name, r in rows.items()]
    lines += ["", f"## Does the ensemble beat its best member ({best}, by test BLEU)?", "",
              "Paired bootstrap (10,000 resamples of the test questions, 95%) of row minus best member:", "",
              "| row | metric | mean difference | 95% interval |", "|---|---|---|---|"]
    for row in [n for n in rows if n.startswith("URG")]:
        for m in metrics:
            if row in per_record and m in per_record[row]:
                b = paired_bootstrap(per_record[row][m], per_record[best][m])
                lines.append(f"| {row} | {m} | {b['mean']:+.4g} | [{b['low']:+.4g}, {b['high']:+.4g}] |")
    llms = json.loads((d / "llms" / "llms_summary.json").read_text())
    lines += ["", "## The candidate LLMs (jobs/train_llms.py), on held-out synthetic questions", "",
              "Sampled at temperature 1 with transformers; BLEU per task. Full: [llms.md](llms.md).", "",
              (d / "llms" / "llms.md").read_text(), "", "Training: " + json.dumps(llms.get("config", {})), ""]
    if (results / "notes.md").is_file():
        lines += ["Notes on what the LLMs and this run show: [notes.md](notes.md).", ""]
    stamps = {p.stem: json.loads(p.read_text()).get("wall_s") for p in sorted((d / "stamps").glob("*.json"))}
    lines += ["Wall time per stage (s, this run): " + json.dumps(stamps), ""]
    (results / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", choices=["_data", "_split", "_report", "_serve_config"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--dir", default="outputs/pipeline", help="work folder (default outputs/pipeline)")
    parser.add_argument("--results", default="docs/results/pipeline", help="where the report stage writes")
    parser.add_argument("--from", dest="redo_from", help="rerun this stage and all after it")
    parser.add_argument("--wrap", default="", help='prefix of every stage command, e.g. "flock /tmp/heavy.lock"')
    parser.add_argument("--list", action="store_true", help="list the stages and whether each is done")
    args = parser.parse_args(argv)
    try:
        cfg = yaml.safe_load(Path(args.config).read_text())
    except (OSError, yaml.YAMLError) as err:
        print(f"error: --config {args.config}: {err}", file=sys.stderr)
        return 2
    d = Path(args.dir)
    if args.step == "_data":
        make_data(cfg, d)
    elif args.step == "_split":
        split_scored(d)
    elif args.step == "_report":
        write_report(cfg, d, Path(args.results))
    elif args.step == "_serve_config":
        serve_config(cfg, d)
    else:
        plan = stages(cfg, d, args.config, Path(args.results))
        if args.list:
            for s in plan:
                print(f"{s.name:13s} {'done' if is_done(d / 'stamps', s) else 'to run'}")
            return 0
        started = time.time()
        try:
            ran = run_stages(plan, d / "stamps", args.redo_from, shlex.split(args.wrap))
        except StageFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"[pipeline] done in {time.time() - started:.0f} s; ran: {', '.join(ran) or 'nothing (all done)'}; "
              f"serve it: serve run {d / 'serve.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
