"""One evaluation run, top to bottom: generate → detect refusals → reward scores → pairwise judge →
KL to SFT → metrics (the ``evaluate`` modules) → report.

:func:`run` is what ``python -m eval`` calls; other code (the training pipeline) can call it with an
:class:`EvalConfig` and gets the report directory back.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlhf_demo.config import Settings
from rlhf_demo.jsonl import iter_jsonl

from rlhf_demo.refusal.detector import BASELINE_NAME, DETECTOR_NAME, judge_refusals, xstest_string_match
from .kl_to_sft import KL_SEED, kl_logprobs, sample_for_kl  # noqa: F401 - kl_logprobs: re-exported
from .config import EvalConfig  # noqa: F401 - the run's config (re-exported)
from .judges import JudgeError, judge_both_orders, load_reward_judge
from .judging import build_judge, log, measure_agreement, plan_reward_judge, read_human_votes
from .stats import mean_with_ci
from .suites import CATEGORIES, EvalPrompt, load_suites, subsample

SAFETY = ("unsafe", "safe")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
# A caller that shows progress elsewhere (arena_app.pipeline: its log, which the Training tab shows) sets this to a
# factory ``(total, desc) -> bar`` (e.g. rlhf_demo.progress.ProgressMeter); None: tqdm on stderr.
BAR_FACTORY = None


def _bar(total: int, desc: str, enabled: bool):
    if BAR_FACTORY is not None:
        return BAR_FACTORY(total, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="resp", disable=not enabled or total == 0, file=sys.stderr,
                dynamic_ncols=True)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def unique(seq):
    out = []
    for x in seq:
        if x not in out:
            out.append(x)
    return out


def load_metrics(online: bool) -> dict:
    from . import METRICS, load_metric

    return {name: load_metric(name, online=online) for name in METRICS}


def strip_lists(d: dict, keys=("flags", "rules", "outcomes")) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
@dataclass
class Generation:
    prompt: EvalPrompt
    policy: str
    response: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    max_new_tokens: int = 0
    reused: bool = False
    refusal: bool = False
    refusal_kind: str = ""
    refusal_rule: str = ""
    refusal_string_match: bool = False
    reward: float | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def record(self) -> dict:
        return {"prompt_id": self.prompt.id, "suite": self.prompt.suite, "category": self.prompt.category,
                "policy": self.policy, "prompt": self.prompt.prompt, "response": self.response,
                "tokens": self.n_tokens, "max_new_tokens": self.max_new_tokens, "finish_reason": self.finish_reason,
                "refusal": self.refusal, "refusal_kind": self.refusal_kind, "refusal_rule": self.refusal_rule,
                "refusal_string_match": self.refusal_string_match, "reward": self.reward,
                "source": self.prompt.source, "meta": self.prompt.meta, "reused": self.reused}


def decoding_settings(settings: Settings) -> Settings:
    """The settings eval decodes with: ``--dtype auto`` means float32 here, not the arena's serving dtype.

    In bfloat16 a greedy answer depends on its batch neighbours (padding, mixed adapters): on this project's CPU 42–47
    of 60 answers of one policy changed with the batch layout, none in float32 (docs/decode-noise/README.md). Eval
    compares policies answer by answer, so it pays float32's ~2x decoding time; ``--dtype bfloat16`` asks for speed."""
    if settings.dtype == "auto" and not settings.load_in_4bit:
        return replace(settings, dtype="float32")
    return settings


def check_reuse_dtype(path: Path, decoding_dtype: str) -> None:
    """Refuse to mix answers decoded in another dtype (recorded in the earlier report.json); warn when unrecorded."""
    path = Path(path)
    report = (path if path.is_dir() else path.parent) / "report.json"
    earlier = None
    if report.is_file():
        from .report import load_report

        try:
            earlier = (load_report(report).get("settings") or {}).get("decoding_dtype")
        except (OSError, ValueError):
            earlier = None
    if earlier is None:
        log(f"warning: --reuse-generations {path}: the earlier run's decoding dtype is not recorded (eval before "
            f"2026-11-30 decoded in the serving dtype, bfloat16 on CPUs with native bf16); this run decodes in "
            f"{decoding_dtype}, and answers can differ with the dtype alone (docs/decode-noise/README.md)")
    elif earlier != decoding_dtype:
        raise ValueError(f"--reuse-generations {path}: its answers were decoded in {earlier}, this run decodes in "
                         f"{decoding_dtype}; greedy answers change with the dtype (docs/decode-noise/README.md). "
                         f"Run with --dtype {earlier} to match, or without --reuse-generations")


def read_previous_generations(path: Path) -> dict[tuple[str, str, str], dict]:
    """Rows of an earlier run's generations.jsonl keyed by (prompt id, policy, prompt text)."""
    path = Path(path)
    if path.is_dir():
        path = path / "generations.jsonl"
    out = {}
    for where, row in iter_jsonl(path, ValueError):  # the one JSONL reader: file:line errors
        try:
            out[(row["prompt_id"], row["policy"], row["prompt"])] = row
        except KeyError as exc:
            raise ValueError(f"{where}: not a generations.jsonl row ({exc})") from None
    return out


def generate(server, jobs: list[Generation], config: EvalConfig) -> None:
    """Greedy, batched decoding; both policies of a prompt decode in the same batch (mixed adapters)."""
    from rlhf_demo.generation import BASE_ADAPTER, GenerationParams, build_prompt_ids, decode_batch
    from rlhf_demo.registry import SFT

    tok = server.tokenizer
    for j in jobs:
        j.prompt_ids = build_prompt_ids(tok, j.prompt.messages, server.max_prompt_tokens)
    todo = [j for j in jobs if not j.reused]
    # similar lengths together (less padding, rows finish together); a prompt's policies stay adjacent
    order = sorted(range(len(todo)), key=lambda i: (todo[i].max_new_tokens, len(todo[i].prompt_ids), todo[i].prompt.id))
    use_adapters = server.model is not server.base
    bar = _bar(len(todo), "generating", config.progress)
    try:
        for start in range(0, len(order), config.batch_size):
            batch = [todo[i] for i in order[start:start + config.batch_size]]
            params = [GenerationParams(max_new_tokens=j.max_new_tokens, greedy=True,
                                       repetition_penalty=config.repetition_penalty, seed=config.seed) for j in batch]
            names = [BASE_ADAPTER if j.policy == SFT else j.policy for j in batch] if use_adapters else None

            def on_step(row, tokens, finished):
                if finished:
                    bar.update(1)

            results = decode_batch(server.model, tok, [j.prompt_ids for j in batch], params, names, on_step)
            for j, r in zip(batch, results):
                j.token_ids = list(r.token_ids)
                j.finish_reason = r.finish_reason
                j.response = tok.decode(r.token_ids, skip_special_tokens=True).strip()
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run(config: EvalConfig, settings: Settings, registry=None) -> Path:
    """Run the evaluation; returns the directory with report.json, report.md, plots and generations.

    ``registry``: where the policies are looked up (default: the data dir's); the training pipeline
    passes one that also holds its not-yet-published candidate."""
    import torch

    from rlhf_demo.generation import PolicyServer
    from rlhf_demo.registry import SFT, Registry

    from .report import default_out_dir, write_report

    t_start = time.monotonic()
    started = _now()
    timings: dict[str, float] = {}
    torch.set_num_threads(max(1, config.threads))
    for c in config.judge_categories:
        if c not in CATEGORIES:
            raise ValueError(f"--judge-categories: unknown category {c!r}; use {', '.join(CATEGORIES)}")

    # -- what to evaluate -------------------------------------------------------------------
    suites = load_suites(config.suites, config.limits)
    prompts = [p for s in suites for p in s.prompts]
    if config.forbid_reported:  # e.g. the pipeline's gates: selection never looks at a reported suite
        from rlhf_demo.splits import check_not_reported

        check_not_reported([m["content"] for p in prompts for m in p.messages if m.get("role") == "user"],
                           config.forbid_reported)
    baseline = config.baseline
    policies = unique([baseline] + list(config.policies))
    registry = registry or Registry(settings.versions_dir)
    versions = {name: registry.get(name, kind="policy") for name in policies}  # RegistryError names the problem
    if config.judge_agreement not in ("", "none") and not Path(config.judge_agreement).is_file():
        raise ValueError(f"--judge-agreement {config.judge_agreement}: no such file")
    judge_plan = plan_reward_judge(config, settings, registry, policies)  # refuses a policy's own reward model
    if judge_plan:
        log(f"helpfulness judge: {judge_plan['why']}")
    compared = [p for p in policies if p != baseline] or [baseline]  # "--policies sft sft": sft against itself
    for s in suites:
        log(f"suite {s.name}: {s.counts()} from {s.path}" + (f" (limit {s.limit} per category)" if s.limit is not None else ""))
    log(f"policies: {', '.join(policies)} (baseline {baseline}); {len(prompts)} prompts, "
        f"{len(prompts) * len(policies)} responses")

    # -- load the model once; every policy is an adapter on it ------------------------------
    t0 = time.monotonic()
    server = PolicyServer.from_settings(decoding_settings(settings), registry=registry, max_batch=config.batch_size)
    decoding_dtype = str(server.base.dtype).replace("torch.", "")
    log(f"decoding in {decoding_dtype} (--dtype {settings.dtype})")
    try:
        for name in policies:
            server.ensure_policy(name)
        timings["load_s"] = time.monotonic() - t0

        # -- generations ------------------------------------------------------------------------
        previous = {}
        if config.reuse_generations:
            check_reuse_dtype(config.reuse_generations, decoding_dtype)
            previous = read_previous_generations(config.reuse_generations)
        jobs: list[Generation] = []
        for p in prompts:
            limit = config.safety_max_new_tokens if p.category in SAFETY else config.max_new_tokens
            for name in policies:
                g = Generation(p, name, max_new_tokens=limit)
                row = previous.get((p.id, name, p.prompt))
                if row is not None:
                    g.response, g.finish_reason, g.reused = row["response"], row.get("finish_reason", ""), True
                    g.token_ids = server.tokenizer.encode(row["response"], add_special_tokens=False)
                jobs.append(g)
        if previous:
            log(f"reusing {sum(j.reused for j in jobs)} generations from {config.reuse_generations}")
        t0 = time.monotonic()
        generate(server, jobs, config)
        timings["generation_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        verdicts = judge_refusals([j.response for j in jobs], [j.prompt.prompt for j in jobs])
        for j, v in zip(jobs, verdicts):
            j.refusal, j.refusal_kind, j.refusal_rule = v.refusal, v.kind, v.rule
            j.refusal_string_match = xstest_string_match(j.response)
        timings["refusal_judge_s"] = time.monotonic() - t0
        by_key = {(j.prompt.id, j.policy): j for j in jobs}

        # -- reward-model scores ----------------------------------------------------------------
        t0 = time.monotonic()
        reward_judge, reward_info = None, {"name": None}
        to_score = [j for j in jobs if j.prompt.category in config.judge_categories]
        if config.reward_model != "none" and (config.judge == "reward" or to_score):
            try:
                bar = _bar(len(to_score), "reward scores", config.progress)
                reward_judge = load_reward_judge(settings, config.reward_model, config.judge_margin, bar.update,
                                                 allow_judge=True)  # scoring is not training: a judge may score
                reward_info = {"name": reward_judge.model_name,
                               "card": {k: reward_judge.scorer.card.get(k) for k in ("created", "base_model", "metrics")
                                        if getattr(reward_judge.scorer, "card", None)}}
                scores = reward_judge.score([j.prompt.messages + [{"role": "assistant", "content": j.response}]
                                             for j in to_score])
                bar.close()
                for j, s in zip(to_score, scores):
                    j.reward = s
                reward_judge.progress = None
            except JudgeError as exc:
                bar.close()
                log(f"reward scores skipped: {exc}")
                reward_info = {"name": None, "skipped": str(exc)}
        timings["reward_s"] = time.monotonic() - t0

        # -- pairwise judging, both orders ------------------------------------------------------
        t0 = time.monotonic()
        judgements: dict[str, dict[str, list[dict]]] = defaultdict(dict)  # policy -> prompt id -> record
        judged = [p for p in prompts if p.category in config.judge_categories]
        judge, judge_info = None, {"name": "none"}
        if judged and config.judge != "none":
            n_calls = len(judged) * len(compared) * 2
            bar = _bar(n_calls, "judging (both orders)", config.progress)
            if judge_plan is None and config.judge == "reward" and reward_judge is not None:
                judge_plan = plan_reward_judge(config, settings, registry, policies, fallback=reward_judge.model_name)
            judge, judge_info = build_judge(config, settings, server, reward_judge, bar.update, judge_plan)
            if judge is reward_judge:
                bar.total = 0  # scores are cached: nothing left to compute
            for name in compared:
                recs = judge_both_orders(judge, [p.messages for p in judged],
                                         [by_key[(p.id, name)].response for p in judged],
                                         [by_key[(p.id, baseline)].response for p in judged])
                for p, r in zip(judged, recs):
                    judgements[name][p.id] = r
            bar.close()
            judge_info["agreement"] = measure_agreement(judge, config, judge_info)
        timings["judging_s"] = time.monotonic() - t0

        # -- exact KL to SFT on answers SAMPLED from each policy (rlhf_demo/kl.py) -----------------
        t0 = time.monotonic()
        kl_raw: dict[str, dict] = {}
        adapters = [n for n in policies if n != SFT and server.model is not server.base]
        if config.kl_samples > 0 and adapters:
            picks = {n: subsample([j for j in jobs if j.policy == n], config.kl_samples) for n in adapters}
            bar = _bar(sum(len(v) for v in picks.values()), "KL to SFT (sampled answers)", config.progress)
            for name, chosen in picks.items():
                limits = [config.kl_max_new_tokens or j.max_new_tokens for j in chosen]
                sampled = sample_for_kl(server, [j.prompt_ids for j in chosen], limits, name,
                                        seed=config.seed * 1_000_003 + KL_SEED, batch_size=config.batch_size)
                vals = kl_logprobs(server.model, [j.prompt_ids for j in chosen], sampled, name,
                                   config.kl_batch_size, bar.update)
                kl_raw[name] = {"logp": [v[0] for v in vals], "logq": [v[1] for v in vals],
                                "exact": [v[2] for v in vals], "prompt_ids": [j.prompt.id for j in chosen]}
            bar.close()
        timings["kl_s"] = time.monotonic() - t0
    finally:
        server.close()

    # -- metrics (the evaluate modules) -----------------------------------------------------------
    t0 = time.monotonic()
    metrics = load_metrics(settings.online)
    stat_kw = {"confidence": config.confidence, "n_resamples": config.n_bootstrap, "seed": config.seed}

    def flags_of(gens: list[Generation]) -> list[bool]:
        """The refusal verdicts of ``--detector``: the judge's (with the prompt) or XSTest's string match."""
        return [bool(g.refusal if config.detector == "ours" else g.refusal_string_match) for g in gens]

    def group_results(group_prompts: list[EvalPrompt], category: str) -> dict:
        res = {"category": category, "n": len(group_prompts), "policies": {}, "comparisons": {}}
        base_gens = [by_key[(p.id, baseline)] for p in group_prompts]
        for name in policies:
            gens = [by_key[(p.id, name)] for p in group_prompts]
            responses = [g.response for g in gens]
            scores = [g.reward for g in gens] if all(g.reward is not None for g in gens) else None
            base_scores = [g.reward for g in base_gens] if all(g.reward is not None for g in base_gens) else None
            # the judge's verdicts from above (it read each prompt too), not a re-judging of the bare responses
            pr = {"refusal": strip_lists(metrics["refusal"].compute(predictions=responses, detector=config.detector,
                                                                    confidence=config.confidence,
                                                                    refusals=[g.refusal for g in gens])),
                  "length_tokens": mean_with_ci([g.n_tokens for g in gens], config.n_bootstrap, config.confidence, config.seed),
                  "length_chars": float(sum(len(r) for r in responses) / len(responses)) if responses else None,
                  "truncated": sum(1 for g in gens if g.finish_reason == "length") / len(gens) if gens else None}
            paired = {"refusals": flags_of(gens)}
            if name != baseline:
                paired.update(baseline_predictions=[g.response for g in base_gens], baseline_refusals=flags_of(base_gens))
            if scores is not None:
                paired_scores = {"scores": scores}
                if name != baseline and base_scores is not None:
                    paired_scores["baseline_scores"] = base_scores
            else:
                paired_scores = {}
            if category == "unsafe":
                pr["harmlessness"] = metrics["harmlessness"].compute(predictions=responses, detector=config.detector,
                                                                     **paired, **paired_scores, **stat_kw)
            else:
                pr["over_refusal"] = metrics["over_refusal"].compute(predictions=responses, detector=config.detector,
                                                                     **paired, **paired_scores, **stat_kw)
            if scores is not None:
                pr["reward"] = mean_with_ci(scores, config.n_bootstrap, config.confidence, config.seed)
            res["policies"][name] = pr
        for name in compared:
            recs = [judgements.get(name, {}).get(p.id) for p in group_prompts]
            if not recs or any(r is None for r in recs):
                continue
            hp = metrics["helpfulness"].compute(
                predictions=[r["outcome_policy_first"] for r in recs],
                references=[r["outcome_baseline_first"] for r in recs],
                policy_lengths=[by_key[(p.id, name)].n_tokens for p in group_prompts],
                baseline_lengths=[by_key[(p.id, baseline)].n_tokens for p in group_prompts], **stat_kw)
            hp["identical_responses"] = sum(1 for r in recs if r["identical"])
            res["comparisons"][name] = {"helpfulness": strip_lists(hp)}
        return res

    results = {}
    for s in suites:
        for cat in CATEGORIES:
            group = [p for p in s.prompts if p.category == cat]
            if group:
                results[f"{s.name}/{cat}"] = dict(group_results(group, cat), suite=s.name)
    pooled = {}
    for cat in CATEGORIES:
        group = [p for p in prompts if p.category == cat]
        if group:
            pooled[cat] = dict(group_results(group, cat), suite="all")

    kl = {}
    for name in policies:
        gens = [j for j in jobs if j.policy == name]
        entry = {"mean_length_tokens": mean_with_ci([g.n_tokens for g in gens], config.n_bootstrap,
                                                    config.confidence, config.seed)}
        if name == SFT:
            entry["kl_per_token"] = {"mean": 0.0, "ci": [0.0, 0.0], "estimator": "exact",
                                     "note": "the SFT model itself"}
            entry["kl_exact_per_response"] = {"mean": 0.0, "ci": [0.0, 0.0], "unit": "nats per answer",
                                              "note": "the SFT model itself"}
        elif name in kl_raw:
            raw = kl_raw[name]
            res = metrics["kl"].compute(predictions=raw["logp"], references=raw["logq"], exact_kl=raw["exact"],
                                        confidence=config.confidence, n_resamples=min(config.n_bootstrap, 1000),
                                        seed=config.seed)
            res["kl_sample_mean_length_tokens"] = res.pop("mean_length_tokens")
            entry.update(res)
        kl[name] = entry
    timings["metrics_s"] = time.monotonic() - t0
    timings["total_s"] = time.monotonic() - t_start

    if reward_info.get("name"):  # the reward column: say which evaluated policies were optimised against it
        from .judge_checks import judge_conflicts

        try:
            rv = registry.get(reward_info["name"], kind="reward")
            reward_info["trained_against_by"] = judge_conflicts(
                rv.name, rv.card.get("files", {}).get("adapter_model.safetensors"), policies, registry,
                judge_identity=rv.reward_identity)
        except Exception:  # noqa: BLE001 - a stub scorer in tests, or a version from elsewhere
            pass
    report = {
        "schema": 1,
        "kind": "rlhf-arena-eval",
        "started": started,
        "finished": _now(),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "command": config.command,
        "baseline": baseline,
        "policies": [{"name": n, "content_hash": versions[n].content_hash, "source": versions[n].source,
                      "parent": versions[n].card.get("parent"), "created": versions[n].card.get("created"),
                      "card_metrics": versions[n].card.get("metrics")} for n in policies],
        "compared": compared,
        "judge": judge_info,
        "judge_categories": list(config.judge_categories),
        "reward_model": reward_info,
        "detector": {"name": DETECTOR_NAME if config.detector == "ours" else BASELINE_NAME,
                     "also_reported": BASELINE_NAME if config.detector == "ours" else DETECTOR_NAME},
        "suites": [s.describe() for s in suites],
        "settings": {"base_model": settings.base_model, "device": settings.resolved_device(),
                     "dtype": settings.dtype, "decoding_dtype": decoding_dtype, "load_in_4bit": settings.load_in_4bit,
                     "decoding": "greedy", "max_new_tokens": config.max_new_tokens,
                     "safety_max_new_tokens": config.safety_max_new_tokens,
                     "repetition_penalty": config.repetition_penalty, "batch_size": config.batch_size,
                     "threads": config.threads, "seed": config.seed, "confidence": config.confidence,
                     "n_bootstrap": config.n_bootstrap, "kl_samples": config.kl_samples,
                     "kl_decoding": "one answer per prompt sampled from the policy (temperature 1, top_p 1, no "
                                    "repetition penalty, seeded); exact full-distribution KL per position, summed "
                                    "per answer (rlhf_demo/kl.py)",
                     "kl_max_new_tokens": config.kl_max_new_tokens or "each prompt's limit",
                     "reuse_generations": str(config.reuse_generations) if config.reuse_generations else None,
                     "data_dir": str(settings.data_dir)},
        "results": results,
        "summary": pooled,
        "kl": kl,
        "human_votes": read_human_votes(settings, versions, baseline, config) if config.human_votes else None,
    }
    judgement_rows = []
    for name, by_prompt in judgements.items():
        for pid, r in by_prompt.items():
            judgement_rows.append({"prompt_id": pid, "policy": name, "baseline": baseline, **r})
    out_dir = Path(config.out) if config.out else default_out_dir(settings.data_dir)
    final = write_report(report, [j.record() for j in jobs], judgement_rows, out_dir, settings.data_dir,
                         plots=config.plots)
    log(f"report: {final / 'report.md'}  ({timings['total_s']:.0f} s)")
    return final
