"""jobs/serve_benchmark.py's parts that need no running Serve."""

import yaml

from serve_benchmark import _app_args, main


def test_app_args_fold_deployment_options_into_candidates_named_by_engine_or_kind(tmp_path):
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump({"applications": [{
        "args": {"candidates": [{"name": "a", "engine": "transformers", "source": "tiny-gpt2"},
                                {"name": "b", "kind": "transformers", "source": "tiny-gpt2"},
                                {"name": "v", "engine": "vllm", "source": "m"}]},
        "deployments": [{"name": f"Candidate-{n}", "num_replicas": 2} for n in "abv"]}]}))
    a, b, v = _app_args(config, canned=False)["candidates"]
    assert a["deployment"] == b["deployment"] == {"num_replicas": 2}
    assert "deployment" not in v  # vllm candidates take their options from llm_config


def test_bad_input_is_named_and_starts_nothing(tmp_path, capsys):
    import ray

    assert main(["--set", "clientz=4", "--out", str(tmp_path)]) == 2
    assert "clientz: unknown key" in capsys.readouterr().err
    assert main(["--serve-config", str(tmp_path / "app.yaml"), "--out", str(tmp_path)]) == 2
    assert f"error: {tmp_path / 'app.yaml'}: not found" in capsys.readouterr().err
    assert main(["--url", "http://example.com:8000", "--out", str(tmp_path)]) == 2
    assert "error: --url http://example.com:8000: this load test only targets loopback" in capsys.readouterr().err
    assert main(["--set", "chaos=true", "--out", str(tmp_path)]) == 2
    assert "error: chaos=true needs --serve-config" in capsys.readouterr().err
    assert not ray.is_initialized() and list(tmp_path.iterdir()) == []
