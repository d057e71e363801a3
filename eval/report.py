"""The evaluation report: ``report.json`` (every number with its interval, n, judge, suites,
policies, settings, timestamps), ``report.md`` (tables), PNG plots (matplotlib, Agg), and the raw
``generations.jsonl`` / ``judgements.jsonl`` so a person can read what was measured.

Reports go to ``<data dir>/eval/<UTC timestamp>/`` by default, written into a hidden temporary
directory and renamed into place, so a reader (the arena's Evaluation tab, via
:func:`latest_report`) never sees half a report.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from rlhf_demo.atomic import write_text

from .plots import headline_rate, plot_rates, plot_scatter, plot_training_curves, read_training_logs  # noqa: F401

PLOTS = {"rates": "rates.png", "scatter": "safety_vs_helpfulness.png", "training": "training_curves.png"}
CATEGORY_TITLE = {"unsafe": "Harmful compliance on unsafe prompts (lower is better)",
                  "safe": "Over-refusal on safe prompts (lower is better)",
                  "helpful": "Refusals of ordinary prompts (lower is better)"}


# ---------------------------------------------------------------------------------------------
# finding reports
# ---------------------------------------------------------------------------------------------
def reports_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "eval"


def default_out_dir(data_dir: Path) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = reports_dir(data_dir) / stamp
    n = 1
    while out.exists():
        out = reports_dir(data_dir) / f"{stamp}-{n}"
        n += 1
    return out


def list_reports(data_dir: Path) -> list[Path]:
    """Complete report directories under ``<data dir>/eval``, oldest first."""
    root = reports_dir(data_dir)
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "report.json").is_file()]
    return sorted(found, key=lambda d: ((d / "report.json").stat().st_mtime, d.name))


def latest_report(data_dir: Path) -> Path | None:
    """The DIRECTORY of the newest complete report under ``<data dir>/eval`` (it holds
    ``report.json``, ``report.md``, the PNGs and ``generations.jsonl``), or None if there is none."""
    reports = list_reports(data_dir)
    return reports[-1] if reports else None


def load_report(path: Path) -> dict:
    """``report.json`` from a report directory or the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------
def pct(r: dict | None) -> str:
    """``42.0% [35.4, 48.9]`` from a {"rate", "ci"} dict."""
    if not r or r.get("rate") is None:
        return "–"
    lo, hi = r.get("ci", [None, None])
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{100 * r['rate']:.1f}%"
    return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def num(r: dict | None, digits: int = 3) -> str:
    if not r or r.get("mean") is None:
        return "–"
    lo, hi = r.get("ci", [None, None])
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{r['mean']:.{digits}f}"
    return f"{r['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def pval(p) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def headline_test(group: dict, name: str) -> dict | None:
    pr = group["policies"].get(name, {})
    key = "harmlessness" if group["category"] == "unsafe" else "over_refusal"
    return pr.get(key, {}).get("mcnemar")


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def readme_table(report: dict) -> list[str]:
    """The project README's results table: harmful compliance on XSTest unsafe prompts, over-refusal
    on XSTest safe prompts (pooled over all suites when XSTest was not run), win/tie/lose vs the
    baseline on helpful prompts — each with its interval — and the command."""
    groups, summary, base = report.get("results", {}), report.get("summary", {}), report["baseline"]
    unsafe = groups.get("xstest/unsafe") or summary.get("unsafe")
    safe = groups.get("xstest/safe") or summary.get("safe")
    helpful = summary.get("helpful")
    where = "XSTest" if "xstest/unsafe" in groups else "all unsafe/safe"
    head = ["policy", f"harmful compliance, {where} unsafe (n={unsafe['n'] if unsafe else 0}) ↓",
            f"over-refusal, {where} safe (n={safe['n'] if safe else 0}) ↓",
            f"win / tie / lose vs {base}, helpful (n={helpful['n'] if helpful else 0})"]
    lines = ["## Results table (for the README)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in report["policies"]:
        name = p["name"]
        comp = (helpful or {}).get("comparisons", {}).get(name, {}).get("helpfulness")
        wtl = (f"{pct(comp['win'])} / {pct(comp['tie'])} / {pct(comp['lose'])}" if comp
               else ("(baseline)" if name == base else "–"))
        lines.append(f"| `{name}` | {pct(headline_rate(unsafe, name)) if unsafe else '–'} | "
                     f"{pct(headline_rate(safe, name)) if safe else '–'} | {wtl} |")
    judge = report.get("judge", {})
    lines += ["", f"Judge: {judge.get('name')} {judge.get('reward_model') or judge.get('model') or ''}; refusal "
                  f"detector: {report['detector']['name']}; {int(100 * report['settings']['confidence'])}% "
                  f"intervals (Wilson; bootstrap for the win rate). Command: `{report.get('command') or 'python -m eval'}`",
              ""]
    return lines


def judge_section(report: dict) -> list[str]:
    """Who judged helpfulness, why, whether an evaluated policy was trained against it, how well it agrees with
    labelled pairs it was not trained on, and the arena's human votes."""
    judge = report.get("judge", {})
    lines = ["## Helpfulness judge", ""]
    name = judge.get("reward_model") or judge.get("model") or judge.get("name", "none")
    lines.append(f"- **Judge:** {judge.get('name', 'none')} `{name}`"
                 + (f" (card role: {judge['judge_role']})" if judge.get("judge_role") else ""))
    if judge.get("selection"):
        lines.append(f"- **Why this judge:** {judge['selection']}")
    if judge.get("warning"):
        lines.append(f"- **WARNING — NOT INDEPENDENT:** {judge['warning']}")
    elif judge.get("provenance_check"):
        lines.append(f"- **Provenance:** {judge['provenance_check']}")
    agr = judge.get("agreement") or {}
    if agr.get("accuracy"):
        a = agr["accuracy"]
        lines.append(f"- **Agreement with labelled pairs it was not trained on:** {pct(a)} "
                     f"({a['k']}/{a['n']} pairs; {agr['ties']} ties, {agr['wrong']} wrong; both orders; Wilson "
                     f"interval) on `{agr['file']}`")
    elif agr.get("skipped"):
        lines.append(f"- **Agreement with labelled pairs:** not measured ({agr['skipped']})")
    rm = report.get("reward_model") or {}
    if rm.get("trained_against_by"):
        lines.append(f"- **Reward column:** `{rm['name']}` is the training reward model of "
                     + ", ".join(f"`{c['policy']}`" for c in rm["trained_against_by"])
                     + ": their reward scores show what they were optimised for, not independent quality")
    votes = report.get("human_votes") or {}
    rows = {k: v for k, v in votes.items() if isinstance(v, dict) and "n" in v}
    if rows:
        lines += ["", f"### Arena votes vs `{report['baseline']}` (blind)", "",
                  "| version | votes | win | tie (both bad) | loss | win rate |", "|---|---|---|---|---|---|"]
        for k, v in rows.items():
            lines.append(f"| `{k}` | {v['n']} | {pct(v['win'])} | {pct(v['tie'])} ({v['both_bad']}) | "
                         f"{pct(v['loss'])} | {100 * v['win_rate']:.1f}% |")
    else:
        lines.append("- **Arena votes:** none recorded for the evaluated versions")
    return lines + [""]


def render_markdown(report: dict) -> str:
    base = report["baseline"]
    names = [p["name"] for p in report["policies"]]
    compared = report.get("compared", [])
    judge = report.get("judge", {})
    judge_desc = judge.get("name", "none")
    if judge.get("reward_model"):
        judge_desc += f" ({judge['reward_model']})"
    elif judge.get("model"):
        judge_desc += f" ({judge['model']})"
    if judge.get("fallback_reason"):
        judge_desc += f" — fallback: {judge['fallback_reason']}"
    if judge.get("own_reward_judge"):
        judge_desc += " — NOT INDEPENDENT (a training reward model of an evaluated policy)"
    lines = [f"# Evaluation report — {report['finished']}", ""]
    lines += [f"- **Policies:** " + ", ".join(f"`{p['name']}` ({p['content_hash'] or 'base'})" for p in report["policies"])
              + f"; baseline `{base}`",
              f"- **Suites:** " + ", ".join(f"{s['name']} ({', '.join(f'{k} {v}' for k, v in s['counts'].items())})"
                                           for s in report["suites"]),
              f"- **Refusal detector:** {report['detector']['name']} (XSTest string match also reported)",
              f"- **Pairwise judge:** {judge_desc}, on {', '.join(report.get('judge_categories', [])) or 'nothing'} "
              "prompts, each pair judged in both orders (disagreement = tie)",
              f"- **Reward model:** {report.get('reward_model', {}).get('name') or 'none'}",
              f"- **Decoding:** greedy, max {report['settings']['max_new_tokens']} new tokens "
              f"({report['settings']['safety_max_new_tokens']} on unsafe/safe prompts), repetition penalty "
              f"{report['settings']['repetition_penalty']}",
              f"- **Intervals:** {int(100 * report['settings']['confidence'])}% — Wilson for rates, percentile "
              f"bootstrap ({report['settings']['n_bootstrap']} resamples, seed {report['settings']['seed']}) for "
              "win rates and means; McNemar exact test vs the baseline",
              f"- **Command:** `{report.get('command') or 'python -m eval'}`",
              f"- **Time:** {report['timings_s'].get('total_s', 0):.0f} s "
              f"(generation {report['timings_s'].get('generation_s', 0):.0f} s)", ""]

    lines += judge_section(report)

    summary = report.get("summary", {})
    lines += readme_table(report)
    lines += ["## Summary (all suites pooled)", ""]
    head = ["policy", "harmful compliance ↓", "over-refusal ↓", f"win / tie / lose vs {base}", "win rate",
            "length-controlled win rate", "KL to SFT / answer (sampled)", "mean length (tokens)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        unsafe = summary.get("unsafe")
        safe = summary.get("safe")
        helpful = summary.get("helpful")
        hc = pct(headline_rate(unsafe, name)) if unsafe else "–"
        orr = pct(headline_rate(safe, name)) if safe else "–"
        wtl = wr = lc = "–"
        if helpful and name in helpful.get("comparisons", {}):
            h = helpful["comparisons"][name]["helpfulness"]
            wtl = f"{pct(h['win'])} / {pct(h['tie'])} / {pct(h['lose'])}"
            wr = pct(h["win_rate"])
            lc = pct(h.get("length_controlled"))
        elif name == base:
            wtl = "(baseline)"
        kl = report.get("kl", {}).get(name, {})
        lines.append(f"| `{name}` | {hc} | {orr} | {wtl} | {wr} | {lc} | {num(kl.get('kl_exact_per_response'), 3)} | "
                     f"{num(kl.get('mean_length_tokens'), 1)} |")
    lines.append("")

    groups = report.get("results", {})
    for cat in ("unsafe", "safe", "helpful"):
        rows = [(k, g) for k, g in groups.items() if g["category"] == cat]
        if cat in summary and len(rows) > 1:
            rows.append(("all", summary[cat]))
        if not rows:
            continue
        lines += [f"## {CATEGORY_TITLE[cat]}", ""]
        head = ["suite", "n"] + [f"`{n}`" for n in names] + [f"Δ vs {base}, McNemar p ({n})" for n in names if n != base]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, g in rows:
            cells = [key.split("/")[0], str(g["n"])] + [pct(headline_rate(g, n)) for n in names]
            for n in names:
                if n == base:
                    continue
                t = headline_test(g, n)
                a, b = headline_rate(g, n), headline_rate(g, base)
                if t and a and b and a.get("rate") is not None:
                    cells.append(f"{100 * (a['rate'] - b['rate']):+.1f} pts, p={pval(t['p_value'])} "
                                 f"({t['policy_only']}↑/{t['baseline_only']}↓)")
                else:
                    cells.append("–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    # helpfulness
    help_rows = []
    for key, g in list(groups.items()) + [(f"all/{c}", summary[c]) for c in summary]:
        for name, comp in g.get("comparisons", {}).items():
            help_rows.append((key, name, g["n"], comp["helpfulness"]))
    if help_rows:
        lines += [f"## Win / tie / lose vs `{base}` (judge: {judge_desc})", ""]
        head = ["suite/category", "policy", "n", "win", "tie", "lose", "win rate", "length-controlled",
                "order agreement", "sign test p"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, name, n, h in help_rows:
            lines.append(f"| {key} | `{name}` | {n} | {pct(h['win'])} | {pct(h['tie'])} | {pct(h['lose'])} | "
                         f"{pct(h['win_rate'])} | {pct(h.get('length_controlled'))} | "
                         f"{100 * (h.get('order_agreement') or 0):.0f}% | {pval(h['sign_test']['p_value'])} |")
        lines.append("")

    # reward, length, detector agreement
    lines += ["## Reward-model score, length and detector agreement", ""]
    head = ["suite/category", "policy", "mean reward", "mean length (tokens)", "hit max tokens",
            "refusal (rules-v1)", "refusal (XSTest string match)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, g in groups.items():
        for name in names:
            pr = g["policies"][name]
            lines.append(f"| {key} | `{name}` | {num(pr.get('reward'), 3)} | {num(pr.get('length_tokens'), 1)} | "
                         f"{100 * (pr.get('truncated') or 0):.0f}% | {pct(pr['refusal'].get('refusal_ours'))} | "
                         f"{pct(pr['refusal'].get('refusal_string_match'))} |")
    lines.append("")

    kl = report.get("kl", {})
    if any("kl_k1_per_token" in v for v in kl.values()):
        lines += ["## KL to SFT on answers sampled from each policy", ""]
        head = ["policy", "exact KL / token", "k1 / token", "k3 / token", "exact KL / answer", "answers", "tokens"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, v in kl.items():
            if "kl_k1_per_token" not in v:
                continue
            lines.append(f"| `{name}` | {num(v.get('kl_exact_per_token'), 4)} | {num(v['kl_k1_per_token'], 4)} | "
                         f"{num(v['kl_k3_per_token'], 4)} | {num(v.get('kl_exact_per_response'), 3)} | "
                         f"{v['n_responses']} | {v['n_tokens']} |")
        lines.append("")

    plots = report.get("plots", [])
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += ["## Method", "",
              "- Harmful compliance = share of unsafe prompts whose response is not a refusal; over-refusal = share "
              f"of safe prompts refused. Refusals by the refusal judge `{(report.get('detector') or {}).get('name', '?')}` "
              "(rlhf_demo/refusal/detector.py, which reads each request and its answer; its precision and recall on a frozen "
              "labelled test set it was not built on are in eval/README.md).",
              "- McNemar: exact binomial test on the prompts where exactly one of the two policies complied "
              "(↑ policy only, ↓ baseline only).",
              "- Win rate = (wins + ties/2) / n. Length-controlled win rate: logistic regression of the outcome on "
              "tanh(length difference / sd), read at zero length difference.",
              "- KL: exact KL(policy ‖ SFT) of the full next-token distributions at each position of answers "
              "SAMPLED from the policy (temperature 1, seeded), summed per answer (rlhf_demo/kl.py); never negative, "
              "and its mean over sampled answers estimates the sequence-level KL without bias.",
              "- Raw data (written with every report): [report.json](report.json) (every number), "
              "[generations.jsonl](generations.jsonl) (every response, its refusal verdict and reward), "
              "[judgements.jsonl](judgements.jsonl) (both orders of every pair).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def write_report(report: dict, generations: list[dict], judgements: list[dict], out_dir: Path, data_dir: Path,
                 plots: bool = True) -> Path:
    """Write every file of a report; a new directory appears atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    fresh = not out_dir.exists()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if fresh:  # build it in <parent>/.partial/ (invisible to a "<data dir>/eval/*/report.md" glob), then rename
        (out_dir.parent / ".partial").mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}-", dir=out_dir.parent / ".partial"))
    else:
        work = out_dir
    try:
        made = []
        if plots:
            for key, fn in ((PLOTS["rates"], lambda p: plot_rates(report, p)),
                            (PLOTS["scatter"], lambda p: plot_scatter(report, p)),
                            (PLOTS["training"], lambda p: plot_training_curves(data_dir, p))):
                try:
                    if fn(work / key):
                        made.append(key)
                except Exception as exc:  # noqa: BLE001 - a plot must never lose the numbers
                    print(f"[eval] plot {key} failed: {exc}", flush=True)
        report = dict(report, plots=made)
        clean = _jsonable(report)
        files = {
            "report.json": json.dumps(clean, indent=2, ensure_ascii=False, allow_nan=False),
            "report.md": render_markdown(clean),
            "generations.jsonl": "".join(json.dumps(_jsonable(g), ensure_ascii=False) + "\n" for g in generations),
            "judgements.jsonl": "".join(json.dumps(_jsonable(j), ensure_ascii=False) + "\n" for j in judgements),
        }
        # report.json last: its presence marks a complete report
        for name in ("report.md", "generations.jsonl", "judgements.jsonl", "report.json"):
            write_text(work / name, files[name], fsync=False)
        if fresh:
            os.rename(work, out_dir)
            with contextlib.suppress(OSError):
                (out_dir.parent / ".partial").rmdir()  # only when empty (another run may be writing)
    except BaseException:
        if fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir
