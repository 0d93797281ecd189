"""PairRanker's aggregations (LLM-Blender §3.3, Fig. 4): pure functions, no model.

M is the comparison matrix, (B, N, N): M[b, i, j] = s_ij, the ranker's confidence that
candidate i beats j when encoded as [x; y_i; y_j]. The diagonal and padded slots are ignored.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def _pair_mask(candidate_mask: torch.Tensor | None, m: torch.Tensor) -> torch.Tensor:
    """(B, N, N): True for ordered pairs of two different real candidates."""
    b, n, _ = m.shape
    real = torch.ones(b, n, dtype=torch.bool, device=m.device) if candidate_mask is None else candidate_mask.bool()
    eye = torch.eye(n, dtype=torch.bool, device=m.device)
    return real[:, :, None] & real[:, None, :] & ~eye


def _pad(scores: torch.Tensor, candidate_mask: torch.Tensor | None) -> torch.Tensor:
    return scores if candidate_mask is None else scores.masked_fill(~candidate_mask.bool(), float("-inf"))


def max_logits(m: torch.Tensor, candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MaxLogits: s_i = sum_j (M[i, j] - M[j, i]) over the other real candidates j.

    m (B, N, N), candidate_mask (B, N) -> scores (B, N), -inf at padded slots.
    (LLM-Blender's code divides by N; per question that does not change the ranking.)
    """
    valid = _pair_mask(candidate_mask, m)
    margin = torch.where(valid, m - m.transpose(1, 2), 0.0)
    return _pad(margin.sum(-1), candidate_mask)


def max_wins(m: torch.Tensor, candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MaxWins: s_i = |{j : M[i, j] > 0}| + |{j : M[j, i] < 0}|, wins as the first and as the
    second of a pair. m (B, N, N) -> scores (B, N), -inf at padded slots."""
    valid = _pair_mask(candidate_mask, m)
    wins_first = ((m > 0) & valid).sum(-1)
    wins_second = ((m < 0) & valid).sum(-2)
    return _pad((wins_first + wins_second).to(m.dtype if m.is_floating_point() else torch.float), candidate_mask)


CompareFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def bubble_pass(compare: CompareFn, n_candidates: Sequence[int], generator: torch.Generator | None = None,
                shuffle: bool = True) -> torch.Tensor:
    """One bubble-sort pass per question (LLM-Blender §3.3): the best candidate is carried to
    the end in n_b - 1 comparisons, O(N) instead of O(N^2).

    `compare(rows, left, right)` gets (R,) question indices and the two candidates of each
    and returns (R,) confidences that `left` beats `right` (> 0: left wins; LLM-Blender uses
    s(l, r) - s(r, l), both orders). It is called once per round with every question that
    still compares, so a ranker batches each round over the B questions. The start order is
    a random permutation (`generator`), or 0..n_b-1 with shuffle=False. Ties go to `right`.

    Returns the order after the pass, (B, N_max) candidate indices; the winner sits at n_b - 1,
    padded slots hold -1.
    """
    sizes = torch.as_tensor(list(n_candidates), dtype=torch.long)
    b, n_max = len(sizes), int(sizes.max())
    slots = torch.arange(n_max)
    if shuffle:
        keys = torch.rand(b, n_max, generator=generator).masked_fill(slots >= sizes[:, None], 2.0)
        order = keys.argsort(dim=1)  # a random permutation of the real candidates, padding last
    else:
        order = slots.repeat(b, 1)
    order = order.masked_fill(slots >= sizes[:, None], -1)
    for j in range(n_max - 1):  # round j compares positions j and j + 1
        rows = torch.nonzero(sizes - 1 > j).squeeze(1)
        current, following = order[rows, j], order[rows, j + 1]
        current_wins = compare(rows, current, following).detach().cpu() > 0
        order[rows, j] = torch.where(current_wins, following, current)
        order[rows, j + 1] = torch.where(current_wins, current, following)
    return order


def bubble_scores(order: torch.Tensor) -> torch.Tensor:
    """Scores from a bubble pass: each candidate's position after it (the winner highest).

    order (B, N) from `bubble_pass` -> scores (B, N) in candidate order, -inf at padded slots.
    Only the winner is certain; the others keep the partial order one pass leaves.
    """
    b, n = order.shape
    scores = torch.full((b, n), float("-inf"))
    positions = torch.arange(n, dtype=torch.float).expand(b, n)
    real = order >= 0
    scores[torch.nonzero(real)[:, 0], order[real]] = positions[real]
    return scores
