"""What the baselines share: loading and saving (`urg_ray.saving.Pretrained`, as `URG`), the
model protocol (`urg_ray.protocol.RankerFuser`), the rankers' collator and sequence packing.

A saved baseline is a folder: the backbone as Hugging Face saves it (config.json +
model.safetensors), the tokenizer, `baseline_config.json` and, for rankers, the scoring head
as `head.safetensors` (learned positions of the tiny GenFuser: `positions.safetensors`).
No pickle anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from urg_ray.baselines.presets import BASELINE_CONFIG_FILE, HEAD_FILE, BaselineConfig
from urg_ray.collate import Batch, Collator, check_candidate_lists
from urg_ray.positions import POSITIONS_FILE
from urg_ray.protocol import RankerFuser


class Baseline(RankerFuser):
    """A backbone, its tokenizer, a `BaselineConfig` and an optional scoring `head`."""

    config_class = BaselineConfig
    config_file = BASELINE_CONFIG_FILE

    def __init__(self, backbone: nn.Module, tokenizer, config: BaselineConfig):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.head: nn.Module | None = None  # a scoring head beside the backbone (rankers)
        self.positions: nn.Module | None = None  # learned absolute positions (tiny GenFuser)

    # ---- loading and saving (urg_ray.saving.Pretrained: from_pretrained, save_pretrained) ---
    @classmethod
    def _preset_config(cls, name: str, random_init: bool) -> dict:
        return {"method": cls.method, "preset": name, "random_init": random_init}

    @classmethod
    def _saved_config(cls, path: Path) -> BaselineConfig:
        saved = super()._saved_config(path)
        if saved.method != cls.method:
            raise ValueError(f"{path} holds a {saved.method!r} model, not {cls.method!r}")
        return saved

    def _saved_parts(self) -> dict[str, nn.Module | None]:
        """Modules saved beside the backbone: the scoring head and the absolute positions."""
        return {HEAD_FILE: self.head, POSITIONS_FILE: self.positions}


# ---- rankers' inputs -------------------------------------------------------------------
@dataclass
class RankerBatch(Batch):
    """A `Batch` whose pieces the ranker assembles itself: input_ids (B, N, Lc) hold each
    candidate "y_i [SEP]" alone, source_ids (B, Ls) the question "x [SEP]"."""

    source_ids: torch.Tensor | None = None  # (B, Ls)
    source_mask: torch.Tensor | None = None  # (B, Ls)


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


class RankerCollator(Collator):
    """Tokenizes x and each y_i once, truncated separately (LLM-Blender: 128 tokens each);
    `__call__(records)` adds labels and ground-truth quality as `urg_ray.collate.Collator` does."""

    def encode_pairs(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> RankerBatch:
        check_candidate_lists(questions, candidates)
        sep, pad = self.tokenizer.sep_token_id, self.tokenizer.pad_token_id
        source_ids, source_mask = pad_rows(
            [q + [sep] for q in self._batch_ids(list(questions), self.source_max_length)], pad)
        flat = [c + [sep]
                for c in self._batch_ids([str(c) for cs in candidates for c in cs], self.candidate_max_length)]
        n_max = max(len(c) for c in candidates)
        flat_ids, flat_mask = pad_rows(flat, pad)  # (R, Lc)
        candidate_mask = torch.zeros(len(candidates), n_max, dtype=torch.bool)
        for b, cands in enumerate(candidates):
            candidate_mask[b, : len(cands)] = True
        input_ids = torch.full((len(candidates), n_max, flat_ids.size(1)), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        input_ids[candidate_mask], attention_mask[candidate_mask] = flat_ids, flat_mask
        return RankerBatch(input_ids, attention_mask, candidate_mask, source_ids=source_ids, source_mask=source_mask)


def pack_segments(segments: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate per-row segments without inner padding, all padding at the end.

    segments: K pairs of ids (R, L_k) and lengths (R,). Returns ids (R, L), attention mask
    (R, L) and each segment's start position (R, K). Vectorised: one pass per segment, none
    per row.
    """
    lengths = torch.stack([length for _, length in segments], dim=1)  # (R, K)
    starts = lengths.cumsum(1) - lengths
    total = lengths.sum(1)
    positions = torch.arange(int(total.max()), device=lengths.device)[None]  # (1, L)
    ids = torch.full((len(total), positions.size(1)), pad_id, dtype=torch.long, device=lengths.device)
    for k, (seg, length) in enumerate(segments):
        offset = positions - starts[:, k : k + 1]  # (R, L)
        inside = (offset >= 0) & (offset < length[:, None])
        ids = torch.where(inside, seg.gather(1, offset.clamp(0, seg.size(1) - 1)), ids)
    return ids, (positions < total[:, None]).long(), starts


def token(token_id: int, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-token segment (a [CLS] or a marker) for `rows` rows."""
    return torch.full((rows, 1), token_id, device=device), torch.ones(rows, dtype=torch.long, device=device)


@dataclass
class RankerOutput:
    loss: torch.Tensor
    rank_loss: torch.Tensor  # the ranking objective (BCE or margin); = loss
