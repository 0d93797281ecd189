import pytest
import torch

from urg_ray.baselines import (BaselineConfig, GenFuser, PairRanker, SimCLS, SummaReranker, build, bubble_pass,
                               bubble_scores, fusion_input, max_logits, max_wins, rank_and_fuse)
from urg_ray.baselines.base import RankerBatch, pack_segments
from urg_ray.model import FusionResult

from conftest import make_record

QUESTIONS = ["where did the cat sit?", "name two colours", "what is two plus two?"]
CANDIDATES = [["on the mat", "on the sofa, probably", "", "dogs bark"], ["red and blue", "green"], ["four"]]
RANKERS = [PairRanker, SummaReranker, SimCLS]


@pytest.fixture(scope="module")
def rankers() -> dict:
    return {cls: cls.from_pretrained("tiny") for cls in RANKERS}


@pytest.fixture(scope="module")
def fuser() -> GenFuser:
    return GenFuser.from_pretrained("tiny")


# ---- aggregation against hand-computed results -------------------------------------------
# Question 0: three candidates; the diagonal (5) must be ignored. Question 1: two candidates,
# the third slot is padding (9s must be ignored).
M = torch.tensor([
    [[5.0, 2.0, -1.0],
     [0.5, 0.0, 3.0],
     [1.0, -2.0, 0.0]],
    [[0.0, -1.0, 9.0],
     [2.0, 0.0, 9.0],
     [9.0, 9.0, 9.0]],
])
MASK = torch.tensor([[True, True, True], [True, True, False]])
INF = float("-inf")


def test_max_logits_by_hand():
    # s0 = (2 - 0.5) + (-1 - 1) = -0.5; s1 = (0.5 - 2) + (3 + 2) = 3.5; s2 = (1 + 1) + (-2 - 3) = -3
    # question 1: s0 = -1 - 2 = -3, s1 = 3
    assert max_logits(M, MASK).tolist() == [[-0.5, 3.5, -3.0], [-3.0, 3.0, INF]]


def test_max_wins_by_hand():
    # wins as first (row > 0) + wins as second (column < 0):
    # s0 = 1 + 0, s1 = 2 + 1 (M21 < 0), s2 = 1 + 1 (M02 < 0); question 1: s0 = 0, s1 = 1 + 1
    assert max_wins(M, MASK).tolist() == [[1.0, 3.0, 2.0], [0.0, 2.0, INF]]


def test_bubble_pass_by_hand_batches_each_round_over_questions():
    calls = []

    def compare(rows, left, right):
        calls.append(rows.tolist())
        return M[rows, left, right] - M[rows, right, left]

    order = bubble_pass(compare, [3, 2], shuffle=False)
    # q0: 0 vs 1: 2 - 0.5 > 0, 0 is carried on -> [1, 0, 2]; 0 vs 2: -1 - 1 < 0, 2 stays last.
    # q1: 0 vs 1: -1 - 2 < 0 -> [0, 1].
    assert order.tolist() == [[1, 0, 2], [0, 1, -1]]
    assert calls == [[0, 1], [0]]  # N_max - 1 rounds; a question leaves when it is done
    assert bubble_scores(order).tolist() == [[1.0, 0.0, 2.0], [0.0, 1.0, INF]]


def test_bubble_pass_ties_go_to_the_right_and_a_condorcet_winner_always_wins():
    assert bubble_pass(lambda r, a, b: torch.zeros(len(r)), [3], shuffle=False).tolist() == [[0, 1, 2]]
    beats = torch.randn(1, 5, 5)
    beats[0, 3, :], beats[0, :, 3] = 1.0, -1.0  # candidate 3 beats everyone, in both orders
    for seed in range(5):
        order = bubble_pass(lambda r, a, b: beats[r, a, b] - beats[r, b, a], [5], torch.Generator().manual_seed(seed))
        assert order[0, -1].item() == 3 and sorted(order[0].tolist()) == [0, 1, 2, 3, 4]


def test_pack_segments_concatenates_without_inner_padding():
    a = (torch.tensor([[1, 2, 0], [3, 0, 0]]), torch.tensor([2, 1]))
    b = (torch.tensor([[7, 0], [8, 9]]), torch.tensor([1, 2]))
    ids, mask, starts = pack_segments([a, b], pad_id=0)
    assert ids.tolist() == [[1, 2, 7], [3, 8, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1]] and starts.tolist() == [[0, 2], [0, 1]]
    ids, mask, _ = pack_segments([b, a], pad_id=0)
    assert ids.tolist() == [[7, 1, 2], [8, 9, 3]]


# ---- rank(): the same contract as URG.rank ------------------------------------------------
@pytest.mark.parametrize("cls,aggregation", [(PairRanker, "max_logits"), (PairRanker, "max_wins"),
                                             (PairRanker, "bubble"), (SummaReranker, None), (SimCLS, None)])
def test_rank_shapes_padding_and_best_first(rankers, cls, aggregation):
    kwargs = {"aggregation": aggregation} if aggregation else {}
    result = rankers[cls].rank(QUESTIONS, CANDIDATES, **kwargs)
    assert result.scores.shape == (3, 4)
    assert result.scores[1, 2:].eq(INF).all() and result.scores[2, 1:].eq(INF).all()
    assert result.scores[0].isfinite().all() and result.scores[1, :2].isfinite().all()
    for b, ranks in enumerate(result.ranks):
        assert sorted(ranks) == list(range(len(CANDIDATES[b])))
        values = result.scores[b, ranks]
        assert torch.all(values[:-1] >= values[1:])


@pytest.mark.parametrize("cls", RANKERS)
def test_scores_do_not_depend_on_the_other_questions(rankers, cls):
    together = rankers[cls].rank(QUESTIONS, CANDIDATES).scores
    alone = rankers[cls].rank(QUESTIONS[1:2], CANDIDATES[1:2]).scores
    torch.testing.assert_close(together[1, :2], alone[0], rtol=1e-4, atol=1e-5)


def test_pair_ranker_matrix_is_one_batched_call_and_matches_single_pairs(rankers):
    ranker = rankers[PairRanker]
    batch = ranker.collator.encode_pairs(QUESTIONS, CANDIDATES)
    calls = []
    hook = ranker.backbone.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        with torch.no_grad():
            m = ranker.comparison_matrix(batch)
    finally:
        hook.remove()
    assert len(calls) == 1  # 4*3 + 2*1 + 0 = 14 pairs <= encode_batch_size
    assert m[0].diagonal().eq(0).all() and m[1, 2:].eq(0).all() and m[1, :, 2:].eq(0).all()
    with torch.no_grad():  # one pair alone gives the same s_ij as inside the batch
        left, right = ranker.pair_logits(batch, torch.tensor([0]), torch.tensor([3]), torch.tensor([1]))
    torch.testing.assert_close(m[0, 3, 1], (left - right)[0], rtol=1e-4, atol=1e-5)


def test_bubble_runs_n_minus_one_rounds_and_chunks_cap_the_full_matrix(rankers):
    ranker = rankers[PairRanker]
    calls = []
    hook = ranker.backbone.register_forward_hook(lambda m, i, o: calls.append(len(i[0]) if i else 0))
    try:
        ranker.rank(QUESTIONS, CANDIDATES, aggregation="bubble")
        bubble_calls, calls[:] = len(calls), []
        ranker.config.encode_batch_size = 5
        ranker.rank(QUESTIONS, CANDIDATES)
    finally:
        ranker.config.encode_batch_size = BaselineConfig.model_fields["encode_batch_size"].default
        hook.remove()
    assert bubble_calls == 3  # N_max - 1 rounds, each one call over the questions still comparing
    assert len(calls) == 3  # 14 pairs in chunks of 5


@pytest.mark.parametrize("aggregation", ["max_logits", "max_wins", "bubble"])
def test_single_candidates_need_no_comparison(rankers, aggregation):
    result = rankers[PairRanker].rank(["q", "r"], [["only"], ["one"]], aggregation=aggregation)
    assert result.scores.shape == (2, 1) and result.scores.isfinite().all() and result.ranks == [[0], [0]]


def test_bubble_start_order_follows_the_seed(rankers, monkeypatch):
    """The same bubble_seed gives the same comparisons and scores; other seeds start elsewhere."""
    ranker = rankers[PairRanker]
    compared = ranker.pair_preferences

    def bubble(seed: int) -> tuple[list, torch.Tensor]:
        calls = []

        def recording(batch, rows, left, right):
            calls.append(list(zip(rows.tolist(), left.tolist(), right.tolist())))
            return compared(batch, rows, left, right)

        monkeypatch.setattr(ranker.config, "bubble_seed", seed)
        monkeypatch.setattr(ranker, "pair_preferences", recording)
        return calls, ranker.rank(QUESTIONS, CANDIDATES, aggregation="bubble").scores

    calls, scores = bubble(0)
    again, same = bubble(0)
    assert again == calls and torch.equal(same, scores)
    first_rounds = {tuple(bubble(seed)[0][0]) for seed in range(5)}  # each round: (question, left, right)
    assert len(first_rounds) > 1


def test_bad_inputs_get_clear_errors(rankers, fuser):
    with pytest.raises(ValueError, match="question 0: candidates must be a non-empty list"):
        rankers[SimCLS].rank(["q"], [[]])
    with pytest.raises(ValueError, match="2 questions but 1 candidate lists"):
        rankers[PairRanker].rank(["q", "r"], [["a"]])
    with pytest.raises(ValueError, match="unknown aggregation"):
        rankers[PairRanker].rank(["q"], [["a", "b"]], aggregation="borda")
    with pytest.raises(ValueError, match="unknown ranker preset 'nope'.*tiny.*deberta-v3-large"):
        PairRanker.from_pretrained("nope")
    with pytest.raises(ValueError, match="unknown preset 'nope'.*tiny.*flan-t5-large.*flan-t5-xl"):
        GenFuser.from_pretrained("nope")
    with pytest.raises(ValueError, match="sequences_per_cal"):
        PairRanker.from_pretrained("tiny", sequences_per_cal=3)
    with pytest.raises(ValueError, match="unknown baseline"):
        build("borda", "tiny")


def test_build_accepts_the_train_jobs_model_fields():
    model = build("summa_reranker", "tiny", random_init=False, top_k=3, source_max_length=64,
                  candidate_max_length=64, target_max_length=64, dropout=0.0, absolute_positions=None)
    assert isinstance(model, SummaReranker) and model.config.source_max_length == 64


def test_over_long_texts_are_truncated_per_config(rankers):
    ranker = rankers[PairRanker]
    long_text = "word " * 2000
    batch = ranker.collator.encode_pairs([long_text], [[long_text, "short"]])
    assert isinstance(batch, RankerBatch) and isinstance(batch.to("cpu"), RankerBatch)
    assert batch.source_ids.shape[-1] == ranker.config.source_max_length + 1  # + [SEP]
    assert batch.input_ids.shape[-1] == ranker.config.candidate_max_length + 1
    assert ranker.rank([long_text], [[long_text, "short"]]).scores.isfinite().all()


# ---- training: one step lowers the loss -----------------------------------------------------
@pytest.mark.parametrize("cls", [*RANKERS, GenFuser])
def test_one_optimizer_step_lowers_the_loss_on_a_fixed_batch(cls):
    model = cls.from_pretrained("tiny", dropout=0.0).train()
    batch = model.collator([make_record(i, n=4 + i % 3) for i in range(6)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    torch.manual_seed(0)  # PairRanker samples its training pairs: the same pairs both times
    before = model(batch)
    before.loss.backward()
    optimizer.step()
    torch.manual_seed(0)
    after = model(batch)
    assert after.loss.item() < before.loss.item()
    term = "ce_loss" if cls is GenFuser else "rank_loss"  # a baseline's one term is its loss
    assert torch.equal(getattr(after, term), after.loss)


# ---- saving and loading ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", RANKERS)
def test_save_and_reload_give_identical_scores(rankers, cls, tmp_path):
    model = rankers[cls]
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors" in files and "baseline_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    reloaded = cls.from_pretrained(tmp_path / "m")
    assert reloaded.config == model.config
    for aggregation in (["max_logits", "bubble"] if cls is PairRanker else [None]):
        kwargs = {"aggregation": aggregation} if aggregation else {}
        assert torch.equal(reloaded.rank(QUESTIONS, CANDIDATES, **kwargs).scores,
                           model.rank(QUESTIONS, CANDIDATES, **kwargs).scores)
    with pytest.raises(ValueError, match="holds a .* model, not"):
        (GenFuser if cls is not GenFuser else SimCLS).from_pretrained(tmp_path / "m")


def test_genfuser_save_and_reload_gives_identical_outputs(fuser, tmp_path):
    fuser.save_pretrained(tmp_path / "f")
    assert (tmp_path / "f" / "positions.safetensors").is_file()
    reloaded = GenFuser.from_pretrained(tmp_path / "f")
    batch = fuser.collator([make_record(i) for i in range(3)])
    torch.testing.assert_close(reloaded(batch).loss, fuser(batch).loss)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6)
    assert reloaded.fuse(QUESTIONS, CANDIDATES, **kwargs) == fuser.fuse(QUESTIONS, CANDIDATES, **kwargs)


# ---- GenFuser: LLM-Blender's input format ------------------------------------------------------
def test_fusion_input_is_llm_blenders_format():
    assert fusion_input("Write a haiku", "about cats", ["cat one", "cat two"]) == (
        "Instruction: Write a haiku</s>Input: about cats</s>"
        "Candidate 0: <extra_id_0>:cat one</s>Candidate 1: <extra_id_1>:cat two</s>"
        "Summarize candidates into a better one for the given instruction:")


def test_fusion_collator_uses_the_true_top_k_best_first_and_truncates(fuser):
    record = make_record(0, n=5)  # candidate j has bleu 10 * j: the top-3 are 4, 3, 2
    batch = fuser.collator([record])
    text = fuser.tokenizer.decode(batch.input_ids[0, 0])
    positions = [text.index(record.candidates[j].text) for j in (4, 3, 2)]
    assert positions == sorted(positions) and record.candidates[1].text not in text
    assert batch.input_ids.shape[:2] == (1, 1) and batch.labels.shape[0] == 1
    assert fuser.tokenizer.convert_tokens_to_ids("<extra_id_2>") != fuser.tokenizer.unk_token_id
    long = fuser.collator._truncate(["word " * 500])[0]
    assert long.endswith("...") and len(fuser.tokenizer(long, add_special_tokens=False)["input_ids"]) < 140


def test_rank_and_fuse_pipeline_returns_urg_style_results(rankers, fuser):
    results = rank_and_fuse(rankers[PairRanker], fuser, QUESTIONS, CANDIDATES, top_k=3, max_new_tokens=4)
    assert all(isinstance(r, FusionResult) for r in results)
    assert results[0].selected == results[0].ranks[:3] and results[0].note is None
    assert results[1].selected == results[1].ranks and "fused all 2" in results[1].note
