"""The arena in the browser: Gradio 6 Blocks with Arena, Leaderboard, Evaluation and Training tabs.

The rules live in :mod:`rlhf_demo.arena` (pure); this module wires them to components. Both panes
stream from ONE batched generation: the two requests of a turn are submitted together to the
:class:`~rlhf_demo.generation.PolicyServer` and the handler yields both texts after every decode
step of their group. Every handler checks who is calling (``--auth``) before doing anything;
export is for admins only. Text from users and models is made inert (:func:`arena.inert_markdown`)
before it reaches the browser, the Chatbot sanitizes HTML, and the page's Content-Security-Policy
refuses images from other hosts.
"""

from __future__ import annotations

import html
import logging
import os
import random
import re
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from arena_app.i18n import gradio_i18n, request_language, t, toast_js  # noqa: E402
from arena_app.layout import (CSS, DEFAULT_REPETITION, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, HEAD,  # noqa: E402
                              UI_WINNERS, build_layout)
from rlhf_demo import __version__  # noqa: E402
from rlhf_demo.arena import (ArenaError, Limits, RateLimiter, Round, blind_swap, check_named_pair,  # noqa: E402
                             inert_markdown, parse_policies_spec, validate_comment, validate_reasons)
from rlhf_demo.generation import GenerationError, GenerationParams, PolicyServer, Request  # noqa: E402
from rlhf_demo.pairing import Boost, choose_pair  # noqa: E402
from arena_app.suggestions import SuggestionsMixin  # noqa: E402
from rlhf_demo.leaderboard import MIN_BATTLES, compute as compute_leaderboard, in_category  # noqa: E402
from arena_app.review import leaderboard_outputs  # noqa: E402
from rlhf_demo.registry import SFT, Registry  # noqa: E402
from rlhf_demo.store import (AlreadyVoted, BetterAnswerRecord, ConversationRecord, Store, StoreError, TurnRecord,  # noqa: E402
                             VoteRecord)

log = logging.getLogger(__name__)


def find_eval_report(data_dir: Path) -> tuple[Path | None, str, list[str]]:
    """(report.md, its Markdown without image links, PNGs beside it) of the newest ``<data dir>/eval/*/``."""
    reports = sorted((Path(data_dir) / "eval").glob("*/report.md"), key=lambda p: p.stat().st_mtime)
    if not reports:
        return None, "", []
    report = reports[-1]
    try:
        text = report.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, "", []
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)  # the plots are shown in the gallery below
    pngs = sorted(str(p) for p in report.parent.glob("*.png"))
    return report, inert_markdown(text), pngs


class ArenaApp(SuggestionsMixin):
    """Holds the model server, store and registry; builds the Blocks and serves its events."""

    def __init__(self, settings, server: PolicyServer, store: Store, registry: Registry | None = None,
                 users=None, admins=(), policies: str | None = None, seed: int | None = None,
                 local_admin: bool = True, bootstrap_rounds: int = 200, concurrency: int = 32,
                 training_ui=None, prompt_pool=None, boost: Boost | None = Boost(), overlap_share: float = 0.0):
        self.settings = settings
        self.server = server
        self.store = store
        self.registry = registry or server.registry
        self.users = users  # an auth callable (auth.UserDB) or None
        self.admins = set(admins or ())
        self.local_admin = local_admin
        self.spec = parse_policies_spec(policies)
        self.limits = Limits.from_settings(settings)
        self.limiter = RateLimiter(settings.votes_per_hour)
        self.rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        # boost, overlap replay and suggestions draw from their own generator: the side swap's sequence is unchanged
        self.pair_rng = random.Random(None if seed is None else seed + 1)
        self.boost = boost
        if not 0.0 <= float(overlap_share) <= 1.0:
            raise ValueError(f"overlap_share must be in [0, 1], got {overlap_share}")
        self.overlap_share = float(overlap_share)
        self._prompt_pool = prompt_pool  # None: the project's pool, loaded at the first use
        self._battles: tuple[float, object] | None = None
        self.bootstrap_rounds = bootstrap_rounds
        self.concurrency = concurrency
        self.i18n = gradio_i18n()
        # issue 7: a callable ``training_ui(app)`` that builds the Training tab's components (inside
        # the tab, admins only); its handlers should call ``app.require_admin(request)`` first.
        self.training_ui = training_ui
        self.demo = self._build()

    # -- who is calling -----------------------------------------------------------------------
    def _identity(self, request: gr.Request | None) -> tuple[str | None, str | None]:
        user = getattr(request, "username", None) if request is not None else None
        if self.users is not None and not user:
            raise ArenaError("login_required")
        return user, getattr(request, "session_hash", None)

    def is_admin(self, user: str | None) -> bool:
        if self.users is not None:
            return bool(user) and user in self.admins
        return self.local_admin  # no --auth: the local user of a loopback-only app is the admin

    def require_admin(self, request: gr.Request | None) -> str | None:
        """The calling admin's name (None for the local admin without --auth); gr.Error otherwise."""
        lang = request_language(request)
        try:
            user, _ = self._identity(request)
            if not self.is_admin(user):
                raise ArenaError("admin_only")
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        return user

    def _rate_key(self, request, user) -> str:
        if user:
            return f"user:{user}"
        host = getattr(getattr(request, "client", None), "host", None)
        return f"ip:{host}" if host else f"session:{getattr(request, 'session_hash', '')}"

    @staticmethod
    def _fail(exc: Exception, lang: str):
        if isinstance(exc, ArenaError):
            kwargs = {k: html.escape(str(v)) for k, v in exc.kwargs.items()}  # the toast renders HTML
            return gr.Error(t(exc.key, lang, **kwargs), title=t("title", lang), print_exception=False)
        if isinstance(exc, StoreError):
            return gr.Error(t("store_down", lang), title=t("title", lang), print_exception=False)
        return gr.Error(html.escape(t("generation_failed", lang, error=str(exc)[:300])), title=t("title", lang),
                        print_exception=False)

    # -- pairing ------------------------------------------------------------------------------
    def policies(self) -> list[str]:
        return self.server.policies()  # re-reads the registry: new versions appear without a restart

    def newest(self) -> str | None:
        """The newest RLHF version the server can load (one whose adapter failed is passed over)."""
        if self.registry is None:
            return None
        version = self.registry.current("policy", among=set(self.policies()))
        return version.name if version else None

    def _hash(self, name: str) -> str:
        return "base" if name == SFT else self.server.loaded.get(name, "")

    def _pair(self, rnd: Round, named: bool, left_choice, right_choice) -> None:
        for attempt in (0, 1):
            available = self.policies()
            if named:
                left, right = check_named_pair(left_choice, right_choice, available)
                swapped = False
                rnd.pairing = {"reason": "named"}
            else:
                battles = self.battles() if self.boost is not None else None
                with self._rng_lock:
                    pair, rnd.pairing = choose_pair(self.spec, available, self.newest(), self.pair_rng, battles,
                                                    self.boost)
                    left, right, swapped = blind_swap(pair, self.rng)
            try:
                for name in (left, right):
                    self.server.ensure_policy(name)  # GenerationError for a broken adapter
                break
            except GenerationError:
                if named or attempt:
                    raise
                # blind: the server now knows that adapter is broken; pair again among the others
        rnd.blind = not named
        rnd.pair(left, right, swapped, {left: self._hash(left), right: self._hash(right)})

    def _conv(self, rnd: Round, user, sid) -> ConversationRecord:
        return ConversationRecord(id=rnd.id, left_policy=rnd.left, right_policy=rnd.right, swapped=rnd.swapped,
                                  blind=rnd.blind, left_hash=rnd.left_hash, right_hash=rnd.right_hash, user=user,
                                  session_id=sid, app_version=__version__, pairing=rnd.pairing or None)

    def _params(self, named: bool, temperature, top_p, max_new_tokens,
                seed) -> tuple[GenerationParams, GenerationParams]:
        with self._rng_lock:
            seeds = (self.rng.randrange(2**31), self.rng.randrange(2**31))
        if not named:  # blind: fixed settings, independent seeds
            base = dict(max_new_tokens=self.settings.max_new_tokens, temperature=DEFAULT_TEMPERATURE,
                        top_p=DEFAULT_TOP_P, repetition_penalty=DEFAULT_REPETITION)
            return GenerationParams(**base, seed=seeds[0]), GenerationParams(**base, seed=seeds[1])
        try:
            temperature = min(max(float(temperature), 0.0), 2.0)
            top_p = min(max(float(top_p), 0.05), 1.0)
            max_new_tokens = int(min(max(int(max_new_tokens), 1), self.settings.max_new_tokens))
            seed = int(seed)
        except (TypeError, ValueError):
            temperature, top_p, seed = DEFAULT_TEMPERATURE, DEFAULT_TOP_P, -1
            max_new_tokens = self.settings.max_new_tokens
        same = seed if seed >= 0 else None  # a fixed seed: both sides sample with it (a fair comparison)
        base = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    repetition_penalty=DEFAULT_REPETITION, greedy=temperature <= 0)
        return (GenerationParams(**base, seed=same if same is not None else seeds[0]),
                GenerationParams(**base, seed=same if same is not None else seeds[1]))

    # -- rendering ----------------------------------------------------------------------------
    @staticmethod
    def _chat(rnd: Round, side: str) -> list[dict]:
        msgs = []
        for turn in rnd.turns:
            msgs.append({"role": "user", "content": inert_markdown(turn.user)})
            text = turn.left if side == "left" else turn.right
            if text or turn.complete:
                msgs.append({"role": "assistant", "content": inert_markdown(text) or "…"})
        return msgs

    def _status(self, rnd: Round, lang: str) -> str:
        phase = rnd.phase()
        if phase == "streaming":
            return t("status_streaming", lang)
        if phase == "voted":
            return t("status_voted", lang)
        if phase == "ready" and rnd.replay_of is not None:
            return t("status_replay", lang)
        if phase == "ready":
            return t("status_max_turns" if rnd.n_turns >= self.limits.max_turns else "status_ready", lang)
        if rnd.paired and not rnd.blind:
            return t("status_idle_named", lang, left=rnd.left, right=rnd.right)
        return t("status_idle", lang)

    @staticmethod
    def _reveal(rnd: Round, lang: str):
        if rnd.paired and (rnd.voted or not rnd.blind):
            return gr.update(value=t("revealed", lang, left=rnd.left, right=rnd.right), visible=True)
        return gr.update(value="", visible=False)

    def _view(self, rnd: Round, lang: str, message=None) -> tuple:
        """Outputs of every Arena event, in the order of ``self.arena_outputs``."""
        phase = rnd.phase()
        can_vote = phase == "ready"
        can_send = phase in ("idle", "ready") and rnd.n_turns < self.limits.max_turns and rnd.replay_of is None
        return (rnd,
                gr.update(interactive=can_send) if message is None else gr.update(value=message, interactive=can_send),
                self._chat(rnd, "left"), self._chat(rnd, "right"),
                self._status(rnd, lang), self._reveal(rnd, lang),
                *[gr.update(interactive=can_vote) for _ in UI_WINNERS],
                gr.update(interactive=can_send),  # send
                gr.update(interactive=phase == "ready" and rnd.replay_of is None),  # regenerate
                gr.update(interactive=phase != "streaming"),  # new round
                gr.update(interactive=phase in ("ready", "voted")))  # better answer

    # -- events -------------------------------------------------------------------------------
    def send(self, message, rnd: Round | None, mode, left_choice, right_choice, temperature, top_p,
             max_new_tokens, seed, suggestion=None, request: gr.Request = None, source=None):
        """A new turn. ``suggestion`` (the session's last "Suggest a prompt" draw) marks the turn ``suggested``
        when the message is that prompt unedited; ``source`` = (kind, meta) is set by a clicked example."""
        lang = request_language(request)
        rnd = rnd if isinstance(rnd, Round) else Round()
        named = mode == "named"
        try:
            user, sid = self._identity(request)
            turn = rnd.ask(message, self.limits)
            if source is not None:
                turn.source, turn.prompt_meta = source
            elif isinstance(suggestion, dict) and turn.user == str(suggestion.get("text", "")).strip():
                turn.source = "suggested"
                turn.prompt_meta = {k: suggestion.get(k) for k in ("category", "lang", "ref")}
            if not rnd.paired:
                try:
                    self._pair(rnd, named, left_choice, right_choice)
                except BaseException:
                    rnd.turns.pop()
                    raise
        except (ArenaError, GenerationError) as exc:
            raise self._fail(exc, lang) from None
        params = self._params(not rnd.blind, temperature, top_p, max_new_tokens, seed)
        yield from self._stream(rnd, turn, params, user, sid, lang, clear_input=True)

    def regenerate(self, rnd: Round | None, temperature, top_p, max_new_tokens, seed, request: gr.Request):
        lang = request_language(request)
        rnd = rnd if isinstance(rnd, Round) else Round()
        try:
            user, sid = self._identity(request)
            backup = dict(vars(rnd.turns[-1])) if rnd.turns else None
            turn = rnd.regenerate()
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        params = self._params(not rnd.blind, temperature, top_p, max_new_tokens, seed)
        yield from self._stream(rnd, turn, params, user, sid, lang, clear_input=False, backup=backup)

    @staticmethod
    def _undo(rnd: Round, turn, backup) -> None:
        """A turn that failed: drop a new one; give a regenerated one its previous answers back."""
        if backup is None:
            if rnd.turns and rnd.turns[-1] is turn:
                rnd.turns.pop()
        else:
            turn.__dict__.update(backup)

    def _stream(self, rnd: Round, turn, params, user, sid, lang, clear_input: bool, backup: dict | None = None):
        """Both sides from ONE batched generation; yield both texts after each decode step."""
        try:
            streams = self.server.submit([Request(rnd.prompt("left"), rnd.left, params[0]),
                                          Request(rnd.prompt("right"), rnd.right, params[1])])
        except GenerationError as exc:
            self._undo(rnd, turn, backup)
            raise self._fail(exc, lang) from None
        rnd.streaming = True
        finished = False
        try:
            yield self._view(rnd, lang, message="" if clear_input else None)
            for _ in streams[0].group.updates():
                turn.left, turn.right = streams[0].text, streams[1].text
                yield self._view(rnd, lang)
            finished = True
        finally:
            rnd.streaming = False
            if not finished:  # the page went away or generation timed out: never leave the round stuck
                self._undo(rnd, turn, backup)
        error = streams[0].error or streams[1].error
        if error:
            self._undo(rnd, turn, backup)
            yield self._view(rnd, lang)
            raise self._fail(error, lang)
        turn.left, turn.right = streams[0].text, streams[1].text
        turn.params = {"left": params[0].to_dict(), "right": params[1].to_dict()}
        turn.latency = {side: {"first_token_s": s.first_token_s, "total_s": s.total_s}
                        for side, s in zip(("left", "right"), streams)}
        turn.finish = {"left": streams[0].finish_reason, "right": streams[1].finish_reason}
        turn.complete = True
        try:
            self.store.record_turn(self._conv(rnd, user, sid), TurnRecord(
                conversation_id=rnd.id, turn=rnd.n_turns, attempt=turn.attempt, user_message=turn.user,
                left_answer=turn.left, right_answer=turn.right, params=turn.params, latency=turn.latency,
                finish=turn.finish, prompt_source=turn.source, prompt_meta=turn.prompt_meta))
        except StoreError as exc:
            log.warning("turn not logged: %s", exc)
            gr.Warning(t("store_down", lang), title=t("toast_warning", lang))
        yield self._view(rnd, lang)

    def vote(self, winner: str, reasons, comment, rnd: Round | None, request: gr.Request):
        lang = request_language(request)
        rnd = rnd if isinstance(rnd, Round) else Round()
        try:
            user, sid = self._identity(request)
            rnd.check_vote(winner)
            reasons = validate_reasons(reasons)
            comment = validate_comment(comment)
            key = self._rate_key(request, user)
            self.limiter.check(key)
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        record = VoteRecord(
            conversation_id=rnd.id, turn=rnd.n_turns, left_policy=rnd.left, right_policy=rnd.right, winner=winner,
            left_messages=rnd.messages("left"), right_messages=rnd.messages("right"), swapped=rnd.swapped,
            blind=rnd.blind, left_hash=rnd.left_hash, right_hash=rnd.right_hash,
            params=[{"turn": i, "attempt": tr.attempt, **tr.params} for i, tr in enumerate(rnd.turns, 1)],
            latency=[{"turn": i, **tr.latency} for i, tr in enumerate(rnd.turns, 1)],
            reasons=reasons, comment=comment, user=user, session_id=sid, app_version=__version__,
            pairing=rnd.pairing or None, prompts=rnd.prompt_sources())
        try:
            self.store.record_vote(self._conv(rnd, user, sid), record)
        except AlreadyVoted:
            rnd.winner = winner
            raise self._fail(ArenaError("already_voted"), lang) from None
        except StoreError as exc:
            raise self._fail(exc, lang) from None
        self.limiter.hit(key)
        self._battles = None  # the boost sees this vote at the next round
        rnd.winner = winner
        gr.Info(t("vote_saved", lang), title=t("toast_info", lang))
        return self._view(rnd, lang)

    def better_answer(self, text, rnd: Round | None, request: gr.Request):
        lang = request_language(request)
        rnd = rnd if isinstance(rnd, Round) else Round()
        try:
            user, sid = self._identity(request)
            text = rnd.check_better_answer(text, self.limits)
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        record = BetterAnswerRecord(
            conversation_id=rnd.id, turn=rnd.n_turns, text=text, left_messages=rnd.messages("left"),
            right_messages=rnd.messages("right"), left_policy=rnd.left, right_policy=rnd.right,
            left_hash=rnd.left_hash, right_hash=rnd.right_hash, user=user, session_id=sid, app_version=__version__)
        try:
            self.store.record_better_answer(self._conv(rnd, user, sid), record)
        except StoreError as exc:
            raise self._fail(exc, lang) from None
        rnd.better_turns.add(rnd.n_turns)
        gr.Info(t("better_saved", lang), title=t("toast_info", lang))
        return rnd, ""

    def new_round(self, mode, request: gr.Request):
        lang = request_language(request)
        try:
            user, _ = self._identity(request)
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        rnd = (self._replay(user) if mode != "named" else None) or Round(blind=mode != "named")
        names = self.policies()
        return (*self._view(rnd, lang, message=""), gr.update(value=[]), gr.update(value=""), gr.update(value=""),
                gr.update(visible=mode == "named"), gr.update(choices=names), gr.update(choices=names))

    def leaderboard(self, include_named: bool, category: str | None, request: gr.Request):
        lang = request_language(request)
        try:
            self._identity(request)
            votes = in_category(self.store.votes(blind_only=not include_named), category)  # "all": every vote
        except (ArenaError, StoreError) as exc:
            raise self._fail(exc, lang) from None
        board = compute_leaderboard(votes, blind_only=not include_named, rounds=self.bootstrap_rounds,
                                    min_battles=MIN_BATTLES)
        return leaderboard_outputs(board, lang)

    def evaluation(self, request: gr.Request):
        lang = request_language(request)
        try:
            self._identity(request)
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        report, text, pngs = find_eval_report(self.settings.data_dir)
        if report is None:
            return t("eval_none", lang), gr.update(value=[], visible=False)
        return t("eval_from", lang, path=report) + "\n\n" + text, gr.update(value=pngs, visible=bool(pngs))

    def export(self, fmt: str, request: gr.Request):
        from rlhf_demo.export import export_pairs

        lang = request_language(request)
        user = self.require_admin(request)
        fmt = "hh" if fmt == "hh" else "trl"
        out = Path(tempfile.mkdtemp(prefix="arena-export-")) / f"pairs-{fmt}.jsonl"
        try:
            result = export_pairs(self.store, fmt, out)
        except StoreError as exc:
            raise self._fail(exc, lang) from None
        log.info("export by %s: %s", user or "local admin", result.summary())
        summary = result.summary() if lang == "en" else t(
            "export_summary", lang, written=result.written, votes=result.from_votes, better=result.from_better,
            skipped=", ".join(f"{n} {t('skip_' + why, lang)}" for why, n in sorted(result.skipped.items()))
            or t("train_none_word", lang))
        return gr.update(value=str(out), visible=True), t("export_done", lang, summary=summary)

    def on_load(self, request: gr.Request):
        lang = request_language(request)
        user = getattr(request, "username", None)
        names = self.policies()
        newest = self.newest() or SFT
        admin = self.is_admin(user) and (self.users is None or bool(user))
        stats = ""
        if admin:
            try:
                s = self.store.stats()
                stats = t("feedback_so_far", lang, votes=s["votes"], blind=s["blind_votes"],
                          better=s["better_answers"])
            except StoreError as exc:
                stats = f"**{html.escape(str(exc))}**"
        who = f"{html.escape(user)} · [{t('log_out', lang)}](/logout)" if user else ""
        return (gr.update(visible=admin), gr.update(choices=names, value=SFT),
                gr.update(choices=names, value=newest), who, stats)

    # -- layout (arena_app/layout.py) ---------------------------------------------------------
    def _build(self) -> gr.Blocks:
        return build_layout(self)

    def _vote_fn(self, winner: str):
        def vote(reasons, comment, rnd, request: gr.Request):
            return self.vote(winner, reasons, comment, rnd, request)
        vote.__name__ = f"vote_{winner}"
        return vote

    def _export_fn(self, fmt: str):
        def export(request: gr.Request):
            return self.export(fmt, request)
        export.__name__ = f"export_{fmt}"
        return export

    # -- serving ------------------------------------------------------------------------------
    def launch_kwargs(self) -> dict:
        eval_dir = (Path(self.settings.data_dir) / "eval").resolve()
        # the system's fonts: an offline app fetches nothing from font CDNs
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                  font_mono=["ui-monospace", "Consolas", "monospace"])
        return dict(auth=self.users, i18n=self.i18n, css=CSS, head=HEAD, js=toast_js(), allowed_paths=[str(eval_dir)],
                    theme=theme, footer_links=[], auth_message="RLHF Arena — please log in.")

    def launch(self, **kwargs):
        self.demo.queue(default_concurrency_limit=self.concurrency)
        return self.demo.launch(**{**self.launch_kwargs(), **kwargs})

    def close(self) -> None:
        self.demo.close()


def build_app(settings, server: PolicyServer | None = None, store: Store | None = None,
              registry: Registry | None = None, users=None, admins=(), policies: str | None = None,
              seed: int | None = None, local_admin: bool = True, **kw) -> ArenaApp:
    """Everything the arena needs; pass ``server``/``store`` to inject a test model or database."""
    registry = registry or (server.registry if server is not None and server.registry is not None
                            else Registry(settings.versions_dir))
    if server is None:
        server = PolicyServer.from_settings(settings, registry)
    if store is None:
        store = Store.from_settings(settings)
    return ArenaApp(settings, server, store, registry, users=users, admins=admins, policies=policies, seed=seed,
                    local_admin=local_admin, **kw)
