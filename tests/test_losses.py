import math

import pytest
import torch

from urg_ray import losses


def test_rank_loss_matches_hand_computed_pairs():
    scores = torch.tensor([[0.3, 0.1, 0.6]])
    quality = torch.tensor([[1.0, 3.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # pairs with r_i < r_j: (0,1): 0.3-0.1=0.2; (0,2): 0.3-0.6<0 -> 0; (2,1): 0.6-0.1=0.5
    assert losses.rank_loss(scores, quality, mask).item() == pytest.approx((0.2 + 0.0 + 0.5) / 3)
    # margin 0.1: 0.3, max(0, -0.2)=0, 0.6
    assert losses.rank_loss(scores, quality, mask, margin=0.1).item() == pytest.approx((0.3 + 0.6) / 3)


def test_rank_loss_ignores_padded_slots_and_ties():
    scores = torch.tensor([[0.5, 0.2, float("-inf")]])
    quality = torch.tensor([[1.0, 2.0, float("-inf")]])
    mask = torch.tensor([[True, True, False]])
    assert losses.rank_loss(scores, quality, mask).item() == pytest.approx(0.3)
    tied = losses.rank_loss(scores, torch.tensor([[1.0, 1.0, 0.0]]), mask)
    assert tied.item() == 0.0


def test_rank_loss_min_gap_drops_pairs_of_near_equal_quality():
    scores = torch.tensor([[0.9, 0.5, 0.1]])
    quality = torch.tensor([[0.00001, 0.00003, 0.6]])  # a judge's near-zeros, then a real win
    mask = torch.ones(1, 3, dtype=torch.bool)
    # all pairs r_i < r_j: (0,1): 0.4; (0,2): 0.8; (1,2): 0.4
    assert losses.rank_loss(scores, quality, mask).item() == pytest.approx((0.4 + 0.8 + 0.4) / 3)
    # min_gap 0.01: (0,1) differs by 2e-5, no pair; the mean is over the two pairs left
    assert losses.rank_loss(scores, quality, mask, min_gap=0.01).item() == pytest.approx((0.8 + 0.4) / 2)


def test_rank_loss_is_zero_when_order_is_right_with_margin_to_spare():
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    quality = torch.tensor([[9.0, 5.0, 1.0]])
    assert losses.rank_loss(scores, quality, torch.ones(1, 3, dtype=torch.bool), margin=0.5).item() == 0.0


def test_normalize_scores_averages_to_one_over_real_candidates():
    scores = torch.tensor([[0.02, 0.06, float("-inf")]])
    out = losses.normalize_scores(scores, torch.tensor([[True, True, False]]))
    assert out[0].tolist() == pytest.approx([0.5, 1.5, 0.0])


def test_ce_loss_matches_log_softmax_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, -100]])
    expected = -(2.0 - math.log(math.exp(2) + 1 + math.exp(1)))
    assert losses.ce_loss(logits, labels).item() == pytest.approx(expected)


def test_topm_kl_matches_hand_computed_value():
    p_logits = torch.tensor([[[4.0, 2.0, 0.0, -1.0]]])
    q_logits = torch.tensor([[[1.0, 3.0, 5.0, 0.0]]])
    labels = torch.tensor([[7]])
    tau = 2.0
    # p's top-2 ids are 0 and 1; renormalise both over them at temperature tau
    p = [math.exp(4 / tau), math.exp(2 / tau)]
    p = [v / sum(p) for v in p]
    q = [math.exp(1 / tau), math.exp(3 / tau)]
    q = [v / sum(q) for v in q]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = losses.topm_kl_loss(p_logits, q_logits, labels, top_m=2, tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert losses.topm_kl_loss(p_logits, p_logits, labels, top_m=2, tau=tau).item() == pytest.approx(0.0, abs=1e-7)


def test_topm_kl_averages_over_real_tokens_and_detaches_p():
    p_logits = torch.randn(2, 3, 10, requires_grad=True)
    q_logits = torch.randn(2, 3, 10, requires_grad=True)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    kl = losses.topm_kl_loss(p_logits, q_logits, labels, top_m=4)
    per_token = [losses.topm_kl_loss(p_logits[b:b + 1, t:t + 1], q_logits[b:b + 1, t:t + 1], labels[b:b + 1, t:t + 1],
                                     top_m=4)
                 for b, t in [(0, 0), (0, 1), (1, 0)]]
    assert kl.item() == pytest.approx(sum(x.item() for x in per_token) / 3, rel=1e-5)
    kl.backward()
    assert p_logits.grad is None and q_logits.grad is not None
    p2 = p_logits.detach().clone().requires_grad_()
    losses.topm_kl_loss(p2, q_logits.detach(), labels, top_m=4, detach_p=False).backward()
    assert p2.grad is not None and p2.grad.abs().sum() > 0


def test_total_loss_weights():
    assert losses.total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), gamma=5, beta=2).item() == 12.0
