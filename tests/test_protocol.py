"""urg_ray/protocol.py: URG and every baseline answer the same calls of training and evaluation."""

import json
import math

import pytest
import torch

from urg_ray.baselines import BASELINES, GenFuser, PairRanker, SummaReranker
from urg_ray.config import LossConfig
from urg_ray.model import URG
from urg_ray.protocol import load_model, model_class, model_classes

from conftest import make_record


def test_every_method_has_a_class_that_declares_what_it_does():
    assert set(model_classes()) == {"urg", *BASELINES}
    assert {m: (c.can_rank, c.can_fuse) for m, c in model_classes().items()} == {
        "urg": (True, True), "pair_ranker": (True, False), "summa_reranker": (True, False),
        "simcls": (True, False), "gen_fuser": (False, True)}
    for method, cls in model_classes().items():
        assert cls.method == method and cls.checkpoint_metric in cls.dev_metric_names()
    with pytest.raises(ValueError, match="unknown method 'borda'"):
        model_class("borda")


def test_a_ranker_does_not_fuse_and_a_fuser_does_not_rank():
    with pytest.raises(NotImplementedError, match="PairRanker does not fuse"):
        PairRanker.from_pretrained("tiny").fuse(["q"], [["a"]])
    with pytest.raises(NotImplementedError, match="GenFuser does not rank"):
        GenFuser.from_pretrained("tiny").rank(["q"], [["a", "b"]])


@pytest.mark.parametrize("method", ["urg", "summa_reranker", "gen_fuser"])
def test_one_training_step_and_dev_metrics_through_the_protocol(method):
    model = model_class(method).from_pretrained("tiny", target_max_length=8)
    model.configure_loss(LossConfig())
    records = [make_record(i) for i in range(3)]
    out = model.train()(model.collator(records), gamma=1.0)
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    for term in model.log_terms:
        assert math.isfinite(getattr(out, term).item())
    found = model.dev_metrics(records, ["bleu"], batch_size=2, fuse_records=2)
    assert model.training  # dev_metrics leaves the mode it found
    assert ("dev_fused_bleu" in found) == model.can_fuse
    assert math.isnan(found["dev_spearman"]) != model.can_rank
    assert found["dev_oracle_quality"] == pytest.approx(
        sum(max(c.scores["bleu"] for c in r.candidates) for r in records) / 3)


def test_load_model_picks_the_class_from_the_folder(tmp_path):
    URG.from_pretrained("tiny").save_pretrained(tmp_path / "urg")
    SummaReranker.from_pretrained("tiny").save_pretrained(tmp_path / "summa")
    assert type(load_model(tmp_path / "urg")) is URG
    assert type(load_model(tmp_path / "summa")) is SummaReranker


def test_a_baseline_saved_with_the_old_knob_name_loads(tmp_path):
    """Folders saved before encode_batch_size was named as in ModelConfig hold sequences_per_call."""
    ranker = SummaReranker.from_pretrained("tiny", encode_batch_size=5)
    ranker.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "baseline_config.json").read_text())
    saved["sequences_per_call"] = saved.pop("encode_batch_size")
    (tmp_path / "m" / "baseline_config.json").write_text(json.dumps(saved))
    reloaded = SummaReranker.from_pretrained(tmp_path / "m")
    assert reloaded.config.encode_batch_size == 5
    questions, candidates = ["where is the cat?"], [["on the mat", "gone"]]
    torch.testing.assert_close(reloaded.rank(questions, candidates).scores, ranker.rank(questions, candidates).scores)
