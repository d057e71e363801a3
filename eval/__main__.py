"""``python -m eval`` — evaluate policy versions: harmlessness, over-refusal, helpfulness, KL.

Example (the README's results table)::

    python -m eval --policies sft rlhf-v0
    python -m eval --policies sft rlhf-v0 --suite xstest --limit 20     # a quick look
    python -m eval --policies sft rlhf-v0 --judge lm --judge-model sft  # the base model as judge

Writes ``report.json``, ``report.md``, PNG plots, ``generations.jsonl`` and ``judgements.jsonl``
to ``--out`` (default ``<data dir>/eval/<UTC timestamp>/``, which the arena's Evaluation tab shows).
"""

from __future__ import annotations

import shlex
import sys

from rlhf_demo.flags import ConfigParser

from .config import EvalConfig
from .suites import SuiteError


DESCRIPTION = ("Evaluate policy versions against a baseline (SFT): harmful compliance on unsafe prompts, over-refusal on "
               "safe prompts (both with Wilson intervals and an exact McNemar test), win/tie/lose on helpful prompts "
               "from a pairwise judge (both orders, bootstrap interval, length-controlled win rate), reward-model "
               "scores, and per-token KL to SFT. Writes report.json, report.md, PNG plots and the generations.")


def build_parser() -> ConfigParser:
    """The one flag parser over :class:`eval.config.EvalConfig` (one flag a field, its help and default) plus the
    shared settings flags, each naming its environment variable."""
    p = ConfigParser(EvalConfig, "evaluation (defaults shown)", prog="python -m eval", description=DESCRIPTION)
    # eval's own default for the shared --max-new-tokens (EvalConfig.max_new_tokens: the longest helpful answer)
    p.set_defaults(max_new_tokens=EvalConfig.max_new_tokens)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config, settings = build_parser().parse_config(EvalConfig, argv)
    config.command = "python -m eval " + shlex.join(argv)

    from rlhf_demo.registry import RegistryError

    from .judges import JudgeError
    from .runner import run

    try:
        out = run(config, settings)
    except (SuiteError, RegistryError, JudgeError, ValueError) as exc:
        print(f"python -m eval: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
