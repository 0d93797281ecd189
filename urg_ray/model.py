"""URG: unified ranking and generation over one encoder-decoder (Lv et al., ACL Findings 2024).

A stock Hugging Face encoder-decoder plus reshapes, as in Fusion-in-Decoder (T5, or any
`EncoderDecoderModel` whose decoder has cross-attention, e.g. the `minilm` preset's BERT pair):
the encoder sees the B*N (question, candidate) pairs separately, (B*N, L); the decoder sees
their states concatenated, (B, N*L). One decoder step ranks the candidates by cross-attention
(eq. 5-6); the top-k candidates' states, already computed, condition the fused answer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, PretrainedConfig, PreTrainedModel,
                          T5ForConditionalGeneration)
from transformers.modeling_outputs import BaseModelOutput

from urg_ray import losses
from urg_ray.collate import Batch, Collator
from urg_ray.config import LossConfig, ModelConfig
from urg_ray.positions import POSITIONS_FILE, AbsolutePositions
from urg_ray.presets import PRESETS, lookup_preset, pretrained_encoder_decoder, set_dropout, t5_config, tiny_tokenizer
from urg_ray.protocol import RankerFuser
from urg_ray.streaming import FALLBACK_NOTE, FusionStream, stop_then_fallback

log = logging.getLogger(__name__)
URG_CONFIG_FILE = "urg_config.json"
_RANKING_STEP = threading.Lock()  # the decoder is eager only inside rank_scores (see there)
MAX_POSITIONS = 512  # learned absolute positions (tiny): pair length and answer length limit


@dataclass
class RankResult:
    scores: torch.Tensor  # (B, N_max) ranking scores s_i; -inf at padded slots
    ranks: list[list[int]]  # per question: candidate indices, best first


@dataclass
class FusionResult:
    text: str  # the fused answer y*
    ranks: list[int]  # candidate indices, best first
    scores: list[float]  # s_i in candidate order
    selected: list[int]  # the indices whose encoder states conditioned the fusion
    note: str | None = None  # e.g. fewer candidates than top_k

    def __str__(self) -> str:
        scores = ", ".join(f"{i}: {self.scores[i]:.4f}" for i in self.ranks)
        note = f"\n  note: {self.note}" if self.note else ""
        return f"ranking (candidate: score, best first): {scores}\n  fused from {self.selected}: {self.text!r}{note}"


@dataclass
class URGOutput:
    loss: torch.Tensor  # eq. 11
    rank_loss: torch.Tensor  # eq. 7
    kl_loss: torch.Tensor  # eq. 8-9
    ce_loss: torch.Tensor  # eq. 10: CE given top-k + CE given top-k + worst
    scores: torch.Tensor = field(repr=False)  # (B, N)


def select_top_k(key: torch.Tensor, candidate_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the k highest `key` values per row, best first, ties to the lower index.

    key, candidate_mask: (B, N). Returns indices (B, min(k, N)) and whether each is a real
    candidate (False where a question has fewer than k).
    """
    key = key.masked_fill(~candidate_mask, float("-inf"))
    top = torch.argsort(key, dim=-1, descending=True, stable=True)[:, : min(k, key.size(1))]
    return top, candidate_mask.gather(1, top)


def ranks_by_score(scores: torch.Tensor, candidate_mask: torch.Tensor) -> list[list[int]]:
    """Per question, its real candidates' indices by score, best first, ties to the lower index.
    scores, candidate_mask: (B, N_max); a question with N < N_max real candidates gets N indices."""
    order, _ = select_top_k(scores, candidate_mask, scores.size(1))
    return [o[:n].tolist() for o, n in zip(order, candidate_mask.sum(1).tolist())]


def fusion_top_k(top_k: int | None, default: int) -> int:
    """The k candidates to fuse: `top_k`, or the model's `default` when None or 0; at least 1."""
    k = top_k or default
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    return k


def fused_all_note(n: int, k: int) -> str | None:
    """A fusion result's note when a question has fewer candidates than k."""
    return f"{n} candidates < top_k={k}: fused all {n}" if n < k else None


def select_worst(key: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
    """Index of the lowest `key` among the real candidates of each row: (B,)."""
    return key.masked_fill(~candidate_mask, float("inf")).argmin(dim=-1)


def gather_states(states: torch.Tensor, mask: torch.Tensor, index: torch.Tensor,
                  keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the encoder states of the chosen candidates, in the order given.

    states (B, N, L, H), mask (B, N, L), index/keep (B, K) -> (B, K*L, H), (B, K*L).
    Slots with keep=False are masked out.
    """
    b, _, length, hidden = states.shape
    chosen = states.gather(1, index[:, :, None, None].expand(-1, -1, length, hidden))
    chosen_mask = mask.gather(1, index[:, :, None].expand(-1, -1, length)) * keep[:, :, None]
    return chosen.reshape(b, -1, hidden), chosen_mask.reshape(b, -1)


@dataclass
class _Ranking:
    """What URG's inference methods share: the pairs' encoder states, their scores and ranks."""

    states: torch.Tensor  # (B, N_max, L, H)
    mask: torch.Tensor  # (B, N_max, L)
    scores: torch.Tensor  # (B, N_max) s_i, -inf at padded slots
    ranks: list[list[int]]  # per question: candidate indices, best first
    top: torch.Tensor | None = None  # (B, min(k, N_max)) the top-k to fuse, best first
    keep: torch.Tensor | None = None  # (B, min(k, N_max)) whether each is a real candidate


def module_configs(module: nn.Module) -> list:
    """The distinct config objects a module and its submodules hold. EncoderDecoderModel gives its
    halves new config objects after their layers were built, so the layers keep the old ones."""
    configs = {id(m.config): m.config for m in module.modules()
               if isinstance(getattr(m, "config", None), PretrainedConfig)}
    return list(configs.values())


class URG(RankerFuser):
    """Ranker and fuser in one encoder-decoder. `forward(batch)` returns the training losses."""

    method = "urg"
    can_rank = can_fuse = True
    checkpoint_metric = "dev_fused_bleu"
    log_terms = ("rank_loss", "kl_loss", "ce_loss")  # eq. 11's terms
    uses_gamma = True
    config_class = ModelConfig
    config_file = URG_CONFIG_FILE

    def __init__(self, model: PreTrainedModel, tokenizer, config: ModelConfig | None = None,
                 loss_config: LossConfig | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or ModelConfig()
        self.loss_config = loss_config or LossConfig()
        self.collator = Collator(tokenizer, self.config.source_max_length, self.config.candidate_max_length,
                                 self.config.target_max_length)
        # Ranking reads the first decoder step's cross-attention weights, which only eager
        # attention returns; everything else (encoder, teacher-forced decoding, generate) runs
        # on sdpa when the model gives encoder and decoder configs of their own (T5 and
        # EncoderDecoderModel do).
        model.config._attn_implementation = "eager"
        for part in (*module_configs(model.get_encoder()), *module_configs(model.get_decoder())):
            if part is not model.config:
                part._attn_implementation = "sdpa"
        self.positions = None
        if self.config.absolute_positions:
            self.positions = AbsolutePositions(MAX_POSITIONS, model.config.d_model).attach(model)
            self.positions.to(device=model.device, dtype=model.dtype)

    # ---- loading and saving (urg_ray.saving.Pretrained: from_pretrained, save_pretrained) ---
    @property
    def backbone(self) -> PreTrainedModel:
        return self.model

    @classmethod
    def _preset_config(cls, name: str, random_init: bool) -> dict:
        preset = lookup_preset(PRESETS, name)
        return {"preset": name, "random_init": random_init,
                "absolute_positions": preset.absolute_positions if preset else False}

    @classmethod
    def _build_backbone(cls, config: ModelConfig, dtype: torch.dtype | None):
        preset = lookup_preset(PRESETS, config.preset)
        if preset is not None and preset.encoder_dir is not None:
            return pretrained_encoder_decoder(preset, config.random_init, dtype)
        if preset is not None and (preset.hub_name is None or config.random_init):
            tokenizer = tiny_tokenizer()
            return T5ForConditionalGeneration._from_config(
                t5_config(preset, vocab_size=len(tokenizer)), attn_implementation="eager", dtype=dtype), tokenizer
        hub = preset.hub_name if preset else config.preset
        return (AutoModelForSeq2SeqLM.from_pretrained(hub, attn_implementation="eager", dtype=dtype),
                AutoTokenizer.from_pretrained(hub))

    @classmethod
    def _load_backbone(cls, path: Path, dtype: torch.dtype | None):
        return AutoModelForSeq2SeqLM.from_pretrained(path, attn_implementation="eager", dtype=dtype)

    @classmethod
    def _saved_config(cls, path: Path) -> ModelConfig:
        """urg_config.json; a plain Hugging Face seq2seq folder gets the defaults."""
        return super()._saved_config(path) if (path / URG_CONFIG_FILE).is_file() else ModelConfig()

    def _saved_parts(self) -> dict[str, nn.Module | None]:
        return {POSITIONS_FILE: self.positions}

    def _apply_dropout(self, p: float) -> None:
        set_dropout(self.model, p)
        # saved in config.json: a plain HF load agrees (T5: dropout_rate; BERT halves: two fields)
        for part in (self.model.config, getattr(self.model.config, "encoder", None),
                     getattr(self.model.config, "decoder", None)):
            if part is None:
                continue
            if part.model_type == "t5":
                part.dropout_rate = p
            elif hasattr(part, "hidden_dropout_prob"):
                part.hidden_dropout_prob = part.attention_probs_dropout_prob = p

    # ---- the three stages ---------------------------------------------------------------
    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1: each pair p_i encoded on its own. Returns states (B, N, L, H) and mask (B, N, L).

        Only real candidates go through the encoder; padded slots stay zero and masked.
        """
        b, n, length = batch.input_ids.shape
        real = batch.candidate_mask
        ids, attention = batch.input_ids[real], batch.attention_mask[real]  # (R, L), R real candidates
        lengths = attention.sum(1)
        hidden = None
        # Length-sorted chunks, each trimmed to its own longest pair: padding to the batch's
        # longest pair grows with N and made time super-linear in N (benchmark, fp32 slope 1.18).
        for chunk in lengths.argsort().split(self.config.encode_batch_size or len(ids)):
            longest = int(lengths[chunk].max())
            out = self.model.get_encoder()(input_ids=ids[chunk, :longest],
                                           attention_mask=attention[chunk, :longest]).last_hidden_state
            if hidden is None:
                hidden = out.new_zeros(len(ids), length, out.size(-1))
            hidden[chunk, :longest] = out
        states = hidden.new_zeros(b, n, length, hidden.size(-1))
        states[real] = hidden
        return states, batch.attention_mask * real[:, :, None]

    def rank_scores(self, states: torch.Tensor, mask: torch.Tensor, candidate_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 5-6: one decoder step over [H_e^1; ...; H_e^N]; s_i is the first step's
        cross-attention, averaged over layers and heads, then over candidate i's non-pad tokens.

        states (B, N, L, H), mask (B, N, L), candidate_mask (B, N) -> scores (B, N), -inf at pads.
        """
        b, n, length, _ = states.shape
        start = torch.full((b, 1), self.model.config.decoder_start_token_id, device=states.device)
        # T5's get_decoder() is its decoder stack, EncoderDecoderModel's a *LMHeadModel; both
        # take encoder states directly and return cross_attentions (eager attention only).
        with self._eager_decoder():
            decoder_out = self.model.get_decoder()(
                input_ids=start, encoder_hidden_states=states.reshape(b, n * length, -1),
                encoder_attention_mask=mask.reshape(b, n * length), output_attentions=True, use_cache=False,
            )
        # cross_attentions: one (B, heads, 1, N*L) per layer -> mean over layers and heads
        attention = torch.stack(decoder_out.cross_attentions).float().mean(dim=(0, 2))[:, 0]
        attention = attention.reshape(b, n, length)
        scores = (attention * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # / T_p, eq. 6
        return scores.masked_fill(~candidate_mask, float("-inf"))

    @contextlib.contextmanager
    def _eager_decoder(self):
        """The decoder on eager attention for one call. Attention modules read the
        implementation from their config at each forward, so switching it is enough; the lock
        keeps two threads' ranking steps (Serve, Ray Data actors) from switching it back early."""
        configs = module_configs(self.model.get_decoder())
        with _RANKING_STEP:
            before = [config._attn_implementation for config in configs]
            try:
                for config in configs:
                    config._attn_implementation = "eager"
                yield
            finally:
                for config, implementation in zip(configs, before):
                    config._attn_implementation = implementation

    def configure_loss(self, loss: LossConfig) -> None:
        self.loss_config = loss

    def _decoder_logits(self, states: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) of the reference given concatenated encoder states."""
        return self.model(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
                          labels=labels, use_cache=False).logits

    def forward(self, batch: Batch, gamma: float | None = None) -> URGOutput:
        """Eq. 11 on a collated batch (labels and quality set). `gamma` overrides the config's,
        for warm-up schedules."""
        cfg = self.loss_config
        mask_c = batch.candidate_mask
        states, mask = self.encode(batch)
        scores = self.rank_scores(states, mask, mask_c)
        key = batch.quality if cfg.select_by == "ground_truth" else scores.detach()
        top, keep = select_top_k(key, mask_c, self.config.top_k)
        zero = scores.new_zeros(())
        if cfg.erm:
            # Both passes share the gathered states [top-k; worst]; p masks the worst out.
            index = torch.cat([top, select_worst(key, mask_c)[:, None]], dim=1)
            keep_q = torch.cat([keep, torch.ones_like(keep[:, :1])], dim=1)
            keep_p = torch.cat([keep, torch.zeros_like(keep[:, :1])], dim=1)
            chosen, chosen_mask_q = gather_states(states, mask, index, keep_q)
            chosen_mask_p = chosen_mask_q.reshape(len(top), -1, mask.size(-1)) * keep_p[:, :, None]
            logits = self._decoder_logits(torch.cat([chosen, chosen]),
                                          torch.cat([chosen_mask_p.flatten(1), chosen_mask_q]),
                                          torch.cat([batch.labels, batch.labels]))
            p_logits, q_logits = logits.chunk(2)
            ce = losses.ce_loss(p_logits, batch.labels) + losses.ce_loss(q_logits, batch.labels)
            kl = losses.topm_kl_loss(p_logits, q_logits, batch.labels, cfg.top_m, cfg.tau, cfg.kl_detach_p)
        else:
            chosen, chosen_mask = gather_states(states, mask, top, keep)
            ce, kl = losses.ce_loss(self._decoder_logits(chosen, chosen_mask, batch.labels), batch.labels), zero
        rank = zero
        if cfg.rank_loss:
            ranked = losses.normalize_scores(scores, mask_c) if cfg.normalize_scores else scores
            rank = losses.rank_loss(ranked, batch.quality, mask_c, cfg.rank_margin, cfg.rank_min_gap)
        total = losses.total_loss(rank, kl, ce, cfg.gamma if gamma is None else gamma, cfg.beta)
        return URGOutput(total, rank, kl, ce, scores)

    # ---- the public inference API -------------------------------------------------------
    def _ranked(self, questions: Sequence[str], candidates: Sequence[Sequence[str]], k: int | None = None) -> _Ranking:
        """The one inference path of rank, rank_and_fuse and stream_fuse: encode the pairs (eq. 1),
        score (eq. 5-6) and rank them; with `k`, also choose the top-k to fuse."""
        batch = self.collator.encode_pairs(questions, candidates).to(self.device)
        states, mask = self.encode(batch)
        scores = self.rank_scores(states, mask, batch.candidate_mask)
        ranking = _Ranking(states, mask, scores, ranks_by_score(scores, batch.candidate_mask))
        if k is not None:
            ranking.top, ranking.keep = select_top_k(scores, batch.candidate_mask, k)
        return ranking

    @torch.no_grad()
    def rank(self, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> RankResult:
        """Rank each question's candidates (N may differ per question): scores (B, N_max) + ranks."""
        ranking = self._ranked(questions, candidates)
        return RankResult(ranking.scores.cpu(), ranking.ranks)

    @torch.no_grad()
    def compare(self, questions: str | Sequence[str], candidates_a: str | Sequence[str],
                candidates_b: str | Sequence[str]) -> bool | list[bool]:
        """LLM-Blender's `compare`: is answer A better than answer B? True where URG scores A above B
        (eq. 6, the two ranked together); equal scores (e.g. A == B) are False. Three strings in:
        one bool; three lists of the same length: a list. For a graded preference use `rank`."""
        single = isinstance(questions, str)
        if single != isinstance(candidates_a, str) or single != isinstance(candidates_b, str):
            raise TypeError("compare takes three strings or three lists of strings")
        if single:
            return self.compare([questions], [candidates_a], [candidates_b])[0]
        if not len(questions) == len(candidates_a) == len(candidates_b):
            raise ValueError(f"compare: {len(questions)} questions, {len(candidates_a)} answers A and "
                             f"{len(candidates_b)} answers B; give one A and one B per question")
        scores = self.rank(questions, [[a, b] for a, b in zip(candidates_a, candidates_b)]).scores
        return (scores[:, 0] > scores[:, 1]).tolist()

    @torch.no_grad()
    def rank_and_fuse(self, questions: Sequence[str], candidates: Sequence[Sequence[str]],
                      top_k: int | None = None, max_new_tokens: int = 128, empty_fallback: bool = False,
                      **generate_kwargs) -> list[FusionResult]:
        """Rank, keep the top-k candidates' encoder states (no re-encoding) and generate y*.

        `generate_kwargs` go to Hugging Face `generate` (num_beams, do_sample, top_p, ...).
        With fewer than top_k candidates, all are fused and the result's `note` says so.
        `empty_fallback=True` answers with the top-ranked candidate when the fused text is blank
        (`streaming.stop_then_fallback`, as Serve's answers) and says so in `note`; evaluation
        keeps it off to score fusion alone.
        """
        k = fusion_top_k(top_k, self.config.top_k)
        ranking = self._ranked(questions, candidates, k)
        top, keep = ranking.top, ranking.keep
        texts = self._generate(*gather_states(ranking.states, ranking.mask, top, keep), max_new_tokens,
                               **generate_kwargs)
        results = []
        for b, (cands, ranks) in enumerate(zip(candidates, ranking.ranks)):
            n = len(cands)
            notes = [fused_all_note(n, k)]
            text, fell_back = stop_then_fallback(texts[b], (), cands[ranks[0]] if empty_fallback else None)
            if fell_back:
                notes.append(FALLBACK_NOTE)
            results.append(FusionResult(text, ranks, ranking.scores[b, :n].tolist(), top[b][keep[b]].tolist(),
                                        "; ".join(filter(None, notes)) or None))
        return results

    @torch.no_grad()
    def stream_fuse(self, question: str, candidates: Sequence[str], top_k: int | None = None,
                    max_new_tokens: int = 128, stop: Sequence[str] = (), empty_fallback: bool = False,
                    **generate_kwargs) -> FusionStream:
        """`rank_and_fuse` for one question, its answer streamed: ranks here (the ranking step
        under its lock), then generates in a thread; iterate the FusionStream for text pieces.
        Joined, they equal `rank_and_fuse`'s text cut before the first `stop` string and stripped."""
        k = fusion_top_k(top_k, self.config.top_k)
        ranking = self._ranked([question], [candidates], k)
        top, keep = ranking.top, ranking.keep
        n = len(candidates)
        result = FusionResult("", ranking.ranks[0], ranking.scores[0, :n].tolist(), top[0][keep[0]].tolist(),
                              fused_all_note(n, k))
        return FusionStream(self, *gather_states(ranking.states, ranking.mask, top, keep), candidates, result, stop,
                            empty_fallback, max_new_tokens, generate_kwargs)

    @torch.no_grad()
    def fuse(self, questions: Sequence[str], candidates: Sequence[Sequence[str]], max_new_tokens: int = 128,
             **generate_kwargs) -> list[str]:
        """Fuse exactly the given candidates, in the given order, without ranking (e.g. a selection
        of your own, or the robustness study's top-2 + worst)."""
        batch = self.collator.encode_pairs(questions, candidates).to(self.device)
        states, mask = self.encode(batch)
        everything = torch.arange(states.size(1), device=states.device).expand(states.size(0), -1)
        return self._generate(*gather_states(states, mask, everything, batch.candidate_mask), max_new_tokens,
                              **generate_kwargs)

    def dev_fuse(self, questions: list[str], candidates: list[list[str]], truths: list[list[float]],
                 max_new_tokens: int) -> list[str]:
        """Dev fusion is URG's own: its top-k by its ranking (the truths are not used)."""
        return [r.text for r in self.rank_and_fuse(questions, candidates, max_new_tokens=max_new_tokens)]

    def _generate(self, states: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, **generate_kwargs) -> list[str]:
        """HF generate from given encoder states (B, K*L, H): they are reused, never re-encoded."""
        generated = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
                                        max_new_tokens=max_new_tokens, **generate_kwargs)
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def describe(urg: URG) -> str:
    """One line for logs: backbone, parameter count, dtype."""
    params = sum(p.numel() for p in urg.parameters())
    return f"{type(urg.model).__name__} {params / 1e6:.1f}M params, {next(urg.parameters()).dtype}"

