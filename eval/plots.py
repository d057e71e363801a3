"""The evaluation report's PNG plots (matplotlib, Agg): refusal rates with their intervals, safety against
helpfulness, and the training curves of the newest runs (their ``metrics.jsonl``, read by
:func:`rlhf_demo.metrics_log.read_metrics`). Used by :func:`eval.report.write_report`."""

from __future__ import annotations

import math
from pathlib import Path

from rlhf_demo.metrics_log import read_metrics


def headline_rate(group: dict, name: str) -> dict | None:
    pr = group["policies"].get(name, {})
    if group["category"] == "unsafe":
        return pr.get("harmlessness", {}).get("harmful_compliance")
    return pr.get("over_refusal", {}).get("over_refusal")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _err(r: dict) -> tuple[float, float, float]:
    v = r["rate"]
    lo, hi = r["ci"]
    return v, max(0.0, v - lo), max(0.0, hi - v)


def plot_rates(report: dict, path: Path) -> Path | None:
    """Bars per version with interval error bars: harmful compliance, over-refusal, win rate."""
    plt = _plt()
    import numpy as np

    names = [p["name"] for p in report["policies"]]
    groups = report.get("results", {})
    panels = []
    for cat, title in (("unsafe", "Harmful compliance\n(unsafe prompts, ↓)"), ("safe", "Over-refusal\n(safe prompts, ↓)")):
        keys = [k for k, g in groups.items() if g["category"] == cat]
        if keys:
            series = {n: [headline_rate(groups[k], n) for k in keys] for n in names}
            panels.append((title, [k.split("/")[0] for k in keys], series, None))
    help_keys = [k for k, g in groups.items() if g.get("comparisons")]
    if help_keys:
        comp = [n for n in report.get("compared", []) if any(n in groups[k]["comparisons"] for k in help_keys)]
        series = {n: [groups[k]["comparisons"].get(n, {}).get("helpfulness", {}).get("win_rate") for k in help_keys]
                  for n in comp}
        panels.append((f"Win rate vs {report['baseline']}\n(judge: {report['judge'].get('name')}, ↑)", help_keys, series, 0.5))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {n: cycle[i % len(cycle)] for i, n in enumerate(names)}  # one colour per version in every panel
    for ax, (title, labels, series, ref) in zip(axes[0], panels):
        x = np.arange(len(labels))
        width = 0.8 / max(1, len(series))
        for i, (name, vals) in enumerate(series.items()):
            v = [(_err(r) if r and r.get("rate") is not None else (0.0, 0.0, 0.0)) for r in vals]
            pos = x + (i - (len(series) - 1) / 2) * width
            ax.bar(pos, [a for a, _, _ in v], width, yerr=[[b for _, b, _ in v], [c for _, _, c in v]], capsize=3,
                   label=name, color=color.get(name))
            for xi, r, (a, _, c) in zip(pos, vals, v):
                if r and r.get("rate") is not None:
                    ax.text(xi, a + c + 0.015, f"{100 * a:.0f}%", ha="center", va="bottom", fontsize=7)
        if ref is not None:
            ax.axhline(ref, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.12)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    conf = int(100 * report["settings"]["confidence"])
    fig.suptitle(f"Rates per version with {conf}% intervals", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scatter(report: dict, path: Path) -> Path | None:
    """Safety (harmful compliance, pooled) vs helpfulness (win rate vs the baseline, pooled)."""
    summary = report.get("summary", {})
    if "unsafe" not in summary:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    base = report["baseline"]
    helpful = summary.get("helpful", {})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(report["policies"]):
        name = p["name"]
        hc = headline_rate(summary["unsafe"], name)
        if not hc or hc.get("rate") is None:
            continue
        x, xl, xh = _err(hc)
        comp = helpful.get("comparisons", {}).get(name, {}).get("helpfulness") if helpful else None
        if comp and name != base:
            y, yl, yh = _err(comp["win_rate"])
        elif name == base:
            y, yl, yh = 0.5, 0.0, 0.0
        else:
            continue
        ax.errorbar([x], [y], xerr=[[xl], [xh]], yerr=[[yl], [yh]], fmt="o", capsize=3, color=colors[i % len(colors)],
                    label=name)
        orr = headline_rate(summary["safe"], name) if "safe" in summary else None
        note = f"{name}" + (f"\nover-refusal {100 * orr['rate']:.0f}%" if orr and orr.get("rate") is not None else "")
        right = x > 0.7
        ax.annotate(note, (x, y), textcoords="offset points", xytext=(-6 if right else 6, 6 + 24 * i), fontsize=8,
                    ha="right" if right else "left")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("harmful compliance on unsafe prompts (← safer)")
    ax.set_ylabel(f"win rate vs {base} on helpful prompts (↑ more helpful)")
    ax.set_title("Safety vs helpfulness across versions", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CURVE_KEYS = ("reward", "kl", "length", "perplexity", "entropy", "loss", "accuracy", "margin", "clip", "explained")
# training.ppo's collapse monitors first (same names as its logs), then the reward model's
PREFERRED_CURVES = ("reward/score_mean", "objective/kl", "response/length", "response/perplexity", "policy/entropy",
                    "val/score", "train/loss", "val/accuracy", "eval/accuracy", "loss", "accuracy")


def read_training_logs(data_dir: Path, max_runs: int = 6) -> dict[str, list[dict]]:
    """``<data dir>/runs/*/metrics.jsonl`` (newest runs first), unreadable lines skipped."""
    runs = {}
    root = Path(data_dir) / "runs"
    if not root.is_dir():
        return runs
    files = sorted(root.glob("*/metrics.jsonl"), key=lambda f: f.stat().st_mtime, reverse=True)[:max_runs]
    for f in files:
        rows = read_metrics(f)
        if rows:
            runs[f.parent.name] = rows
    return runs


def plot_training_curves(data_dir: Path, path: Path) -> Path | None:
    """Up to 9 panels of numeric training metrics (rewards, KL, length, losses, …), one line per run."""
    runs = read_training_logs(data_dir)
    if not runs:
        return None
    keys: list[str] = []
    for rows in runs.values():
        for row in rows:
            for k, v in row.items():
                if (k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool)
                        and any(s in k.lower() for s in CURVE_KEYS)):
                    keys.append(k)
    keys = ([k for k in PREFERRED_CURVES if k in keys] + [k for k in keys if k not in PREFERRED_CURVES])[:9]
    if not keys:
        return None
    plt = _plt()
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for run, rows in runs.items():
            pts = [(r.get("step", r.get("global_step", i)), r[key]) for i, r in enumerate(rows)
                   if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=run, linewidth=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Training curves ({Path(data_dir) / 'runs'}/*/metrics.jsonl)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
