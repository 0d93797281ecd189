"""The whole loop, one command: candidate LLMs -> vLLM answers -> scores -> URG -> evaluation -> serve config.

    python jobs/pipeline.py                                  # jobs/configs/pipeline.yaml into outputs/pipeline
    python jobs/pipeline.py --config jobs/configs/pipeline-smoke.yaml --dir /tmp/p   # minutes, not an hour
    python jobs/pipeline.py --from train                     # redo train and every stage after it
    python jobs/pipeline.py --list                           # the stages and whether each is done

Stages, each a command run in a subprocess (see `stages`): llms (jobs/train_llms.py), data
(synthetic questions with references; the LLMs read none of them), generate (jobs/generate.py: the
trained LLMs on vLLM via ray.data.llm), score (jobs/score.py), split (the scored answers into
train/dev/test, with the facts each answer states beside them), train (jobs/train.py: URG on those
candidates), evaluate (jobs/evaluate.py --bounds on test), report (the table with a bootstrap
interval, into --results), serve-config (DIR/serve.yaml for `serve run`).

The config (jobs/configs/pipeline.yaml) is a `PipelineConfig`: a missing, unknown or bad key
stops the run before any stage, naming the key and the file.

Resume: a finished stage leaves DIR/stamps/STAGE.json (its command, written after its outputs
exist); a rerun skips a stage whose stamp names the same command and whose outputs exist, and
reruns every stage after one it reruns. A failed stage stops the pipeline with exit 1 and a line
naming the stage, its command and its inputs; fix it and rerun: finished stages are skipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import INPUT_ERRORS, bad_input  # noqa: E402
from pipeline_report import ReportError, write_report  # noqa: E402

from urg_ray.config import ConfigError, load_config  # noqa: E402
from urg_ray.synthetic import WORLD_KNOBS  # noqa: E402

JOBS = Path(__file__).resolve().parent
PY = sys.executable
DEFAULT_CONFIG = JOBS / "configs" / "pipeline.yaml"
SPLITS = ("train", "dev", "test")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSizes(_Strict):
    train: int = Field(ge=1)
    dev: int = Field(ge=1)
    test: int = Field(ge=1)


class URGStage(_Strict):
    config: str  # a jobs/train.py config (e.g. jobs/configs/tiny.yaml)
    set: list[str] = Field(default_factory=list)  # its --set overrides


class PipelineConfig(_Strict):
    """jobs/configs/pipeline.yaml."""

    seed: int = 0  # splits use seeds seed, seed+1, seed+2 (the LLMs train on urg_ray.train_llms' seed)
    n: SplitSizes  # questions per split
    llms: list[str] = Field(min_length=2)  # keys of urg_ray.train_llms.PIPELINE_LLMS
    llm_steps: int = Field(ge=1)  # training steps per LLM
    llm_questions: int | None = Field(None, ge=1)  # their training questions (None: LLMTrainConfig's)
    llm_eval_questions: int = Field(ge=1)  # held-out questions their table (llms.md, in the report) measures
    synthetic: dict[str, Any] = Field(default_factory=dict)  # urg_ray.synthetic.SyntheticConfig knobs, everywhere
    # knobs of one split's questions over `synthetic` (e.g. the topics it asks about)
    split_synthetic: dict[Literal["train", "dev", "test"], dict[str, Any]] = Field(default_factory=dict)
    generate_config: str  # jobs/generate.py settings with a model_template
    train: URGStage

    @field_validator("llms")
    @classmethod
    def _known_llms(cls, names: list[str]) -> list[str]:
        from urg_ray.train_llms import PIPELINE_LLMS

        unknown = [n for n in names if n not in PIPELINE_LLMS]
        if unknown or len(set(names)) < len(names):
            raise ValueError(f"unknown or repeated LLMs {unknown or names}; known: {sorted(PIPELINE_LLMS)}")
        return names

    @field_validator("synthetic")
    @classmethod
    def _synthetic_knobs(cls, knobs: dict[str, Any]) -> dict[str, Any]:
        from urg_ray.synthetic import world_from_knobs

        world_from_knobs(knobs)
        return knobs

    @field_validator("split_synthetic")
    @classmethod
    def _split_knobs(cls, splits: dict[str, dict[str, Any]], info) -> dict[str, dict[str, Any]]:
        from urg_ray.synthetic import world_from_knobs

        for split, knobs in splits.items():
            world = sorted(set(knobs) & set(WORLD_KNOBS))
            if world:  # the LLMs, the split stage and the report read the world of `synthetic`
                raise ValueError(f"{split}: {world[0]} changes the world; set it in `synthetic`, for every split")
            try:
                world_from_knobs({**info.data.get("synthetic", {}), **knobs})
            except ValueError as err:
                raise ValueError(f"{split}: {err}") from None
        return splits

    def split_knobs(self, split: str) -> dict[str, Any]:
        return {**self.synthetic, **self.split_synthetic.get(split, {})}

    @field_validator("generate_config")
    @classmethod
    def _a_file(cls, path: str) -> str:
        if not Path(path).is_file():
            raise ValueError(f"no such file {path}")
        return path


def load_pipeline_config(path: str) -> PipelineConfig:
    """`path` validated; raises ConfigError naming the file and the key."""
    return load_config(path, schema=PipelineConfig)


@dataclass
class Stage:
    name: str
    command: list[str]
    inputs: list[str] = field(default_factory=list)  # files or folders it reads (named when it fails)
    outputs: list[str] = field(default_factory=list)  # what must exist for it to count as done
    heavy: bool = True  # starts Ray / trains / loads models: run under --wrap (the light steps run bare)
    settings: str = ""  # what it reads from the config beyond its command (a changed value reruns it)
    # folders it resumes from (checkpoints): kept when it reruns on the same input files (after it
    # failed or was stopped), removed when they were made again since it started, or with --from
    fresh: list[str] = field(default_factory=list)


class StageFailed(RuntimeError):
    pass


def stamp_of(stamps: Path, stage: Stage) -> Path:
    return stamps / f"{stage.name}.json"


def is_done(stamps: Path, stage: Stage) -> bool:
    stamp = stamp_of(stamps, stage)
    if not stamp.is_file():
        return False
    try:
        done = json.loads(stamp.read_text())
        same = done.get("command") == stage.command and done.get("settings", "") == stage.settings
    except ValueError:
        return False
    return same and all(Path(p).exists() for p in stage.outputs)


def start_fresh_if_new_inputs(stage: Stage, stamps: Path, forced: bool) -> None:
    """Remove `stage.fresh` (its checkpoints) unless they were made from these very input files
    (same size and mtime as when the stage last started) and --from did not ask for it."""
    marker = stamps / f"{stage.name}.inputs.json"
    now = {p: [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in stage.inputs if Path(p).is_file()}
    before = json.loads(marker.read_text()) if marker.is_file() else None
    if forced or before != now:
        for folder in stage.fresh:
            shutil.rmtree(folder, ignore_errors=True)
    marker.write_text(json.dumps(now))


def run_stages(stages: list[Stage], stamps: Path, redo_from: str | None = None, wrap: list[str] = ()) -> list[str]:
    """Run the stages in order, skipping the done ones (until one runs: then all after it run),
    each command prefixed by `wrap` (e.g. flock LOCKFILE; not part of the stamp). Returns the names
    of the stages that ran; raises StageFailed naming the stage and its inputs."""
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
        if stage.fresh:
            start_fresh_if_new_inputs(stage, stamps, forced)
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
        stamp_of(stamps, stage).write_text(json.dumps({"command": stage.command, "settings": stage.settings,
                                                       "wall_s": wall}))
        print(f"[pipeline] {stage.name}: done in {wall} s", flush=True)
        ran.append(stage.name)
    return ran


def stages(cfg: PipelineConfig, d: Path, config_path: str, results: Path) -> list[Stage]:
    """The pipeline's stages for config `cfg` (jobs/configs/pipeline.yaml) and work folder `d`."""
    me = [PY, str(JOBS / "pipeline.py"), "--config", config_path, "--dir", str(d)]
    data, llms, gen, scored = d / "data", d / "llms", d / "generate", d / "scored"
    llm_names = list(cfg.llms)
    t = cfg.train
    split_files = {s: str(scored / f"{s}.jsonl") for s in SPLITS}
    test_facts = str(scored / "test.facts.jsonl")
    # the world's knobs, for evaluate --synthetic (write_world): the split stage's facts have none beside them
    world = str(d / "world.yaml")
    data_settings = (cfg.model_dump_json(include={"seed", "n", "llms", "synthetic", "split_synthetic"})
                     + Path(cfg.generate_config).read_text())
    return [
        # the LLMs first: they read no split, so new splits (the data stage) keep them
        Stage("llms", [PY, str(JOBS / "train_llms.py"), "--out", str(llms), "--storage-path", str(d / "runs"),
                       "--steps", str(cfg.llm_steps), "--eval-questions", str(cfg.llm_eval_questions),
                       *(["--n-questions", str(cfg.llm_questions)] if cfg.llm_questions else []),
                       *[a for k, v in cfg.synthetic.items() for a in ("--synthetic", f"{k}={json.dumps(v)}")],
                       *[a for n in llm_names for a in ("--llm", n)]],
              [], [str(llms / n / "config.json") for n in llm_names]
              + [str(llms / "llms_summary.json"), str(llms / "llms.md")]),
        Stage("data", [*me, "_data"], [], [str(data / "prompts.jsonl"), str(data / "test.facts.jsonl"),
                                           str(d / "generate.yaml")], heavy=False, settings=data_settings),
        Stage("generate", [PY, str(JOBS / "generate.py"), "--config", str(d / "generate.yaml"),
                           "--set", f"prompts={data / 'prompts.jsonl'}", "--out", str(gen)],
              [str(data / "prompts.jsonl"), *[str(llms / n) for n in llm_names]], [str(gen / "candidates.jsonl")]),
        Stage("score", [PY, str(JOBS / "score.py"), "--set", f"input={gen / 'candidates.jsonl'}",
                        "--out", str(d / "score")],
              [str(gen / "candidates.jsonl")], [str(d / "score" / "candidates.jsonl")]),
        Stage("split", [*me, "_split"], [str(d / "score" / "candidates.jsonl"), str(data / "test.facts.jsonl")],
              [*split_files.values(), test_facts], heavy=False, settings=json.dumps(cfg.synthetic)),
        Stage("train", [PY, str(JOBS / "train.py"), "--config", t.config, *[a for kv in t.set for a in ("--set", kv)],
                        "--set", f"data.train_file={split_files['train']}",
                        "--set", f"data.dev_file={split_files['dev']}",
                        "--set", f"data.test_file={split_files['test']}", "--set", "data.synthetic=false",
                        "--set", f"train.storage_path={d / 'runs' / 'urg'}", "--out", str(d / "train")],
              [split_files["train"], split_files["dev"]], [str(d / "train" / "model")],
              fresh=[str(d / "runs" / "urg")]),  # new candidates: the last URG's checkpoints are another run's
        Stage("evaluate", [PY, str(JOBS / "evaluate.py"), "--config", t.config,
                           *[a for kv in t.set for a in ("--set", kv)],
                           "--urg", f"URG={d / 'train' / 'model'}", "--test-file", split_files["test"],
                           "--bounds", "--facts", test_facts, "--synthetic", world, "--out", str(d / "eval")],
              [str(d / "train" / "model"), split_files["test"], test_facts], [str(d / "eval" / "eval.json")]),
        Stage("report", [*me, "_report", "--results", str(results)],
              [str(d / "eval" / "eval.json"), str(llms / "llms_summary.json"), str(llms / "llms.md")],
              [str(results / "README.md")], heavy=False, settings=json.dumps(cfg.llms)),
        Stage("serve-config", [*me, "_serve_config"], [str(d / "train" / "model")], [str(d / "serve.yaml")],
              heavy=False, settings=json.dumps(cfg.llms)),
    ]


# ---- the pipeline's own small steps (run as stages, in a subprocess like the jobs) ------------
def make_data(cfg: PipelineConfig, d: Path) -> None:
    """Synthetic splits (references + the cards' own answers, for reference; their facts beside
    them) and one prompts file for all three splits, so each LLM's vLLM engine starts once."""
    from urg_ray.data import write_records
    from urg_ray.synthetic import make_examples
    from urg_ray.synthetic_facts import write_facts

    prompts = []
    for offset, split in enumerate(SPLITS):
        examples = make_examples(getattr(cfg.n, split), n_candidates=len(cfg.llms), seed=cfg.seed + offset,
                                 id_prefix=split, **cfg.split_knobs(split))
        records = [ex.record for ex in examples]
        write_records(d / "data" / f"{split}.jsonl", records)
        write_facts(d / "data" / f"{split}.facts.jsonl", examples)
        prompts += [{k: r[k] for k in ("id", "instruction", "input", "output")} for r in records]
    with open(d / "data" / "prompts.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in prompts)
    gen = yaml.safe_load(Path(cfg.generate_config).read_text())
    if not isinstance(gen, dict) or "model_template" not in gen:
        raise ConfigError(f"{cfg.generate_config}: needs a model_template mapping (copied once per LLM)")
    template = gen.pop("model_template")
    # Ray workers may not share our cwd
    gen["models"] = [{**template, "name": n, "source": str((d / "llms" / n).resolve())} for n in cfg.llms]
    (d / "generate.yaml").write_text(yaml.safe_dump(gen, sort_keys=False))


def write_world(cfg: PipelineConfig, d: Path) -> None:
    """world.yaml: the world knobs of `synthetic`, the world jobs/evaluate.py --synthetic reads the
    facts in. Written by the runner, not a stage (rewritten only when it changes), so a work folder
    made before it existed gains it without its stages running again; new knobs rerun the data
    stage (its settings) and every stage after it."""
    from urg_ray.durable import atomic_write

    text = yaml.safe_dump({k: v for k, v in cfg.synthetic.items() if k in WORLD_KNOBS}, sort_keys=True)
    path = d / "world.yaml"
    if not path.is_file() or path.read_text() != text:
        with atomic_write(path) as f:
            f.write(text)


def split_scored(cfg: PipelineConfig, d: Path) -> None:
    """score/candidates.jsonl -> scored/{train,dev,test}.jsonl by id prefix ("train/12"), and beside
    test.jsonl the facts each generated answer states (`urg_ray.synthetic_facts.stated_facts`) with its
    question's reference facts: what jobs/evaluate.py --bounds reads."""
    from urg_ray.data import DataError, read_records, write_records
    from urg_ray.synthetic import SyntheticExample, world_from_knobs
    from urg_ray.synthetic_facts import read_facts, stated_facts, write_facts
    from urg_ray.synthetic_world import Fact

    world = world_from_knobs(cfg.synthetic)
    records = read_records(d / "score" / "candidates.jsonl")
    for split in SPLITS:
        kept = [r.model_dump() for r in records if r.id.startswith(f"{split}/") and len(r.candidates) > 1]
        write_records(d / "scored" / f"{split}.jsonl", kept)
        if split == "test":
            facts = read_facts(d / "data" / "test.facts.jsonl")
            examples = []
            for r in kept:
                if r["id"] not in facts:
                    raise DataError(f"{d / 'data' / 'test.facts.jsonl'}: no line for id {r['id']!r} of "
                                    f"{d / 'score' / 'candidates.jsonl'}")
                line = facts[r["id"]]
                topics = tuple(line["topics"])
                examples.append(SyntheticExample(
                    r, line["task"], topics, tuple(Fact(*f) for f in line["reference_facts"]),
                    tuple(stated_facts(c["text"], topics, world) for c in r["candidates"]),
                    ("generated",) * len(r["candidates"]), (topics,) * len(r["candidates"])))
            write_facts(d / "scored" / "test.facts.jsonl", examples)


def serve_config(cfg: PipelineConfig, d: Path) -> None:
    """serve/app.yaml with these LLMs (transformers engines: one Serve replica each) and this URG."""
    app = yaml.safe_load((JOBS.parent / "serve" / "app.yaml").read_text())
    args = app["applications"][0]["args"]
    args["urg"]["model"] = str((d / "train" / "model").resolve())
    args["urg"]["fallback_model"] = None  # this run's URG, else the preset: never another run's checkpoint
    args.pop("fallback_note", None)  # serve/app.yaml's hint (make demo) is not this run's
    args["urg"]["max_new_tokens"] = 128  # as jobs/evaluate.py fuses
    args["candidates"] = [{"name": n, "kind": "transformers", "model_source": str((d / "llms" / n).resolve()),
                           "max_tokens": 96, "temperature": 1.0} for n in cfg.llms]  # as generated for training
    app["applications"][0]["deployments"] = [
        dep for dep in app["applications"][0]["deployments"] if not dep["name"].startswith("Candidate-")
    ] + [{"name": f"Candidate-{n}", "ray_actor_options": {"num_cpus": 0.25}} for n in cfg.llms]
    (d / "serve.yaml").write_text("# written by jobs/pipeline.py: the ensemble of this pipeline run\n"
                                  + yaml.safe_dump(app, sort_keys=False))


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
        cfg = load_pipeline_config(args.config)
    except ConfigError as err:
        return bad_input(err)
    d = Path(args.dir)
    if args.step:
        step = {"_data": make_data, "_split": split_scored, "_serve_config": serve_config,
                "_report": lambda c, w: write_report(c, w, Path(args.results))}[args.step]
        try:
            step(cfg, d)
        except (*INPUT_ERRORS, ReportError, OSError) as err:
            print(f"error: {args.step[1:]}: {err}", file=sys.stderr)
            return 1
    else:
        plan = stages(cfg, d, args.config, Path(args.results))
        if args.list:
            for s in plan:
                print(f"{s.name:13s} {'done' if is_done(d / 'stamps', s) else 'to run'}")
            return 0
        started = time.time()
        write_world(cfg, d)
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
