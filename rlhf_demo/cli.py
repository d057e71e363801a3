"""Small helpers shared by the command-line entry points."""

from __future__ import annotations

import argparse
import logging

from .flags import ConfigParser
from .generation import GenerationParams


def make_parser(prog: str, description: str, epilog: str | None = None) -> ConfigParser:
    """The one flag parser (:class:`rlhf_demo.flags.ConfigParser`) with the shared settings flags (--data-dir,
    --base-model, --max-new-tokens, …)."""
    return ConfigParser(prog=prog, description=description, epilog=epilog)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (the answer length is --max-new-tokens)")
    g.add_argument("--temperature", type=float, default=0.7, help="softmax temperature; 0 = greedy (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=0.9,
                   help="nucleus sampling: keep the smallest set of tokens with this mass (default: %(default)s)")
    g.add_argument("--repetition-penalty", type=float, default=1.1,
                   help="CTRL-style penalty on tokens already seen; 1 = off (default: %(default)s)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding: deterministic, ignores temperature/top-p")
    g.add_argument("--seed", type=int, default=None, help="sampling seed for reproducible answers (default: random)")


def sampling_params(args: argparse.Namespace) -> GenerationParams:
    return GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, greedy=args.greedy, seed=args.seed)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
