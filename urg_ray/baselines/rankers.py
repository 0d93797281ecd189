"""The rankers URG is measured against (LLM-Blender §3, Fig. 3), on DeBERTa-v3 encoders (or any HF encoder: `minilm`).

* PairRanker: a cross-encoder over "[CLS] <source> x [SEP] <candidate1> y_i [SEP] <candidate2>
  y_j [SEP]"; the markers' states score both candidates (s^i_(i,j), s^j_(i,j)) and
  M[i, j] = s^i - s^j. All N(N-1) ordered pairs of all B questions go through the encoder
  together; MaxLogits / MaxWins aggregate M, or one bubble pass compares N-1 times (each round
  batched over the B questions). Trained with BCE on sampled pairs (§3.2).
* SummaReranker: a cross-encoder over "[CLS] <source> x [SEP] <candidate> y_i [SEP]", a score
  from [CLS]; BCE against "is the best candidate" (Ravaut et al. 2022).
* SimCLS: one encoder for x and each y_i alone; s_i = cos([CLS](x), [CLS](y_i)); margin
  ranking loss with margin (rank gap)/N plus a gold term (Liu and Liu 2021).

Every ranker sends its sequences (pairs, or candidates) through the encoder sorted by length,
`encode_batch_size` at a time, each call padded to its own longest: a loop over chunks, never
over pairs or candidates (URG's encode: see docs/results/benchmark.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, DebertaV2Model

from urg_ray.baselines.aggregation import bubble_pass, bubble_scores, max_logits, max_wins
from urg_ray.baselines.base import (Baseline, RankerBatch, RankerCollator, RankerOutput, pack_segments, token)
from urg_ray.baselines.presets import (CANDIDATE1_TOKEN, CANDIDATE2_TOKEN, CANDIDATE_TOKEN, SOURCE_TOKEN,
                                       RANKER_PRESETS, BaselineConfig, add_ranker_tokens, deberta_config,
                                       ranker_tokenizer)
from urg_ray.model import RankResult, ranks_by_score
from urg_ray.presets import lookup_preset


def _score_head(in_features: int, hidden: int, dropout: float = 0.1) -> nn.Sequential:
    """LLM-Blender's head: dropout, linear, tanh, dropout, linear to one score."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.Tanh(), nn.Dropout(dropout),
                         nn.Linear(hidden, 1))


class CrossEncoderRanker(Baseline):
    """An encoder-only ranker. Subclasses give `rank_scores(batch)`: (B, N), -inf at padding."""

    can_rank = True
    checkpoint_metric = "dev_top1_quality"

    def __init__(self, backbone: nn.Module, tokenizer, config: BaselineConfig):
        super().__init__(backbone, tokenizer, config)
        self.collator = RankerCollator(tokenizer, config.source_max_length, config.candidate_max_length,
                                       config.target_max_length)
        ids = tokenizer.convert_tokens_to_ids
        self.cls_id, self.source_id, self.candidate_id = tokenizer.cls_token_id, ids(SOURCE_TOKEN), ids(CANDIDATE_TOKEN)
        self.candidate1_id, self.candidate2_id = ids(CANDIDATE1_TOKEN), ids(CANDIDATE2_TOKEN)

    @classmethod
    def _build_backbone(cls, config: BaselineConfig, dtype: torch.dtype | None):
        name = config.preset
        preset = lookup_preset(RANKER_PRESETS, name, "ranker preset")
        if preset is not None and preset.encoder_dir is None and (preset.hub_name is None or config.random_init):
            tokenizer = ranker_tokenizer()
            return DebertaV2Model(deberta_config(preset, len(tokenizer))), tokenizer
        hub = (preset.encoder_dir() if preset.encoder_dir else preset.hub_name) if preset else name
        tokenizer = add_ranker_tokens(AutoTokenizer.from_pretrained(hub))
        if config.random_init:  # a local encoder's architecture with random weights
            backbone = AutoModel.from_config(AutoConfig.from_pretrained(hub), dtype=dtype)
        else:
            backbone = AutoModel.from_pretrained(hub, dtype=dtype)
        backbone.resize_token_embeddings(len(tokenizer))
        return backbone, tokenizer

    @classmethod
    def _load_backbone(cls, path: Path, dtype: torch.dtype | None) -> nn.Module:
        return AutoModel.from_pretrained(path, dtype=dtype)

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def encode(self, segments) -> tuple[torch.Tensor, torch.Tensor]:
        """Pack the segments (see `pack_segments`), run the encoder: hidden (R, L, H), starts (R, K)."""
        ids, mask, starts = pack_segments(segments, self.tokenizer.pad_token_id)
        return self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, starts

    def in_chunks(self, lengths: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`score(index)` -> (len(index), ...) over rows sorted by `lengths`, `encode_batch_size`
        rows per call (None: all at once); the results come back in row order. lengths: (R,)."""
        if len(lengths) == 0:  # e.g. no pairs: every question has one candidate
            return torch.empty(0, device=lengths.device)
        out = None
        for chunk in lengths.argsort().split(self.config.encode_batch_size or len(lengths)):
            part = score(chunk)
            if out is None:
                out = part.new_empty((len(lengths), *part.shape[1:]))
            out[chunk] = part
        return out

    def _token(self, token_id: int, rows: torch.Tensor):
        return token(token_id, len(rows), rows.device)

    @staticmethod
    def _source(batch: RankerBatch, rows: torch.Tensor):
        return batch.source_ids[rows], batch.source_mask[rows].sum(1)

    @staticmethod
    def _candidate(batch: RankerBatch, rows: torch.Tensor, index: torch.Tensor):
        return batch.input_ids[rows, index], batch.attention_mask[rows, index].sum(1)

    def rank_scores(self, batch: RankerBatch) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def rank(self, questions, candidates, **kwargs) -> RankResult:
        """Rank each question's candidates (N may differ per question): scores (B, N_max) + ranks."""
        batch = self.collator.encode_pairs(questions, candidates).to(self.device)
        scores = self.rank_scores(batch, **kwargs).float()
        return RankResult(scores.cpu(), ranks_by_score(scores, batch.candidate_mask))


class PairRanker(CrossEncoderRanker):
    method = "pair_ranker"

    def __init__(self, backbone: nn.Module, tokenizer, config: BaselineConfig):
        super().__init__(backbone, tokenizer, config)
        self.head = _score_head(2 * self.hidden_size, self.hidden_size)

    def pair_logits(self, batch: RankerBatch, rows: torch.Tensor, left: torch.Tensor, right: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """s^i_(i,j) and s^j_(i,j) for R ordered pairs (question rows, left i, right j), one encoder call.

        Sequence: [CLS] <source> x [SEP] <candidate1> y_i [SEP] <candidate2> y_j [SEP]; the states at
        <source>, <candidate1>, <candidate2> are x, y_i, y_j; head([x; y_i]) and head([x; y_j]).
        """
        hidden, starts = self.encode([
            self._token(self.cls_id, rows), self._token(self.source_id, rows), self._source(batch, rows),
            self._token(self.candidate1_id, rows), self._candidate(batch, rows, left),
            self._token(self.candidate2_id, rows), self._candidate(batch, rows, right),
        ])
        markers = hidden.gather(1, starts[:, [1, 3, 5], None].expand(-1, -1, hidden.size(-1)))  # (R, 3, H)
        source = markers[:, 0]
        left_logit = self.head(torch.cat([source, markers[:, 1]], dim=-1)).squeeze(-1)
        right_logit = self.head(torch.cat([source, markers[:, 2]], dim=-1)).squeeze(-1)
        return left_logit.float(), right_logit.float()

    def pair_preferences(self, batch: RankerBatch, rows: torch.Tensor, left: torch.Tensor, right: torch.Tensor
                         ) -> torch.Tensor:
        """s_ij = s^i_(i,j) - s^j_(i,j) for R ordered pairs: (R,), in length-sorted chunks."""
        lengths = (batch.source_mask.sum(1)[rows] + batch.attention_mask[rows, left].sum(1)
                   + batch.attention_mask[rows, right].sum(1))

        def preference(chunk: torch.Tensor) -> torch.Tensor:
            left_logit, right_logit = self.pair_logits(batch, rows[chunk], left[chunk], right[chunk])
            return left_logit - right_logit

        return self.in_chunks(lengths, preference)

    def comparison_matrix(self, batch: RankerBatch) -> torch.Tensor:
        """M (B, N, N): M[b, i, j] = s_ij for every ordered pair of real candidates, 0 elsewhere."""
        real = batch.candidate_mask
        n = real.size(1)
        pairs = real[:, :, None] & real[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=real.device)
        rows, left, right = pairs.nonzero(as_tuple=True)  # all B * N_b(N_b - 1) pairs at once
        m = torch.zeros(pairs.shape, device=real.device)
        m[rows, left, right] = self.pair_preferences(batch, rows, left, right)
        return m

    def rank_scores(self, batch: RankerBatch, aggregation: str | None = None) -> torch.Tensor:
        aggregation = aggregation or self.config.aggregation
        if aggregation == "bubble":
            return self.bubble_scores(batch)
        m = self.comparison_matrix(batch)
        aggregate = {"max_logits": max_logits, "max_wins": max_wins}.get(aggregation)
        if aggregate is None:
            raise ValueError(f"unknown aggregation {aggregation!r}; use max_logits, max_wins or bubble")
        return aggregate(m, batch.candidate_mask)

    def bubble_scores(self, batch: RankerBatch) -> torch.Tensor:
        """One bubble pass: N-1 rounds, each one encoder call over both orders of the B pairs."""
        def compare(rows: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            rows, left, right = rows.to(self.device), left.to(self.device), right.to(self.device)
            both = self.pair_preferences(batch, rows.repeat(2), torch.cat([left, right]), torch.cat([right, left]))
            return both[: len(rows)] - both[len(rows):]  # s(l, r) - s(r, l), as LLM-Blender

        generator = torch.Generator().manual_seed(self.config.bubble_seed)
        order = bubble_pass(compare, batch.candidate_mask.sum(1).tolist(), generator)
        return bubble_scores(order).to(self.device)

    def forward(self, batch: RankerBatch, gamma: float | None = None) -> RankerOutput:
        """BCE on `train_pairs` random ordered pairs per question (LLM-Blender §3.2-3.3):
        left label r_i > r_j, right label r_j > r_i (a tie labels both 0)."""
        b = batch.candidate_mask.size(0)
        sizes = batch.candidate_mask.sum(1, keepdim=True)  # (B, 1)
        shape = (b, self.config.train_pairs)
        left = (torch.rand(shape, device=sizes.device) * sizes).long()
        offset = 1 + (torch.rand(shape, device=sizes.device) * (sizes - 1)).long()
        right = (left + offset) % sizes  # uniform over the other candidates: the order is random
        keep = (sizes > 1).expand(shape)
        rows = torch.arange(b, device=sizes.device)[:, None].expand(shape)[keep]
        left, right = left[keep], right[keep]
        left_logit, right_logit = self.pair_logits(batch, rows, left, right)
        quality_left, quality_right = batch.quality[rows, left], batch.quality[rows, right]
        loss = (F.binary_cross_entropy_with_logits(left_logit, (quality_left > quality_right).float())
                + F.binary_cross_entropy_with_logits(right_logit, (quality_right > quality_left).float())) / 2
        return RankerOutput(loss, loss)


class SummaReranker(CrossEncoderRanker):
    method = "summa_reranker"

    def __init__(self, backbone: nn.Module, tokenizer, config: BaselineConfig):
        super().__init__(backbone, tokenizer, config)
        self.head = _score_head(self.hidden_size, self.hidden_size)

    def rank_scores(self, batch: RankerBatch) -> torch.Tensor:
        """head([CLS]) of "[CLS] <source> x [SEP] <candidate> y_i [SEP]": (B, N) logits, -inf at pads."""
        rows, index = batch.candidate_mask.nonzero(as_tuple=True)  # the B*N real (x, y_i)

        def score(chunk: torch.Tensor) -> torch.Tensor:
            r, i = rows[chunk], index[chunk]
            hidden, _ = self.encode([self._token(self.cls_id, r), self._token(self.source_id, r),
                                     self._source(batch, r), self._token(self.candidate_id, r),
                                     self._candidate(batch, r, i)])
            return self.head(hidden[:, 0]).squeeze(-1).float()

        logits = self.in_chunks(batch.source_mask.sum(1)[rows] + batch.attention_mask[rows, index].sum(1), score)
        scores = torch.full(batch.candidate_mask.shape, float("-inf"), device=logits.device)
        scores[rows, index] = logits
        return scores

    def forward(self, batch: RankerBatch, gamma: float | None = None) -> RankerOutput:
        """BCE of every real candidate against "is (one of) the best" (SummaReranker)."""
        real = batch.candidate_mask
        logits = self.rank_scores(batch)
        best = batch.quality == batch.quality.max(dim=1, keepdim=True).values
        loss = F.binary_cross_entropy_with_logits(logits[real], best[real].float())
        return RankerOutput(loss, loss)


class SimCLS(CrossEncoderRanker):
    method = "simcls"

    def _embed(self, marker_id: int, segment: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Unit-norm [CLS] state of "[CLS] <marker> text [SEP]": (R, H), in length-sorted chunks."""
        ids, lengths = segment

        def embed(chunk: torch.Tensor) -> torch.Tensor:
            hidden, _ = self.encode([self._token(self.cls_id, chunk), self._token(marker_id, chunk),
                                     (ids[chunk], lengths[chunk])])
            return F.normalize(hidden[:, 0].float(), dim=-1)

        return self.in_chunks(lengths, embed)

    def _scores(self, batch: RankerBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, N), -inf at pads, and H(x) (B, H): x is encoded once, then each y_i alone."""
        rows, index = batch.candidate_mask.nonzero(as_tuple=True)
        questions = torch.arange(len(batch.source_ids), device=rows.device)
        source = self._embed(self.source_id, self._source(batch, questions))
        candidates = self._embed(self.candidate_id, self._candidate(batch, rows, index))
        scores = torch.full(batch.candidate_mask.shape, float("-inf"), device=source.device)
        scores[rows, index] = (source[rows] * candidates).sum(-1)
        return scores, source

    def rank_scores(self, batch: RankerBatch) -> torch.Tensor:
        """s_i = cos(H(x), H(y_i)): (B, N), -inf at padded slots."""
        return self._scores(batch)[0]

    def forward(self, batch: RankerBatch, gamma: float | None = None) -> RankerOutput:
        """SimCLS' loss as LLM-Blender writes it (simcls_loss): with candidates sorted by quality,
        sum over pairs p < q of max(0, s_q - s_p + (q - p) / N), averaged over questions; plus
        max(0, s_i - s_ref) for the reference encoded as a candidate (labels, [SEP]-terminated)."""
        real = batch.candidate_mask
        scores, source = self._scores(batch)
        b, n = real.shape
        order = batch.quality.argsort(dim=1, descending=True, stable=True)  # padded (-inf) last
        real_sorted = real.gather(1, order)
        sorted_scores = scores.gather(1, order).masked_fill(~real_sorted, 0.0)
        position = torch.arange(n, device=scores.device)
        gap = (position[None, :] - position[:, None]).float()  # [p, q] = q - p
        pair = (gap > 0) & real_sorted[:, :, None] & real_sorted[:, None, :]
        margin = gap / real.sum(1).float()[:, None, None]
        hinge = F.relu(sorted_scores[:, None, :] - sorted_scores[:, :, None] + margin)  # s_q - s_p + m
        loss = torch.where(pair, hinge, 0.0).sum() / b
        if self.config.simcls_gold_margin and batch.labels is not None:
            reference = batch.labels.masked_fill(batch.labels < 0, self.tokenizer.pad_token_id)
            gold = self._embed(self.candidate_id, (reference, (batch.labels >= 0).sum(1)))
            gold_scores = (source * gold).sum(-1)  # (B,)
            above_gold = F.relu(scores.masked_fill(~real, 0.0) - gold_scores[:, None])
            loss = loss + torch.where(real, above_gold, 0.0).sum() / real.sum()
        return RankerOutput(loss, loss)
