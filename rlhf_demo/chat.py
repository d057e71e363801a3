"""`python -m rlhf_demo.chat --policy sft "How do I bake bread?"` — stream one answer to the terminal."""

from __future__ import annotations

import sys

from .cli import add_sampling_args, make_parser, sampling_params, setup_logging
from .config import settings_from_args
from .generation import GenerationError, PolicyServer, Request
from .registry import RegistryError


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m rlhf_demo.chat", __doc__)
    p.add_argument("message", help="what to ask")
    p.add_argument("--policy", default="sft", help="policy version: sft, rlhf-v0, … (default: %(default)s)")
    p.add_argument("--system", default=None, help="optional system message")
    add_sampling_args(p)
    args = p.parse_args(argv)
    setup_logging()
    settings = settings_from_args(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}]
    try:
        server = PolicyServer.from_settings(settings)
        [stream] = server.submit([Request(messages, args.policy, sampling_params(args))])
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    except (GenerationError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
