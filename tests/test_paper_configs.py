"""The paper-scale configs in jobs/configs/: valid, naming models that exist, building at tiny size."""

from pathlib import Path

import pytest

from urg_ray.baselines.presets import RANKER_PRESETS
from urg_ray.config import load_config
from urg_ray.presets import PRESETS
from urg_ray.protocol import model_class
from urg_ray.train import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
PAPER = {  # file -> (method, preset, global batch = GPUs x per-GPU batch)
    "flan-t5-large.yaml": ("urg", "flan-t5-large", 128),
    "flan-t5-xl.yaml": ("urg", "flan-t5-xl", 32),
    "pair-ranker-deberta-v3-large.yaml": ("pair_ranker", "deberta-v3-large", 64),
    "summa-reranker-deberta-v3-large.yaml": ("summa_reranker", "deberta-v3-large", 64),
    "simcls-deberta-v3-large.yaml": ("simcls", "deberta-v3-large", 64),
    "gen-fuser-flan-t5-xl.yaml": ("gen_fuser", "flan-t5-xl", 48),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_names_a_real_preset_and_the_hub_data(name):
    cfg = load_config(CONFIGS / name)
    method, preset, global_batch = PAPER[name]
    assert (cfg.method, cfg.model.preset) == (method, preset)
    presets = PRESETS if method in ("urg", "gen_fuser") else RANKER_PRESETS
    assert presets[preset].hub_name is not None  # a pretrained backbone, not a random-init one
    assert cfg.train.num_workers * cfg.train.batch_size == global_batch
    assert (cfg.train.use_gpu, cfg.train.bf16, cfg.data.synthetic) == (True, True, False)
    assert [cfg.data.train_file, cfg.data.dev_file, cfg.data.test_file] == [
        f"hf://llm-blender/mix-instruct/{split}" for split in ("train", "validation", "test")]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_builds_its_model_at_tiny_size(name):
    """Every model field of the config is one its class accepts (the backbone swapped for tiny: no download)."""
    cfg = load_config(CONFIGS / name, ["model.preset=tiny"])
    model = build_model(cfg)
    assert isinstance(model, model_class(PAPER[name][0]))
    for key in ("source_max_length", "candidate_max_length", "top_k"):
        if key in cfg.model.model_fields_set:
            assert getattr(model.config, key) == getattr(cfg.model, key)
