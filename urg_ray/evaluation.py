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

Bounds (issue 17; synthetic data only, from the latent facts beside it, `urg_ray.synthetic`):
a candidate without its model's style (its facts, right and wrong, in the reference's wording)
picked by the oracle and by a ranker's top-1, and ideal fusions, the correct facts of a set of
candidates in the reference's order and wording, of the true top-1 / top-k and of a ranker's
top-k. "Fusion combines candidates" needs a fused row above the style-stripped oracle and above
the same model fusing its top-1 alone. Fusion rows keep the candidates each record's fusion was
shown, and `add_fact_sources` says where their right facts come from: the shown candidates
(combining), other candidates, or none (the fuser's memory of the world, not combining).

Every row keeps its per-record scores (`eval_records.json`), so two rows can be compared with a
paired bootstrap interval (`paired_bootstrap`) and runs with different seeds summarised
(`summarize_runs`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, TypeVar

import numpy as np

from urg_ray import metrics
from urg_ray.data import DataError, Record, quality
from urg_ray.protocol import mean

if TYPE_CHECKING:
    from urg_ray.synthetic import SyntheticExample

METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore")
PAPER_METRICS = ("bertscore", "bartscore", "bleu", "rougeL")  # with GPT-Rank: the columns of the papers' tables
GPT_RANK = "gpt_rank"
Fuse = Callable[[list[str], list[list[str]]], list[str]]  # (questions, candidate lists) -> texts
T = TypeVar("T")


@dataclass
class Row:
    name: str
    kind: str  # model | random | oracle | rank | fusion | bound
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
        self.per_record: dict[str, list[dict[str, float]]] = {}  # row name -> [record] -> metrics
        self.rankings: dict[str, list[list[int]]] = {}  # rank row name -> [record] -> candidate order
        self.fused_texts: dict[str, list[str]] = {}  # fusion row name -> [record] -> its text
        self.fused_shown: dict[str, list[list[int]]] = {}  # fusion row name -> [record] -> candidates it was shown
        self.fact_sources: dict[str, dict[str, float]] = {}  # add_fact_sources
        self.robustness: dict[str, dict[str, dict[str, float]]] = {}
        self.paired: list[dict] = []

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
    def _add_row(self, name: str, kind: str, per_record: list[dict[str, float]],
                 correlation: dict[str, float] | None = None) -> Row:
        if name in self.per_record:
            raise ValueError(f"a row named {name!r} is already in the table")
        row = Row(name, kind, _mean_rows(per_record, self.metric_names), correlation or {})
        self.rows.append(row)
        self.per_record[name] = per_record
        return row

    def add_reference_rows(self) -> None:
        """Each candidate model, random selection, and oracle selection by each metric."""
        models = sorted({c.model for r in self.records for c in r.candidates})
        for model in models:
            picked = [s[i] for r, s in zip(self.records, self.candidate_scores)
                      for i, c in enumerate(r.candidates) if c.model == model]
            if len(picked) == len(self.records):  # per record only where the model answered every one
                self._add_row(model, "model", picked)
            else:
                self.rows.append(Row(model, "model", _mean_rows(picked, self.metric_names)))
        self._add_row("Random", "random", [_mean_rows(s, self.metric_names) for s in self.candidate_scores])
        for metric in self.metric_names:
            best = np.argmin if metric == GPT_RANK else np.argmax  # GPT-Rank: lower is better
            picks = [int(best([c[metric] for c in s])) for s in self.candidate_scores]
            self.add_selection(f"Oracle ({metric})", picks, kind="oracle")

    def add_selection(self, name: str, picks: Sequence[int], kind: str = "rank",
                      correlation: dict[str, float] | None = None) -> Row:
        return self._add_row(name, kind, [s[i] for s, i in zip(self.candidate_scores, picks)], correlation)

    def add_ranker(self, name: str, ranker) -> Row:
        """Top-1 selection by `ranker.rank` (URG or a baseline), with its rank correlations."""
        scores, rankings = [], []
        for start in range(0, len(self.records), self.batch_size):
            result = ranker.rank(self.questions[start:start + self.batch_size],
                                 self.candidates[start:start + self.batch_size])
            for row_scores, ranks in zip(result.scores, result.ranks):
                scores.append(row_scores[: len(ranks)].tolist())
                rankings.append(list(ranks))
        row = self.add_selection(name, [r[0] for r in rankings], correlation=rank_correlation(scores, self.truth))
        self.rankings[name] = rankings
        return row

    def add_fusion(self, name: str, texts: Sequence[str], shown: Sequence[Sequence[int]] | None = None) -> Row:
        """A fuser's answer per record; `shown`: per record, the indices of the candidates it was
        shown (`FusionResult.selected`), kept for `add_fact_sources`."""
        if shown is not None and len(shown) != len(self.records):
            raise ValueError(f"row {name!r}: shown candidates for {len(shown)} records, "
                             f"the table has {len(self.records)}")
        row = self._add_row(name, "fusion", self._score(list(texts), [r.output for r in self.records]))
        self.fused_texts[name] = list(texts)
        if shown is not None:
            self.fused_shown[name] = [[int(i) for i in indices] for indices in shown]
        return row

    def add_fact_sources(self, facts: Mapping[str, Mapping], config=None) -> dict[str, dict[str, float]]:
        """Where the fusion rows' right facts come from (`urg_ray.synthetic_facts.fact_sources`; synthetic
        data: `facts` is its facts file read, `config` the SyntheticConfig of its world), for eval.json/md."""
        from urg_ray.synthetic_facts import fact_sources

        self.fact_sources = fact_sources(self.fused_texts, [r.id for r in self.records], facts, config,
                                         self.fused_shown)
        return self.fact_sources

    def add_bounds(self, world: Mapping[str, SyntheticExample], top_k: int = 3, rankers: Sequence[str] = (),
                   metric: str = "bleu") -> list[Row]:
        """Rows no trained fuser is needed for, from each record's latent facts (`world`: record id ->
        `urg_ray.synthetic_facts.attach_facts`): the oracle by `metric` over style-stripped candidates; for
        each rank row in `rankers` (added before), its top-1 style-stripped and an ideal fusion of its
        top-k; ideal fusions of the true top-1 and top-k (by the ground-truth quality)."""
        from urg_ray.synthetic import fuse_facts, strip_style

        missing = [r.id for r in self.records if r.id not in world]
        if missing:
            raise ValueError(f"{len(missing)} test records have no latent facts, e.g. {missing[0]!r}")
        unknown = [name for name in rankers if name not in self.rankings]
        if unknown:
            raise ValueError(f"no rank rows named {unknown}; rank rows: {sorted(self.rankings)}")
        examples = [world[r.id] for r in self.records]
        refs = [r.output for r in self.records]
        flat = self._score([strip_style(ex, i)
                            for ex, cands in zip(examples, self.candidates) for i in range(len(cands))],
                           [ref for ref, cands in zip(refs, self.candidates) for _ in cands])
        it = iter(flat)
        stripped = [[next(it) for _ in cands] for cands in self.candidates]  # [record][i] -> metrics
        metric = metric if metric in self.metric_names else self.metric_names[0]
        best = [max(range(len(s)), key=lambda i, s=s: s[i][metric]) for s in stripped]
        rows = [self._add_row(f"Oracle, style-stripped ({metric})", "bound", [s[i] for s, i in zip(stripped, best)])]
        for name in rankers:
            rows.append(self._add_row(f"{name}, style-stripped", "bound",
                                      [s[order[0]] for s, order in zip(stripped, self.rankings[name])]))
        true_order = [sorted(range(len(t)), key=lambda i: -t[i]) for t in self.truth]
        sets = [(f"Ideal fusion, true top-{k}", [o[:k] for o in true_order]) for k in sorted({1, top_k})]
        sets += [(f"Ideal fusion of {name}'s top-{top_k}", [o[:top_k] for o in self.rankings[name]])
                 for name in rankers]
        for name, chosen in sets:
            rows.append(self._add_row(name, "bound", self._score(
                [fuse_facts(ex, c) for ex, c in zip(examples, chosen)], refs)))
        return rows

    def add_paired(self, a: str, b: str, n_resamples: int = 10_000, confidence: float = 0.95,
                   seed: int = 0) -> list[dict]:
        """A paired bootstrap interval of row `a` minus row `b` for each metric (not GPT-Rank)."""
        unknown = [n for n in (a, b) if n not in self.per_record]
        if unknown:
            raise ValueError(f"no rows named {unknown} with per-record scores; rows: {list(self.per_record)}")
        found = [{"a": a, "b": b, "metric": m, **paired_bootstrap(
                    [x[m] for x in self.per_record[a]], [x[m] for x in self.per_record[b]], n_resamples, confidence,
                    seed)}
                 for m in self.metric_names if m != GPT_RANK]
        self.paired += found
        return found

    def fuse_in_batches(self, fuse: Callable[[list[str], list[list[str]]], list[T]],
                        candidate_lists: Sequence[list[str]]) -> list[T]:
        """`fuse` over the records, batch_size at a time: its results (texts, or FusionResults) in record order."""
        results: list[T] = []
        for start in range(0, len(self.records), self.batch_size):
            stop = start + self.batch_size
            results += fuse(self.questions[start:stop], list(candidate_lists[start:stop]))
        return results

    def add_robustness(self, name: str, fuse: Fuse) -> dict[str, dict[str, float]]:
        """URG Table 5: fused from the true top-2, then with the worst one / two appended (the
        worst taken from the candidates outside the top 2: with N < 4 there are fewer than two)."""
        order = [sorted(range(len(t)), key=lambda i: -t[i]) for t in self.truth]
        inputs = {
            "top2": [[c[i] for i in o[:2]] for c, o in zip(self.candidates, order)],
            "top2+worst1": [[c[i] for i in o[:2] + o[2:][-1:]] for c, o in zip(self.candidates, order)],
            "top2+worst2": [[c[i] for i in o[:2] + o[2:][-1:-3:-1]] for c, o in zip(self.candidates, order)],
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
                "rows": [asdict(r) for r in self.rows], "robustness": self.robustness, "paired": self.paired} | (
                    {"fact_sources": self.fact_sources} if self.fact_sources else {})

    def records_json(self) -> dict:
        """Per-record scores of every row: {"ids": [...], "rows": {name: {metric: [per record]}}}, with
        each fusion row's texts ("texts": {name: [per record]}) and, where known, the candidate indices
        each fusion was shown ("shown": {name: [[index, ...] per record]})."""
        return {"ids": [r.id for r in self.records],
                "rows": {name: {m: [x[m] for x in per] for m in self.metric_names}
                         for name, per in self.per_record.items()},
                "texts": self.fused_texts, "shown": self.fused_shown}

    def write(self, out_dir: str | Path) -> list[Path]:
        from urg_ray.evaluation_report import write_charts, write_markdown

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        (out / "eval.json").write_text(json.dumps(data, indent=2))
        (out / "eval_records.json").write_text(json.dumps(self.records_json()))
        (out / "eval.md").write_text(write_markdown(data))
        return [out / "eval.json", out / "eval_records.json", out / "eval.md", *write_charts(data, out)]


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


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap of mean(a - b), `a[i]` and `b[i]` two systems' scores on record i:
    records are resampled with replacement, each keeping its pair (Koehn 2004's paired bootstrap).
    Returns the observed mean difference and the interval's `low` and `high`."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.shape(a) != np.shape(b) or diff.ndim != 1 or not len(diff):
        raise ValueError("need two equally long, non-empty lists of per-record scores, "
                         f"got {np.shape(a)} and {np.shape(b)}")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and n_resamples >= 1, got {confidence} and {n_resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // len(diff))  # resamples drawn at a time: bounded memory
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        means[start:start + rows] = diff[rng.integers(0, len(diff), size=(rows, len(diff)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "n_records": len(diff),
            "confidence": confidence, "n_resamples": n_resamples}


def summarize_runs(runs: Sequence[dict], records: Sequence[dict], paired: Sequence[tuple[str, str]] = (),
                   n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Runs of one protocol with different seeds (each an `eval.json` and its `eval_records.json`)
    in one table: per row and metric the mean and sample std over the runs that have the row
    (`per_run`: each of those runs' value, in run order);
    per pair (a, b) each run's paired bootstrap interval of a - b and one of the difference
    averaged over runs per record (the runs must share the test records); where every run has
    `fact_sources`, per row and share its mean and std over the runs that have it."""
    if not runs or len(runs) != len(records):
        raise ValueError(f"need one records file per run, got {len(runs)} runs and {len(records)} records files")
    metric_names = [m for m in runs[0]["metrics"]]
    for i, (run, recs) in enumerate(zip(runs, records)):
        if recs["ids"] != records[0]["ids"]:
            raise ValueError(f"run {i} was evaluated on other test records than run 0: "
                             "paired statistics need the same ones")
        if run["metrics"] != metric_names:
            raise ValueError(f"run {i} has metrics {run['metrics']}, run 0 {metric_names}")

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")}

    rows: dict[str, dict] = {}
    for run in runs:
        for row in run["rows"]:
            rows.setdefault(row["name"], {"name": row["name"], "kind": row["kind"], "runs": []})["runs"].append(row)
    table = [{"name": r["name"], "kind": r["kind"], "n_runs": len(r["runs"]),
              "scores": {m: spread([x["scores"][m] for x in r["runs"]]) for m in metric_names},
              "correlation": {k: spread([x["correlation"][k] for x in r["runs"]])
                              for k in r["runs"][0]["correlation"] if all(k in x["correlation"] for x in r["runs"])},
              "per_run": {m: [x["scores"][m] for x in r["runs"]] for m in metric_names}}
             for r in rows.values()]
    robustness = {}
    for name in dict.fromkeys(n for run in runs for n in run["robustness"]):
        results = [run["robustness"][name] for run in runs if name in run["robustness"]]
        robustness[name] = {"n_runs": len(results)} | {
            key: {m: spread([r[key][m] for r in results]) for m in metric_names} for key in results[0]}
    intervals = []
    for a, b in paired:
        have = [recs["rows"] for recs in records if a in recs["rows"] and b in recs["rows"]]
        if not have:
            raise ValueError(f"no run has both rows {a!r} and {b!r} with per-record scores")
        for m in (m for m in metric_names if m != GPT_RANK):
            per_run = [paired_bootstrap(r[a][m], r[b][m], n_resamples, confidence, seed) for r in have]
            pooled = paired_bootstrap(np.mean([r[a][m] for r in have], axis=0),
                                      np.mean([r[b][m] for r in have], axis=0), n_resamples, confidence, seed)
            intervals.append({"a": a, "b": b, "metric": m, "n_runs": len(have), "per_run": per_run, "pooled": pooled})
    sources = {}  # fact_sources of runs with the synthetic world's facts: only if every run has them
    if all(run.get("fact_sources") for run in runs):
        for name in dict.fromkeys(n for run in runs for n in run["fact_sources"]):
            results = [run["fact_sources"][name] for run in runs if name in run["fact_sources"]]
            sources[name] = {"n_runs": len(results)} | {
                key: spread([r[key] for r in results]) for key in results[0] if all(key in r for r in results)}
    return {"n_runs": len(runs), "n_records": len(records[0]["ids"]), "metrics": metric_names, "rows": table,
            "robustness": robustness, "paired": intervals} | ({"fact_sources": sources} if sources else {})
