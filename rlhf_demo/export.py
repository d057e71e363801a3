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

Voided votes (:meth:`Store.void_vote`) are left out; the database keeps them.

Prompts (``--prompts``): the first user message of every arena conversation, de-duplicated, in the
same JSONL shape as ``rlhf_demo/data/ppo_prompts.jsonl``: ``{"id", "category": "arena", "prompt"}``.

Data card: every export with ``--out`` also writes ``<out>.card.json`` (``--card`` to put it elsewhere):
counts (votes stored, voided, used; by winner — ties and "both bad" apart; pairs written and skipped, with
why), the policy versions with their adapter hashes, the date range of the votes used, the voids by reason,
the licence (``--licence``, "unspecified" unless given), the filters and the PII redaction applied.

``--redact-pii`` replaces e-mail addresses, phone numbers, street addresses and names in every exported
message with placeholders (:mod:`rlhf_demo.pii`, which says what it finds and what it cannot).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .arena import clean_text
from .atomic import write_json, write_jsonl
from .config import add_settings_args, settings_from_args
from .records import PreferencePair, PromptItem
from .store import Store, StoreError

FORMATS = ("trl", "hh")


@dataclass
class ExportResult:
    records: list[PreferencePair] = field(default_factory=list)  # the pairs, typed (what training reads)
    from_votes: int = 0
    from_better: int = 0
    skipped: Counter = field(default_factory=Counter)
    last_vote_id: int = 0
    last_better_id: int = 0
    out: Path | None = None
    # what the data card needs about the votes used (voided ones excluded)
    votes_used: int = 0
    by_winner: Counter = field(default_factory=Counter)
    blind_votes: int = 0
    suggested_votes: int = 0  # votes whose prompts came (at least in part) from the prompt pool
    versions: dict = field(default_factory=dict)  # name -> {"hashes": set, "votes": n}
    first_vote: _dt.datetime | None = None
    last_vote: _dt.datetime | None = None
    better_used: int = 0
    redacted: Counter | None = None  # PII findings by kind when redaction was asked for
    filters: dict = field(default_factory=dict)

    @property
    def pairs(self) -> list[dict]:
        """The pairs as TRL rows (with ``meta``): the file boundary's form, whatever the output format."""
        return [r.to_trl() for r in self.records]

    @property
    def written(self) -> int:
        return len(self.records)

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
    return {**pair(prompt, chosen["content"], rejected["content"]), "meta": vote_meta(vote)}, None


def vote_meta(vote: dict) -> dict:
    """Where a pair came from, as flat scalars (one Arrow schema for every row): ``from`` (vote | better_answer),
    the vote's id, ``suggested`` (any turn's prompt came from the prompt pool: the "Suggest" button or a clickable
    example), each turn's prompt source and category (comma-joined, ``typed`` / ``-`` when not from the pool), and
    why the round got its pair (``pairing``: spec, boost, replay, named, sample; ``replay_of`` a vote id)."""
    prompts = vote.get("prompts") or []
    pairing = vote.get("pairing") or {}
    return {"from": "vote", "vote_id": vote.get("id"),
            "suggested": any(p.get("source") in ("suggested", "example") for p in prompts),
            "prompt_sources": ",".join(str(p.get("source") or "typed") for p in prompts),
            "prompt_categories": ",".join(str(p.get("category") or "-") for p in prompts),
            "pairing": str(pairing.get("reason") or ""), "replay_of": pairing.get("replay_of")}


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
            out.append({**pair(prompt, text, answer["content"]),
                        "meta": {"from": "better_answer", "vote_id": None, "suggested": False, "prompt_sources": "",
                                 "prompt_categories": "", "pairing": "", "replay_of": None}})
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
    out = {"chosen": messages_to_hh(row["prompt"] + row["chosen"]),
           "rejected": messages_to_hh(row["prompt"] + row["rejected"])}
    if "meta" in row:
        out["meta"] = row["meta"]
    return out


def _key(row: dict) -> str:
    """The pair's text (its ``meta`` aside): the same pair from two votes is exported once."""
    return json.dumps({k: v for k, v in row.items() if k != "meta"}, sort_keys=True, ensure_ascii=False)


def redact_pair(row: dict, counts: Counter) -> dict:
    """``row`` with PII in every message replaced by placeholders (:func:`rlhf_demo.pii.redact`)."""
    from .pii import redact

    def msgs(messages):
        out = []
        for m in messages:
            r = redact(m["content"])
            counts.update(r.counts)
            out.append({**m, "content": r.text})
        return out
    return {k: msgs(v) if isinstance(v, list) else v for k, v in row.items()}


def _note_vote(result: ExportResult, v: dict) -> None:
    result.votes_used += 1
    result.suggested_votes += vote_meta(v)["suggested"]
    result.by_winner[v["winner"]] += 1
    result.blind_votes += bool(v.get("blind", True))
    for side in ("left", "right"):
        entry = result.versions.setdefault(v[f"{side}_policy"], {"hashes": set(), "votes": 0})
        entry["votes"] += 1
        if v.get(f"{side}_hash"):
            entry["hashes"].add(v[f"{side}_hash"])
    t = v.get("created_at")
    if t is not None:
        result.first_vote = t if result.first_vote is None else min(result.first_vote, t)
        result.last_vote = t if result.last_vote is None else max(result.last_vote, t)


def export_pairs(store: Store, fmt: str = "trl", out: Path | str | None = None, blind_only: bool = False,
                 since_vote_id: int = 0, since_better_id: int = 0, better: bool = True,
                 redact_pii: bool = False) -> ExportResult:
    """Preference pairs from the store (returned as typed records, ``result.records``; TRL rows only in
    ``result.pairs`` and the file, written in ``fmt`` when ``out`` is given).

    ``since_*_id`` export only feedback newer than a previous export (its ``last_*_id``). Voided votes are
    left out. ``redact_pii`` replaces PII in every message with placeholders (``result.redacted`` counts them).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    result = ExportResult(redacted=Counter() if redact_pii else None,
                          filters={"blind_only": blind_only, "since_vote_id": since_vote_id,
                                   "since_better_id": since_better_id, "better_answers": better})
    seen: set[str] = set()

    def add(row: dict) -> bool:
        if redact_pii:
            row = redact_pair(row, result.redacted)
        k = _key(row)
        if k in seen:
            result.skipped["duplicate"] += 1
            return False
        seen.add(k)
        result.records.append(PreferencePair.from_export_row(row))
        return True

    for v in store.votes(blind_only=blind_only, since_id=since_vote_id):
        result.last_vote_id = max(result.last_vote_id, v["id"])
        _note_vote(result, v)
        row, why = vote_pair(v)
        if row is None:
            result.skipped[why] += 1
        elif add(row):
            result.from_votes += 1
    if better:
        for b in store.better_answers(since_id=since_better_id):
            result.last_better_id = max(result.last_better_id, b["id"])
            result.better_used += 1
            rows, skipped = better_pairs(b)
            result.skipped.update(skipped)
            result.from_better += sum(add(r) for r in rows)
    if out is not None:
        result.out = Path(out)
        rows = result.pairs
        write_jsonl(result.out, rows if fmt == "trl" else [to_hh(r) for r in rows])
    return result


def data_card(store: Store, result: ExportResult, licence: str | None = None, fmt: str = "trl") -> dict:
    """What an export contains and where it came from (written next to it as ``<out>.card.json``)."""
    voids = store.voids()
    stats = store.stats()
    iso = (lambda t: t.isoformat(timespec="seconds") + "Z" if t is not None else None)
    return {
        "card_version": 1,
        "generated_at": iso(_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)),
        "app_version": __version__, "schema_version": store.schema_version(),
        "database": store.where, "file": result.out.name if result.out else None, "format": fmt,
        "licence": (licence or "").strip() or "unspecified",
        "counts": {
            "votes_stored": stats["votes"], "votes_voided": len(voids), "votes_used": result.votes_used,
            "blind_votes_used": result.blind_votes, "votes_on_suggested_prompts": result.suggested_votes,
            "named_votes_used": result.votes_used - result.blind_votes,
            "by_winner": {w: result.by_winner.get(w, 0) for w in ("left", "right", "tie", "both_bad")},
            "better_answers_used": result.better_used, "pairs": result.written, "pairs_from_votes": result.from_votes,
            "pairs_from_better_answers": result.from_better, "skipped": dict(sorted(result.skipped.items())),
        },
        "versions": [{"name": name, "hashes": sorted(v["hashes"]), "votes": v["votes"]}
                     for name, v in sorted(result.versions.items())],
        "date_range": {"first_vote": iso(result.first_vote), "last_vote": iso(result.last_vote)},
        "voids": {"count": len(voids), "by_reason": dict(Counter(v["reason"] for v in voids).most_common()),
                  "last_void": iso(max((v["created_at"] for v in voids), default=None))},
        "filters": result.filters,
        "pii_redaction": ({"applied": True, "counts": dict(sorted(result.redacted.items())),
                           "method": _pii_method()} if result.redacted is not None else {"applied": False}),
    }


def _pii_method() -> str:
    from .pii import METHOD
    return METHOD


def card_path(out: Path) -> Path:
    """``pairs.jsonl`` → ``pairs.card.json``."""
    out = Path(out)
    return out.with_name(out.name.split(".")[0] + ".card.json")


def export_prompt_items(store: Store, redact_pii: bool = False) -> list[PromptItem]:
    """First user message of every conversation (de-duplicated), as typed PPO prompts (what training reads)."""
    items, seen = [], set()
    for t in store.turns():
        if t["turn"] != 1 or t["attempt"] != 0:
            continue
        text = clean_text(t["user_message"]).strip()
        if redact_pii:
            from .pii import redact
            text = redact(text).text
        if not text or text in seen:
            continue
        seen.add(text)
        items.append(PromptItem([{"role": "user", "content": text}], "arena", f"arena-{t['conversation_id'][:12]}",
                                "arena"))
    return items


def export_prompts(store: Store, out: Path | str | None = None, redact_pii: bool = False) -> list[dict]:
    """:func:`export_prompt_items` as PPO prompt rows (``{"id", "category", "prompt"}``: the file's form)."""
    rows = [item.to_row() for item in export_prompt_items(store, redact_pii)]
    if out is not None:
        write_jsonl(Path(out), rows)
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
    p.add_argument("--redact-pii", action="store_true",
                   help="replace e-mails, phone numbers, street addresses and names in every exported message with "
                        "[EMAIL]/[PHONE]/[ADDRESS]/[NAME] (rlhf_demo/pii.py says what it cannot find)")
    p.add_argument("--licence", default=None,
                   help="the licence the exported data is released under, recorded in the data card "
                        "(default: 'unspecified')")
    p.add_argument("--card", type=Path, default=None,
                   help="where to write the data card (JSON; default: next to --out as <name>.card.json)")
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
                              better=not args.no_better, redact_pii=args.redact_pii)
        print(result.summary())
        card = args.card or card_path(args.out)
        write_json(card, data_card(store, result, args.licence, args.format))
        print(f"wrote the data card to {card}")
        print(f"last vote id {result.last_vote_id}, last better-answer id {result.last_better_id} "
              "(pass them as --since-vote-id/--since-better-id next time to export only new feedback)")
        if args.prompts:
            prompts = export_prompts(store, args.prompts, redact_pii=args.redact_pii)
            print(f"wrote {len(prompts)} prompts to {args.prompts}")
    except (StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
