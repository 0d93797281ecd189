import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_job():
    spec = importlib.util.spec_from_file_location("benchmark_job", ROOT / "jobs" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the config's annotations through it
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_json_markdown_and_plot(bench_job, tmp_path):
    assert bench_job.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert {"config", "environment", "params", "params_ratio_to_urg", "ranking", "rank_and_fuse", "summary"} <= set(report)
    assert {"device", "dtype", "torch_threads", "matmul_2048_tflops"} <= set(report["environment"])
    assert set(report["params"]) == {"URG", "PairRanker", "SummaReranker", "SimCLS", "GenFuser"}
    methods = {"URG", "PairRanker-full", "PairRanker-bubble", "SummaReranker", "SimCLS"}
    assert {(r["method"], r["n"]) for r in report["ranking"]} == {(m, n) for m in methods for n in (4, 8)}
    for row in report["ranking"]:
        assert {"batch_size", "min_s", "median_s", "times_s", "samples_per_s", "params", "warmup"} <= set(row)
        assert row["samples_per_s"] > 0
    assert {r["method"] for r in report["rank_and_fuse"]} >= {"URG", "PairRanker-full+GenFuser"}
    assert set(report["summary"]["targets"]) == set(bench_job.TARGETS)
    text = (tmp_path / "benchmark.md").read_text()
    assert "| N | URG | PairRanker-full | PairRanker-bubble | SummaReranker | SimCLS |" in text
    assert "## Targets" in text and "## Rank + fuse" in text
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inputs_go_past_the_generators_twelve_models(bench_job):
    questions, candidates = bench_job.make_inputs(2, 16, seed=0)
    assert len(questions) == 2 and [len(c) for c in candidates] == [16, 16]
    assert all(isinstance(c, str) and c for cs in candidates for c in cs)
    assert candidates[0][:12] == bench_job.make_inputs(2, 12, seed=0)[1][0]


def test_bad_settings_fail_before_anything_runs(bench_job, tmp_path, capsys):
    assert bench_job.main(["--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "nope: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "benchmark.json").exists()
