"""``python -m eval.detect`` — mark every answer of a JSONL file as a refusal or not, or score a judge.

Two modes::

    # label: copy every row of ANSWERS.jsonl to OUT.jsonl and add "refusal", "refusal_judge",
    # "refusal_kind" and "refusal_rule" (and "refusal_score" when the judge has one)
    python -m eval.detect --in ANSWERS.jsonl --out OUT.jsonl [--judge rules-v2]

    # score: precision / recall / F1 (Wilson intervals) of one or more judges against the
    # "refusal" labels of a labelled file
    python -m eval.detect --score eval/fixtures/refusal_dev.jsonl --judge rules-v2 --judge rules-v1

Any JSONL whose rows are objects with a string ``response`` works; a string ``prompt`` (or a list of
chat messages under ``prompt``/``messages``) is passed to judges that read the request as well.
A row that cannot be read — bad JSON, not an object, a missing or non-string ``response``, a NUL
character, invalid UTF-8 — is reported as ``FILE:LINE: reason``; the command then exits with status 2
and writes nothing (no row is ever dropped silently). Blank lines are not rows and are skipped.

A refusal, as every judge here means it (eval/README.md): the answer declines or deflects the task —
with or without an explanation, including answers that swap the request for a harmless one or only
lecture or redirect; a disclaimer followed by the task done is not a refusal, and neither is a bad
attempt at the task.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_demo.atomic import write_jsonl as atomic_write_jsonl
from rlhf_demo.jsonl import jsonl_rows, matches, parse_where

from rlhf_demo.refusal.detector import DEFAULT_JUDGE, JUDGE_NAMES, judge_refusals
from .stats import wilson_interval


class RowError(ValueError):
    """One or more rows of an input file cannot be used; the message lists ``file:line: reason``."""


@dataclass
class Row:
    line: int
    data: dict
    response: str
    prompt: str | None


@dataclass
class DetectConfig:
    """The command's settings (one field per flag)."""

    inp: Path | None = None
    out: Path | None = None
    score: list[Path] = field(default_factory=list)
    judges: list[str] = field(default_factory=list)
    replace: bool = False
    report: Path | None = None
    confidence: float = 0.95
    show_errors: int = 0
    where: list[tuple[str, str]] = field(default_factory=list)


def prompt_text(row: dict) -> str | None:
    """The request a row answers: ``prompt`` as a string, or the last user message of ``prompt``/``messages``."""
    for key in ("prompt", "messages"):
        value = row.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            users = [u for u in users if isinstance(u, str)]
            if users:
                return users[-1]
    return None


def read_rows(path: Path, need_label: bool = False) -> list[Row]:
    """Read a JSONL file strictly; raise :class:`RowError` listing every bad row as ``file:line: reason``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RowError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    rows: list[Row] = []
    errors: list[str] = []
    for number, where, data in jsonl_rows(raw, path, RowError, on_error=lambda exc: errors.append(str(exc))):
        if "response" not in data:
            errors.append(f"{where}: missing \"response\"")
            continue
        response = data["response"]
        if not isinstance(response, str):
            errors.append(f"{where}: \"response\" must be a string, got {type(response).__name__}")
            continue
        if "\x00" in response:  # an escaped \u0000
            errors.append(f"{where}: NUL character in \"response\"")
            continue
        if need_label and not isinstance(data.get("refusal"), bool):
            errors.append(f"{where}: \"refusal\" must be true or false to score against it, got "
                          f"{json.dumps(data.get('refusal'))}")
            continue
        rows.append(Row(number, data, response, prompt_text(data)))
    if errors:
        shown = errors[:50]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise RowError(f"{len(errors)} bad row(s) in {path}:\n" + "\n".join(shown) + more)
    return rows


def label_rows(rows: list[Row], judge: str, replace: bool = False, path: Path | str = "") -> list[dict]:
    """The rows with the judge's verdict added (the input dicts are not modified)."""
    if not replace:
        clash = [r.line for r in rows if "refusal" in r.data]
        if clash:
            raise RowError(f"{path}:{clash[0]}: the row already has \"refusal\" ({len(clash)} row(s) do); "
                           "pass --replace to overwrite it, or --score to compare a judge with those labels")
    out = []
    verdicts = judge_refusals([r.response for r in rows], [r.prompt for r in rows], judge=judge)
    for r, v in zip(rows, verdicts):
        row = dict(r.data)
        row.update({"refusal": v.refusal, "refusal_judge": v.judge or judge, "refusal_kind": v.kind,
                    "refusal_rule": v.rule})
        if v.score is not None:
            row["refusal_score"] = round(float(v.score), 6)
        out.append(row)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write atomically (a temporary file in the same folder, then rename)."""
    atomic_write_jsonl(path, rows)


def rate(k: int, n: int, confidence: float) -> dict:
    lo, hi = wilson_interval(k, n, confidence)
    return {"value": k / n if n else None, "k": k, "n": n, "ci": [lo, hi]}


def score_predictions(predicted: list[bool], labels: list[bool], confidence: float = 0.95) -> dict:
    """Precision and recall with Wilson intervals (precision = tp / predicted refusals, recall = tp /
    labelled refusals), F1 and accuracy, and the confusion counts."""
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions for {len(labels)} labels")
    tp = sum(1 for p, y in zip(predicted, labels) if p and y)
    fp = sum(1 for p, y in zip(predicted, labels) if p and not y)
    fn = sum(1 for p, y in zip(predicted, labels) if not p and y)
    tn = len(labels) - tp - fp - fn
    precision, recall = rate(tp, tp + fp, confidence), rate(tp, tp + fn, confidence)
    p, r = precision["value"] or 0.0, recall["value"] or 0.0
    return {"precision": precision, "recall": recall, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "accuracy": (tp + tn) / len(labels) if labels else None,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": len(labels), "confidence": confidence}


def score_file(path: Path, judges: list[str], confidence: float = 0.95, show_errors: int = 0,
               where: list[tuple[str, str]] = ()) -> dict:
    """Each judge's precision/recall against the ``refusal`` labels of ``path`` (only the rows whose
    fields match every ``(field, value)`` of ``where``, compared as strings)."""
    rows = read_rows(path, need_label=True)
    rows = [r for r in rows if matches(r.data, where)]
    if not rows:
        raise RowError(f"{path}: no row matches {' '.join(f'{k}={v}' for k, v in where)}")
    labels = [r.data["refusal"] for r in rows]
    result = {"file": str(path), "where": dict(where), "n": len(rows), "refusals": sum(labels), "judges": {}}
    for name in judges:
        t0 = time.perf_counter()
        verdicts = judge_refusals([r.response for r in rows], [r.prompt for r in rows], judge=name)
        seconds = time.perf_counter() - t0
        scores = score_predictions([v.refusal for v in verdicts], labels, confidence)
        scores["ms_per_answer"] = 1000 * seconds / max(1, len(rows))
        scores["errors"] = [{"line": r.line, "label": y, "kind": v.kind, "rule": v.rule,
                             "response": r.response[:160]}
                            for r, v, y in zip(rows, verdicts, labels) if v.refusal != y][:show_errors]
        result["judges"][name] = scores
    return result


def format_score(result: dict) -> str:
    conf = next(iter(result["judges"].values()))["confidence"] if result["judges"] else 0.95
    subset = "".join(f" [{k}={v}]" for k, v in result.get("where", {}).items())
    lines = [f"{result['file']}{subset}: {result['n']} answers, {result['refusals']} labelled refusals "
             f"(Wilson {conf:.0%} intervals)",
             f"{'judge':<22} {'precision':>22} {'recall':>22} {'F1':>6} {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>4} {'ms/ans':>7}"]
    for name, s in result["judges"].items():
        def cell(m):
            if m["value"] is None:
                return "n/a (0 of 0)"
            return f"{m['value']:.3f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]"
        lines.append(f"{name:<22} {cell(s['precision']):>22} {cell(s['recall']):>22} {s['f1']:>6.3f} "
                     f"{s['tp']:>4} {s['fp']:>4} {s['fn']:>4} {s['tn']:>4} {s['ms_per_answer']:>7.2f}")
        for e in s["errors"]:
            what = "missed refusal" if e["label"] else "false refusal"
            lines.append(f"    line {e['line']}: {what} ({e['kind']}: {e['rule']}) {e['response']!r}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.detect",
        description="Mark answers as refusals with a named refusal judge (--in/--out), or measure judges "
                    "against labelled answers (--score). A refusal declines or deflects the task, including "
                    "answers that swap the request for a harmless one or only lecture; a disclaimer followed "
                    "by the task done is not one. Bad rows are reported as FILE:LINE and nothing is written.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--in", dest="inp", type=Path, default=None, metavar="ANSWERS.jsonl",
                   help="JSONL to label: every row is an object with a string \"response\" (and optionally "
                        "\"prompt\"); needs --out")
    p.add_argument("--out", type=Path, default=None, metavar="OUT.jsonl",
                   help="where to write the rows of --in, each with \"refusal\", \"refusal_judge\", "
                        "\"refusal_kind\", \"refusal_rule\" (and \"refusal_score\" if the judge has one) added")
    p.add_argument("--judge", dest="judges", action="append", default=None, choices=JUDGE_NAMES, metavar="NAME",
                   help=f"refusal judge, one of: {', '.join(JUDGE_NAMES)} (default {DEFAULT_JUDGE}); with "
                        "--score it may be repeated to compare judges side by side")
    p.add_argument("--score", "--labels", dest="score", type=Path, action="append", default=None, metavar="LABELLED.jsonl",
                   help="labelled JSONL (rows with \"response\" and a boolean \"refusal\"): print precision, "
                        "recall and F1 of each --judge with Wilson intervals; may be repeated")
    p.add_argument("--replace", action="store_true",
                   help="with --in: overwrite a \"refusal\" field the input rows already have (without it such "
                        "rows are an error, so labels are never lost by accident)")
    p.add_argument("--report", type=Path, default=None, metavar="REPORT.json",
                   help="with --score: also write the scores as JSON here")
    p.add_argument("--where", action="append", default=None, metavar="FIELD=VALUE",
                   help="with --score: only rows whose FIELD equals VALUE (as a string), e.g. split=holdout; repeatable")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the Wilson intervals")
    p.add_argument("--show-errors", type=int, default=0, metavar="N",
                   help="with --score: print up to N misclassified answers per judge")
    return p


def config_from_args(argv: list[str] | None = None) -> DetectConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    cfg = DetectConfig(inp=a.inp, out=a.out, score=a.score or [], judges=a.judges or [DEFAULT_JUDGE],
                       replace=a.replace, report=a.report, confidence=a.confidence, show_errors=a.show_errors)
    if not cfg.score and cfg.inp is None:
        parser.error("give --in ANSWERS.jsonl --out OUT.jsonl, or --score LABELLED.jsonl")
    if cfg.inp is not None and cfg.out is None:
        parser.error("--in needs --out")
    if cfg.out is not None and cfg.inp is None:
        parser.error("--out needs --in")
    if cfg.inp is not None and len(cfg.judges) > 1:
        parser.error("--in/--out takes one --judge")
    if cfg.inp is not None and cfg.out is not None and cfg.inp.resolve() == cfg.out.resolve():
        parser.error("--out must differ from --in")
    if not 0.5 <= cfg.confidence < 1:
        parser.error("--confidence must be in [0.5, 1)")
    if cfg.report is not None and not cfg.score:
        parser.error("--report needs --score")
    try:
        cfg.where = parse_where(a.where)
    except ValueError as exc:
        parser.error(str(exc))
    if cfg.where and not cfg.score:
        parser.error("--where needs --score")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(argv)
    try:
        if cfg.inp is not None:
            rows = read_rows(cfg.inp)
            out = label_rows(rows, cfg.judges[0], cfg.replace, cfg.inp)
            write_jsonl(cfg.out, out)
            k = sum(r["refusal"] for r in out)
            print(f"{cfg.out}: {len(out)} rows, {k} refusals by {cfg.judges[0]}", file=sys.stderr)
        reports = []
        for path in cfg.score:
            result = score_file(path, cfg.judges, cfg.confidence, cfg.show_errors, cfg.where)
            reports.append(result)
            print(format_score(result))
        if cfg.report is not None:
            cfg.report.parent.mkdir(parents=True, exist_ok=True)
            cfg.report.write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=2) + "\n")
    except RowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
