"""The evaluation table: URG Tables 2, 3 and 5 and LLM-Blender Table 3, in miniature.

Rows score a text per test record against its reference with the same metrics:
each candidate model; random selection (its expectation: the mean over a record's candidates);
oracle selection by each metric; a ranker's top-1 pick (with its rank correlation to the ground
truth); a fuser's output. The robustness study (URG Table 5) fuses the true top-2 candidates,
then the top-2 plus the worst one and plus the worst two, and reports the change in percent.

Paper-scale columns: ``bartscore`` (any seq2seq model, `facebook/bart-large-cnn` as in the papers;
the tiny BART by default, `urg_ray.scoring`), ``bertscore`` with a chosen model, and GPT-Rank
(LLM-Blender Table 2) on selection rows when every record carries `cmp_results`: ChatGPT's pairwise
verdicts ranked by number of wins (MaxWins), 1 = best; a row's GPT-Rank is the mean rank of the
candidates it picks. A fused text was never judged, so fusion rows have none (NaN).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from urg_ray import metrics
from urg_ray.data import DataError, Record, quality

METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore")
PAPER_METRICS = ("bertscore", "bartscore", "bleu", "rougeL")  # with GPT-Rank: the columns of the papers' tables
GPT_RANK = "gpt_rank"
Fuse = Callable[[list[str], list[list[str]]], list[str]]  # (questions, candidate lists) -> texts


@dataclass
class Row:
    name: str
    kind: str  # model | random | oracle | rank | fusion
    scores: dict[str, float]  # metric -> mean over records
    correlation: dict[str, float] = field(default_factory=dict)  # rank rows: pearson, spearman, footrule


def _mean_rows(rows: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    return {m: float(np.mean([r[m] for r in rows])) for m in names}


class Evaluator:
    """Scores every candidate of `records` once; rows are then cheap to add."""

    def __init__(self, records: Sequence[Record], score_keys: Sequence[str] = ("bartscore", "bleu"),
                 metric_names: Sequence[str] = METRICS, batch_size: int = 32,
                 bertscore_model: str | None = None, bartscore_model: str = "tiny-bart"):
        self.records = list(records)
        self.batch_size = batch_size
        self.bertscore_model, self.bartscore_model = bertscore_model, bartscore_model
        self.gpt_ranks = [gpt_rank(r) for r in self.records]  # [record][i], or None without cmp_results
        with_gpt_rank = all(ranks is not None for ranks in self.gpt_ranks) and bool(self.records)
        self.metric_names = tuple(metric_names) + ((GPT_RANK,) if with_gpt_rank else ())
        self.truth = [quality(r, score_keys)[1] for r in self.records]
        self.questions = [r.question for r in self.records]
        self.candidates = [[c.text for c in r.candidates] for r in self.records]
        flat = self._score([c for cands in self.candidates for c in cands],
                           [r.output for r, cands in zip(self.records, self.candidates) for _ in cands])
        it = iter(flat)
        self.candidate_scores = [[next(it) for _ in cands] for cands in self.candidates]  # [record][i] -> metrics
        if with_gpt_rank:
            for scores, ranks in zip(self.candidate_scores, self.gpt_ranks):
                for s, rank in zip(scores, ranks):
                    s[GPT_RANK] = rank
        self.rows: list[Row] = []
        self.robustness: dict[str, dict[str, dict[str, float]]] = {}

    def _score(self, hyps: list[str], refs: list[str]) -> list[dict[str, float]]:
        """Each text's metrics against its reference; GPT-Rank (selection only) is NaN here."""
        plain = [m for m in self.metric_names if m in metrics.KNOWN_METRICS and m != "bertscore"]
        rows = metrics.reference_scores(hyps, refs, metrics=plain)
        columns = {}
        if "bertscore" in self.metric_names:
            columns["bertscore"] = metrics.bertscore(hyps, refs, model_type=self.bertscore_model,
                                                     batch_size=self.batch_size)
        if "bartscore" in self.metric_names:
            from urg_ray.scoring import bartscore

            columns["bartscore"] = bartscore(hyps, refs, self.bartscore_model, batch_size=self.batch_size)
        for i, row in enumerate(rows):
            row.update({m: float(values[i]) for m, values in columns.items()})
            if GPT_RANK in self.metric_names:
                row[GPT_RANK] = float("nan")
        return rows

    # ---- rows -------------------------------------------------------------------------------
    def add_reference_rows(self) -> None:
        """Each candidate model, random selection, and oracle selection by each metric."""
        models = sorted({c.model for r in self.records for c in r.candidates})
        for model in models:
            picked = [s[i] for r, s in zip(self.records, self.candidate_scores)
                      for i, c in enumerate(r.candidates) if c.model == model]
            self.rows.append(Row(model, "model", _mean_rows(picked, self.metric_names)))
        per_record = [_mean_rows(s, self.metric_names) for s in self.candidate_scores]
        self.rows.append(Row("Random", "random", _mean_rows(per_record, self.metric_names)))
        for metric in self.metric_names:
            best = np.argmin if metric == GPT_RANK else np.argmax  # GPT-Rank: lower is better
            picks = [int(best([c[metric] for c in s])) for s in self.candidate_scores]
            self.add_selection(f"Oracle ({metric})", picks, kind="oracle")

    def add_selection(self, name: str, picks: Sequence[int], kind: str = "rank",
                      correlation: dict[str, float] | None = None) -> Row:
        chosen = [s[i] for s, i in zip(self.candidate_scores, picks)]
        row = Row(name, kind, _mean_rows(chosen, self.metric_names), correlation or {})
        self.rows.append(row)
        return row

    def add_ranker(self, name: str, ranker) -> Row:
        """Top-1 selection by `ranker.rank` (URG or a baseline), with its rank correlations."""
        scores, picks = [], []
        for start in range(0, len(self.records), self.batch_size):
            result = ranker.rank(self.questions[start:start + self.batch_size],
                                 self.candidates[start:start + self.batch_size])
            for row_scores, ranks in zip(result.scores, result.ranks):
                scores.append(row_scores[: len(ranks)].tolist())
                picks.append(ranks[0])
        return self.add_selection(name, picks, correlation=rank_correlation(scores, self.truth))

    def add_fusion(self, name: str, texts: Sequence[str]) -> Row:
        row = Row(name, "fusion", _mean_rows(self._score(list(texts), [r.output for r in self.records]),
                                             self.metric_names))
        self.rows.append(row)
        return row

    def fuse_in_batches(self, fuse: Fuse, candidate_lists: Sequence[list[str]]) -> list[str]:
        texts: list[str] = []
        for start in range(0, len(self.records), self.batch_size):
            texts += fuse(self.questions[start:start + self.batch_size], list(candidate_lists[start:start + self.batch_size]))
        return texts

    def add_robustness(self, name: str, fuse: Fuse) -> dict[str, dict[str, float]]:
        """URG Table 5: fused from the true top-2, then with the worst one / two appended."""
        order = [sorted(range(len(t)), key=lambda i: -t[i]) for t in self.truth]
        inputs = {
            "top2": [[c[i] for i in o[:2]] for c, o in zip(self.candidates, order)],
            "top2+worst1": [[c[i] for i in o[:2] + o[-1:]] for c, o in zip(self.candidates, order)],
            "top2+worst2": [[c[i] for i in o[:2] + o[-1:-3:-1]] for c, o in zip(self.candidates, order)],
        }
        refs = [r.output for r in self.records]
        means = {k: _mean_rows(self._score(self.fuse_in_batches(fuse, v), refs), self.metric_names)
                 for k, v in inputs.items()}
        result = {"scores": means["top2"]} | {
            f"delta% {k}": {m: delta_percent(means["top2"][m], means[k][m]) for m in self.metric_names}
            for k in ("top2+worst1", "top2+worst2")}
        self.robustness[name] = result
        return result

    # ---- output -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"n_records": len(self.records), "metrics": list(self.metric_names),
                "rows": [asdict(r) for r in self.rows], "robustness": self.robustness}

    def write(self, out_dir: str | Path) -> list[Path]:
        from urg_ray.evaluation_report import write_charts, write_markdown

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        (out / "eval.json").write_text(json.dumps(data, indent=2))
        (out / "eval.md").write_text(write_markdown(data))
        return [out / "eval.json", out / "eval.md", *write_charts(data, out)]


def rank_correlation(scores: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean over records of Pearson and Spearman (predicted scores vs ground-truth quality) and
    Spearman's footrule between the two rankings (LLM-Blender Table 3; footrule: lower is better).
    Records whose scores or truth are constant have no correlation and are left out of its mean."""
    pearson, spearman, footrule = [], [], []
    for s, t in zip(scores, truth):
        if len(s) < 2:
            continue
        pearson.append(metrics.pearson(s, t))
        spearman.append(metrics.spearman(s, t))
        footrule.append(metrics.spearman_footrule(metrics.ranks_from_scores(s), metrics.ranks_from_scores(t)))

    def mean(values: list[float]) -> float:
        kept = [v for v in values if not math.isnan(v)]
        return float(np.mean(kept)) if kept else float("nan")

    return {"pearson": mean(pearson), "spearman": mean(spearman), "footrule": mean(footrule)}


def gpt_rank(record: Record) -> list[float] | None:
    """Each candidate's GPT-Rank from `cmp_results` (LLM-Blender §5.1): its place when candidates are
    ordered by wins over the others ("A is better" is a win for the first model of the ``"A,B"`` key,
    "B is better" for the second; "Same good" / "Same bad" for neither). Tied candidates share the best
    place (1 + the number with more wins). None when the record has no comparisons."""
    cmp = json.loads(record.cmp_results)
    if not cmp:
        return None
    index = {c.model: i for i, c in enumerate(record.candidates)}
    wins = [0] * len(record.candidates)
    for pair, verdict in cmp.items():
        a, _, b = pair.partition(",")
        if a not in index or b not in index:
            raise DataError(f"record {record.id!r}: field 'cmp_results': {pair!r} names a model with no candidate")
        if verdict == "A is better":
            wins[index[a]] += 1
        elif verdict == "B is better":
            wins[index[b]] += 1
        elif verdict not in ("Same good", "Same bad"):
            raise DataError(f"record {record.id!r}: field 'cmp_results.{pair}': unknown verdict {verdict!r}")
    return [1.0 + sum(other > w for other in wins) for w in wins]


def delta_percent(base: float, noisy: float) -> float:
    """Relative change in percent; negative when the noisy input made the output worse."""
    return 100.0 * (noisy - base) / abs(base) if base else float("nan")
