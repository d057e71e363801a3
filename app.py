"""`python app.py`: the RLHF Arena in the browser (http://127.0.0.1:7860 by default).

Blind side-by-side chat with two policies (SFT vs the newest RLHF version by default), votes and
better answers stored in the feedback database, a leaderboard, the newest evaluation report and
(for admins) the training tab. All logic lives in rlhf_demo/; this file parses flags and launches.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from rlhf_demo.config import add_settings_args, settings_from_args
from rlhf_demo.flags import ConfigParser

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = ConfigParser(  # the one flag parser; the shared settings flags come last (below)
        settings=False, formatter_class=argparse.HelpFormatter,
        prog="python app.py", description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1])
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on; 0.0.0.0 serves the network (use --auth then; default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    p.add_argument("--auth", metavar="FILE", default=None,
                   help="users file with salted password hashes (create it with `python -m arena_app.auth add "
                        "USER --file FILE`); enables login — nothing works without it — and puts the user name "
                        "on every vote")
    p.add_argument("--admin", metavar="USER", action="append", default=[],
                   help="a user (from --auth) who may export data and train; repeat for several. Without "
                        "--auth, the local user is the admin when --host is a loopback address, else nobody is")
    p.add_argument("--policies", default="sft,newest",
                   help="the pair offered in blind mode: two version names (e.g. 'sft,rlhf-v1'; 'newest' = the "
                        "newest RLHF version when the round starts), or 'all' to sample two among every version "
                        "(default: %(default)s)")
    p.add_argument("--prompt-pool", metavar="FILE", default=None,
                   help="JSONL prompt pool for the example prompts and the 'Suggest a prompt' button, one object a "
                        "line: {\"prompt\": ..., \"category\": \"harmful\"|\"risky-safe\"|\"ordinary\", \"lang\": "
                        "\"en\"|\"zh\"} (default: the project's pool, train-role prompts only)")
    p.add_argument("--boost-votes", type=int, default=30,
                   help="a published version counts as new until it has this many votes against another version; "
                        "new versions get --boost-share of the blind rounds (default: %(default)s)")
    p.add_argument("--boost-share", type=float, default=0.5,
                   help="share of blind rounds given to a new version (0 = no boost; default: %(default)s)")
    p.add_argument("--overlap-share", type=float, default=0.1,
                   help="share of new blind rounds (signed-in users, --auth) that replay a conversation pair another "
                        "user voted on, for rater agreement (0 = never; default: %(default)s)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the blind side swap and the pairing (default: random)")
    p.add_argument("--bootstrap-rounds", type=int, default=200,
                   help="bootstrap resamples for the leaderboard's 95%% intervals (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=32,
                   help="requests served at once per event (generation batches them together; default: %(default)s)")
    p.add_argument("--pipeline-args", default="",
                   help="extra flags for the Training tab's `python -m arena_app.pipeline` runs, as one string "
                        "(e.g. '--ppo-iterations 40 --max-over-refusal-rise 3'; see python -m arena_app.pipeline --help)")
    p.add_argument("--backend", choices=("local", "openai"), default="local",
                   help="local: load the base model and the LoRA versions in this process; openai: stream every "
                        "answer from an OpenAI-compatible server (vLLM with --lora-modules, `transformers serve`; "
                        "see docs/scale-out.md) (default: %(default)s)")
    p.add_argument("--openai-url", default=None,
                   help="base URL of that server, e.g. http://127.0.0.1:8000/v1 (with --backend openai)")
    p.add_argument("--openai-model", metavar="POLICY=MODEL", action="append", default=[],
                   help="the server's model id for a policy when it differs from the policy name (repeatable)")
    p.add_argument("--openai-api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the server's API key, if it needs one (default: %(default)s)")
    p.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING; default: %(default)s)")
    add_settings_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.admin and not args.auth:
        parser.error("--admin needs --auth (admins are users who log in)")
    from rlhf_demo.arena import ArenaError, parse_policies_spec

    try:
        parse_policies_spec(args.policies)
    except ArenaError as exc:
        why = exc.kwargs.get("why") or "use two names such as sft,newest, or all"
        parser.error(f"--policies {args.policies!r}: {why}")
    from rlhf_demo.pairing import Boost
    from rlhf_demo.prompt_pool import PromptPoolError, load_pool

    try:
        boost = Boost(args.boost_votes, args.boost_share)
    except ValueError as exc:
        parser.error(f"--boost-votes/--boost-share: {exc}")
    if not 0.0 <= args.overlap_share <= 1.0:
        parser.error(f"--overlap-share must be in [0, 1], got {args.overlap_share}")
    prompt_pool = None
    if args.prompt_pool:
        try:
            prompt_pool = load_pool(args.prompt_pool)
        except PromptPoolError as exc:
            parser.error(f"--prompt-pool: {exc}")
    if args.backend == "openai" and not args.openai_url:
        parser.error("--backend openai needs --openai-url URL")
    model_map = {}
    for item in args.openai_model:
        policy, sep, model = item.partition("=")
        if not sep or not policy or not model:
            parser.error(f"--openai-model {item!r}: use POLICY=MODEL")
        model_map[policy] = model
    settings = settings_from_args(args)

    from arena_app.auth import AuthError, UserDB
    from rlhf_demo.base_model import BaseModelError

    users = None
    if args.auth:
        try:
            users = UserDB(args.auth)
        except AuthError as exc:
            parser.error(str(exc))
        unknown = [a for a in args.admin if a not in users.names]
        if unknown:
            parser.error(f"--admin {', '.join(unknown)}: not in {args.auth}")
    local_admin = users is None and is_loopback(args.host)
    if users is None and not is_loopback(args.host):
        logging.warning("serving %s without --auth: anyone who can reach it may vote, and nobody is admin",
                        args.host)

    import shlex

    from arena_app.training_tab import TrainingTab
    from arena_app.ui import build_app

    server = None
    if args.backend == "openai":
        import os

        from rlhf_demo.openai_backend import OpenAIBackend
        from rlhf_demo.registry import Registry

        server = OpenAIBackend(args.openai_url, registry=Registry(settings.versions_dir), model_map=model_map,
                               api_key=os.environ.get(args.openai_api_key_env))
    try:
        app = build_app(settings, server=server, users=users, admins=args.admin, policies=args.policies, seed=args.seed,
                        local_admin=local_admin, bootstrap_rounds=args.bootstrap_rounds,
                        concurrency=args.concurrency, prompt_pool=prompt_pool, boost=boost,
                        overlap_share=args.overlap_share,
                        training_ui=TrainingTab.factory(shlex.split(args.pipeline_args)))
    except BaseModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if app.store.problem:
        logging.error("%s — the arena serves, but cannot save feedback until this is fixed", app.store.problem)
    app.launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
