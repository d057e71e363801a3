"""The evaluation's judges, chosen before anything runs: which reward version grades helpfulness (and the
check that no evaluated policy was trained against it), the pairwise judge with its fallbacks, its agreement
with labelled pairs, and the arena's human votes next to it. Used by :func:`eval.runner.run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_demo.config import Settings
from rlhf_demo.registry import reward_identity

from .judges import Judge, JudgeError, load_lm_judge, load_reward_judge, openai_judge_from_args

if TYPE_CHECKING:
    from .runner import EvalConfig


def log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def plan_reward_judge(config: EvalConfig, settings: Settings, registry, policies: list[str],
                      fallback: str | None = None) -> dict | None:
    """Which reward version judges (``--judge reward``), why, and the provenance check — before anything runs.

    The default is the newest dedicated judge (a reward version with card role 'judge', judge-vN); without
    one, the evaluation's reward model stands in. A judge that an evaluated policy (or one of its parents)
    was trained against is refused (JudgeError), or with ``allow_own_reward_judge`` used and marked."""
    from rlhf_demo.registry import RegistryError

    from .judge_checks import choose_reward_judge, default_reward_name, judge_conflicts

    if config.judge != "reward":
        return None
    if fallback is None and config.reward_model != "none":
        fallback = config.reward_model or default_reward_name(registry, settings.base_model)
    name, why = choose_reward_judge(registry, settings.base_model, config.judge_reward, fallback)
    if name is None:
        return None
    try:
        card = registry.get(name, kind="reward").card
    except RegistryError:
        if name != fallback:  # a named judge must exist
            raise
        card = {}  # a scorer that is not a registry version (tests): checked by name
    sha = card.get("files", {}).get("adapter_model.safetensors")
    conflicts = judge_conflicts(name, sha, policies, registry, judge_identity=reward_identity(card))
    plan = {"version": name, "why": why, "role": card.get("role", "reward"), "sha256": sha,
            "trained_against_by": conflicts}
    if conflicts:
        who = ", ".join(f"{c['policy']}" + (f" (through {c['through']})" if c["through"] != c["policy"] else "")
                        for c in conflicts)
        msg = (f"the helpfulness judge {name} is the reward model that {who} was trained against (version cards): "
               "a policy graded by its own reward model is graded on how well it games it")
        if not config.allow_own_reward_judge:
            raise JudgeError(msg + ". Publish a dedicated judge (python -m training.reward_model --role judge --name "
                                   "judge-v0 on judge-role data) or name one with --judge-reward, use --judge lm / "
                                   "--judge openai, or pass --allow-own-reward-judge to run anyway (marked in the "
                                   "report)")
        log("WARNING " + "!" * 60)
        log(f"WARNING: {msg}; --allow-own-reward-judge: its win rates are marked as not independent in the report")
        log("WARNING " + "!" * 60)
        plan["own_reward_judge_warning"] = msg + " (--allow-own-reward-judge): not an independent judgement"
    return plan


def build_judge(config: EvalConfig, settings: Settings, server, reward_judge, progress,
                plan: dict | None = None) -> tuple[Judge | None, dict]:
    """The pairwise judge and its description (with the reason for any fallback)."""
    kind = config.judge
    if kind == "none":
        return None, {"name": "none"}
    if kind == "reward":
        if plan is not None:
            if reward_judge is not None and reward_judge.model_name == plan["version"]:
                judge = reward_judge
            else:
                judge = load_reward_judge(settings, plan["version"], config.judge_margin, progress, allow_judge=True)
            info = dict(judge.describe(), selection=plan["why"], judge_role=plan["role"],
                        judge_sha256=plan["sha256"], trained_against_by=plan["trained_against_by"])
            if plan.get("own_reward_judge_warning"):
                info["own_reward_judge"] = True
                info["warning"] = plan["own_reward_judge_warning"]
            else:
                info["provenance_check"] = (f"passed: no evaluated policy nor any of its parents was trained against "
                                            f"{plan['version']} (version cards: reward_model, reward_model_sha256)")
            return judge, info
        log("no reward model to judge with; falling back to the local LM judge (--judge lm --judge-model sft)")
        judge = load_lm_judge("sft", settings, server.model, server.tokenizer, config.judge_margin, progress)
        return judge, dict(judge.describe(), fallback_from="reward", fallback_reason="no reward model available")
    if kind == "lm":
        judge = load_lm_judge(config.judge_model, settings, server.model, server.tokenizer, config.judge_margin, progress)
        return judge, judge.describe()
    if kind == "openai":
        judge = openai_judge_from_args(config.judge_url, config.judge_model if config.judge_model != "sft" else None,
                                       config.judge_api_key_env, settings.online, config.judge_margin, progress)
        return judge, judge.describe()
    raise JudgeError(f"unknown judge {kind!r}: use reward, lm, openai or none")


def measure_agreement(judge, config: EvalConfig, info: dict) -> dict:
    """The judge's accuracy on labelled pairs it was not trained on (``--judge-agreement``), or why not."""
    from .judge_checks import DEFAULT_AGREEMENT, judge_agreement

    if config.judge_agreement == "none":
        return {"skipped": "--judge-agreement none"}
    path = Path(config.judge_agreement) if config.judge_agreement else DEFAULT_AGREEMENT
    if not path.is_file():
        if config.judge_agreement:
            raise ValueError(f"--judge-agreement {path}: no such file")
        return {"skipped": f"no held-out labelled pairs at {path} (pass --judge-agreement FILE)"}
    card = getattr(getattr(judge, "scorer", None), "card", None)
    out = judge_agreement(judge, path, config.confidence, card if isinstance(card, dict) else None)
    acc = out["accuracy"]
    log(f"judge agreement with {path.name}: {acc['k']}/{acc['n']} = {100 * acc['rate']:.1f}% "
        f"[{100 * acc['ci'][0]:.1f}, {100 * acc['ci'][1]:.1f}]" if acc["n"] else f"judge agreement: {path} is empty")
    return out


def read_human_votes(settings: Settings, versions: dict, baseline: str, config: EvalConfig) -> dict:
    """The arena's blind votes per version vs the baseline, from the feedback store (``{}`` when there are none)."""
    from .judge_checks import human_votes

    url = settings.database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return {}
    try:
        from rlhf_demo.store import Store

        store = Store(url, create=False)
        try:
            votes = store.votes(blind_only=True)
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - no feedback database / no votes table: say so, keep the report
        log(f"human votes skipped: {exc}")
        return {"skipped": str(exc)}
    return human_votes(votes, {n: v.content_hash for n, v in versions.items()}, baseline, config.confidence)
