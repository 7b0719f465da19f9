"""Tables and plots from result files only (no torch import, no model).

Writes into the output directory:
  lcs_vs_k.{png,svg}          LCS ratio vs difficulty k per method, mean +- s.e. over targets
                              and seeds, one panel per (prompt length, budget): Figures 2 and 3
  temperature.{png,svg}       mean effective temperature vs step (Figure 4)
  lcs_vs_compute.{png,svg}    best LCS vs estimated FLOPs and vs wall time, per method
  summary.md                  per method, N, k, budget: mean LCS, exact-match rate, overlap
  table_<method>.md           per target: prompt, its perplexity, greedy output, LCS (Table 3)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from dlmi.evaluation.plots import pyplot, save_figure
from dlmi.evaluation.results_io import read_rows
from dlmi.inversion.result import visible


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def load_rows(paths: Iterable[Path]) -> list[dict]:
    """Finished rows of every file. Rows a Ctrl-C cut short (`interrupted`, written by
    `dlmi invert --json`) are left out: they did not run their steps."""
    rows = []
    for p in paths:
        rows.extend(r for r in read_rows(p) if "method" in r and not r.get("interrupted"))
    return rows


def budgets_of(rows: list[dict]) -> list[int]:
    found = {int(b) for r in rows for b in r.get("lcs_at_budget", {})}
    return sorted(found)


def lcs_at(row: dict, budget: int | None) -> float:
    """Best hard LCS (greedy decode of the hard prompt) within `budget` steps (None: final)."""
    if budget is None:
        return float(row["lcs_ratio"])
    return float(row["lcs_at_budget"].get(str(budget), row["lcs_ratio"]))


def soft_lcs_at(row: dict, budget: int | None) -> float | None:
    """Best soft LCS (the paper's metric: argmax of the relaxed training forward) within
    `budget` steps; None for rows without one (GCG, random search, older result files)."""
    if row.get("soft_lcs") is None:
        return None
    if budget is None:
        return float(row["soft_lcs"])
    return float(row.get("soft_lcs_at_budget", {}).get(str(budget), row["soft_lcs"]))


# The two metrics, never mixed: (name, per-row value at a budget, axis label).
METRICS = (
    ("hard", lcs_at, "hard LCS (greedy decode of hard prompt)"),
    ("soft", soft_lcs_at, "soft LCS (relaxed forward, paper's metric)"),
)


def _model_name(rows: list[dict]) -> str:
    return ", ".join(sorted({str(r.get("model")) for r in rows}))


def plot_lcs_vs_k(rows: list[dict], out: Path) -> list[Path]:
    rows = [r for r in rows if r.get("k") is not None]
    if not rows:
        return []
    plt = pyplot()
    lengths = sorted({int(r["prompt_length"]) for r in rows})
    budgets = budgets_of(rows) or [None]
    methods = sorted({r["method"] for r in rows})
    metrics = [m for m in METRICS if any(m[1](r, None) is not None for r in rows)]
    panels = [(n, m) for n in lengths for m in metrics]  # one row of panels per (N, metric)
    fig, axes = plt.subplots(len(panels), len(budgets), squeeze=False,
                             figsize=(4.8 * len(budgets), 3.6 * len(panels)), sharey=True)
    for i, (n, (metric, value, label)) in enumerate(panels):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            for method in methods:
                by_k = defaultdict(list)
                for r in rows:
                    v = value(r, budget)
                    if r["method"] == method and int(r["prompt_length"]) == n and v is not None:
                        by_k[int(r["k"])].append(v)
                if not by_k:
                    continue
                ks = sorted(by_k)
                stats = [mean_se(by_k[k]) for k in ks]
                ax.errorbar(ks, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                            capsize=3, label=method)
            steps = f"{budget} steps" if budget else "final"
            ax.set_xticks(sorted({int(r["k"]) for r in rows}))
            ax.set_title(f"{metric} LCS, N = {n} prompt tokens, {steps}")
            ax.set_xlabel("target difficulty k (sampled token rank)")
            ax.set_ylabel(label, fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"Inversion accuracy vs target difficulty ({_model_name(rows)}), "
                 "mean ± s.e. over targets and seeds")
    return save_figure(fig, out, "lcs_vs_k")


def plot_temperature(rows: list[dict], out: Path) -> list[Path]:
    series = defaultdict(lambda: defaultdict(list))  # (method, N) -> step -> [tau]
    for r in rows:
        for h in r.get("history", []):
            if h.get("temperature") is not None:
                series[(r["method"], int(r["prompt_length"]))][int(h["step"])].append(
                    float(h["temperature"]))
    if not series:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (method, n), by_step in sorted(series.items()):
        steps = sorted(by_step)
        stats = [mean_se(by_step[s]) for s in steps]
        mean = [m for m, _ in stats]
        se = [s for _, s in stats]
        ax.plot(steps, mean, label=f"{method}, N = {n}")
        ax.fill_between(steps, [m - s for m, s in zip(mean, se, strict=True)],
                        [m + s for m, s in zip(mean, se, strict=True)], alpha=0.25)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("effective temperature τ (mean over prompt positions)")
    ax.set_yscale("log")
    ax.set_title("Learned Gumbel-Softmax temperature, mean ± s.e. over runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out, "temperature")


def _anytime_curve(rows: list[dict], cost) -> tuple[list[float], list[float]]:
    """Mean best LCS at shared cost levels; a finished run keeps its final best."""
    points = []  # per row: [(cost, best_lcs)] increasing
    for r in rows:
        hist = [(cost(r, h), float(h["best_lcs"])) for h in r.get("history", [])]
        if hist:
            points.append(hist)
    if not points:
        return [], []
    top = max(p[-1][0] for p in points)
    low = min(p[0][0] for p in points)
    if top <= 0:
        return [], []
    low = max(low, top / 1e4)
    levels = [low * (top / low) ** (i / 39) for i in range(40)]
    means = []
    for level in levels:
        vals = []
        for hist in points:
            reached = [b for c, b in hist if c <= level * (1 + 1e-9)]
            vals.append(reached[-1] if reached else 0.0)
        means.append(sum(vals) / len(vals))
    return levels, means


def _flops_at(r, h) -> float:
    """FLOPs a row had spent at history point h: compute is spent evenly over steps."""
    steps = max(int(r.get("steps") or 1), 1)
    return float(r.get("compute", {}).get("flops", 0.0)) * int(h["step"]) / steps


def _seconds_at(r, h) -> float:
    return float(h.get("seconds", 0.0))


def _by_method(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["method"], int(r.get("prompt_length") or len(r["prompt_ids"])))].append(r)
    return groups


ANYTIME_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def anytime_table(rows: list[dict]) -> str:
    """Mean best hard LCS of each method at equal wall time and at equal FLOPs, at fractions
    of the largest cost any method spent. A method whose run had already ended keeps its final
    best there (marked †): it stopped on its step budget or on success, not for lack of time."""
    groups = {k: [r for r in g if r.get("history")] for k, g in _by_method(rows).items()}
    groups = {k: g for k, g in groups.items() if g}
    blocks = []
    for name, cost, unit, scale in (("wall time", _seconds_at, "s", 1.0),
                                    ("FLOPs", _flops_at, "TFLOP", 1e12)):
        top = max((cost(r, r["history"][-1]) for g in groups.values() for r in g), default=0.0)
        if top <= 0:
            continue
        levels = [top * f for f in ANYTIME_FRACTIONS]
        lines = [f"At equal {name} (mean best hard LCS so far, over rows; † the run had ended "
                 "and keeps its final best):", "",
                 "| method | N | " + " | ".join(f"LCS @ {lv / scale:.3g} {unit}"
                                                for lv in levels) + " |",
                 "| --- | --- | " + " | ".join("---" for _ in levels) + " |"]
        for (method, n), g in sorted(groups.items()):
            end = max(cost(r, r["history"][-1]) for r in g)
            cells = []
            for lv in levels:
                best = []
                for r in g:
                    reached = [float(h["best_lcs"]) for h in r["history"] if cost(r, h) <= lv]
                    best.append(reached[-1] if reached else 0.0)
                mark = "†" if lv > end * (1 + 1e-9) else ""
                cells.append(f"{sum(best) / len(best):.2f}{mark}")
            lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def plot_lcs_vs_compute(rows: list[dict], out: Path) -> list[Path]:
    flops, seconds = _flops_at, _seconds_at
    groups = _by_method(rows)
    if not any(r.get("history") for r in rows):
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for (method, n), group in sorted(groups.items()):
        for ax, cost in zip(axes, (flops, seconds), strict=True):
            x, y = _anytime_curve(group, cost)
            if x:
                ax.plot(x, y, label=f"{method}, N = {n}")
    axes[0].set_xlabel("estimated FLOPs spent (forward + backward)")
    axes[1].set_xlabel("wall time (s)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean best LCS ratio so far")
    fig.suptitle("Inversion accuracy vs compute (anytime best, mean over rows)")
    return save_figure(fig, out, "lcs_vs_compute")


def _cell(text: str, limit: int = 80) -> str:
    text = visible(text).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def write_method_tables(rows: list[dict], out: Path) -> list[Path]:
    paths = []
    for method in sorted({r["method"] for r in rows}):
        lines = [f"# {method}: learned prompts and greedy outputs ({_model_name(rows)})", "",
                 "| id | k | N | seed | target | learned prompt | prompt ppl | greedy output "
                 "| hard LCS | soft LCS |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted((r for r in rows if r["method"] == method),
                        key=lambda r: (int(r.get("prompt_length") or 0), str(r.get("target_id")),
                                       int(r.get("seed", 0)))):
            lines.append(
                f"| {r.get('target_id', '')} | {r.get('k', '')} | {r.get('prompt_length', '')} "
                f"| {r.get('seed', '')} | {_cell(r['target_text'])} | {_cell(r['prompt_text'])} "
                f"| {_fmt(r.get('prompt_perplexity'))} | {_cell(r['output_text'])} "
                f"| {r['lcs_ratio']:.2f} | {_fmt(soft_lcs_at(r, None))} |")
        path = out / f"table_{method}.md"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def summary_table(rows: list[dict]) -> str:
    budgets = budgets_of(rows) or [None]
    head = ["method", "N", "k", "rows"]
    for b in budgets:
        label = f"@{b}" if b else ""
        head += [f"LCS{label}", f"exact{label}", f"soft{label}"]
    head += ["overlap", "s/row", "GFLOP/row"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    groups = defaultdict(list)
    for r in rows:
        n = int(r.get("prompt_length") or 0)
        if r.get("k") is not None:
            groups[(r["method"], n, int(r["k"]))].append(r)
        groups[(r["method"], n, None)].append(r)  # every k together
    for (method, n, k), group in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], float("inf") if kv[0][2] is None else kv[0][2])):
        cells = [method, str(n), "all" if k is None else str(k), str(len(group))]
        for b in budgets:
            m, se = mean_se([lcs_at(r, b) for r in group])
            exact = sum(lcs_at(r, b) >= 1.0 for r in group) / len(group)
            soft = [v for r in group if (v := soft_lcs_at(r, b)) is not None]
            soft_cell = "" if not soft else "{:.2f} ± {:.2f}".format(*mean_se(soft))
            cells += [f"{m:.2f} ± {se:.2f}", f"{exact:.0%}", soft_cell]
        overlaps = [r["overlap_rate"] for r in group if r.get("overlap_rate") is not None]
        cells.append(f"{sum(overlaps) / len(overlaps):.2f}" if overlaps else "")
        cells.append(f"{sum(r['seconds'] for r in group) / len(group):.3g}")
        gflops = [r.get("compute", {}).get("flops", 0) / 1e9 for r in group]
        cells.append(f"{sum(gflops) / len(gflops):.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(paths: list[Path], out: Path) -> list[Path]:
    rows = load_rows(paths)
    if not rows:
        from dlmi.errors import UsageError

        raise UsageError("no finished result rows in " + ", ".join(map(str, paths)))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    written += plot_lcs_vs_k(rows, out)
    written += plot_temperature(rows, out)
    written += plot_lcs_vs_compute(rows, out)
    summary = out / "summary.md"
    summary.write_text(
        f"# Summary ({_model_name(rows)}, {len(rows)} rows)\n\n"
        "LCS: mean ± s.e. of the best LCS ratio of the greedy output of the hard prompt at "
        "each step budget, the judge of success; exact: share of rows with LCS 1.0; soft: "
        "the paper's metric, best LCS of the argmax of the teacher-forced logits of the "
        "training forward under the relaxed prompt (empty for methods without one), never "
        "success; overlap: share of target tokens found in the "
        "prompt (the cheating check, lower is better); s/row: wall seconds until the row was "
        "done; GFLOP/row: estimated matmul FLOPs it used; k = all: every difficulty.\n\n"
        + summary_table(rows) + "\n\n" + anytime_table(rows))
    written.append(summary)
    written += write_method_tables(rows, out)
    return written
