"""URG's training losses (Lv et al. 2024, eq. 7-11). Pure torch: no model, Ray or DeepSpeed.

Shapes: B questions, N candidate slots (padded slots masked), T target tokens, V vocabulary.
Token-level terms are averaged over the non-pad target tokens (the paper writes sums over j;
a mean keeps gamma/beta meaningful across answer lengths). The rank term is averaged over the
ordered pairs it compares, so its scale does not grow with N^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def normalize_scores(scores: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """s_i * N_b / sum_j s_j per question: 1.0 is an average candidate, whatever N and length."""
    scores = scores.masked_fill(~candidate_mask, 0.0)
    total = scores.sum(-1, keepdim=True).clamp_min(1e-12)
    return scores * candidate_mask.sum(-1, keepdim=True) / total


def rank_loss(scores: torch.Tensor, quality: torch.Tensor, candidate_mask: torch.Tensor,
              margin: float = 0.0, min_gap: float = 0.0) -> torch.Tensor:
    """Eq. 7: sum over pairs with r_i < r_j of max(0, s_i - s_j + margin), averaged over pairs.

    scores, quality: (B, N); candidate_mask: (B, N) bool. A worse candidate i scoring above a
    better one j is penalised. Ties in quality give no pair, and so do qualities that differ by at
    most `min_gap` (a judge's 1e-5 against 3e-5 is noise, not an order).
    """
    valid = candidate_mask.unsqueeze(2) & candidate_mask.unsqueeze(1)  # (B, N, N)
    gap = quality.unsqueeze(1) - quality.unsqueeze(2)  # [b, i, j]: r_j - r_i
    worse = (gap > min_gap) & (gap > 0) & valid  # r_i < r_j by more than min_gap
    scores = scores.masked_fill(~candidate_mask, 0.0)  # padded slots hold -inf
    hinge = F.relu(scores.unsqueeze(2) - scores.unsqueeze(1) + margin)  # s_i - s_j + margin
    # where(), not a product: the graph stays whole (DeepSpeed's hooks) even with no pairs
    return torch.where(worse, hinge, 0.0).sum() / worse.sum().clamp_min(1)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy of the reference: logits (B, T, V), labels (B, T) with -100 padding."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def topm_kl_loss(p_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor,
                 top_m: int = 32, tau: float = 2.0, detach_p: bool = True) -> torch.Tensor:
    """Eq. 8-9: KL(p || q) over the m tokens p ranks highest at each step, temperature tau.

    p is the decoder's distribution given the top-k candidates (E_tk), q given top-k + worst
    (E_tk-l); both are renormalised over p's top-m token ids. Averaged over non-pad tokens.
    """
    if detach_p:
        p_logits = p_logits.detach()
    top = p_logits.topk(min(top_m, p_logits.size(-1)), dim=-1).indices  # (B, T, m)
    log_p = torch.log_softmax(p_logits.float().gather(-1, top) / tau, dim=-1)
    log_q = torch.log_softmax(q_logits.float().gather(-1, top) / tau, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T)
    mask = labels != IGNORE_INDEX
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def total_loss(rank: torch.Tensor, kl: torch.Tensor, ce: torch.Tensor, gamma: float = 5.0,
               beta: float = 2.0) -> torch.Tensor:
    """Eq. 11: gamma * L_rank + beta * L_kl + L_ce."""
    return gamma * rank + beta * kl + ce
