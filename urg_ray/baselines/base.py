"""What the baselines share: loading and saving (like `URG`), the rankers' collator and
sequence packing.

A saved baseline is a folder: the backbone as Hugging Face saves it (config.json +
model.safetensors), the tokenizer, `baseline_config.json` and, for rankers, the scoring head
as `head.safetensors` (learned positions of the tiny GenFuser: `positions.safetensors`).
No pickle anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import nn
from transformers import AutoTokenizer

from urg_ray.baselines.presets import BASELINE_CONFIG_FILE, HEAD_FILE, BaselineConfig
from urg_ray.data import Batch, Collator
from urg_ray.positions import POSITIONS_FILE
from urg_ray.presets import set_dropout
from urg_ray.saving import load_parts, save_folder


class Baseline(nn.Module):
    """A backbone, its tokenizer, a `BaselineConfig` and an optional scoring `head`."""

    method: ClassVar[str]

    def __init__(self, backbone: nn.Module, tokenizer, config: BaselineConfig):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.head: nn.Module | None = None  # a scoring head beside the backbone (rankers)
        self.positions: nn.Module | None = None  # learned absolute positions (tiny GenFuser)

    # ---- hooks the subclasses fill in ---------------------------------------------------
    @classmethod
    def _preset_defaults(cls, name: str) -> dict:
        """Config fields a preset decides unless an override gives a value (not None)."""
        return {}

    @classmethod
    def _build_backbone(cls, name: str, random_init: bool, dtype: torch.dtype | None) -> tuple[nn.Module, object]:
        raise NotImplementedError

    @classmethod
    def _load_backbone(cls, path: Path, dtype: torch.dtype | None) -> nn.Module:
        raise NotImplementedError

    # ---- loading and saving -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, random_init: bool = False, seed: int = 0,
                        dtype: torch.dtype | None = None, **overrides):
        """A preset name, a folder from `save_pretrained`, or a Hugging Face model id.
        `overrides` set `BaselineConfig` fields (e.g. aggregation="bubble", dropout=0.0)."""
        path = Path(name_or_path)
        if path.is_dir():
            saved = BaselineConfig.model_validate_json((path / BASELINE_CONFIG_FILE).read_text())
            if saved.method != cls.method:
                raise ValueError(f"{path} holds a {saved.method!r} model, not {cls.method!r}")
            config = BaselineConfig.model_validate({**saved.model_dump(), **overrides})
            model = cls(cls._load_backbone(path, dtype), AutoTokenizer.from_pretrained(path), config)
            load_parts(path, model._saved_parts())
        else:
            defaults = cls._preset_defaults(str(name_or_path))
            overrides = {k: v for k, v in overrides.items() if v is not None or k not in defaults}
            config = BaselineConfig.model_validate(
                {"method": cls.method, "preset": str(name_or_path), "random_init": random_init, **defaults, **overrides})
            with torch.random.fork_rng():  # the same weights for the same seed, every call
                torch.manual_seed(seed)
                backbone, tokenizer = cls._build_backbone(config.preset, random_init, dtype)
                model = cls(backbone, tokenizer, config)
        if config.dropout is not None:
            set_dropout(model, config.dropout)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Backbone (safetensors + config.json), tokenizer, baseline_config.json, head."""
        return save_folder(path, self.backbone, self.tokenizer, self.config, BASELINE_CONFIG_FILE,
                           self._saved_parts())

    def _saved_parts(self) -> dict[str, nn.Module | None]:
        """Modules saved beside the backbone: the scoring head and the absolute positions."""
        return {HEAD_FILE: self.head, POSITIONS_FILE: self.positions}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


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
    `__call__(records)` adds labels and ground-truth quality as `urg_ray.data.Collator` does."""

    def encode_pairs(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> RankerBatch:
        if len(questions) != len(candidates):
            raise ValueError(f"{len(questions)} questions but {len(candidates)} candidate lists")
        for b, cands in enumerate(candidates):
            if isinstance(cands, str) or len(cands) == 0:
                raise ValueError(f"question {b}: candidates must be a non-empty list of strings")
        sep, pad = self.tokenizer.sep_token_id, self.tokenizer.pad_token_id
        source_ids, source_mask = pad_rows([q + [sep] for q in self._batch_ids(list(questions), self.source_max_length)], pad)
        flat = [c + [sep] for c in self._batch_ids([str(c) for cs in candidates for c in cs], self.candidate_max_length)]
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
