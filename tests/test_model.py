import contextlib

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from urg_ray import URG
from urg_ray.model import URGOutput, gather_states, ranks_by_score, select_top_k, select_worst

from conftest import make_record

QUESTIONS = ["where did the cat sit?", "name two colours"]
CANDIDATES = [["on the mat", "on the sofa, probably", "", "dogs bark"], ["red and blue", "green"]]


def test_rank_scores_are_eq6_computed_from_hooked_cross_attention(tiny):
    """Eq. 6 by hand: hook every cross-attention module, average over layers and heads, then
    over each candidate's own non-pad positions of the concatenated sequence."""
    captured = []
    hooks = [block.layer[1].EncDecAttention.register_forward_hook(lambda m, i, o: captured.append(o[2]))
             for block in tiny.model.decoder.block]
    try:
        result = tiny.rank(QUESTIONS, CANDIDATES)
    finally:
        for h in hooks:
            h.remove()
    assert len(captured) == len(tiny.model.decoder.block)
    batch = tiny.collator.encode_pairs(QUESTIONS, CANDIDATES)
    length = batch.input_ids.shape[2]
    for b, cands in enumerate(CANDIDATES):
        for i in range(len(cands)):
            positions = [i * length + t for t in range(length) if batch.attention_mask[b, i, t]]
            per_layer_head = [a[b, h, 0, positions].sum() / len(positions)
                              for a in captured for h in range(a.shape[1])]
            expected = sum(per_layer_head) / len(per_layer_head)
            assert result.scores[b, i].item() == pytest.approx(expected.item(), rel=1e-5)
    assert result.scores[1, 2:].eq(float("-inf")).all()


def test_scores_permute_with_the_candidates(tiny):
    cands = CANDIDATES[0]
    perm = [2, 0, 3, 1]
    base = tiny.rank(QUESTIONS[:1], [cands]).scores[0]
    permuted = tiny.rank(QUESTIONS[:1], [[cands[p] for p in perm]]).scores[0]
    torch.testing.assert_close(permuted, base[perm], rtol=1e-5, atol=1e-7)


def test_scores_do_not_depend_on_the_other_questions_in_the_batch(tiny):
    together = tiny.rank(QUESTIONS, CANDIDATES).scores
    alone = tiny.rank(QUESTIONS[1:], CANDIDATES[1:]).scores
    torch.testing.assert_close(together[1, :2], alone[0], rtol=1e-5, atol=1e-7)


def test_ranks_are_scores_sorted_best_first(tiny):
    result = tiny.rank(QUESTIONS, CANDIDATES)
    for b, ranks in enumerate(result.ranks):
        assert sorted(ranks) == list(range(len(CANDIDATES[b])))
        values = result.scores[b, ranks]
        assert torch.all(values[:-1] >= values[1:])


def test_sdpa_gives_the_scores_losses_and_answers_of_an_all_eager_model(tiny):
    encoder, decoder = tiny.model.get_encoder().config, tiny.model.get_decoder().config
    assert (encoder._attn_implementation, decoder._attn_implementation) == ("sdpa", "sdpa")
    batch = _batch(tiny)

    def run():
        fused = tiny.rank_and_fuse(QUESTIONS, CANDIDATES, max_new_tokens=6, min_new_tokens=6)
        return tiny.rank(QUESTIONS, CANDIDATES).scores, tiny(batch), [r.text for r in fused]

    fast = run()
    assert decoder._attn_implementation == "sdpa"  # the ranking step switched it back
    encoder._attn_implementation = decoder._attn_implementation = "eager"
    try:
        slow = run()
    finally:
        encoder._attn_implementation = decoder._attn_implementation = "sdpa"
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-4, atol=1e-6)
    for term in ("loss", "rank_loss", "kl_loss", "ce_loss"):
        assert getattr(fast[1], term).item() == pytest.approx(getattr(slow[1], term).item(), rel=1e-4, abs=1e-6)
    assert fast[2] == slow[2] and all(fast[2])


def test_select_top_k_breaks_ties_by_index_and_flags_missing_candidates():
    key = torch.tensor([[0.2, 0.9, 0.2, 0.5], [3.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    top, keep = select_top_k(key, mask, 3)
    assert top[0].tolist() == [1, 3, 0]
    assert top[1, :2].tolist() == [0, 1] and keep[1].tolist() == [True, True, False]
    assert select_worst(key, mask).tolist() == [0, 1]


def test_ranks_by_score_lists_each_questions_own_candidates_best_first():
    scores = torch.tensor([[0.2, 0.9, 0.2, 0.5], [3.0, 1.0, float("-inf"), float("-inf")]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    assert ranks_by_score(scores, mask) == [[1, 3, 0, 2], [0, 1]]


def test_gather_states_concatenates_chosen_candidates_in_order():
    states = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2, 1)  # (B, N, L, H)
    mask = torch.ones(2, 3, 2, dtype=torch.long)
    chosen, chosen_mask = gather_states(states, mask, torch.tensor([[2, 0], [1, 1]]),
                                        torch.tensor([[True, True], [True, False]]))
    assert chosen[0, :, 0].tolist() == [4, 5, 0, 1]
    assert chosen_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_rank_and_fuse_uses_top_k_and_reports_it(tiny):
    results = tiny.rank_and_fuse(QUESTIONS, CANDIDATES, top_k=3, max_new_tokens=8)
    assert len(results) == 2
    first, second = results
    assert first.selected == first.ranks[:3] and first.note is None
    assert isinstance(first.text, str) and len(first.scores) == 4
    assert second.selected == second.ranks and "fused all 2" in second.note


def test_an_empty_fusion_falls_back_to_the_top_ranked_candidate_only_when_asked(tiny):
    # Forcing EOS as the first generated token makes the fused text empty, whatever the weights.
    eos = {"forced_bos_token_id": tiny.tokenizer.eos_token_id, "max_new_tokens": 4}
    plain = tiny.rank_and_fuse(QUESTIONS, CANDIDATES, **eos)
    assert [r.text for r in plain] == ["", ""] and plain[0].note is None
    served = tiny.rank_and_fuse(QUESTIONS, CANDIDATES, empty_fallback=True, **eos)
    for result, cands, before in zip(served, CANDIDATES, plain):
        assert result.text == cands[result.ranks[0]] and result.ranks == before.ranks
        assert "top-ranked candidate" in result.note
    assert "fused all 2" in served[1].note  # earlier notes are kept


def test_sampling_repeats_for_a_seed_and_varies_across_seeds(tiny):
    kwargs = dict(max_new_tokens=8, min_new_tokens=8)

    def sample(seed: int) -> list[str]:
        torch.manual_seed(seed)
        return [r.text for r in tiny.rank_and_fuse(QUESTIONS, CANDIDATES, do_sample=True, top_p=0.9, **kwargs)]

    first = sample(0)
    assert sample(0) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))
    assert first != [r.text for r in tiny.rank_and_fuse(QUESTIONS, CANDIDATES, **kwargs)]  # not greedy


@torch.no_grad()
def test_num_beams_runs_beam_search_on_the_selected_candidates_states(tiny):
    """Beam search over the selection equals Hugging Face's own, on states encoded pair by pair."""
    kwargs = dict(max_new_tokens=8, min_new_tokens=8)
    beam = tiny.rank_and_fuse(QUESTIONS, CANDIDATES, num_beams=3, **kwargs)
    encoder = tiny.model.get_encoder()
    for question, cands, result in zip(QUESTIONS, CANDIDATES, beam):
        pairs = tiny.collator.encode_pairs([question], [[cands[i] for i in result.selected]])
        states = torch.cat([encoder(input_ids=ids[real.bool()][None]).last_hidden_state[0]
                            for ids, real in zip(pairs.input_ids[0], pairs.attention_mask[0])])
        ids = tiny.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states[None]), num_beams=3,
                                  **kwargs)
        assert result.text == tiny.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
    greedy = tiny.rank_and_fuse(QUESTIONS, CANDIDATES, **kwargs)
    assert [r.text for r in beam] != [r.text for r in greedy]  # on these inputs the beam finds another answer


def test_fusion_does_not_re_encode(tiny):
    calls = []
    hook = tiny.model.get_encoder().register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny.rank_and_fuse(QUESTIONS, CANDIDATES, max_new_tokens=6, num_beams=2)
    finally:
        hook.remove()
    assert len(calls) == 1


def test_bad_inputs_get_clear_errors(tiny):
    with pytest.raises(ValueError, match="question 0: candidates must be a non-empty list"):
        tiny.rank(["q"], [[]])
    with pytest.raises(ValueError, match="2 questions but 1 candidate lists"):
        tiny.rank(["q", "r"], [["a"]])
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        tiny.rank_and_fuse(["q"], [["a"]], top_k=-1)
    with pytest.raises(ValueError, match="unknown preset 'nope'.*tiny.*flan-t5-large.*flan-t5-xl"):
        URG.from_pretrained("nope")


def test_over_long_texts_are_truncated_per_config(tiny):
    cfg = tiny.config
    long_text = "word " * 2000
    batch = tiny.collator.encode_pairs([long_text], [[long_text, "short"]])
    # <Question> + x + </s> + <response> + y + </s>
    assert batch.input_ids.shape[-1] == cfg.source_max_length + cfg.candidate_max_length + 4
    assert tiny.rank([long_text], [[long_text, "short"]]).scores.isfinite().all()


def test_save_and_reload_give_identical_scores(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))
    reloaded = URG.from_pretrained(tmp_path / "m")
    assert reloaded.config == tiny.config
    torch.testing.assert_close(reloaded.rank(QUESTIONS, CANDIDATES).scores, tiny.rank(QUESTIONS, CANDIDATES).scores)
    assert [r.text for r in reloaded.rank_and_fuse(QUESTIONS, CANDIDATES, max_new_tokens=8)] == \
           [r.text for r in tiny.rank_and_fuse(QUESTIONS, CANDIDATES, max_new_tokens=8)]


def test_tiny_preset_is_the_same_model_every_time():
    a, b = URG.from_pretrained("tiny"), URG.from_pretrained("tiny")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def _batch(model, n_records=4, n=4):
    return model.collator([make_record(i, n=n) for i in range(n_records)])


# ---- forward: eq. 7-11 through forward itself, against independent recomputations ---------
ANSWERS = ["the cat sat on the mat", "a red fox jumps", "two plus two is four, of course", "blue"]
SIZES = [4, 5, 2, 3]  # question 2 has fewer candidates than top_k=3; question 3 exactly top_k


@pytest.fixture(scope="module")
def loss_batch(tiny):
    # candidate j of record i has bleu 10*j: the worst is 0, the top-3 are n-1, n-2, n-3
    return tiny.collator([make_record(i, n=n, answer=a) for i, (n, a) in enumerate(zip(SIZES, ANSWERS))])


@contextlib.contextmanager
def _loss_config(model, **update):
    saved = model.loss_config
    model.loss_config = saved.model_copy(update=update)
    try:
        yield model.loss_config
    finally:
        model.loss_config = saved


def _pair_states(model, batch) -> list[list[torch.Tensor]]:
    """Each real pair through the Hugging Face encoder alone, its padding cut: (L_i, H) each."""
    encoder = model.model.get_encoder()
    out = []
    for ids, attention, real in zip(batch.input_ids, batch.attention_mask, batch.candidate_mask):
        out.append([encoder(input_ids=ids[i, attention[i].bool()][None]).last_hidden_state[0]
                    for i in range(int(real.sum()))])
    return out


def _expected_selection(key: torch.Tensor, n: int, k: int) -> tuple[list[int], int]:
    values = key[:n].tolist()
    best_first = sorted(range(n), key=lambda i: (-values[i], i))
    return best_first[:k], min(range(n), key=lambda i: (values[i], i))


def _expected_terms(model, batch, keys: torch.Tensor, scores: torch.Tensor) -> dict[str, float]:
    """Eq. 7-10 recomputed one question at a time: p from the top-k's states alone, q from top-k +
    worst, CE from Hugging Face's own loss, the top-m KL with F.kl_div, eq. 7 by a loop over pairs."""
    cfg, k = model.loss_config, model.config.top_k
    states = _pair_states(model, batch)
    ce_p = ce_q = kl = 0.0
    tokens = int((batch.labels != -100).sum())
    for b, pairs in enumerate(states):
        top, worst = _expected_selection(keys[b], len(pairs), k)
        labels = batch.labels[b][batch.labels[b] != -100][None]
        p = model.model(encoder_outputs=(torch.cat([pairs[i] for i in top])[None],), labels=labels)
        q = model.model(encoder_outputs=(torch.cat([pairs[i] for i in [*top, worst]])[None],), labels=labels)
        ce_p += p.loss.item() * labels.numel()
        ce_q += q.loss.item() * labels.numel()
        ids = p.logits[0].topk(cfg.top_m, dim=-1).indices
        log_p = F.log_softmax(p.logits[0].gather(-1, ids) / cfg.tau, -1)
        log_q = F.log_softmax(q.logits[0].gather(-1, ids) / cfg.tau, -1)
        kl += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
    hinges = []
    for b in range(len(states)):
        n = len(states[b])
        s = scores[b, :n] * n / scores[b, :n].sum()  # normalised: 1.0 is an average candidate
        r = batch.quality[b, :n]
        hinges += [max(0.0, (s[i] - s[j]).item() + cfg.rank_margin)
                   for i in range(n) for j in range(n) if r[i] < r[j]]
    return {"ce_p": ce_p / tokens, "ce_q": ce_q / tokens, "kl": kl / tokens, "rank": sum(hinges) / len(hinges)}


def _gathered(model, batch, states: list[list[torch.Tensor]]) -> tuple[URGOutput, list[dict]]:
    """Run forward with a hook on the seq2seq model: which candidates' states each decoder pass
    was given, per question, in order, and whether each block was visible (its mask)."""
    calls = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((kwargs["encoder_outputs"].last_hidden_state, kwargs["attention_mask"])),
        with_kwargs=True)
    try:
        out = model(batch)
    finally:
        hook.remove()
    (given, mask), = calls  # one teacher-forced pass (p and q batched together under ERM)
    length = batch.input_ids.size(-1)
    passes = []
    for row in range(given.size(0)):
        b = row % len(states)
        blocks, visible = given[row].split(length), mask[row].split(length)
        found = []
        for block, seen in zip(blocks, visible):
            n_real = len(states[b])
            distances = [(block[: len(s)] - s).abs().max().item() if len(s) <= length else float("inf")
                         for s in states[b]]
            i = min(range(n_real), key=distances.__getitem__)
            found.append((i if distances[i] < 1e-4 else None, int(seen.sum())))
        passes.append({"question": b, "blocks": found})
    return out, passes


def test_forward_terms_equal_an_independent_recomputation(tiny, loss_batch):
    cfg = tiny.loss_config
    assert (cfg.erm, cfg.rank_loss, cfg.select_by) == (True, True, "ground_truth")
    out = tiny(loss_batch)
    questions = [make_record(i, n=n).question for i, n in enumerate(SIZES)]
    candidates = [[c.text for c in make_record(i, n=n, answer=a).candidates]
                  for i, (n, a) in enumerate(zip(SIZES, ANSWERS))]
    torch.testing.assert_close(out.scores, tiny.rank(questions, candidates).scores, rtol=1e-5, atol=1e-7)
    expected = _expected_terms(tiny, loss_batch, loss_batch.quality, out.scores)
    assert out.ce_loss.item() == pytest.approx(expected["ce_p"] + expected["ce_q"], rel=1e-4)
    assert out.kl_loss.item() == pytest.approx(expected["kl"], rel=1e-3, abs=1e-6)
    assert out.rank_loss.item() == pytest.approx(expected["rank"], rel=1e-4)
    assert expected["kl"] > 0 and expected["rank"] > 0  # the fixture exercises every term
    assert out.loss.item() == pytest.approx(
        cfg.gamma * expected["rank"] + cfg.beta * expected["kl"] + expected["ce_p"] + expected["ce_q"], rel=1e-4)


def test_forward_gathers_the_true_top_k_for_p_and_adds_the_worst_for_q(tiny, loss_batch):
    states = _pair_states(tiny, loss_batch)
    _, passes = _gathered(tiny, loss_batch, states)
    assert len(passes) == 2 * len(SIZES)  # p rows, then q rows
    for row, seen in enumerate(passes):
        b, n = seen["question"], SIZES[seen["question"]]
        top, worst = list(range(n - 1, -1, -1))[:3], 0  # bleu 10*j: the last is best
        candidates = [i for i, _ in seen["blocks"]]
        tokens = [t for _, t in seen["blocks"]]
        real = [len(states[b][i]) for i in top]
        if row < len(SIZES):  # p: the top-k visible, the worst's slot masked out
            assert candidates[: len(top)] == top and tokens == real + [0] * (4 - len(top))
        else:  # q: the top-k and the worst, all visible
            assert candidates[: len(top)] + candidates[-1:] == top + [worst]
            assert tokens == real + [0] * (3 - len(top)) + [len(states[b][worst])]


def test_gamma_zero_removes_the_rank_term_exactly(tiny, loss_batch):
    full, warm = tiny(loss_batch), tiny(loss_batch, gamma=0.0)
    assert warm.rank_loss.item() > 0  # still reported, but not in the loss
    assert warm.loss.item() == (tiny.loss_config.beta * warm.kl_loss + warm.ce_loss).item()
    assert full.loss.item() - warm.loss.item() == pytest.approx(tiny.loss_config.gamma * full.rank_loss.item(),
                                                                rel=1e-5)


def test_erm_off_drops_the_kl_and_the_q_pass_and_keeps_the_rank_term(tiny, loss_batch):
    full = tiny(loss_batch)
    expected = _expected_terms(tiny, loss_batch, loss_batch.quality, full.scores)
    with _loss_config(tiny, erm=False):
        ablated = tiny(loss_batch)
    assert ablated.kl_loss.item() == 0
    assert ablated.ce_loss.item() == pytest.approx(expected["ce_p"], rel=1e-4)  # CE given the top-k alone
    assert ablated.rank_loss.item() == full.rank_loss.item()
    assert ablated.loss.item() == pytest.approx(5 * ablated.rank_loss.item() + ablated.ce_loss.item(), rel=1e-6)


def test_rank_loss_off_drops_only_the_rank_term(tiny, loss_batch):
    full = tiny(loss_batch)
    with _loss_config(tiny, rank_loss=False):
        ablated = tiny(loss_batch)
    assert ablated.rank_loss.item() == 0 and full.rank_loss.item() > 0
    assert ablated.kl_loss.item() == full.kl_loss.item() and ablated.ce_loss.item() == full.ce_loss.item()
    assert ablated.loss.item() == pytest.approx(2 * full.kl_loss.item() + full.ce_loss.item(), rel=1e-6)


def test_select_by_predicted_fuses_the_models_own_top_k(tiny, loss_batch):
    states = _pair_states(tiny, loss_batch)
    with _loss_config(tiny, select_by="predicted"):
        out, passes = _gathered(tiny, loss_batch, states)
        expected = _expected_terms(tiny, loss_batch, out.scores, out.scores)
    differs = False
    for row, seen in enumerate(passes):
        b = seen["question"]
        top, worst = _expected_selection(out.scores[b], SIZES[b], 3)
        candidates = [i for i, _ in seen["blocks"]]
        assert candidates[: len(top)] == top and (row < len(SIZES) or candidates[-1] == worst)
        differs |= top != _expected_selection(loss_batch.quality[b], SIZES[b], 3)[0]
    assert differs  # the untrained ranker disagrees with the truth somewhere: the choice is visible
    assert out.ce_loss.item() == pytest.approx(expected["ce_p"] + expected["ce_q"], rel=1e-4)
    assert out.kl_loss.item() == pytest.approx(expected["kl"], rel=1e-3, abs=1e-6)


def test_one_optimizer_step_lowers_the_loss_on_a_fixed_batch():
    model = URG.from_pretrained("tiny", dropout=0.0).train()
    batch = _batch(model, n_records=8, n=6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model(batch)
    before.loss.backward()
    optimizer.step()
    after = model(batch)
    assert after.loss.item() < before.loss.item()
    assert after.ce_loss.item() < before.ce_loss.item()


def test_dropout_override_reaches_every_dropout_including_attention():
    model = URG.from_pretrained("tiny", dropout=0.0).train()
    batch = _batch(model)
    torch.testing.assert_close(model(batch).loss, model(batch).loss)  # train mode, yet deterministic
    noisy = URG.from_pretrained("tiny", dropout=0.3).train()
    assert noisy(batch).loss.item() != noisy(batch).loss.item()


def test_absolute_positions_are_on_for_tiny_and_follow_the_kv_cache(tiny):
    assert tiny.config.absolute_positions and tiny.positions is not None

    def fuse(use_cache):
        return [r.text for r in tiny.rank_and_fuse(QUESTIONS, CANDIDATES, max_new_tokens=12, min_new_tokens=12,
                                                   use_cache=use_cache)]

    with torch.no_grad():  # decoder positions large enough to decide the tokens, as trained ones do
        saved = tiny.positions.decoder.weight.clone()
        tiny.positions.decoder.weight.normal_(std=30.0, generator=torch.Generator().manual_seed(0))
        cached, uncached = fuse(True), fuse(False)
        tiny.positions.decoder.weight[1:] = tiny.positions.decoder.weight[0]  # as if every step were at 0
        at_zero = fuse(False)
        tiny.positions.decoder.weight.copy_(saved)
    assert all(len(text.split()) >= 3 for text in cached)
    assert at_zero != uncached  # the positions change the answer...
    assert cached == uncached  # ...and a cached step gets its true position, not 0
    before = tiny.rank(QUESTIONS, CANDIDATES).scores
    with torch.no_grad():
        saved = tiny.positions.encoder.weight.clone()
        tiny.positions.encoder.weight.add_(torch.randn_like(saved))
        moved = tiny.rank(QUESTIONS, CANDIDATES).scores
        tiny.positions.encoder.weight.copy_(saved)
    assert not torch.allclose(before, moved)


def test_config_none_keeps_the_presets_choice():
    assert URG.from_pretrained("tiny", absolute_positions=None).positions is not None
    assert URG.from_pretrained("tiny", absolute_positions=False).positions is None


def test_fuse_of_the_selection_equals_rank_and_fuse(tiny):
    kwargs = dict(max_new_tokens=10, min_new_tokens=10)
    fused = tiny.rank_and_fuse(QUESTIONS, CANDIDATES, top_k=3, **kwargs)
    chosen = [[cands[i] for i in r.selected] for cands, r in zip(CANDIDATES, fused)]
    assert tiny.fuse(QUESTIONS, chosen, **kwargs) == [r.text for r in fused]


def test_chunked_length_sorted_encoding_gives_the_scores_of_one_call(tiny):
    one_call = tiny.config.model_copy(update={"encode_batch_size": None})
    chunked = tiny.config.model_copy(update={"encode_batch_size": 2})
    original = tiny.config
    try:
        tiny.config = one_call
        whole = tiny.rank(QUESTIONS, CANDIDATES).scores
        tiny.config = chunked
        pieces = tiny.rank(QUESTIONS, CANDIDATES).scores
    finally:
        tiny.config = original
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-7)
