"""Records into tensors: the pair collator of URG (paper §3.2) and the batch it makes.

Kept apart from `urg_ray.data` so that reading, validating and writing records needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from urg_ray.data import Record, as_records, quality

QUESTION_TOKEN = "<Question>"
RESPONSE_TOKEN = "<response>"


def quality_matrix(records: Sequence[Record], score_keys: Sequence[str] = ("bartscore", "bleu")) -> torch.Tensor:
    """`quality` of every record's candidates, (B, N_max); -inf past a record's own N."""
    qualities = [quality(r, score_keys)[1] for r in records]
    matrix = torch.full((len(records), max(map(len, qualities))), float("-inf"))
    for b, q in enumerate(qualities):
        matrix[b, : len(q)] = torch.tensor(q)
    return matrix


def check_candidate_lists(questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> None:
    """ValueError unless every question has its own non-empty list of candidate strings."""
    if len(questions) != len(candidates):
        raise ValueError(f"{len(questions)} questions but {len(candidates)} candidate lists")
    for b, cands in enumerate(candidates):
        if isinstance(cands, str) or len(cands) == 0:
            raise ValueError(f"question {b}: candidates must be a non-empty list of strings")


@dataclass
class Batch:
    """Tensors for one batch. Shapes: B questions, N = max candidates, L = max pair length."""

    input_ids: torch.Tensor  # (B, N, L) token ids of "<Question> x </s> <response> y_i"
    attention_mask: torch.Tensor  # (B, N, L) 1 for real tokens
    candidate_mask: torch.Tensor  # (B, N) True for real candidates (N may differ per question)
    labels: torch.Tensor | None = None  # (B, T) reference ids, -100 at padding
    quality: torch.Tensor | None = None  # (B, N) ground truth r_i, -inf at padded slots

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch (subclasses included) with every tensor on `device`."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return type(self)(**moved)


class Collator:
    """Builds per-candidate encoder inputs ``<Question> x </s> <response> y_i`` (paper §3.2).

    x and y are truncated separately (LLM-Blender's defaults: 128 tokens each), so an over-long
    question never pushes the candidate out of the window.
    """

    def __init__(self, tokenizer, source_max_length: int = 128, candidate_max_length: int = 128,
                 target_max_length: int = 128, score_keys: Sequence[str] = ("bartscore", "bleu")):
        self.tokenizer = tokenizer
        self.source_max_length = source_max_length
        self.candidate_max_length = candidate_max_length
        self.target_max_length = target_max_length
        self.score_keys = tuple(score_keys)
        self._question_prefix = self._ids(QUESTION_TOKEN)
        self._response_prefix = self._ids(RESPONSE_TOKEN)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _batch_ids(self, texts: list[str], limit: int) -> list[list[int]]:
        if not texts:
            return []
        return [ids[:limit] for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode_pairs(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> Batch:
        """Tokenize and pad B questions with their N_b candidates into (B, N_max, L) tensors."""
        check_candidate_lists(questions, candidates)
        eos = self.tokenizer.eos_token_id
        question_ids = self._batch_ids(list(questions), self.source_max_length)
        flat = [str(c) for cands in candidates for c in cands]
        flat_ids = iter(self._batch_ids(flat, self.candidate_max_length))
        pairs = [
            [self._question_prefix + q + [eos] + self._response_prefix + next(flat_ids) + [eos] for _ in cands]
            for q, cands in zip(question_ids, candidates)
        ]
        n_max = max(len(p) for p in pairs)
        l_max = max(len(ids) for p in pairs for ids in p)
        input_ids = torch.full((len(pairs), n_max, l_max), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        candidate_mask = torch.zeros(len(pairs), n_max, dtype=torch.bool)
        for b, p in enumerate(pairs):
            candidate_mask[b, : len(p)] = True
            for n, ids in enumerate(p):
                input_ids[b, n, : len(ids)] = torch.tensor(ids)
                attention_mask[b, n, : len(ids)] = 1
        return Batch(input_ids, attention_mask, candidate_mask)

    def encode_targets(self, targets: Sequence[str]) -> torch.Tensor:
        """Reference ids + </s>, padded with -100 so the loss ignores padding. Shape (B, T)."""
        ids = [t + [self.tokenizer.eos_token_id] for t in self._batch_ids(list(targets), self.target_max_length - 1)]
        labels = torch.full((len(ids), max(map(len, ids))), -100, dtype=torch.long)
        for b, t in enumerate(ids):
            labels[b, : len(t)] = torch.tensor(t)
        return labels

    def __call__(self, records: Sequence[Record | dict]) -> Batch:
        """Collate training/evaluation records: pairs, reference labels and ground-truth quality."""
        records = as_records(records)
        batch = self.encode_pairs([r.question for r in records], [[c.text for c in r.candidates] for r in records])
        batch.labels = self.encode_targets([r.output for r in records])
        batch.quality = quality_matrix(records, self.score_keys)  # (B, N_max), as candidate_mask
        return batch
