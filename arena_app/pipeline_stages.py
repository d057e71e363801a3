"""The pipeline's stages (``python -m arena_app.pipeline``; the loop itself, its config and its gates are in
``arena_app/pipeline.py`` and ``arena_app/gates.py``): export the new feedback, train the reward model, train the
candidate policy — PPO-max against the reward model (``--algorithm ppo``) or DPO on the preference pairs
(``--algorithm dpo``) — and evaluate it next to the current policy and SFT. Each stage reports into the run's
:class:`~arena_app.pipeline_progress.Progress` (``pipeline.log`` / ``status.json``, shown by the Training tab)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_demo.config import Settings
from rlhf_demo.registry import SFT, Registry, Version

from .gates import build_gate_suite
from .pipeline_progress import Progress, follow_metrics

if TYPE_CHECKING:  # annotations only: pipeline.py imports this module
    from .pipeline import PipelineConfig


# ================================================================================================
# which versions are "current"
# ================================================================================================
def current_reward(registry: Registry, settings: Settings) -> Version | None:
    """The reward model to continue from: never a judge (:meth:`Registry.current`)."""
    return registry.current("reward", base_model=settings.base_model, role="reward")


def current_policy(registry: Registry, settings: Settings, prefix: str = "rlhf") -> str:
    """The current policy of one lineage (``rlhf`` = the PPO versions, ``dpo`` = the DPO versions) for this base,
    ``sft`` when it has none: PPO continues from it and the gates compare the candidate with it. One lineage
    each, so that publishing a ``dpo-vN`` does not silently change what the next PPO run starts from."""
    names = {v.name for v in registry.list("policy") if v.name.startswith(prefix + "-v")}
    version = registry.current("policy", base_model=settings.base_model, among=names)
    return version.name if version else SFT


def ppo_validation_keys(ppo_summary: dict, settings: Settings) -> frozenset[str]:
    """Normalised texts of the prompts the PPO run validated on (its prompt pool is deterministic in its config)."""
    from rlhf_demo.splits import normalize_text
    from training import ppo

    fields = {f for f in ppo.PPOConfig.__dataclass_fields__}
    pcfg = ppo.PPOConfig(**{k: v for k, v in (ppo_summary.get("config") or {}).items() if k in fields})
    _, val = ppo.prompt_pool(pcfg, settings)
    return frozenset(normalize_text(m["content"]) for v in val for m in v.messages if m.get("role") == "user")


# ================================================================================================
# the stages
# ================================================================================================
def stage_export(cfg: PipelineConfig, settings: Settings, run_dir: Path, state: dict, progress: Progress):
    from rlhf_demo.export import export_pairs
    from rlhf_demo.store import Store

    started = time.monotonic()
    store = Store.from_settings(settings)
    try:
        result = export_pairs(store, "trl", run_dir / "new_pairs.jsonl", since_vote_id=state["last_vote_id"],
                              since_better_id=state["last_better_id"])
    finally:
        store.close()
    progress.stage("export", f"votes after #{state['last_vote_id']}, better answers after "
                             f"#{state['last_better_id']}: {result.summary()}")
    progress.done("export (votes and better answers read)", result.votes_used + result.better_used, "row", started)
    return result


@contextlib.contextmanager
def step_meter(progress: Progress, label: str, what: str):
    """An ``on_step(step, info)`` callback for a trainer: a progress meter (done/total, rate, ETA; the rate counts
    from here, model loading included) and a loss line at the first and every 10th step."""
    meter = progress.meter(label, None, "step")

    def on_step(step, info):
        meter.total = meter.total or info.get("total_steps")
        meter.set(step)
        if step == 1 or step % 10 == 0:
            progress.line(f"  {what} step {step}: loss {info['loss']:.4f}")

    try:
        yield on_step
    finally:
        meter.close()


def stage_reward(cfg: PipelineConfig, settings: Settings, run_dir: Path, exported, registry: Registry,
                 progress: Progress) -> tuple[str, float | None]:
    from training import reward_model as RM

    parent = current_reward(registry, settings) if cfg.reward_continue else None
    seed = "seed" if not cfg.seed_replay else f"seed:{cfg.seed_replay}"
    if parent is not None:
        data = [f"arena_new={exported.out}", seed]
        how = f"continuing {parent.name} on {exported.written} new pairs + seed replay"
    else:
        data = ["arena", seed]
        how = "training a new reward model on every arena pair + the seed pairs"
    progress.stage("reward", how)
    rcfg = replace(cfg.reward, data=data, reward_model=parent.name if parent else "", run_dir=str(run_dir / "reward"),
                   lora_alpha=2 * cfg.reward.lora_r, seed=cfg.seed, threads=cfg.threads, resume=False, save_steps=0,
                   logging_steps=1, progress=False, publish=True, name="", publish_dir="", replace=False,
                   eval_only=False, role="reward", description=f"arena_app.pipeline run {run_dir.name}: {how}")

    with step_meter(progress, "reward model", "reward") as on_step:
        result = RM.train(rcfg, settings, on_step=on_step,
                          command=f"python -m arena_app.pipeline (run {run_dir.name})")
    acc = result.metrics.get("validation", {}).get("all", {}).get("accuracy")
    progress.line(f"  published {result.version.name} ({result.step} steps; held-out accuracy "
                  f"{acc if acc is not None else 'n/a'})")
    result.reward_model = None
    return result.version.name, acc


def stage_ppo(cfg: PipelineConfig, settings: Settings, run_dir: Path, init_policy: str, reward: str,
              progress: Progress) -> dict:
    from training import ppo

    iterations = cfg.ppo.iterations
    progress.stage("ppo", f"PPO-max from {init_policy} against {reward}: {iterations} iterations")
    pcfg = replace(cfg.ppo, reward_model=reward, init_policy=init_policy, name="", publish=False, publish_dir="",
                   run_dir=str(run_dir / "ppo"), seed=cfg.seed, threads=cfg.threads, resume=False,
                   checkpoint_every=max(iterations, 1), keep_checkpoints=1, lora_alpha=2 * cfg.ppo.lora_r)
    progress.update(ppo_iterations=iterations, ppo_dir=str(run_dir / "ppo"))
    with follow_metrics(progress, run_dir / "ppo" / "metrics.jsonl", iterations, "PPO iterations"):
        summary = ppo.train(pcfg, settings)
    summary["config"] = asdict(pcfg)
    progress.line(f"  best iteration {summary.get('best_step')} (validation score {summary.get('best_val_score')})"
                  + (f"; stopped: {summary['stopped']}" if summary.get("stopped") else ""))
    return summary


def stage_dpo(cfg: PipelineConfig, settings: Settings, run_dir: Path, exported, progress: Progress) -> dict:
    """DPO from SFT on every arena pair plus the seed pairs (``--algorithm dpo``): DPO learns from the pairs
    directly (no reward model, no rollouts), so each run trains a fresh adapter on all the feedback so far; its
    final adapter (``<run dir>/dpo/final``) is the candidate."""
    from training import dpo

    seed = "seed" if not cfg.seed_replay else f"seed:{cfg.seed_replay}"
    how = f"DPO ({cfg.dpo.loss_type}, beta {cfg.dpo.beta}) from {SFT} on every arena pair ({exported.written} new) + {seed}"
    progress.stage("dpo", how)
    dcfg = replace(cfg.dpo, data=["arena", seed], run_dir=str(run_dir / "dpo"), seed=cfg.seed, threads=cfg.threads,
                   resume=False, save_steps=0, progress=False, publish=False, name="", publish_dir="", replace=False,
                   lora_alpha=2 * cfg.dpo.lora_r, description=f"arena_app.pipeline run {run_dir.name}: {how}")
    with step_meter(progress, "DPO steps", "dpo") as on_step:
        result = dpo.train(dcfg, settings, on_step=on_step, command=f"python -m arena_app.pipeline (run {run_dir.name})")
    held_out = result.metrics.get("validation", {})
    progress.line(f"  {result.step} steps; held-out implicit-reward accuracy {held_out.get('eval/accuracy', 'n/a')}, "
                  f"token KL {held_out.get('eval/kl_token', 'n/a')}")
    result.model = None
    return {"run_dir": str(result.run_dir), "steps": result.step, "model_dir": str(result.model_dir),
            "metrics": result.metrics, "config": asdict(dcfg)}


def stage_eval(cfg: PipelineConfig, settings: Settings, run_dir: Path, registry: Registry, candidate: str,
               current: str, reward: str, progress: Progress, ppo_val_keys: frozenset[str] = frozenset()) -> Path:
    from eval.runner import run

    policies = [p for p in dict.fromkeys([SFT, current, candidate])]
    if cfg.eval.suites:
        suites, limits = list(cfg.eval.suites), [str(cfg.eval_limit)] if cfg.eval_limit else None
    else:  # the labelled validation prompts, never a reported suite, nor one of PPO's validation prompts
        suites, limits = [str(build_gate_suite(run_dir / "gate_prompts.jsonl", cfg.eval_limit, cfg.seed,
                                               ppo_val_keys))], None
    progress.stage("eval", f"evaluating {candidate} (candidate) against {current} (current) and {SFT} on "
                           f"{', '.join(suites)}")
    judge = cfg.eval.judge
    if judge == "reward" and not any(v.card.get("role") == "judge" for v in registry.list("reward")):
        judge = "none"  # eval refuses a policy's own training reward model as its judge
        progress.line("  helpfulness not judged: no dedicated judge (a reward version with role 'judge', judge-vN)"
                      + (f", and {reward}, which the candidate was trained against, must not grade it" if reward else ""))
    ecfg = replace(cfg.eval, policies=policies, baseline=SFT, suites=suites, limits=limits, out=run_dir / "eval",
                   reuse_generations=None, forbid_reported="pipeline gate prompts",
                   kl_max_new_tokens=cfg.ppo.response_length, threads=cfg.threads or max(1, os.cpu_count() or 1),
                   seed=cfg.seed, judge=judge, reward_model=reward, progress=False,
                   command=f"python -m arena_app.pipeline (run {run_dir.name})")
    import eval.runner as runner

    previous = runner.BAR_FACTORY  # each of eval's loops (generating, scoring, judging, KL) reports into the log
    runner.BAR_FACTORY = lambda total, desc: progress.meter(f"eval {desc}", total, "resp")
    try:
        out = run(ecfg, settings, registry=registry)
    finally:
        runner.BAR_FACTORY = previous
    progress.line(f"  report: {out / 'report.md'}")
    return out


def candidate_card(cfg, settings, current, reward, ppo_summary, run_dir) -> dict:
    rv = next((v for v in Registry(settings.versions_dir).list("reward") if v.name == reward), None)
    return {"kind": "policy", "parent": current, "base_model": settings.base_model, "reward_model": reward,
            "reward_model_sha256": rv.card.get("files", {}).get("adapter_model.safetensors") if rv else None,
            "reward_model_identity": rv.reward_identity if rv else None,
            "trainer": "arena_app.pipeline → training.ppo (PPO-max)", "config": ppo_summary.get("config"),
            "pipeline_run": str(run_dir), "best_step": ppo_summary.get("best_step"),
            "metrics": {"best_val_score": ppo_summary.get("best_val_score")}, "stopped": ppo_summary.get("stopped"),
            "command": "python -m arena_app.pipeline " + " ".join(sys.argv[1:]) if "pipeline" in (sys.argv[0] or "")
            else None}


def dpo_candidate_card(cfg, settings, current, dpo_summary, run_dir) -> dict:
    """The card of a DPO candidate: the trainer's own card (data, config, held-out metrics) plus the pipeline's."""
    import json

    card_path = Path(dpo_summary["model_dir"]) / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {"kind": "policy", "parent": SFT}
    card.update({"base_model": settings.base_model, "compared_with": current, "reward_model": None,
                 "trainer": "arena_app.pipeline → training.dpo (DPO)", "config": dpo_summary.get("config"),
                 "pipeline_run": str(run_dir),
                 "command": "python -m arena_app.pipeline " + " ".join(sys.argv[1:])
                 if "pipeline" in (sys.argv[0] or "") else None})
    return card
