import pytest

from urg_ray.config import ConfigError, JobConfig, load_config


def test_defaults_need_no_file():
    cfg = load_config(None)
    assert cfg == JobConfig()
    assert (cfg.model.top_k, cfg.loss.gamma, cfg.loss.beta, cfg.loss.top_m, cfg.loss.tau) == (3, 5.0, 2.0, 32, 2.0)


def test_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  top_k: 2\nloss:\n  erm: true\n")
    cfg = load_config(path, ["loss.erm=false", "train.lr=1e-4", "data.score_keys=[bleu, rougeL]"])
    assert cfg.model.top_k == 2 and cfg.loss.erm is False and cfg.train.lr == 1e-4
    assert cfg.data.score_keys == ["bleu", "rougeL"]


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  topk: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: model\.topk: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"loss\.gama: unknown key"):
        load_config(None, ["loss.gama=3"])


def test_bad_values_and_files_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.top_k: Input should be greater than or equal to 1"):
        load_config(None, ["model.top_k=0"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["model.top_k"])
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)


def test_shipped_presets_load_and_tiny_yaml_is_the_default():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    assert load_config(configs / "tiny.yaml") == JobConfig()
    xl = load_config(configs / "flan-t5-xl.yaml")
    assert (xl.model.preset, xl.train.epochs, xl.train.batch_size, xl.train.lr, xl.model.dropout) == (
        "flan-t5-xl", 10, 4, 8e-5, 0.1)
    assert (xl.train.bf16, xl.train.zero_stage, xl.train.num_workers, xl.train.use_gpu) == (True, 2, 8, True)
    large = load_config(configs / "flan-t5-large.yaml")
    assert all(c.loss.gamma_at(0) == 5.0 for c in (xl, large))  # no warm-up for pretrained models
    assert (large.model.preset, large.train.epochs, large.train.batch_size) == ("flan-t5-large", 20, 16)
