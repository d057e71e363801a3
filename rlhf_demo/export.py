"""Feedback database → preference pairs and prompts, in the ecosystem's formats.

``python -m rlhf_demo.export --format trl --out pairs.jsonl [--prompts prompts.jsonl]``

Formats:

* ``trl`` — TRL's conversational preference rows with an explicit prompt:
  ``{"prompt": [messages…], "chosen": [{"role": "assistant", …}], "rejected": [{…}]}``;
* ``hh`` — Anthropic HH-RLHF text: ``{"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": …}``.

Rules: a vote "A is better"/"B is better" gives one pair — the preferred side's conversation up
to the last user message is the prompt (the two sides' earlier answers can differ in a
multi-turn round; the preferred side's history is the one the user endorsed), its last answer is
``chosen`` and the other side's last answer ``rejected``. Ties and "both are bad" give no pair. A
written better answer is ``chosen`` against BOTH model answers of its turn (two pairs, each with
that side's own history as prompt). Pairs with identical or empty answers are skipped; duplicates
are written once. Training calls :func:`export_pairs` directly.

Prompts (``--prompts``): the first user message of every arena conversation, de-duplicated, in the
same JSONL shape as ``rlhf_demo/data/ppo_prompts.jsonl``: ``{"id", "category": "arena", "prompt"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .arena import clean_text
from .config import add_settings_args, settings_from_args
from .store import Store, StoreError

FORMATS = ("trl", "hh")


@dataclass
class ExportResult:
    pairs: list[dict] = field(default_factory=list)  # TRL rows, whatever the output format
    from_votes: int = 0
    from_better: int = 0
    skipped: Counter = field(default_factory=Counter)
    last_vote_id: int = 0
    last_better_id: int = 0
    out: Path | None = None

    @property
    def written(self) -> int:
        return len(self.pairs)

    def summary(self) -> str:
        where = f" to {self.out}" if self.out else ""
        skipped = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted(self.skipped.items())) or "none"
        return (f"wrote {self.written} pairs{where} ({self.from_votes} from votes, {self.from_better} from "
                f"better answers); skipped: {skipped}")


def _msg(role: str, content) -> dict:
    return {"role": role, "content": clean_text(content)}


def _clean_messages(messages: list) -> list[dict]:
    return [_msg(m.get("role", "user"), m.get("content", "")) for m in messages or []]


def _split(messages: list[dict]) -> tuple[list[dict], dict | None]:
    """(prompt, last assistant message) of one side's conversation."""
    msgs = _clean_messages(messages)
    if not msgs or msgs[-1]["role"] != "assistant":
        return msgs, None
    return msgs[:-1], msgs[-1]


def pair(prompt: list[dict], chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": [_msg("assistant", chosen)], "rejected": [_msg("assistant", rejected)]}


def vote_pair(vote: dict) -> tuple[dict | None, str | None]:
    """(pair, None) or (None, reason it gives no pair)."""
    winner = vote["winner"]
    if winner in ("tie", "both_bad"):
        return None, winner
    win, lose = ("left", "right") if winner == "left" else ("right", "left")
    prompt, chosen = _split(vote[f"{win}_messages"])
    _, rejected = _split(vote[f"{lose}_messages"])
    if chosen is None or rejected is None or not chosen["content"].strip() or not rejected["content"].strip():
        return None, "empty_answer"
    if chosen["content"].strip() == rejected["content"].strip():
        return None, "identical_answers"
    return pair(prompt, chosen["content"], rejected["content"]), None


def better_pairs(better: dict) -> tuple[list[dict], Counter]:
    """The better answer as ``chosen`` against each model answer of its turn."""
    out, skipped = [], Counter()
    text = clean_text(better["text"]).strip()
    for side in ("left", "right"):
        prompt, answer = _split(better[f"{side}_messages"])
        if answer is None or not answer["content"].strip():
            skipped["empty_answer"] += 1
        elif not text or answer["content"].strip() == text:
            skipped["identical_answers"] += 1
        else:
            out.append(pair(prompt, text, answer["content"]))
    return out, skipped


def messages_to_hh(messages: list[dict]) -> str:
    """``[user, assistant, …]`` → ``"\\n\\nHuman: …\\n\\nAssistant: …"`` (system text joins the first turn)."""
    parts, system = [], ""
    for m in messages:
        if m["role"] == "system":
            system += m["content"].strip() + "\n\n"
            continue
        speaker = "Human" if m["role"] == "user" else "Assistant"
        content = m["content"].strip()
        if speaker == "Human" and system:
            content, system = system + content, ""
        parts.append(f"\n\n{speaker}: {content}")
    return "".join(parts)


def to_hh(row: dict) -> dict:
    return {"chosen": messages_to_hh(row["prompt"] + row["chosen"]),
            "rejected": messages_to_hh(row["prompt"] + row["rejected"])}


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def write_jsonl(rows: list[dict], out: Path) -> None:
    """Write atomically (temp file in the same directory, fsync, rename): never a half-written file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_pairs(store: Store, fmt: str = "trl", out: Path | str | None = None, blind_only: bool = False,
                 since_vote_id: int = 0, since_better_id: int = 0, better: bool = True) -> ExportResult:
    """Preference pairs from the store (returned as TRL rows; written in ``fmt`` when ``out`` is given).

    ``since_*_id`` export only feedback newer than a previous export (its ``last_*_id``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    result = ExportResult()
    seen: set[str] = set()

    def add(row: dict) -> bool:
        k = _key(row)
        if k in seen:
            result.skipped["duplicate"] += 1
            return False
        seen.add(k)
        result.pairs.append(row)
        return True

    for v in store.votes(blind_only=blind_only, since_id=since_vote_id):
        result.last_vote_id = max(result.last_vote_id, v["id"])
        row, why = vote_pair(v)
        if row is None:
            result.skipped[why] += 1
        elif add(row):
            result.from_votes += 1
    if better:
        for b in store.better_answers(since_id=since_better_id):
            result.last_better_id = max(result.last_better_id, b["id"])
            rows, skipped = better_pairs(b)
            result.skipped.update(skipped)
            result.from_better += sum(add(r) for r in rows)
    if out is not None:
        result.out = Path(out)
        write_jsonl(result.pairs if fmt == "trl" else [to_hh(r) for r in result.pairs], result.out)
    return result


def export_prompts(store: Store, out: Path | str | None = None) -> list[dict]:
    """First user message of every conversation (de-duplicated), as PPO prompt rows."""
    rows, seen = [], set()
    for t in store.turns():
        if t["turn"] != 1 or t["attempt"] != 0:
            continue
        text = clean_text(t["user_message"]).strip()
        if not text or text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"arena-{t['conversation_id'][:12]}", "category": "arena", "prompt": text})
    if out is not None:
        write_jsonl(rows, Path(out))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlhf_demo.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=FORMATS, default="trl",
                   help="trl: conversational prompt/chosen/rejected rows; hh: HH-RLHF '\\n\\nHuman: …' text "
                        "(default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write the pairs to")
    p.add_argument("--prompts", type=Path, default=None,
                   help="also write the users' first prompts (JSONL, for PPO) to this file")
    p.add_argument("--blind-only", action="store_true",
                   help="only votes cast in blind mode (default: blind and named votes)")
    p.add_argument("--no-better", action="store_true", help="leave out user-written better answers")
    p.add_argument("--since-vote-id", type=int, default=0, help="only votes with a larger id (incremental export)")
    p.add_argument("--since-better-id", type=int, default=0,
                   help="only better answers with a larger id (incremental export)")
    add_settings_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if not settings.db_url and not (settings.data_dir / "feedback.db").is_file():
        print(f"error: no feedback database at {settings.data_dir / 'feedback.db'} (wrong --data-dir?)",
              file=sys.stderr)
        return 1
    store = Store.from_settings(settings)
    try:
        result = export_pairs(store, args.format, args.out, blind_only=args.blind_only,
                              since_vote_id=args.since_vote_id, since_better_id=args.since_better_id,
                              better=not args.no_better)
        print(result.summary())
        print(f"last vote id {result.last_vote_id}, last better-answer id {result.last_better_id} "
              "(pass them as --since-vote-id/--since-better-id next time to export only new feedback)")
        if args.prompts:
            prompts = export_prompts(store, args.prompts)
            print(f"wrote {len(prompts)} prompts to {args.prompts}")
    except (StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
