"""urg_ray.sharded: a model split over Ray actors answers as the model itself does, in input order."""

import pytest
import torch

from urg_ray.baselines import build
from urg_ray.model import URG

QUESTIONS = [f"question {i}: what is {i} + {i}?" for i in range(5)]
# different candidate counts, so the shards' scores are padded to different widths
CANDIDATES = [[f"answer {j} to {i}" for j in range(2 + i % 3)] for i in range(5)]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_sharded_urg_equals_the_local_model(tmp_path, ray_local):
    from urg_ray.sharded import ShardedModel

    local = URG.from_pretrained("tiny", seed=3).eval()
    local.save_pretrained(tmp_path / "urg")
    sharded = ShardedModel(str(tmp_path / "urg"), shards=2)
    assert sharded.config.top_k == local.config.top_k and sharded.can_rank and sharded.can_fuse

    expected, got = local.rank(QUESTIONS, CANDIDATES), sharded.rank(QUESTIONS, CANDIDATES)
    assert got.ranks == expected.ranks
    assert got.scores.shape == expected.scores.shape
    assert torch.equal(torch.isinf(got.scores), torch.isinf(expected.scores))  # padded slots in place
    finite = ~torch.isinf(expected.scores)
    assert torch.allclose(got.scores[finite], expected.scores[finite], atol=1e-5)

    fused = sharded.rank_and_fuse(QUESTIONS, CANDIDATES, max_new_tokens=8, min_new_tokens=8)
    assert [r.text for r in fused] == [r.text for r in local.rank_and_fuse(QUESTIONS, CANDIDATES, max_new_tokens=8,
                                                                         min_new_tokens=8)]
    assert sharded.fuse(QUESTIONS[:1], CANDIDATES[:1], max_new_tokens=8, min_new_tokens=8) == local.fuse(
        QUESTIONS[:1], CANDIDATES[:1], max_new_tokens=8, min_new_tokens=8)  # fewer questions than shards


@pytest.mark.slow
def test_sharded_ranker_keeps_its_capabilities(tmp_path, ray_local):
    from urg_ray.sharded import ShardedModel

    ranker = build("pair_ranker", "tiny", seed=1).eval()
    ranker.save_pretrained(tmp_path / "ranker")
    sharded = ShardedModel(str(tmp_path / "ranker"), shards=3)
    assert (sharded.can_rank, sharded.can_fuse) == (True, False)
    assert sharded.rank(QUESTIONS, CANDIDATES).ranks == ranker.rank(QUESTIONS, CANDIDATES).ranks
