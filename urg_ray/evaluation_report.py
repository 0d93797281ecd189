"""Render an evaluation (urg_ray.evaluation.Evaluator.to_json()) as Markdown and PNG charts, and a
summary over seeds (urg_ray.evaluation.summarize_runs) as Markdown and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

LABELS = {"bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum",
          "bertscore": "BERTScore", "bartscore": "BARTScore", "gpt_rank": "GPT-Rank ↓"}
KIND_COLORS = {"model": "#9e9e9e", "random": "#616161", "oracle": "#ffb74d", "rank": "#64b5f6", "fusion": "#2e7d32",
               "bound": "#ce93d8"}
KIND_COLOR_NOTE = "Candidates (grey), selection (orange: oracle, blue: rankers), fusion (green), bounds (violet)"
KIND_TITLES = {"model": "Candidate models", "random": "Selection", "oracle": "Selection", "rank": "Selection",
               "fusion": "Fusion", "bound": "Bound"}
BOUNDS_NOTE = ("Bound rows come from the synthetic world's latent facts: a candidate style-stripped is its facts "
               "(right and wrong) in the reference's wording, without its model's style; an ideal fusion is the "
               "correct facts of those candidates in the reference's order and wording (it knows the order, which "
               "no fuser is shown). Fusion combines candidates where a fused row beats the style-stripped oracle and "
               "its own k=1 row.")


def _fmt(metric: str, value: float) -> str:
    if value != value:  # NaN: not measured for this row (GPT-Rank of a fused text)
        return "–"
    return f"{value:.2f}" if metric in ("bleu", "gpt_rank") else f"{value:.4f}"


def write_markdown(data: dict) -> str:
    metric_names = data["metrics"]
    head = "| | Row | " + " | ".join(LABELS.get(m, m) for m in metric_names) + " | Pearson | Spearman | Footrule ↓ |"
    lines = [f"# Evaluation on {data['n_records']} test records", "",
             "BLEU is sacrebleu sentence BLEU (0-100); ROUGE F1 and BERTScore F1 (0-1); BARTScore a mean "
             "log-likelihood; GPT-Rank the mean ChatGPT rank (cmp_results) of the picked candidate. "
             "Selection rows pick one candidate per record; Random is its expectation; Oracle (m) picks the best "
             "candidate by m. Correlations are of a ranker's scores with the ground-truth quality, per record, "
             "averaged.", ""]
    if any(row["kind"] == "bound" for row in data["rows"]):
        lines += [BOUNDS_NOTE, ""]
    lines += [head, "|" + "---|" * (len(metric_names) + 5)]
    for row in data["rows"]:
        corr = row["correlation"]
        cells = [_fmt(m, row["scores"][m]) for m in metric_names]
        cells += [f"{corr[k]:.3f}" if k in corr else "" for k in ("pearson", "spearman", "footrule")]
        lines.append(f"| {KIND_TITLES[row['kind']]} | {row['name']} | " + " | ".join(cells) + " |")
    if data["robustness"]:
        lines += ["", "## Robustness to low-quality candidates (URG Table 5)", "",
                  "Fused from the true top-2 candidates, then with the worst one / two appended: change in percent "
                  "(closer to 0 is more robust).", "",
                  "| Fuser | Input | " + " | ".join(LABELS.get(m, m) for m in metric_names) + " |",
                  "|" + "---|" * (len(metric_names) + 2)]
        for name, result in data["robustness"].items():
            lines.append(f"| {name} | top-2 (score) | "
                         + " | ".join(_fmt(m, result["scores"][m]) for m in metric_names) + " |")
            for key in ("delta% top2+worst1", "delta% top2+worst2"):
                lines.append(f"| {name} | {key.split()[1]} (Δ%) | "
                             + " | ".join(f"{result[key][m]:+.1f}" for m in metric_names) + " |")
    if data.get("fact_sources"):
        lines += ["", *fact_sources_markdown(data["fact_sources"])]
    if data.get("paired"):
        lines += ["", "## Paired bootstrap intervals", "", _paired_intro(data["paired"][0]), "",
                  "| A − B | Metric | Mean difference | Interval |", "|---|---|---|---|"]
        for p in data["paired"]:
            lines.append(f"| {p['a']} − {p['b']} | {LABELS.get(p['metric'], p['metric'])} | "
                         f"{_fmt(p['metric'], p['mean'])} | "
                         f"[{_fmt(p['metric'], p['low'])}, {_fmt(p['metric'], p['high'])}] |")
    return "\n".join(lines) + "\n"


FACT_SOURCES_NOTE = (
    "Facts a text states are read back with `urg_ray.synthetic_facts.stated_facts`; a candidate's facts are its "
    "latent ones. Stated: the share of the reference's facts the row states, per test record, averaged (best / any "
    "candidate: the candidate holding most of them, and all candidates together). Shown hold: the share the "
    "candidates the fuser was shown hold together, the most a fuser copying them can state. The last three columns "
    "split the row's right facts (pooled over records): in a shown candidate, only in candidates it was not shown, "
    "in no candidate. Right facts not in the shown candidates are the fuser's memory of the world (learned from "
    "its training references; a few may be a shown candidate's object put with the question's verb), not combining.")
FACT_COLUMNS = ("stated", "shown_hold", "from_shown", "from_other_candidates", "in_no_candidate")


def fact_sources_markdown(sources: dict[str, dict], level: str = "##") -> list[str]:
    """The table of `urg_ray.synthetic_facts.fact_sources` (one run: shares) or of its summary over
    runs (each cell a mean and std, each row with `n_runs`), under a heading and FACT_SOURCES_NOTE."""
    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, dict):
            std = value["std"]
            return f"{value['mean']:.3f}" + ("" if std != std else f" ± {std:.3f}")
        return f"{value:.3f}"

    runs = any("n_runs" in s for s in sources.values())
    lines = [f"{level} Where the fused answers' facts come from", "", FACT_SOURCES_NOTE, "",
             "| Row |" + (" Runs |" if runs else "") + " Stated | Shown hold | From shown | From other candidates "
             "| In no candidate |", "|---|" + "---|" * (len(FACT_COLUMNS) + runs)]
    for name, s in sources.items():
        lines.append(f"| {name} |" + (f" {s.get('n_runs', '')} |" if runs else "")
                     + "".join(f" {cell(s.get(k))} |" for k in FACT_COLUMNS))
    return lines


def _paired_intro(interval: dict) -> str:
    return (f"{100 * interval['confidence']:.0f}% percentile intervals of the mean per-record difference, "
            f"{interval['n_resamples']} resamples of the {interval['n_records']} test records (each record keeps both "
            f"systems' scores); an interval that excludes 0 says A and B differ on these records.")


def _spread(metric: str, value: dict) -> str:
    mean, std = _fmt(metric, value["mean"]), _fmt(metric, value["std"])
    return mean if std == "–" else f"{mean} ± {std}"


def write_summary_markdown(summary: dict) -> str:
    """The table of `urg_ray.evaluation.summarize_runs`: mean ± sample std over the runs (seeds)."""
    metric_names = summary["metrics"]
    lines = [f"# Summary of {summary['n_runs']} runs (seeds) on the same {summary['n_records']} test records", "",
             "Each cell: mean ± sample standard deviation over the runs that have the row (Runs); one run: the value "
             "alone.", "",
             "| | Row | Runs | " + " | ".join(LABELS.get(m, m) for m in metric_names) + " | Spearman |",
             "|" + "---|" * (len(metric_names) + 4)]
    for row in summary["rows"]:
        spearman = _spread("bleu", row["correlation"]["spearman"]) if "spearman" in row["correlation"] else ""
        lines.append(f"| {KIND_TITLES[row['kind']]} | {row['name']} | {row['n_runs']} | "
                     + " | ".join(_spread(m, row["scores"][m]) for m in metric_names) + f" | {spearman} |")
    if summary["robustness"]:
        lines += ["", "## Robustness (URG Table 5): fused from the true top-2, then + worst 1 / 2 (Δ%)", "",
                  "| Fuser | Runs | Input | " + " | ".join(LABELS.get(m, m) for m in metric_names) + " |",
                  "|" + "---|" * (len(metric_names) + 3)]
        for name, result in summary["robustness"].items():
            for key, label in (("scores", "top-2 (score)"), ("delta% top2+worst1", "+worst1 (Δ%)"),
                               ("delta% top2+worst2", "+worst2 (Δ%)")):
                cells = [_spread(m, result[key][m]) if key == "scores" else
                         f"{result[key][m]['mean']:+.1f}"
                         + (f" ± {result[key][m]['std']:.1f}" if result["n_runs"] > 1 else "")
                         for m in metric_names]
                lines.append(f"| {name} | {result['n_runs']} | {label} | " + " | ".join(cells) + " |")
    if summary.get("fact_sources"):
        lines += ["", *fact_sources_markdown(summary["fact_sources"])]
    if summary["paired"]:
        first = summary["paired"][0]["pooled"]
        lines += ["", "## Paired bootstrap intervals", "", _paired_intro(first) + " Pooled: the difference averaged "
                  "over the runs per record, then resampled; it does not include the spread between seeds, which the "
                  "per-run intervals show.", "",
                  "| A − B | Metric | Runs | Pooled mean | Pooled interval | Per run: mean [interval] |",
                  "|---|---|---|---|---|---|"]
        for p in summary["paired"]:
            m, pooled = p["metric"], p["pooled"]
            per_run = "; ".join(f"{_fmt(m, r['mean'])} [{_fmt(m, r['low'])}, {_fmt(m, r['high'])}]"
                                for r in p["per_run"])
            lines.append(f"| {p['a']} − {p['b']} | {LABELS.get(m, m)} | {p['n_runs']} | {_fmt(m, pooled['mean'])} | "
                         f"[{_fmt(m, pooled['low'])}, {_fmt(m, pooled['high'])}] | {per_run} |")
    return "\n".join(lines) + "\n"


def write_charts(data: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in ("bleu", "rougeL", "bertscore") if m in data["metrics"]]
    rows = data["rows"]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 0.35 * len(rows) + 1.5), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        values = [r["scores"][metric] for r in rows]
        ax.barh(range(len(rows)), values, color=[KIND_COLORS[r["kind"]] for r in rows])
        ax.set_yticks(range(len(rows)), [r["name"] for r in rows] if ax is axes[0][0] else [])
        ax.invert_yaxis()
        ax.set_title(LABELS[metric])
        for y, v in enumerate(values):
            ax.text(v, y, f" {_fmt(metric, v)}", va="center", fontsize=7)
    fig.suptitle(f"{KIND_COLOR_NOTE}, {data['n_records']} test records", fontsize=10)
    fig.tight_layout()
    paths = [out / "eval.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    if data["robustness"]:
        names = list(data["robustness"])
        fig, ax = plt.subplots(figsize=(2 + 2.2 * len(names), 3.5))
        width = 0.8 / (2 * len(shown))
        for j, metric in enumerate(shown):
            for k, key in enumerate(("delta% top2+worst1", "delta% top2+worst2")):
                xs = [i + (2 * j + k) * width for i in range(len(names))]
                ax.bar(xs, [data["robustness"][n][key][metric] for n in names], width,
                       label=f"{LABELS[metric]}, {key.split()[1]}", alpha=0.55 + 0.45 * k)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_ylabel("change vs top-2 input (%)")
        ax.set_title("Adding the worst candidates to the fuser's input")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "robustness.png")
        fig.savefig(paths[1], dpi=120)
        plt.close(fig)
    return paths


class SpreadBar(NamedTuple):
    name: str
    kind: str
    mean: float
    std: float  # sample std over the runs; NaN for one run
    runs: list[float]  # each run's value


class PairedInterval(NamedTuple):
    label: str  # "A − B"
    pooled: tuple[float, float, float]  # mean, low, high
    runs: list[tuple[float, float, float]]


def summary_bars(summary: dict, metric: str = "bleu") -> list[SpreadBar]:
    """The left panel of summary.png: per row of `summarize_runs`, in its order, the mean, std and
    each run's value of `metric`."""
    return [SpreadBar(r["name"], r["kind"], r["scores"][metric]["mean"], r["scores"][metric]["std"],
                      list(r["per_run"][metric])) for r in summary["rows"]]


def summary_intervals(summary: dict, metric: str = "bleu") -> list[PairedInterval]:
    """The right panel of summary.png: the paired intervals of `metric`, pooled and per run."""
    def bounds(interval: dict) -> tuple[float, float, float]:
        return interval["mean"], interval["low"], interval["high"]

    return [PairedInterval(f"{p['a']} − {p['b']}", bounds(p["pooled"]), [bounds(r) for r in p["per_run"]])
            for p in summary["paired"] if p["metric"] == metric]


def write_summary_chart(summary: dict, out: Path, metric: str | None = None) -> Path:
    """OUT/summary.png: `metric` (default BLEU, else the first metric) per row (bar: mean over runs,
    error bar: sample std, dots: each run) and, if the summary has paired intervals of it, their
    forest plot (pooled dark, each run light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or ("bleu" if "bleu" in summary["metrics"] else summary["metrics"][0])
    bars, pairs = summary_bars(summary, metric), summary_intervals(summary, metric)
    fig = plt.figure(figsize=(14 if pairs else 8, 0.35 * len(bars) + 1.8), layout="constrained")
    grid = fig.add_gridspec(1, 2 if pairs else 1, width_ratios=[3, 2] if pairs else [1])
    _draw_spread_bars(fig.add_subplot(grid[0, 0]), bars, metric, summary["n_runs"], summary["n_records"])
    if pairs:  # the forest plot takes the top of the right column, as tall as the lines it draws
        lines = max(4, sum(len(p.runs) + 2 for p in pairs))
        column = grid[0, 1].subgridspec(2, 1, height_ratios=[lines, max(len(bars) - lines, 1)])
        _draw_forest(fig.add_subplot(column[0]), pairs, metric, summary["paired"][0]["pooled"]["confidence"])
    fig.suptitle(KIND_COLOR_NOTE, fontsize=9)
    path = out / "summary.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw_spread_bars(ax, bars: list[SpreadBar], metric: str, n_runs: int, n_records: int) -> None:
    label = LABELS.get(metric, metric)
    ys = range(len(bars))
    ax.barh(ys, [b.mean for b in bars], color=[KIND_COLORS[b.kind] for b in bars])
    spread = [(y, b) for y, b in zip(ys, bars) if len(b.runs) > 1]
    ax.errorbar([b.mean for _, b in spread], [y for y, _ in spread], xerr=[b.std for _, b in spread], fmt="none",
                ecolor="#424242", elinewidth=1, capsize=4)
    ax.scatter([v for b in bars for v in b.runs], [y for y, b in zip(ys, bars) for _ in b.runs], s=16,
               facecolors="white", edgecolors="black", linewidths=0.8, zorder=3)
    ends = [max([b.mean + (b.std if len(b.runs) > 1 else 0.0), *b.runs]) for b in bars]
    for y, b, end in zip(ys, bars, ends):
        text = _fmt(metric, b.mean) + (f" ± {_fmt(metric, b.std)}" if len(b.runs) > 1 else "")
        text += f" ({len(b.runs)} of {n_runs} runs)" if len(b.runs) < n_runs else ""
        ax.text(end, y, f"  {text}", va="center", fontsize=7)
    ax.set_yticks(ys, [b.name for b in bars], fontsize=8)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.set_xlim(0, 1.2 * max(ends))  # room for the values' text
    ax.set_xlabel(label)
    ax.set_title(f"{label} over {n_runs} runs (seeds), {n_records} test records:\n"
                 "bar mean, error bar sample std, dots each run" if n_runs > 1 else
                 f"{label} of 1 run, {n_records} test records", fontsize=9)


def _draw_forest(ax, pairs: list[PairedInterval], metric: str, confidence: float) -> None:
    label = LABELS.get(metric, metric)
    y, ticks = 0.0, []
    for p in pairs:
        mean, low, high = p.pooled
        ax.errorbar([mean], [y], xerr=[[mean - low], [high - mean]], fmt="o", color="black", capsize=3)
        ax.text(high, y, f"  {_fmt(metric, mean)} [{_fmt(metric, low)}, {_fmt(metric, high)}]", va="center",
                fontsize=7)
        ticks.append((y, p.label))
        for k, (mean, low, high) in enumerate(p.runs, 1):
            ax.errorbar([mean], [y + 0.6 * k], xerr=[[mean - low], [high - mean]], fmt="o", markersize=3,
                        color="grey", alpha=0.6, capsize=2)
            ticks.append((y + 0.6 * k, f"run {k}"))
        y += 0.6 * len(p.runs) + 1.2
    ax.axvline(0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks([t for t, _ in ticks], [n for _, n in ticks], fontsize=7)
    ax.set_ylim(y - 0.6, -0.6)
    low = min(min(p.pooled[1], *(r[1] for r in p.runs)) for p in pairs)
    high = max(max(p.pooled[2], *(r[2] for r in p.runs)) for p in pairs)
    pad = 0.1 * (max(high, 0.0) - min(low, 0.0)) or 1.0
    ax.set_xlim(min(low, 0.0) - pad, max(high, 0.0) + 4 * pad)  # room for the pooled interval's text
    ax.set_xlabel(f"{label} difference A − B")
    ax.set_title(f"Paired {label} differences, {100 * confidence:.0f}% intervals:\n"
                 "pooled over runs (black), each run (grey, below)", fontsize=9)
