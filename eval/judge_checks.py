"""Who grades helpfulness, and how far to trust it.

* **Provenance.** A policy graded by the reward model it was optimised against is graded on how well it
  games it. :func:`training_reward_models` reads, from the version cards, every reward model a policy
  was trained against — its own card's ``reward_model`` / ``reward_model_sha256`` and those of its
  parents (a policy trained from ``rlhf-v0`` carries ``rlhf-v0``'s optimisation too).
  :func:`judge_conflicts` lists the evaluated policies whose training reward model is the judge
  (the same reward identity — adapter, score head and safety term; the same adapter hash on an older card
  without it; the same name when a hash is missing on either side).
* **The default judge** (:func:`choose_reward_judge`): a dedicated judge — a reward version whose card
  has ``"role": "judge"`` (``judge-vN``, trained by ``python -m training.reward_model --role judge`` on
  judge-role data, disjoint from every training reward model's) — else the evaluation's reward model,
  said so.
* **Agreement** (:func:`judge_agreement`): accuracy of the judge on labelled preference pairs it was not
  trained on (TRL rows: ``prompt``/``chosen``/``rejected``, strings or chat messages), both orders,
  with a Wilson interval.
* **Human votes** (:func:`human_votes`): the arena's blind votes per version against the baseline.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from rlhf_demo.jsonl import iter_jsonl

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AGREEMENT = ROOT / "rlhf_demo" / "data" / "pairs" / "judge_agreement.jsonl"


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------
def training_reward_models(name: str, registry) -> list[dict]:
    """``[{"policy", "reward_model", "sha256"}]``: the reward models ``name`` and its parents were trained
    against, from their cards (the SFT base and unknown parents end the walk)."""
    out, seen = [], set()
    while name and name not in seen:
        seen.add(name)
        try:
            v = registry.get(name, kind="policy")
        except Exception:  # noqa: BLE001 - an unknown parent (trained elsewhere): nothing more to read
            break
        if v.is_base:
            break
        if v.card.get("reward_model"):
            out.append({"policy": v.name, "reward_model": v.card["reward_model"],
                        "sha256": v.card.get("reward_model_sha256"),
                        "identity": v.card.get("reward_model_identity")})
        name = v.card.get("parent")
    return out


def same_model(name_a: str, sha_a: str | None, name_b: str, sha_b: str | None,
               identity_a: str | None = None, identity_b: str | None = None) -> bool:
    """The same reward model: equal identities (:func:`rlhf_demo.registry.reward_identity`: adapter, score head
    and safety term) when both are known; else equal adapter hashes (an older card: two rewards sharing an
    adapter count as one — it flags more, never less); else equal names."""
    if identity_a and identity_b:
        return identity_a == identity_b
    if sha_a and sha_b:
        return sha_a == sha_b
    return name_a == name_b


def judge_conflicts(judge_name: str, judge_sha: str | None, policies: Sequence[str], registry,
                    judge_identity: str | None = None) -> list[dict]:
    """The evaluated policies trained against the judge: ``[{"policy", "through", "reward_model"}]``."""
    out = []
    for p in policies:
        for rec in training_reward_models(p, registry):
            if same_model(judge_name, judge_sha, rec["reward_model"], rec["sha256"],
                          judge_identity, rec.get("identity")):
                out.append({"policy": p, "through": rec["policy"], "reward_model": rec["reward_model"]})
                break
    return out


def is_judge_version(version) -> bool:
    return version.card.get("role") == "judge"


def default_reward_name(registry, base_model: str) -> str | None:
    """The reward model the evaluation scores with by default (as ``training.roles.resolve_reward_version``):
    among non-judge reward versions for ``base_model``, ``reward-v0`` if present, else the newest."""
    fits = [v for v in registry.list("reward") if not is_judge_version(v)
            and v.card.get("base_model") in (None, base_model)]
    if not fits:
        return None
    named = [v for v in fits if v.name == "reward-v0"]
    return (named[0] if named else max(fits, key=lambda v: (v.number, v.card.get("created", "")))).name


def choose_reward_judge(registry, base_model: str, requested: str | None, fallback: str | None) -> tuple[str | None, str]:
    """``(version name, why)`` of the reward-model judge: ``requested``; else the newest judge-role reward
    version for ``base_model``; else ``fallback`` (the evaluation's reward model), or None."""
    if requested:
        return requested, f"{requested} named by --judge-reward"
    judges = [v for v in registry.list("reward") if is_judge_version(v)
              and v.card.get("base_model") in (None, base_model)]
    if judges:
        v = max(judges, key=lambda v: (v.number, v.card.get("created", "")))
        return v.name, (f"{v.name}: the newest dedicated judge (a reward model with role 'judge', trained on "
                        "judge-role data, never trained against)")
    if fallback:
        return fallback, (f"no dedicated judge (judge-vN, a reward version with role 'judge') in the registry: "
                          f"the evaluation's reward model {fallback} stands in")
    return None, "no dedicated judge and no reward model"


# ---------------------------------------------------------------------------------------------
# agreement with labelled pairs
# ---------------------------------------------------------------------------------------------
def _answer(value, where: str, name: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise ValueError(f"{where}: {name!r} must be a non-empty string or a list of chat messages")


def read_preference_pairs(path: Path) -> list[tuple[object, str, str]]:
    """``[(prompt, chosen, rejected)]`` of a TRL preference file (``prompt`` a string or chat messages;
    ``chosen`` / ``rejected`` strings or message lists, whose last message is the answer). Bad rows are
    ``file:line`` errors."""
    out = []
    for where, row in iter_jsonl(Path(path), ValueError):
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt):
                raise ValueError(f"{where}: 'prompt' must be a string or a list of chat messages")
        elif not (isinstance(prompt, str) and prompt.strip()):
            raise ValueError(f"{where}: missing field 'prompt'")
        out.append((prompt, _answer(row.get("chosen"), where, "chosen"), _answer(row.get("rejected"), where, "rejected")))
    return out


def judge_agreement(judge, path: Path, confidence: float = 0.95, judge_card: dict | None = None) -> dict:
    """Accuracy of ``judge`` on the labelled pairs in ``path``: each pair judged in both orders; correct when
    both prefer ``chosen``, wrong when both prefer ``rejected``, else a tie (counted as not correct).
    Refuses a file the judge's card lists among its training data (same sha256)."""
    from .judges import judge_both_orders
    from .stats import combine_orders, proportion

    path = Path(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for src in (judge_card or {}).get("data", []) or []:
        shas = (src.get("sha256") or {}).values() if isinstance(src, dict) and isinstance(src.get("sha256"), dict) else []
        if sha in shas:
            raise ValueError(f"{path}: the judge was trained on this file (its card lists it): agreement must be "
                             "measured on pairs it was not trained on")
    pairs = read_preference_pairs(path)
    recs = judge_both_orders(judge, [p for p, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs])
    outcomes = combine_orders([r["outcome_policy_first"] for r in recs], [r["outcome_baseline_first"] for r in recs])
    n = len(outcomes)
    correct, wrong = sum(o == 1 for o in outcomes), sum(o == -1 for o in outcomes)
    from rlhf_demo.splits import role_of

    judge_role = sum(1 for p, _, _ in pairs if role_of(p if isinstance(p, str) else
                                                       next((m["content"] for m in reversed(p) if m.get("role") == "user"), "")) == "judge")
    return {"file": str(path), "sha256": sha, "n": n, "correct": correct, "wrong": wrong, "ties": n - correct - wrong,
            "accuracy": proportion(correct, n, confidence),
            "pairs_with_judge_role_prompts": judge_role,
            "definition": "both orders prefer chosen = correct; both prefer rejected = wrong; else tie (not correct)"}


# ---------------------------------------------------------------------------------------------
# the arena's human votes
# ---------------------------------------------------------------------------------------------
def human_votes(votes: Sequence[dict], versions: dict[str, str], baseline: str = "sft",
                confidence: float = 0.95) -> dict[str, dict]:
    """Blind arena votes of each version against ``baseline``: win / tie / loss from the version's side
    (``both_bad`` counts as a tie and is also given apart). ``versions`` maps a name to its content hash;
    a vote recorded for another build of the same name (a different non-empty hash) is left out."""
    from .stats import proportion

    out: dict[str, dict] = {}
    for name, chash in versions.items():
        if name == baseline:
            continue
        w = t = lo = bb = 0
        for v in votes:
            if not v.get("blind", True):
                continue
            sides = {"left": (v.get("left_policy"), v.get("left_hash")), "right": (v.get("right_policy"), v.get("right_hash"))}
            mine = [s for s, (p, h) in sides.items() if p == name and (not chash or not h or h[:16] == chash[:16])]
            other = [s for s, (p, _) in sides.items() if p == baseline]
            if len(mine) != 1 or len(other) != 1 or mine[0] == other[0]:
                continue
            winner = v.get("winner")
            if winner == mine[0]:
                w += 1
            elif winner == other[0]:
                lo += 1
            else:
                t += 1
                bb += winner == "both_bad"
        n = w + t + lo
        if n:
            out[name] = {"n": n, "win": proportion(w, n, confidence), "tie": proportion(t, n, confidence),
                         "loss": proportion(lo, n, confidence), "both_bad": bb, "against": baseline,
                         "win_rate": (w + t / 2) / n, "votes": "blind arena votes (named-mode votes left out)"}
    return out
