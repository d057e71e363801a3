"""``python -m eval`` — evaluate policy versions: harmlessness, over-refusal, helpfulness, KL.

Example (the README's results table)::

    python -m eval --policies sft rlhf-v0
    python -m eval --policies sft rlhf-v0 --suite xstest --limit 20     # a quick look
    python -m eval --policies sft rlhf-v0 --judge lm --judge-model sft  # the base model as judge

Writes ``report.json``, ``report.md``, PNG plots, ``generations.jsonl`` and ``judgements.jsonl``
to ``--out`` (default ``<data dir>/eval/<UTC timestamp>/``, which the arena's Evaluation tab shows).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rlhf_demo.config import add_settings_args, settings_from_args
from rlhf_demo.flags import ConfigParser

from .suites import BUILTIN, CATEGORIES, DEFAULT_SUITES, SuiteError


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless it is None (the help text then says what happens)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = ConfigParser(  # the one flag parser; the shared settings flags come last (below)
        settings=False,
        prog="python -m eval",
        description="Evaluate policy versions against a baseline (SFT): harmful compliance on unsafe prompts, "
                    "over-refusal on safe prompts (both with Wilson intervals and an exact McNemar test), "
                    "win/tie/lose on helpful prompts from a pairwise judge (both orders, bootstrap interval, "
                    "length-controlled win rate), reward-model scores, and per-token KL to SFT. Writes report.json, "
                    "report.md, PNG plots and the generations.",
        formatter_class=_HelpFormatter)
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--policies", nargs="+", default=["sft"], metavar="NAME",
                   help="policy versions from the registry (sft = the base model, rlhf-vN = adapters); "
                        "'--policies sft sft' compares SFT with itself (a smoke test)")
    g.add_argument("--baseline", default="sft", help="the policy every other one is compared with")
    g.add_argument("--suite", action="append", dest="suites", metavar="NAME|PATH",
                   help="a prompt suite, repeatable: a built-in name (" + ", ".join(BUILTIN) + ") or a file "
                        "(.csv XSTest-format, .jsonl[.gz] HH-RLHF / FastChat questions / {'prompt'} rows, .txt one "
                        "prompt per line), optionally prefixed with a category, e.g. unsafe:red_team.txt. "
                        f"Default: {' + '.join(DEFAULT_SUITES)} (suites in ../shared/data are skipped when absent)")
    g.add_argument("--limit", action="append", dest="limits", metavar="N|SUITE=N",
                   help="at most N prompts per category of every suite (evenly spaced through the file), or of "
                        "one suite with SUITE=N; repeatable (e.g. --limit 20 --limit vicuna=10)")
    g.add_argument("--out", type=Path, default=None,
                   help="report directory (default: <data dir>/eval/<UTC timestamp>/)")
    g.add_argument("--reuse-generations", type=Path, default=None, metavar="PATH",
                   help="a previous report directory or generations.jsonl: reuse its responses for the same "
                        "(prompt, policy) instead of generating them again (re-judge or re-score cheaply)")

    g = p.add_argument_group("generation (greedy, batched; every policy decodes in the same batches)")
    g.add_argument("--safety-max-new-tokens", type=int, default=48,
                   help="longest response on unsafe and safe prompts: a refusal shows in its first sentences")
    g.add_argument("--repetition-penalty", type=float, default=1.1, help="CTRL-style repetition penalty")
    g.add_argument("--batch-size", type=int, default=64, help="responses decoded together")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is fastest on a shared 2-core machine (2 threads decoded 5-10x "
                        "slower there when other processes competed for the cores)")
    g.add_argument("--seed", type=int, default=0, help="seed for generation and bootstrap resampling")

    g = p.add_argument_group("judging and scoring")
    g.add_argument("--judge", choices=["reward", "lm", "openai", "none"], default="reward",
                   help="pairwise judge: the reward model (falls back to 'lm' with a message when none exists), "
                        "a local causal LM asked 'A or B?', an OpenAI-compatible endpoint, or none")
    g.add_argument("--judge-model", default="sft",
                   help="--judge lm: 'sft' (the loaded base, adapters off) or a model directory / hub id; "
                        "--judge openai: the model name sent to the endpoint")
    g.add_argument("--judge-url", default=None,
                   help="--judge openai: base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 "
                        "(a URL not on this machine also needs --online)")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                   help="--judge openai: environment variable holding the API key (sent as a Bearer token)")
    g.add_argument("--judge-margin", type=float, default=0.0,
                   help="tie band: reward difference (reward judge) or |P(A) - 0.5| (lm/openai) at or below "
                        "which a verdict is a tie")
    g.add_argument("--judge-categories", default="helpful",
                   help="comma-separated prompt categories judged pairwise and scored by the reward model "
                        f"({', '.join(CATEGORIES)}) or 'all'; e.g. helpful,unsafe adds a harmless win/tie/lose table")
    g.add_argument("--judge-reward", default=None, metavar="VERSION",
                   help="--judge reward: the reward version that judges (default: the newest dedicated judge, a "
                        "reward version whose card has role 'judge' (judge-vN); without one, --reward-model stands "
                        "in, said so in the report). A reward model an evaluated policy (or its parent) was trained "
                        "against is refused")
    g.add_argument("--allow-own-reward-judge", action="store_true",
                   help="let a training reward model of an evaluated policy judge anyway: a loud warning, and the "
                        "report marks its win rates as not independent")
    g.add_argument("--judge-agreement", default="", metavar="FILE",
                   help="TRL preference pairs (prompt/chosen/rejected) the judge was not trained on: the report "
                        "shows the judge's accuracy on them with a Wilson interval (default: "
                        "rlhf_demo/data/pairs/judge_agreement.jsonl when present; 'none' skips)")
    g.add_argument("--human-votes", action=argparse.BooleanOptionalAction, default=True,
                   help="add the arena's blind votes per version vs the baseline (win/tie/loss) when there are any")
    g.add_argument("--reward-model", default=None,
                   help="reward version for scores and the reward judge (default: reward-v0, else the newest); "
                        "'none' to skip reward scores")
    g.add_argument("--kl-samples", type=int, default=64,
                   help="prompts per policy (evenly spaced) on which one answer is SAMPLED from the policy "
                        "(temperature 1) and its exact KL to SFT computed (full next-token distributions, summed "
                        "per answer); 0 skips KL")
    g.add_argument("--kl-batch-size", type=int, default=4, help="sequences per KL forward pass")
    g.add_argument("--kl-max-new-tokens", type=int, default=0,
                   help="longest sampled answer for the KL (0: the prompt's own answer limit)")

    g = p.add_argument_group("statistics and output")
    g.add_argument("--detector", choices=["ours", "string_match"], default="ours",
                   help="refusal detector for the headline rates (both are always reported)")
    g.add_argument("--confidence", type=float, default=0.95, help="level of every interval")
    g.add_argument("--n-bootstrap", type=int, default=2000, help="bootstrap resamples")
    g.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write PNG plots")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    add_settings_args(p)
    # eval's own default for the shared --max-new-tokens (the longest response on helpful prompts)
    p.set_defaults(max_new_tokens=128)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)

    from rlhf_demo.registry import RegistryError

    from .judges import JudgeError
    from .runner import EvalConfig, run

    config = EvalConfig(
        policies=args.policies, baseline=args.baseline, suites=args.suites, limits=args.limits, out=args.out,
        max_new_tokens=args.max_new_tokens, safety_max_new_tokens=args.safety_max_new_tokens,
        repetition_penalty=args.repetition_penalty, batch_size=args.batch_size, threads=args.threads,
        seed=args.seed, judge=args.judge, judge_model=args.judge_model, judge_url=args.judge_url,
        judge_api_key_env=args.judge_api_key_env, judge_margin=args.judge_margin,
        judge_categories=(list(CATEGORIES) if args.judge_categories.strip() == "all"
                          else [c.strip() for c in args.judge_categories.split(",") if c.strip()]),
        reward_model=args.reward_model, kl_samples=args.kl_samples, kl_batch_size=args.kl_batch_size,
        kl_max_new_tokens=args.kl_max_new_tokens, judge_reward=args.judge_reward,
        allow_own_reward_judge=args.allow_own_reward_judge, judge_agreement=args.judge_agreement,
        human_votes=args.human_votes,
        detector=args.detector, confidence=args.confidence, n_bootstrap=args.n_bootstrap,
        reuse_generations=args.reuse_generations, plots=args.plots, progress=args.progress,
        command="python -m eval " + shlex.join(argv))
    try:
        out = run(config, settings)
    except (SuiteError, RegistryError, JudgeError, ValueError) as exc:
        print(f"python -m eval: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
