"""Score candidates against their reference: BLEU, ROUGE-1/2/L/Lsum, BERTScore, BARTScore.

Names and scales are MixInstruct's stored ``scores``: ``bleu`` sacrebleu sentence BLEU 0-100,
``rouge*`` F-measures 0-1, ``bertscore`` F1 0-1 (no baseline rescaling), ``bartscore`` a mean
log-likelihood (negative; higher is better). BARTScore follows Yuan et al. (2021) and the
``BARTScorer.score(srcs, tgts)`` of their code: the mean over target tokens (the final ``</s>``
included) of ``log p(y_t | y_<t, source)`` under a BART model. LLM-Blender built MixInstruct with
source = candidate and target = reference (``eval_bartscore``), our default; the reverse
direction (Yuan et al.'s precision r->h) is one setting away.

`score_candidates` runs in Ray Data actors (`ScoreActor`), each loading BERTScore's and
BARTScore's models once; `jobs/score.py` drives it through `score_file`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from urg_ray.data import Record, read_records, write_records
from urg_ray.generate import drop_failed, is_failed
from urg_ray.generate_config import ScoreConfig
from urg_ray.metrics import ROUGE_TYPES, bertscore, bleu, rouge

log = logging.getLogger(__name__)


class BARTScorer:
    """Mean target-token log-likelihood under a BART model (any seq2seq LM works)."""

    def __init__(self, source: str = "tiny-bart", max_length: int = 1024, device: str | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from urg_ray.tiny_llms import resolve_model_source

        path = resolve_model_source(source)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(self.device).eval()
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as BART's tokenizer makes them (``<s> x </s>``); tokenizers that add no special
        tokens (the tiny one) get a closing ``</s>``, so every sequence is non-empty and ends the same way."""
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        ids = [x if x and x[-1] == eos else x + [eos] for x in ids]
        return [x[: self.max_length - 1] + [eos] if len(x) > self.max_length else x for x in ids]

    def score(self, srcs: Sequence[str], tgts: Sequence[str], batch_size: int = 16) -> list[float]:
        """BARTScore of each (source, target) pair: mean over target tokens of log p(y_t | y_<t, source)."""
        import torch

        if len(srcs) != len(tgts):
            raise ValueError(f"got {len(srcs)} sources but {len(tgts)} targets")
        pad, start = self.model.config.pad_token_id, self.model.config.decoder_start_token_id
        src_ids, tgt_ids, scores = self.encode(srcs), self.encode(tgts), []
        for i in range(0, len(src_ids), batch_size):
            src, tgt = src_ids[i: i + batch_size], tgt_ids[i: i + batch_size]
            s_len, t_len = max(map(len, src)), max(map(len, tgt))
            input_ids = torch.tensor([x + [pad] * (s_len - len(x)) for x in src], device=self.device)  # (B, S)
            labels = torch.tensor([y + [pad] * (t_len - len(y)) for y in tgt], device=self.device)  # (B, T)
            decoder_input_ids = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)  # shift right
            with torch.no_grad():  # the decoder is causal: padding after a target cannot change its tokens
                logits = self.model(input_ids=input_ids, attention_mask=(input_ids != pad).long(),
                                    decoder_input_ids=decoder_input_ids).logits  # (B, T, V)
            token_lp = logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
            lengths = torch.tensor([len(y) for y in tgt], device=self.device)
            mask = torch.arange(t_len, device=self.device)[None, :] < lengths[:, None]
            scores += ((token_lp * mask).sum(1) / lengths).tolist()
        return scores


@functools.lru_cache(maxsize=2)
def _bart_scorer(source: str, max_length: int) -> BARTScorer:
    return BARTScorer(source, max_length)


def bartscore(hyps: Sequence[str], refs: Sequence[str], model: str = "tiny-bart",
              direction: str = "reference_given_candidate", max_length: int = 1024,
              batch_size: int = 16) -> list[float]:
    """BARTScore of each hypothesis against its reference (see the module docstring for direction)."""
    scorer = _bart_scorer(model, max_length)
    if direction == "reference_given_candidate":
        return scorer.score(hyps, refs, batch_size)
    if direction == "candidate_given_reference":
        return scorer.score(refs, hyps, batch_size)
    raise ValueError(f"unknown BARTScore direction {direction!r}")


def score_candidates(hyps: Sequence[str], refs: Sequence[str], cfg: ScoreConfig) -> list[dict[str, float]]:
    """MixInstruct ``scores`` dicts (keys: ``cfg.metrics``) of each hypothesis against its reference."""
    columns: dict[str, list[float]] = {}
    if "bleu" in cfg.metrics:
        columns["bleu"] = bleu(hyps, refs)
    rouge_types = tuple(m for m in cfg.metrics if m in ROUGE_TYPES)
    if rouge_types:
        columns.update(rouge(hyps, refs, rouge_types))
    if "bertscore" in cfg.metrics:
        columns["bertscore"] = bertscore(hyps, refs, model_type=cfg.bertscore_model,
                                         num_layers=cfg.bertscore_num_layers)
    if "bartscore" in cfg.metrics:
        columns["bartscore"] = bartscore(hyps, refs, cfg.bartscore_model, cfg.bartscore_direction,
                                         cfg.bartscore_max_length)
    return [{m: float(columns[m][i]) for m in cfg.metrics} for i in range(len(hyps))]


class ScoreActor:
    """Ray Data actor: rows {key, hyp, ref} -> {key, scores (JSON)}; models load once per actor."""

    def __init__(self, cfg: dict):
        self.cfg = ScoreConfig(**cfg)
        # load the models (and transformers' lazy imports) now, while Ray Data starts the other
        # actors, not in this actor's first batch
        score_candidates(["warm-up"], ["warm-up"], self.cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = score_candidates([str(h) for h in batch["hyp"]], [str(r) for r in batch["ref"]], self.cfg)
        return {"key": batch["key"], "scores": np.array([json.dumps(s) for s in scores], dtype=object)}


MAX_DEFAULT_ACTORS = 8  # each actor holds its own BERT and BART: a big node must not get one per CPU unasked


def scorer_actors(cfg: ScoreConfig, resources: dict[str, float], n_rows: int) -> int:
    """How many scorer actors: `cfg.concurrency`, else as many as Ray's `resources` (CPU, GPU; as
    `ray.cluster_resources()` gives them) fit at `num_cpus` (`num_gpus` when > 0) each, at most one
    per batch of `n_rows` and at most `MAX_DEFAULT_ACTORS`. Data-parallel actors, one torch thread
    per CPU each, beat one actor with every thread on small models: 1.3x (BARTScore) on 2 cores here."""
    if cfg.concurrency is not None:
        return cfg.concurrency
    per_actor, have = ((cfg.num_gpus, resources.get("GPU", 0)) if cfg.num_gpus > 0
                       else (cfg.num_cpus, resources.get("CPU", 0)))
    batches = -(-n_rows // cfg.batch_size)
    return max(1, min(int(have // per_actor), batches, MAX_DEFAULT_ACTORS))


def score_file(cfg: ScoreConfig, out_dir: str | Path, records: list[Record] | None = None) -> dict:
    """Score every candidate of ``cfg.input`` with Ray Data actors; write ``out_dir/cfg.output``.

    Failed candidates are dropped (``failed: drop``) or kept unscored; records without a reference
    are kept unscored; candidates that already have every metric are not scored again unless
    ``rescore``. Returns (and writes as ``score_summary.json``) counts, throughput and the mean
    of each metric per model.
    """
    import ray

    from urg_ray.tiny_llms import resolve_model_source

    records = read_records(cfg.input) if records is None else records
    if "bartscore" in cfg.metrics:  # build a tiny model here, once, not in every actor
        cfg = cfg.model_copy(update={"bartscore_model": resolve_model_source(cfg.bartscore_model)})
    failed = sum(is_failed(c) for r in records for c in r.candidates)
    n_records = len(records)
    if cfg.failed == "drop":
        records, _ = drop_failed(records)
    rows, no_reference = [], 0
    for i, r in enumerate(records):
        if not r.output.strip():
            no_reference += 1
            continue
        for j, c in enumerate(r.candidates):
            if not is_failed(c) and (cfg.rescore or not set(cfg.metrics) <= set(c.scores)):
                rows.append({"key": f"{i}/{j}", "hyp": c.text, "ref": r.output})
    start, actors = time.perf_counter(), 0
    if rows:
        actors = scorer_actors(cfg, ray.cluster_resources(), len(rows))
        ds = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // cfg.batch_size)).map_batches(
            ScoreActor, fn_constructor_kwargs={"cfg": cfg.model_dump()}, batch_size=cfg.batch_size,
            batch_format="numpy", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
            compute=ray.data.ActorPoolStrategy(size=actors))
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for key, scores in zip(batch["key"], batch["scores"]):
                i, j = map(int, str(key).split("/"))
                records[i].candidates[j].scores.update(json.loads(scores))
    wall = time.perf_counter() - start
    out_file = Path(out_dir) / cfg.output
    write_records(out_file, records)
    summary: dict[str, Any] = {
        "input": cfg.input, "output": str(out_file), "records_in": n_records, "records_out": len(records),
        "failed_candidates": failed, "failed_dropped": failed if cfg.failed == "drop" else 0,
        "records_without_reference": no_reference, "candidates_scored": len(rows), "actors": actors,
        "wall_s": round(wall, 3), "candidates_per_s": round(len(rows) / wall, 2) if rows else None,
        "mean_scores": _means(records, cfg.metrics),
    }
    (Path(out_dir) / "score_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _means(records: list[Record], metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    per_model: dict[str, dict[str, list[float]]] = {}
    for r in records:
        for c in r.candidates:
            for m in metrics:
                if m in c.scores:
                    per_model.setdefault(c.model, {}).setdefault(m, []).append(c.scores[m])
    return {model: {m: round(float(np.mean(v)), 4) for m, v in ms.items()} for model, ms in per_model.items()}
