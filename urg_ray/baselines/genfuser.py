"""GenFuser (LLM-Blender §4): a seq2seq model over the input and the top-K candidates
concatenated into ONE sequence, in LLM-Blender's format (blender_utils.GenFuserDataset)::

    Instruction: {instruction}</s>Input: {input}</s>Candidate 0: <extra_id_0>:{y_1}</s>
    Candidate 1: <extra_id_1>:{y_2}</s>...</s>Summarize candidates into a better one for the given instruction:

(one line; candidates over `candidate_max_length` tokens are cut and end in "...", the whole
input is cut at `fusion_max_length` tokens). Here the Instruction is empty and the Input is the
record's question (instruction and input joined) in training, on dev, in evaluation and in Serve
alike: what callers have at fusion time is the question, so training sees the same prompt. Unlike
URG, which fuses from the encoder states it ranked with, the fuser re-encodes the candidates, and
the pipeline runs two models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5ForConditionalGeneration

from urg_ray import losses
from urg_ray.baselines.base import Baseline, pad_rows
from urg_ray.baselines.presets import BaselineConfig, fuser_tokenizer
from urg_ray.collate import Batch, Collator, check_candidate_lists, quality_matrix
from urg_ray.data import Record, as_records
from urg_ray.model import FusionResult, fused_all_note, fusion_top_k, select_top_k
from urg_ray.positions import AbsolutePositions
from urg_ray.presets import PRESETS, lookup_preset, t5_config

FUSE_INSTRUCTION = "Summarize candidates into a better one for the given instruction:"


def fusion_input(instruction: str, input: str, candidates: Sequence[str]) -> str:
    """LLM-Blender's GenFuser input string, verbatim (`</s>` is T5's end-of-sequence token)."""
    joined = "</s>".join(f"Candidate {i}: <extra_id_{i}>:{c}" for i, c in enumerate(candidates))
    return "</s>".join([f"Instruction: {instruction}", f"Input: {input}", joined]) + "</s>" + FUSE_INSTRUCTION


class FusionCollator(Collator):
    """One sequence per question: input_ids (B, 1, L), candidate_mask (B, 1). For training,
    `__call__(records)` fuses each record's true top-k by quality, best first (labels = reference),
    prompted as `encode_pairs` prompts at fusion time (the record's question as the Input)."""

    def __init__(self, tokenizer, top_k: int, candidate_max_length: int, fusion_max_length: int,
                 target_max_length: int, score_keys: Sequence[str] = ("bartscore", "bleu")):
        super().__init__(tokenizer, fusion_max_length, candidate_max_length, target_max_length, score_keys)
        self.top_k = top_k
        self.fusion_max_length = fusion_max_length

    def _truncate(self, texts: list[str]) -> list[str]:
        """As LLM-Blender: a candidate over the limit is cut to its first tokens plus "..."."""
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.candidate_max_length
        return [t if len(i) <= limit else self.tokenizer.decode(i[:limit]) + "..." for t, i in zip(texts, ids)]

    def encode_inputs(self, instructions: Sequence[str], inputs: Sequence[str],
                      candidates: Sequence[Sequence[str]]) -> Batch:
        if not len(instructions) == len(inputs) == len(candidates):
            raise ValueError(f"{len(inputs)} inputs, {len(instructions)} instructions, "
                             f"{len(candidates)} candidate lists")
        check_candidate_lists(inputs, candidates)
        texts = [fusion_input(i, x, self._truncate([str(c) for c in cands]))
                 for i, x, cands in zip(instructions, inputs, candidates)]
        ids = self.tokenizer(texts, add_special_tokens=False, truncation=True,
                             max_length=self.fusion_max_length)["input_ids"]
        input_ids, attention_mask = pad_rows(ids, self.tokenizer.pad_token_id)
        return Batch(input_ids[:, None], attention_mask[:, None], torch.ones(len(ids), 1, dtype=torch.bool))

    def encode_pairs(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> Batch:
        """As LLM-Blender's `fuse(inputs, candidates)`: the question is the Input, no instruction."""
        return self.encode_inputs([""] * len(questions), questions, candidates)

    def __call__(self, records: Sequence[Record | dict]) -> Batch:
        records = as_records(records)
        truth = quality_matrix(records, self.score_keys)  # (B, N_max)
        top, keep = select_top_k(truth, truth > float("-inf"), self.top_k)
        chosen = [[r.candidates[i].text for i in t[k].tolist()] for r, t, k in zip(records, top, keep)]
        batch = self.encode_pairs([r.question for r in records], chosen)
        batch.labels = self.encode_targets([r.output for r in records])
        batch.quality = truth
        return batch


@dataclass
class FuserOutput:
    loss: torch.Tensor
    ce_loss: torch.Tensor  # CE of the reference given the true top-k; = loss


class GenFuser(Baseline):
    method = "gen_fuser"
    can_fuse = True
    checkpoint_metric = "dev_fused_bleu"

    def __init__(self, backbone: T5ForConditionalGeneration, tokenizer, config: BaselineConfig):
        super().__init__(backbone, tokenizer, config)
        self.collator = FusionCollator(tokenizer, config.top_k, config.candidate_max_length,
                                       config.fusion_max_length, config.target_max_length)
        if config.absolute_positions:  # as URG's tiny preset: a random-init T5 needs them to copy
            max_positions = max(config.fusion_max_length, config.target_max_length)
            self.positions = AbsolutePositions(max_positions, backbone.config.d_model).attach(backbone)

    @classmethod
    def _preset_config(cls, name: str, random_init: bool) -> dict:
        preset = lookup_preset(PRESETS, name)
        return {**super()._preset_config(name, random_init),
                "absolute_positions": preset.absolute_positions if preset else False}

    @classmethod
    def _build_backbone(cls, config: BaselineConfig, dtype: torch.dtype | None):
        name = config.preset
        preset = lookup_preset(PRESETS, name)
        if preset is not None and (preset.hub_name is None or config.random_init):
            tokenizer = fuser_tokenizer()
            return T5ForConditionalGeneration._from_config(t5_config(preset, vocab_size=len(tokenizer)),
                                                           dtype=dtype), tokenizer
        hub = preset.hub_name if preset else name
        return AutoModelForSeq2SeqLM.from_pretrained(hub, dtype=dtype), AutoTokenizer.from_pretrained(hub)

    @classmethod
    def _load_backbone(cls, path: Path, dtype: torch.dtype | None) -> nn.Module:
        return AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype)

    def forward(self, batch: Batch, gamma: float | None = None) -> FuserOutput:
        """CE of the reference given the true top-k (LLM-Blender trains the fuser the same way);
        `gamma` weighs a ranking loss GenFuser does not have."""
        logits = self.backbone(input_ids=batch.input_ids[:, 0], attention_mask=batch.attention_mask[:, 0],
                               labels=batch.labels, use_cache=False).logits
        ce = losses.ce_loss(logits, batch.labels)
        return FuserOutput(ce, ce)

    @torch.no_grad()
    def fuse(self, questions: Sequence[str], candidates: Sequence[Sequence[str]], max_new_tokens: int = 128,
             instructions: Sequence[str] | None = None, **generate_kwargs) -> list[str]:
        """Fuse the given candidates (normally a ranker's top-k) per question. As LLM-Blender's
        `fuse(inputs, candidates, instructions=None)`: `questions` fill "Input:", `instructions`
        "Instruction:". `generate_kwargs` go to Hugging Face `generate` (num_beams, ...)."""
        instructions = list(instructions) if instructions is not None else [""] * len(questions)
        batch = self.collator.encode_inputs(instructions, questions, candidates).to(self.device)
        generated = self.backbone.generate(input_ids=batch.input_ids[:, 0], attention_mask=batch.attention_mask[:, 0],
                                           max_new_tokens=max_new_tokens, **generate_kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def rank_and_fuse(ranker, fuser: GenFuser, questions: Sequence[str], candidates: Sequence[Sequence[str]],
                  top_k: int | None = None, max_new_tokens: int = 128, **generate_kwargs) -> list[FusionResult]:
    """LLM-Blender's pipeline: rank with a peer ranker, then GenFuser over the top-k texts.
    Returns the same `FusionResult`s as `URG.rank_and_fuse`."""
    k = fusion_top_k(top_k, fuser.config.top_k)
    ranked = ranker.rank(questions, candidates)
    selected = [ranks[:k] for ranks in ranked.ranks]
    texts = fuser.fuse(questions, [[c[i] for i in sel] for c, sel in zip(candidates, selected)],
                       max_new_tokens=max_new_tokens, **generate_kwargs)
    return [FusionResult(text, ranks, ranked.scores[b, : len(cands)].tolist(), sel, fused_all_note(len(cands), k))
            for b, (text, ranks, sel, cands) in enumerate(zip(texts, ranked.ranks, selected, candidates))]
