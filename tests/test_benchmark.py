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
    assert {"config", "environment", "params", "params_ratio_to_urg", "ranking", "rank_and_fuse",
            "summary"} <= set(report)
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


# ---- overhead: the report writer (no Ray; figures made up, verdicts computed here) -----------
def _overhead_results():
    window = lambda step, rate, loss: {"step": step, "samples": 160, "samples_per_s": rate, "loss": loss}  # noqa: E731
    side = lambda rate: {"windows": [window(10, 5.0, 17.7), window(20, rate, 17.1)],  # noqa: E731
                         "samples_per_s": rate, "wall_s": 30.0, "other_load": 0.01}
    return {
        "training": {"steps": 20, "log_every": 10, "global_batch": 16, "workers": 2, "cpus_per_worker": 1,
                     "load_before": [0.1, 0.2, 0.3], "plain": side(40.0), "ray": side(30.0),
                     "ray_over_plain_samples_per_s": 0.75},
        "serving": {"max_new_tokens": 16, "batch_size": 8, "clients": 32, "load_before": [0, 0, 0],
                    "inprocess": {"p50_ms": 80.0, "requests_per_s": 40.0},
                    "http": {"p50_ms": 90.0, "requests_per_s": 38.0, "errors": 0},
                    "http_minus_inprocess_p50_ms": 10.0, "http_over_inprocess_requests_per_s": 0.95},
    }


def test_overhead_report_states_each_goal_and_keeps_pairs_not_rerun(tmp_path):
    from urg_ray import overhead_report

    results = _overhead_results()
    overhead_report.write_report(tmp_path, {"training": results["training"]})
    report = overhead_report.write_report(tmp_path, {"serving": results["serving"]})  # a later run of one pair
    saved = json.loads((tmp_path / "performance.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(saved["results"]) == {"training", "serving"}
    assert {"cpu_model", "cores", "bf16_matmul"} <= set(saved["machine"])
    assert {"torch", "ray", "deepspeed", "vllm", "transformers"} <= set(saved["machine"]["versions"])
    met = {(g["pair"], g["metric"]): g["met"] for g in saved["goals"]}
    assert met == {("training", "ray_over_plain_samples_per_s"): False,  # 0.75 < 0.8
                   ("serving", "http_minus_inprocess_p50_ms"): True,  # 10 ms <= 15 ms
                   ("serving", "http_over_inprocess_requests_per_s"): True}  # 0.95 >= 0.9
    text = (tmp_path / "performance.md").read_text()
    assert "| training | ray_over_plain_samples_per_s | 0.75 | >= 0.8 | **no** |" in text
    assert "| serving | http_minus_inprocess_p50_ms | 10.0 | <= 15.0 | yes |" in text
    assert "| 20 | 17.1000 | 17.1000 |" in text  # the loss curves, one row per log window


def test_overhead_steady_rate_leaves_out_the_first_window():
    from urg_ray.overhead import steady_rate

    windows = [{"samples": 100, "samples_per_s": 1.0}, {"samples": 100, "samples_per_s": 20.0},
               {"samples": 300, "samples_per_s": 60.0}]
    assert steady_rate(windows) == pytest.approx(400 / (100 / 20 + 300 / 60))  # 40 samples/s
    assert steady_rate(windows[:1]) is None


def test_overhead_unknown_pair_fails_before_anything_runs(bench_job, tmp_path, capsys):
    assert bench_job.main(["overhead", "--pairs", "training,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "performance.json").exists()


# ---- achieved FLOP/s: the count behind "share of the matmul peak" ----------------------------
def _tiny_t5_config():
    from transformers import T5Config

    return T5Config(d_model=4, num_heads=2, d_kv=2, d_ff=8, num_layers=1, num_decoder_layers=1,
                    feed_forward_proj="gated-gelu", vocab_size=32)


def test_t5_rank_flops_match_a_hand_count():
    from urg_ray.benchmarking import t5_rank_flops

    # one question, pairs of 3 and 5 tokens; inner = 2 heads x 2 = 4, multiply-adds:
    # encoder per token: q,k,v,o 4*4*4 = 64 + gated FFN 3*4*8 = 96 -> 160 x 8 tokens = 1280;
    #   scores + weighted values 2*L*L*4: 72 (L=3) + 200 (L=5) -> encoder 1552
    # decoder step: self q,k,v,o 64 + cross q,o 32 + cross k,v over 8 states 2*8*16 = 256
    #   + cross scores/values 2*8*4 = 64 + FFN 96 -> 512;  total 2064 multiply-adds = 4128 FLOPs
    assert t5_rank_flops(_tiny_t5_config(), [[3, 5]]) == 4128
    # two questions: the sum of each counted alone (no cross-question attention)
    assert t5_rank_flops(_tiny_t5_config(), [[3, 5], [4]]) == 4128 + t5_rank_flops(_tiny_t5_config(), [[4]])


def test_t5_encoder_flops_agree_with_torch_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import T5EncoderModel

    from urg_ray.benchmarking import t5_rank_flops

    config = _tiny_t5_config()
    config.d_model, config.d_ff, config.num_layers = 16, 32, 2
    config._attn_implementation = "eager"  # scores as matmuls the counter sees
    model = T5EncoderModel(config).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(input_ids=torch.ones(1, 7, dtype=torch.long))
    config.num_decoder_layers = 0  # encoder only: what the counter saw
    assert t5_rank_flops(config, [[7]]) == counter.get_total_flops()


def test_unknown_fuse_pipeline_fails_before_anything_runs(bench_job, tmp_path, capsys):
    assert bench_job.main(["--set", "fuse_pipelines=[URG, PairRanker+GenFuser]", "--out", str(tmp_path)]) == 2
    assert "PairRanker+GenFuser" in capsys.readouterr().err


def test_full_pipeline_not_run_is_estimated_from_its_parts(bench_job):
    cfg = bench_job.BenchmarkConfig(batch_sizes=[8], n_candidates=[12], fuse_pipelines=["URG", "GenFuser-only"])
    ranking = [{"method": m, "batch_size": 8, "n": 12, "min_s": s} for m, s in
               [("URG", 2.0), ("PairRanker-full", 30.0), ("PairRanker-bubble", 5.0)]]
    ranking[0] |= {"flops": 4e12, "tflops_per_s": 2.0}
    fusion = [{"method": "URG", "min_s": 10.0}, {"method": "GenFuser-only", "min_s": 20.0}]
    summary = bench_job.summarize(cfg, ranking, fusion, peak_tflops=4.0)
    assert summary["rank_fuse_estimated"] == {"PairRanker-full+GenFuser": 50.0}  # 30 s ranking + 20 s fusing
    assert summary["rank_fuse_speedup"]["PairRanker-full+GenFuser"] == 5.0
    assert summary["targets"]["rank_fuse_speedup"]["value"] == 5.0
    assert summary["urg_flops_at_n_ref"]["share_of_peak"] == 0.5  # 2 of 4 TFLOP/s
