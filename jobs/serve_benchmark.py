"""Bounded load test of the Serve ensemble (loopback only): C concurrent clients send R requests.

    serve run serve/app.yaml &  python jobs/serve_benchmark.py --url http://127.0.0.1:8000
    python jobs/serve_benchmark.py --serve-config serve/app.yaml            # starts Ray + Serve in-process
    python jobs/serve_benchmark.py --serve-config serve/app.yaml --set canned=true   # ensemble path only
    python jobs/serve_benchmark.py --set clients=32 --set requests=512 --set endpoint=rank_and_fuse ...
    python jobs/serve_benchmark.py --serve-config serve/app.yaml --set canned=true --set chaos=true --out docs/results

Writes DIR/serve_benchmark.json: latency p50/p90/p99/max (s), requests/s, errors (any non-200 or
transport failure, with samples), and how many answers dropped a candidate. `canned=true`
replaces every candidate of the Serve config by a canned one of the same name, so the figures
measure the ingress, the fan-out and the URG ranker-fuser without LLM cost.

`probe=N` first sends N chat requests one at a time once /healthz says ready (is the first as
fast as the tenth?) and one streamed chat (time to the first fused piece against the whole).
`chaos=true` (with --serve-config) kills a candidate replica and the URG replica once `chaos_at`
of the requests were answered, and writes DIR/serve_chaos.{json,md}: non-2xx count, p50/p99,
recovery (kill -> the last failed request's end) and replacement (kill -> both deployments
healthy on new replicas).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))
sys.path.insert(0, str(ROOT))  # `serve/` is a folder at the repository root
from _cli import bad_input, job_parser  # noqa: E402

from urg_ray.config import ConfigError, load_config  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
QUESTIONS = ["What is the capital of France?", "Name three primary colours.",
             "How do I reverse a list in Python?", "Why is the sky blue?",
             "Summarise the water cycle in one sentence.", "What does a compiler do?"]
CANNED = ["The capital of France is Paris.", "Red, yellow and blue are the primary colours.",
          "Use reversed(xs) or xs[::-1] in Python.", "Rayleigh scattering makes the sky look blue."]


class LoadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clients: int = Field(32, ge=1)  # concurrent clients, each one request at a time
    requests: int = Field(256, ge=1)  # measured requests, in total
    warmup: int = Field(8, ge=0)  # unmeasured requests first (model warm-up, lazy imports)
    endpoint: Literal["chat", "rank_and_fuse"] = "chat"
    max_tokens: int = Field(16, ge=1)  # of the fused answer
    candidate_max_tokens: int = Field(16, ge=1)  # per candidate (chat only)
    timeout_s: float = Field(120, gt=0)  # per request, client side
    model: str = "urg-ensemble"
    api_key_env: str = "URG_SERVE_API_KEY"  # sent as Bearer when set
    canned: bool = False  # with --serve-config: canned candidates instead of the configured LLMs
    probe: int = Field(0, ge=0)  # sequential chats after ready, and one streamed, before the load
    chaos: bool = False  # with --serve-config: kill a candidate replica and the URG replica mid-run
    chaos_at: float = Field(0.25, gt=0, lt=1)  # ... once this share of the requests was answered


def _body(cfg: LoadConfig, i: int) -> tuple[str, dict[str, Any]]:
    question = QUESTIONS[i % len(QUESTIONS)]
    if cfg.endpoint == "chat":
        return "/v1/chat/completions", {"model": cfg.model, "messages": [{"role": "user", "content": question}],
                                        "max_tokens": cfg.max_tokens, "candidate_max_tokens": cfg.candidate_max_tokens}
    cands = [CANNED[(i + j) % len(CANNED)] for j in range(3)]
    return "/v1/rank_and_fuse", {"inputs": [question], "candidates": [cands], "max_new_tokens": cfg.max_tokens}


async def run_load(url: str, cfg: LoadConfig, app: str = "urg") -> dict[str, Any]:
    import httpx

    key = os.environ.get(cfg.api_key_env, "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    dropped_answers = 0
    timeline: list[tuple[float, float, bool]] = []  # measured requests: start, end, 2xx
    chaos: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=cfg.timeout_s, limits=limits) as client:
        async def one(i: int, measured: bool) -> None:
            nonlocal dropped_answers
            path, body = _body(cfg, i)
            start = time.perf_counter()
            try:
                reply = await client.post(path, json=body)
                status = str(reply.status_code)
                if reply.status_code != 200:
                    problem = f"HTTP {reply.status_code}: {reply.text[:200]}"
                elif cfg.endpoint == "chat" and reply.json()["urg"]["dropped"]:
                    problem, dropped_answers = None, dropped_answers + measured
                else:
                    problem = None
            except Exception as err:  # noqa: BLE001 - counted, never fatal
                status, problem = type(err).__name__, f"{type(err).__name__}: {err}"
            if measured:
                timeline.append((start, time.perf_counter(), status.startswith("2")))
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
                if problem:
                    errors.append(problem)

        await asyncio.gather(*(one(i, False) for i in range(cfg.warmup)))
        queue = iter(range(cfg.requests))

        async def client_loop() -> None:
            for i in queue:  # a shared iterator: each request is sent exactly once
                await one(i, True)

        async def kill_when_due() -> None:
            while len(timeline) < cfg.chaos_at * cfg.requests:
                await asyncio.sleep(0.05)
            chaos.update(await asyncio.to_thread(kill_replicas, app))
            chaos["replaced_s"] = await asyncio.to_thread(wait_replaced, app, chaos)

        start = time.perf_counter()
        killer = asyncio.create_task(kill_when_due()) if cfg.chaos else None
        await asyncio.gather(*(client_loop() for _ in range(cfg.clients)))
        wall = time.perf_counter() - start
        if killer is not None:
            await asyncio.wait_for(killer, timeout=600)
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 4)

    if cfg.chaos:
        killed = chaos["killed_at"]
        failed_after = [end for begin, end, ok in timeline if not ok and end >= killed]
        chaos = {"killed": chaos["killed"], "killed_after_s": round(killed - start, 3),
                 "non_2xx": sum(not ok for *_, ok in timeline),
                 "recovery_s": round(max(failed_after) - killed, 3) if failed_after else 0.0,
                 "replaced_s": chaos["replaced_s"]}
    return {
        **({"chaos": chaos} if cfg.chaos else {}),
        "requests": cfg.requests, "clients": cfg.clients, "endpoint": cfg.endpoint, "wall_s": round(wall, 3),
        "requests_per_s": round(cfg.requests / wall, 3), "errors": len(errors), "error_samples": errors[:5],
        "statuses": statuses, "answers_with_dropped_candidates": dropped_answers,
        "latency_s": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": round(statistics.fmean(ordered), 4),
                      "min": round(ordered[0], 4), "max": round(ordered[-1], 4)},
    }


def kill_replicas(app: str) -> dict[str, Any]:
    """ray.kill one candidate replica and the URG replica of `app` (found by Serve's actor names)."""
    import ray

    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
    candidates = [n for n in names if n.startswith(f"SERVE_REPLICA::{app}#Candidate-")]
    rankers = [n for n in names if n.startswith(f"SERVE_REPLICA::{app}#URGRankerFuser#")]
    if not candidates or not rankers:
        raise RuntimeError(f"no candidate or URG replica of application {app!r} among {names}")
    victims = [candidates[0], rankers[0]]
    killed_at = time.perf_counter()
    for name in victims:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    print(f"[serve_benchmark] chaos: killed {victims}", flush=True)
    return {"killed": [v.split("#")[1] for v in victims], "victims": victims, "killed_at": killed_at}


def wait_replaced(app: str, chaos: dict[str, Any], deadline_s: float = 300) -> float | None:
    """Seconds from the kill until each victim's deployment is HEALTHY again on a new replica."""
    import ray
    from ray import serve

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
        deployments = serve.status().applications[app].deployments
        replaced = all(
            deployments[v.split("#")[1]].status == "HEALTHY" and v not in names
            and any(n.startswith(v.rsplit("#", 1)[0] + "#") for n in names) for v in chaos["victims"])
        if replaced:
            return round(time.perf_counter() - chaos["killed_at"], 3)
        time.sleep(0.2)
    return None


async def probe(url: str, cfg: LoadConfig, n: int) -> dict[str, Any]:
    """Right after ready: n sequential chats (seconds each), then one streamed chat's time to its
    first content chunk and to its end."""
    import httpx

    key = os.environ.get(cfg.api_key_env, "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    path, body = _body(cfg.model_copy(update={"endpoint": "chat"}), 0)
    sequential = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=cfg.timeout_s) as client:
        for _ in range(n):
            start = time.perf_counter()
            reply = await client.post(path, json=body)
            sequential.append(round(time.perf_counter() - start, 4))
            if reply.status_code != 200:
                raise RuntimeError(f"probe: HTTP {reply.status_code}: {reply.text[:200]}")
        start, first, pieces = time.perf_counter(), None, 0
        async with client.stream("POST", path, json={**body, "stream": True}) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: {") and (json.loads(line[6:]).get("choices") or [{}])[0].get(
                        "delta", {}).get("content"):
                    pieces += 1
                    first = first or time.perf_counter() - start
        total = time.perf_counter() - start
    return {"sequential_chat_s": sequential,
            "streamed_chat": {"first_piece_s": round(first or total, 4), "total_s": round(total, 4),
                              "content_chunks": pieces}}


def _app_args(serve_config: Path, canned: bool) -> dict[str, Any]:
    """The first application's args from a Serve YAML, its `deployments` options folded in."""
    import yaml

    application = yaml.safe_load(serve_config.read_text())["applications"][0]
    args = dict(application["args"])
    options = {d.pop("name"): d for d in (dict(d) for d in application.get("deployments", []))}
    args["ingress"] = {**args.get("ingress", {}), **options.get("Ingress", {})}
    args["urg"] = {**args.get("urg", {}), "deployment": {**args.get("urg", {}).get("deployment", {}),
                                                         **options.get("URGRankerFuser", {})}}
    candidates = []
    for i, c in enumerate(args["candidates"]):
        if canned:
            c = {"name": c["name"], "kind": "canned", "answers": CANNED[i:] + CANNED[:i]}
        deployment = options.get(f"Candidate-{c['name']}")
        candidates.append({**c, "deployment": {**c.get("deployment", {}), **deployment}} if deployment
                          and c.get("engine", c.get("kind")) != "vllm" else c)
    args["candidates"] = candidates
    return args


def _self_host(serve_config: Path, canned: bool) -> str:
    import ray
    from ray import serve

    from serve.app import build_app
    from serve.healthz import wait_ready

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    start = time.perf_counter()
    serve.run(build_app(_app_args(serve_config, canned)), name="urg", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, deadline_s=900)
    print(f"[serve_benchmark] {serve_config} ready in {time.perf_counter() - start:.1f} s on port {port}", flush=True)
    return url


def main(argv: list[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], default_out="outputs/serve_benchmark")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running app (loopback only)")
    parser.add_argument("--serve-config", help="a Serve YAML (serve/app.yaml) to start in-process instead")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set, schema=LoadConfig)
    except ConfigError as err:
        return bad_input(err)
    if args.serve_config:
        if not Path(args.serve_config).is_file():
            return bad_input(FileNotFoundError(f"{args.serve_config}: not found"))
        url = _self_host(Path(args.serve_config), cfg.canned)
    else:
        url = args.url.rstrip("/")
        if urlparse(url).hostname not in LOOPBACK:
            return bad_input(ValueError(f"--url {url}: this load test only targets loopback "
                                        f"({', '.join(sorted(LOOPBACK))})"))
    if cfg.chaos and not args.serve_config:
        return bad_input(ConfigError("chaos=true needs --serve-config (the job kills replicas of the app it started)"))
    try:
        probed = asyncio.run(probe(url, cfg, cfg.probe)) if cfg.probe else None
        result = asyncio.run(run_load(url, cfg))
    finally:
        if args.serve_config:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    result = {"command": " ".join(["python", "jobs/serve_benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
              "target": args.serve_config or url, "canned_candidates": cfg.canned, "config": cfg.model_dump(),
              "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
              **({"after_ready": probed} if probed else {}), **result}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "serve_chaos" if cfg.chaos else "serve_benchmark"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if cfg.chaos:
        (out / "serve_chaos.md").write_text(chaos_markdown(result))
    if probed:
        print(f"[serve_benchmark] after ready: sequential chats {probed['sequential_chat_s']} s; streamed: first "
              f"piece {probed['streamed_chat']['first_piece_s']:.3f} s of {probed['streamed_chat']['total_s']:.3f} s")
    lat = result["latency_s"]
    print(f"[serve_benchmark] {cfg.requests} requests, {cfg.clients} clients: {result['errors']} errors, "
          f"p50 {lat['p50']:.3f} s, p99 {lat['p99']:.3f} s, {result['requests_per_s']:.2f} req/s "
          f"({result['answers_with_dropped_candidates']} answers dropped a candidate)")
    print(f"[serve_benchmark] wrote {out / f'{name}.json'}")
    if cfg.chaos:
        print(f"[serve_benchmark] chaos: {result['chaos']}")
        return 0  # failures while replicas are replaced are the measurement
    return 0 if result["errors"] == 0 else 1


def chaos_markdown(result: dict[str, Any]) -> str:
    chaos, lat = result["chaos"], result["latency_s"]
    return "\n".join([
        "# Serve under chaos: a candidate replica and the URG replica killed mid-run", "",
        f"`{result['command']}` ({result['host']['cpus']} CPUs, loopback; {result['config']['clients']} clients, "
        f"{result['requests']} {result['endpoint']} requests, canned candidates: "
        f"{str(result['canned_candidates']).lower()}).", "",
        "| killed | after | non-2xx | statuses | answers with a dropped candidate | p50 | p99 | recovery | replaced |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {', '.join(chaos['killed'])} | {chaos['killed_after_s']:.1f} s | {chaos['non_2xx']} | "
        f"{result['statuses']} | {result['answers_with_dropped_candidates']} | {lat['p50']:.3f} s | "
        f"{lat['p99']:.3f} s | {chaos['recovery_s']:.1f} s | {chaos['replaced_s']} s |", "",
        "after: into the measured run; recovery: from the kill to the end of the last request that failed "
        "(0: none failed after the kill); replaced: until both deployments were HEALTHY on new replicas "
        "(Serve's controller restarts them). Samples of the failures: " + "; ".join(
            f"`{e[:120]}`" for e in result["error_samples"][:2]) + ".", ""])


if __name__ == "__main__":
    sys.exit(main())
