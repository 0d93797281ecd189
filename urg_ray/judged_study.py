"""The judged ranking study (issue 15): which answer of an ensemble a selector picks, scored by a
judge's label and against the reference.

Every row picks one candidate per test record (a fusion row writes a new text instead). Columns:
the judge win rate, the mean `judge_win` of the picked answers in percent (AlpacaEval 2.0's
weighted win rate against its reference model), with a percentile bootstrap interval over test
instructions; the mean over records of Spearman and Pearson between the selector's scores and
`judge_win` (`urg_ray.evaluation.rank_correlation`); BLEU and BERTScore of the picked answer
against the reference, as stored in the candidates' `scores` (`urg_ray.real_data` scores them).

Baseline rows need no trained model: each ensemble model; random (its expectation: a record's
mean over candidates); always the longest answer (its scores are the answers' lengths); the model
with the best mean `judge_win` on the train records; the oracle (the best `judge_win`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from urg_ray.data import DataError, Record
from urg_ray.evaluation import paired_bootstrap, rank_correlation

JUDGE = "judge_win"
REFERENCE_METRICS = ("bleu", "bertscore")
COLUMNS = (JUDGE, *REFERENCE_METRICS)
DECISIVE_WIN = 0.05  # an instruction where no answer reaches this adds almost nothing to any row's win rate
RESOLVE_PCT = 2.0  # the paired interval half-width (points) whose test size the table states
KIND_TITLES = {"model": "Ensemble model", "baseline": "Baseline", "oracle": "Oracle", "ranker": "Trained selector",
               "fusion": "Fusion (new text)"}


@dataclass
class StudyRow:
    name: str
    kind: str  # model | baseline | oracle | ranker | fusion
    per_record: dict[str, list[float]]  # column -> value per test record (judge_win NaN for new text)
    correlation: dict[str, float] = field(default_factory=dict)  # spearman, pearson with judge_win
    picks: list[int] | None = None  # the candidate picked per record (selection rows)


def bootstrap_interval(values: Sequence[float], n_resamples: int = 10_000, confidence: float = 0.95,
                       seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap interval of mean(values), records resampled with replacement
    (`paired_bootstrap` against zeros: the same resampling as the paired intervals)."""
    return paired_bootstrap(values, [0.0] * len(values), n_resamples, confidence, seed)


class JudgedStudy:
    """Rows over `records` (the test split) whose candidates all carry `judge_win` and the reference
    metrics; the ensemble is the models that answered every record."""

    def __init__(self, records: Sequence[Record], n_resamples: int = 10_000, seed: int = 0):
        if not records:
            raise DataError("the judged study needs at least one test record")
        for r in records:
            for c in r.candidates:
                missing = [m for m in COLUMNS if m not in c.scores]
                if missing:
                    raise DataError(f"record {r.id!r}, candidate {c.model!r}: field 'scores' lacks {missing} "
                                    f"(score the split: data.judged.scored_splits)")
        self.records = list(records)
        answered = [{c.model for c in r.candidates} for r in self.records]
        self.models = [c.model for c in self.records[0].candidates if all(c.model in a for a in answered)]
        self.truth = [[c.scores[JUDGE] for c in r.candidates] for r in self.records]
        self.n_resamples, self.seed = n_resamples, seed
        self.rows: list[StudyRow] = []

    def _add(self, row: StudyRow) -> StudyRow:
        if any(r.name == row.name for r in self.rows):
            raise ValueError(f"a row named {row.name!r} is already in the study")
        self.rows.append(row)
        return row

    def add_selection(self, name: str, kind: str, picks: Sequence[int],
                      scores: Sequence[Sequence[float]] | None = None) -> StudyRow:
        """A row picking candidate `picks[i]` of record i; `scores` (per record, per candidate) adds
        their rank correlation with `judge_win`."""
        if len(picks) != len(self.records):
            raise ValueError(f"{name}: {len(picks)} picks for {len(self.records)} records")
        per_record = {m: [r.candidates[i].scores[m] for r, i in zip(self.records, picks)] for m in COLUMNS}
        correlation = {}
        if scores is not None:
            found = rank_correlation([list(s)[: len(t)] for s, t in zip(scores, self.truth)], self.truth)
            correlation = {k: found[k] for k in ("spearman", "pearson")}
        return self._add(StudyRow(name, kind, per_record, correlation, [int(i) for i in picks]))

    def add_ranking(self, name: str, scores: Sequence[Sequence[float]], kind: str = "ranker") -> StudyRow:
        """The top-scored candidate of each record (the first of equal scores), with correlations."""
        return self.add_selection(name, kind, [int(np.argmax(s[: len(r.candidates)])) for s, r in
                                              zip(scores, self.records)], scores)

    def add_baselines(self, train_records: Sequence[Record]) -> None:
        """Each ensemble model, random, always-longest, the best model on `train_records`, oracle."""
        for model in self.models:
            self.add_selection(model, "model", [[c.model for c in r.candidates].index(model) for r in self.records])
        self._add(StudyRow("Random (expected)", "baseline",
                           {m: [float(np.mean([c.scores[m] for c in r.candidates])) for r in self.records]
                            for m in COLUMNS}))
        self.add_ranking("Always the longest", [[float(len(c.text)) for c in r.candidates] for r in self.records],
                         kind="baseline")
        best = best_model_on(train_records, self.models)
        self.add_selection(f"Best single model on train ({best})", "baseline",
                           [[c.model for c in r.candidates].index(best) for r in self.records])
        self.add_ranking("Oracle (best judge_win)", self.truth, kind="oracle")

    def add_fusion(self, name: str, scored: Sequence[dict[str, float]]) -> StudyRow:
        """New texts, one per record, with their reference metrics (no judge saw them: NaN)."""
        if len(scored) != len(self.records):
            raise ValueError(f"{name}: {len(scored)} fused texts for {len(self.records)} records")
        per_record = {JUDGE: [math.nan] * len(scored)} | {m: [s[m] for s in scored] for m in REFERENCE_METRICS}
        return self._add(StudyRow(name, "fusion", per_record))

    def add_row(self, row: StudyRow) -> StudyRow:
        """A row computed before (from `records_json`), e.g. a model evaluated in an earlier run."""
        if any(len(v) != len(self.records) for v in row.per_record.values()):
            raise ValueError(f"row {row.name!r} has per-record values for another number of records")
        return self._add(row)

    def row(self, name: str) -> StudyRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    # ---- output -----------------------------------------------------------------------------
    def summary(self, row: StudyRow) -> dict:
        """Judge win % with its interval, the reference metrics' means, the correlations."""
        judged = row.per_record[JUDGE]
        out = {"name": row.name, "kind": row.kind}
        if all(math.isfinite(v) for v in judged):
            ci = bootstrap_interval(judged, self.n_resamples, seed=self.seed)
            out |= {"judge_win_pct": 100 * ci["mean"], "judge_win_low": 100 * ci["low"],
                    "judge_win_high": 100 * ci["high"]}
        out |= {m: float(np.mean(row.per_record[m])) for m in REFERENCE_METRICS}
        return out | row.correlation

    def paired(self, a: str, b: str) -> dict:
        """Paired bootstrap interval of row a's judge win % minus row b's (same test instructions),
        and how many test instructions a +-RESOLVE_PCT-point interval would take at this spread
        (normal approximation: n = (1.96 sd / half-width)^2)."""
        diff = np.subtract(self.row(a).per_record[JUDGE], self.row(b).per_record[JUDGE])
        found = paired_bootstrap(self.row(a).per_record[JUDGE], self.row(b).per_record[JUDGE], self.n_resamples,
                                 seed=self.seed)
        sd = float(np.std(diff, ddof=1)) if len(diff) > 1 else math.nan
        return {"a": a, "b": b, "mean_pct": 100 * found["mean"], "low_pct": 100 * found["low"],
                "high_pct": 100 * found["high"], "sd_pct": 100 * sd,
                "n_to_resolve": math.ceil((1.96 * 100 * sd / RESOLVE_PCT) ** 2) if sd == sd else None}

    def decisive(self) -> dict:
        """The test instructions where some answer has judge_win >= DECISIVE_WIN, and the share of
        each judged row's summed judge_win that comes from them."""
        live = np.array([max(t) >= DECISIVE_WIN for t in self.truth])
        share = {}
        for row in self.rows:
            wins = np.asarray(row.per_record[JUDGE], float)
            if np.isfinite(wins).all() and wins.sum() > 0:
                share[row.name] = float(wins[live].sum() / wins.sum())
        return {"threshold": DECISIVE_WIN, "n": int(live.sum()), "share": share}

    def to_json(self, pairs: Sequence[tuple[str, str]] = ()) -> dict:
        return {"n_records": len(self.records), "ensemble": self.models, "confidence": 0.95,
                "n_resamples": self.n_resamples, "rows": [self.summary(r) for r in self.rows],
                "decisive": self.decisive(), "resolve_pct": RESOLVE_PCT,
                "paired": [self.paired(a, b) for a, b in pairs]}

    def records_json(self) -> dict:
        """Per-record values of every row (reloadable with `rows_from_json`)."""
        return {"ids": [r.id for r in self.records], "rows": [asdict(r) for r in self.rows]}

    def write(self, out_dir: str | Path, data: dict) -> list[Path]:
        """Writes `data` (`to_json`'s, computed once: its intervals are 10,000 resamples a row)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "real.json").write_text(json.dumps(data, indent=2))
        (out / "real_records.json").write_text(json.dumps(self.records_json()))
        (out / "real.md").write_text(write_markdown(data))
        write_chart(data, out / "real.png")
        return [out / "real.json", out / "real_records.json", out / "real.md", out / "real.png"]


def best_model_on(records: Sequence[Record], models: Sequence[str]) -> str:
    """The model of `models` with the highest mean `judge_win` over its answers in `records`."""
    wins: dict[str, list[float]] = {m: [] for m in models}
    for r in records:
        for c in r.candidates:
            if c.model in wins and JUDGE in c.scores:
                wins[c.model].append(c.scores[JUDGE])
    judged = {m: float(np.mean(v)) for m, v in wins.items() if v}
    if not judged:
        raise DataError(f"no train answer of the ensemble models {list(models)} carries {JUDGE!r}")
    return max(judged, key=judged.get)


def rows_from_json(data: dict, ids: Sequence[str]) -> list[StudyRow]:
    """The rows of a `records_json` written for the same test records."""
    if list(data["ids"]) != list(ids):
        raise ValueError("the saved rows were computed on other test records")
    return [StudyRow(**row) for row in data["rows"]]


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def write_markdown(data: dict) -> str:
    lines = [f"# Judged ranking study on {data['n_records']} test instructions", "",
             f"Judge win: mean `judge_win` of the picked answer, % (AlpacaEval 2.0's weighted GPT-4-Turbo preference "
             f"over GPT-4-1106's answer), with a {100 * data['confidence']:.0f}% percentile bootstrap interval "
             f"over test instructions ({data['n_resamples']} resamples). Spearman / Pearson: per instruction, "
             f"between the row's scores and `judge_win` over the {len(data['ensemble'])} candidates, averaged. "
             "BLEU (sentence, 0-100) and BERTScore F1 (all-MiniLM-L6-v2) of the picked answer against "
             "GPT-4-1106's answer.", "",
             "| Kind | Row | Judge win % | 95% interval | Spearman | Pearson | BLEU | BERTScore |",
             "|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        interval = (f"[{row['judge_win_low']:.1f}, {row['judge_win_high']:.1f}]" if "judge_win_pct" in row else "–")
        lines.append(f"| {KIND_TITLES[row['kind']]} | {row['name']} | {_cell(row.get('judge_win_pct'), 1)} | "
                     f"{interval} | "
                     f"{_cell(row.get('spearman'), 3)} | {_cell(row.get('pearson'), 3)} | {_cell(row['bleu'], 2)} | "
                     f"{_cell(row['bertscore'], 4)} |")
    decisive = data.get("decisive")
    if decisive and decisive["share"]:
        shares = [100 * v for v in decisive["share"].values()]
        lines += ["", f"Decisive instructions: {decisive['n']} of {data['n_records']} have an answer with "
                  f"`judge_win` >= {decisive['threshold']}; they hold {min(shares):.0f}-{max(shares):.0f}% "
                  "of every judged row's summed "
                  "`judge_win`. The other instructions barely move any row."]
    if data["paired"]:
        half = data.get("resolve_pct", RESOLVE_PCT)
        lines += ["", "## Paired differences in judge win (percentage points)", "",
                  f"SD: of the per-instruction difference. Instructions for ±{half:g}: "
                  "the test size whose 95% interval "
                  f"would be ±{half:g} points at this SD (1.96 SD / √n).", "",
                  "| A − B | Mean | 95% interval | SD | Instructions for ±" + f"{half:g} |", "|---|---|---|---|---|"]
        lines += [f"| {p['a']} − {p['b']} | {p['mean_pct']:+.1f} | [{p['low_pct']:+.1f}, {p['high_pct']:+.1f}] | "
                  f"{_cell(p.get('sd_pct'), 1)} | {'–' if p.get('n_to_resolve') is None else p['n_to_resolve']} |"
                  for p in data["paired"]]
    return "\n".join(lines) + "\n"


def write_chart(data: dict, path: Path) -> Path:
    """Judge win % with its interval for every selection row (fusion rows have no judge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if "judge_win_pct" in r]
    colours = {"model": "#9e9e9e", "baseline": "#4c72b0", "oracle": "#55a868", "ranker": "#c44e52"}
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    means = np.array([r["judge_win_pct"] for r in rows])
    errors = np.array([[m - r["judge_win_low"], r["judge_win_high"] - m] for m, r in zip(means, rows)]).T
    ax.barh(y, means, xerr=errors, color=[colours[r["kind"]] for r in rows], capsize=2)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    best = [r["judge_win_pct"] for r in rows if r["name"].startswith("Best single model")]
    if best:
        ax.axvline(best[0], color="#4c72b0", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"judge win % of the picked answer ({100 * data['confidence']:.0f}% bootstrap interval)")
    ax.set_title(f"{data['n_records']} test instructions, {len(data['ensemble'])} candidate models", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
