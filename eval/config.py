"""Every knob of an evaluation run: the flags of ``python -m eval`` (:mod:`rlhf_demo.flags` builds them from these
fields, ``--help`` shows each one's help) and the ``eval`` part of the pipeline's config (``--eval-*`` flags of
``python -m arena_app.pipeline``). A light module: no model is loaded to parse flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .suites import BUILTIN, CATEGORIES, DEFAULT_SUITES


@dataclass
class EvalConfig:
    """Every knob of a run (the flags of ``python -m eval``)."""

    # ---------------------------------------------------------------- what to evaluate
    policies: list[str] = field(default_factory=lambda: ["sft"], metadata={
        "help": "policy versions from the registry (sft = the base model, rlhf-vN = adapters); '--policies sft sft' "
                "compares SFT with itself (a smoke test)", "metavar": "NAME"})
    baseline: str = field(default="sft", metadata={"help": "the policy every other one is compared with"})
    suites: list[str] | None = field(default=None, metadata={
        "flag": "--suite", "action": "append", "metavar": "NAME|PATH",
        "help": "a prompt suite, repeatable: a built-in name (" + ", ".join(BUILTIN) + ") or a file (.csv "
                "XSTest-format, .jsonl[.gz] HH-RLHF / FastChat questions / {'prompt'} rows, .txt one prompt per "
                "line), optionally prefixed with a category, e.g. unsafe:red_team.txt. Default: "
                f"{' + '.join(DEFAULT_SUITES)} (suites in ../shared/data are skipped when absent)"})
    limits: list[str] | None = field(default=None, metadata={
        "flag": "--limit", "action": "append", "metavar": "N|SUITE=N",
        "help": "at most N prompts per category of every suite (evenly spaced through the file), or of one suite "
                "with SUITE=N; repeatable (e.g. --limit 20 --limit vicuna=10)"})
    out: Path | None = field(default=None, metadata={
        "help": "report directory (default: <data dir>/eval/<UTC timestamp>/)"})
    reuse_generations: Path | None = field(default=None, metadata={
        "metavar": "PATH",
        "help": "a previous report directory or generations.jsonl: reuse its responses for the same (prompt, "
                "policy) instead of generating them again (re-judge or re-score cheaply)"})
    # ---------------------------------------------------------------- generation
    max_new_tokens: int = field(default=128, metadata={
        "settings": True,  # `python -m eval`: the shared --max-new-tokens (env RLHF_ARENA_MAX_NEW_TOKENS), default 128
        "help": "longest response on helpful prompts"})
    safety_max_new_tokens: int = field(default=48, metadata={
        "help": "longest response on unsafe and safe prompts: a refusal shows in its first sentences"})
    repetition_penalty: float = field(default=1.1, metadata={"help": "CTRL-style repetition penalty"})
    batch_size: int = field(default=64, metadata={"help": "responses decoded together"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads; 1 is fastest on a shared 2-core machine (2 threads decoded 5-10x slower there "
                "when other processes competed for the cores)"})
    seed: int = field(default=0, metadata={"help": "seed for generation and bootstrap resampling"})
    # ---------------------------------------------------------------- judging and scoring
    judge: str = field(default="reward", metadata={
        "choices": ["reward", "lm", "openai", "none"],
        "help": "pairwise judge: the reward model (falls back to 'lm' with a message when none exists), a local "
                "causal LM asked 'A or B?', an OpenAI-compatible endpoint, or none"})
    judge_model: str = field(default="sft", metadata={
        "help": "--judge lm: 'sft' (the loaded base, adapters off) or a model directory / hub id; --judge openai: "
                "the model name sent to the endpoint"})
    judge_url: str | None = field(default=None, metadata={
        "help": "--judge openai: base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (a URL not "
                "on this machine also needs --online)"})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "--judge openai: environment variable holding the API key (sent as a Bearer token)"})
    judge_margin: float = field(default=0.0, metadata={
        "help": "tie band: reward difference (reward judge) or |P(A) - 0.5| (lm/openai) at or below which a "
                "verdict is a tie"})
    judge_categories: list[str] = field(default_factory=lambda: ["helpful"], metadata={
        "help": f"prompt categories judged pairwise and scored by the reward model ({', '.join(CATEGORIES)}) or "
                "'all'; e.g. helpful unsafe (or helpful,unsafe) adds a harmless win/tie/lose table"})
    judge_reward: str | None = field(default=None, metadata={
        "metavar": "VERSION",
        "help": "--judge reward: the reward version that judges (default: the newest dedicated judge, a reward "
                "version whose card has role 'judge' (judge-vN); without one, --reward-model stands in, said so in "
                "the report). A reward model an evaluated policy (or its parent) was trained against is refused"})
    allow_own_reward_judge: bool = field(default=False, metadata={
        "help": "let a training reward model of an evaluated policy judge anyway: a loud warning, and the report "
                "marks its win rates as not independent"})
    judge_agreement: str = field(default="", metadata={
        "metavar": "FILE",
        "help": "TRL preference pairs (prompt/chosen/rejected) the judge was not trained on: the report shows the "
                "judge's accuracy on them with a Wilson interval (default: rlhf_demo/data/pairs/judge_agreement.jsonl "
                "when present; 'none' skips)"})
    human_votes: bool = field(default=True, metadata={
        "help": "add the arena's blind votes per version vs the baseline (win/tie/loss) when there are any"})
    reward_model: str = field(default="", metadata={
        "help": "reward version for scores and the reward judge (default: reward-v0, else the newest); 'none' to "
                "skip reward scores"})
    kl_samples: int = field(default=64, metadata={
        "help": "prompts per policy (evenly spaced) on which one answer is SAMPLED from the policy (temperature 1) "
                "and its exact KL to SFT computed (full next-token distributions, summed per answer); 0 skips KL"})
    kl_batch_size: int = field(default=4, metadata={"help": "sequences per KL forward pass"})
    kl_max_new_tokens: int = field(default=0, metadata={
        "help": "longest sampled answer for the KL (0: the prompt's own answer limit)"})
    forbid_reported: str = field(default="", metadata={
        "cli": False,  # the pipeline's gate prompts: a reported-suite prompt is a LeakError
        "help": "non-empty (what the prompts are for): a prompt of a reported suite is an error"})
    # ---------------------------------------------------------------- statistics and output
    detector: str = field(default="ours", metadata={
        "choices": ["ours", "string_match"], "help": "refusal detector for the headline rates (both are always reported)"})
    confidence: float = field(default=0.95, metadata={"help": "level of every interval"})
    n_bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    command: str = field(default="", metadata={"cli": False, "help": "the command line, for the report"})

    def __post_init__(self) -> None:
        # `--judge-categories helpful,unsafe` (the older comma form) and `all` read as the list they mean
        cats = [self.judge_categories] if isinstance(self.judge_categories, str) else self.judge_categories
        cats = [c.strip() for item in cats for c in str(item).split(",") if c.strip()]
        self.judge_categories = list(CATEGORIES) if cats == ["all"] else cats
