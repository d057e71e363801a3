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
import pandas as pd  # noqa: E402

from . import __version__  # noqa: E402
from .arena import (REASONS, ArenaError, Limits, RateLimiter, Round, blind_swap, check_named_pair,  # noqa: E402
                    inert_markdown, parse_policies_spec, resolve_pair, validate_comment, validate_reasons)
from .generation import GenerationError, GenerationParams, PolicyServer, Request  # noqa: E402
from .i18n import gradio_i18n, request_language, t  # noqa: E402
from .leaderboard import compute as compute_leaderboard  # noqa: E402
from .registry import SFT, Registry  # noqa: E402
from .store import (AlreadyVoted, BetterAnswerRecord, ConversationRecord, Store, StoreError, TurnRecord,  # noqa: E402
                    VoteRecord)

log = logging.getLogger(__name__)

# Layer three of "nothing from the text executes or loads": no images, media or plugins from other hosts.
HEAD = ("<meta http-equiv=\"Content-Security-Policy\" content=\"img-src 'self' data: blob:; "
        "media-src 'self' data: blob:; object-src 'none'\">")
CSS = """
#vote-row button { min-width: 8em; }
.arena-status { min-height: 1.6em; }
footer { display: none !important; }
/* the Chatbot's own "clear" icon would only blank the pane in the browser: the round lives on the server */
#chat-a .top-panel button, #chat-b .top-panel button { display: none !important; }
"""
DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_REPETITION = 0.7, 0.9, 1.1
UI_WINNERS = ("left", "right", "tie", "both_bad")
RATING_COLUMNS = ["rank", "model", "rating", "95% CI", "battles", "win rate"]


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


class ArenaApp:
    """Holds the model server, store and registry; builds the Blocks and serves its events."""

    def __init__(self, settings, server: PolicyServer, store: Store, registry: Registry | None = None,
                 users=None, admins=(), policies: str | None = None, seed: int | None = None,
                 local_admin: bool = True, bootstrap_rounds: int = 200, concurrency: int = 32,
                 training_ui=None):
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
            return gr.Error(t(exc.key, lang, **kwargs), title="RLHF Arena", print_exception=False)
        if isinstance(exc, StoreError):
            return gr.Error(t("store_down", lang), title="RLHF Arena", print_exception=False)
        return gr.Error(html.escape(t("generation_failed", lang, error=str(exc)[:300])), title="RLHF Arena",
                        print_exception=False)

    # -- pairing ------------------------------------------------------------------------------
    def policies(self) -> list[str]:
        return self.server.policies()  # re-reads the registry: new versions appear without a restart

    def newest(self) -> str | None:
        """The newest RLHF version the server can load (one whose adapter failed is passed over)."""
        if self.registry is None:
            return None
        servable = set(self.policies())
        versions = [v for v in self.registry.list("policy") if not v.is_base and v.name in servable]
        return max(versions, key=lambda v: (v.number, v.card.get("created", ""))).name if versions else None

    def _hash(self, name: str) -> str:
        return "base" if name == SFT else self.server.loaded.get(name, "")

    def _pair(self, rnd: Round, named: bool, left_choice, right_choice) -> None:
        for attempt in (0, 1):
            available = self.policies()
            if named:
                left, right = check_named_pair(left_choice, right_choice, available)
                swapped = False
            else:
                with self._rng_lock:
                    pair = resolve_pair(self.spec, available, self.newest(), self.rng)
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
                                  session_id=sid, app_version=__version__)

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
        can_send = phase in ("idle", "ready") and rnd.n_turns < self.limits.max_turns
        return (rnd,
                gr.update(interactive=can_send) if message is None else gr.update(value=message, interactive=can_send),
                self._chat(rnd, "left"), self._chat(rnd, "right"),
                self._status(rnd, lang), self._reveal(rnd, lang),
                *[gr.update(interactive=can_vote) for _ in UI_WINNERS],
                gr.update(interactive=can_send),  # send
                gr.update(interactive=phase == "ready"),  # regenerate
                gr.update(interactive=phase != "streaming"),  # new round
                gr.update(interactive=phase in ("ready", "voted")))  # better answer

    # -- events -------------------------------------------------------------------------------
    def send(self, message, rnd: Round | None, mode, left_choice, right_choice, temperature, top_p,
             max_new_tokens, seed, request: gr.Request):
        lang = request_language(request)
        rnd = rnd if isinstance(rnd, Round) else Round()
        named = mode == "named"
        try:
            user, sid = self._identity(request)
            turn = rnd.ask(message, self.limits)
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
                finish=turn.finish))
        except StoreError as exc:
            log.warning("turn not logged: %s", exc)
            gr.Warning(t("store_down", lang))
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
            reasons=reasons, comment=comment, user=user, session_id=sid, app_version=__version__)
        try:
            self.store.record_vote(self._conv(rnd, user, sid), record)
        except AlreadyVoted:
            rnd.winner = winner
            raise self._fail(ArenaError("already_voted"), lang) from None
        except StoreError as exc:
            raise self._fail(exc, lang) from None
        self.limiter.hit(key)
        rnd.winner = winner
        gr.Info(t("vote_saved", lang))
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
        gr.Info(t("better_saved", lang))
        return rnd, ""

    def new_round(self, mode, request: gr.Request):
        lang = request_language(request)
        try:
            self._identity(request)
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        rnd = Round(blind=mode != "named")
        names = self.policies()
        return (*self._view(rnd, lang, message=""), gr.update(value=[]), gr.update(value=""), gr.update(value=""),
                gr.update(visible=mode == "named"), gr.update(choices=names), gr.update(choices=names))

    def leaderboard(self, include_named: bool, request: gr.Request):
        lang = request_language(request)
        try:
            self._identity(request)
            votes = self.store.votes(blind_only=not include_named)
        except (ArenaError, StoreError) as exc:
            raise self._fail(exc, lang) from None
        board = compute_leaderboard(votes, blind_only=not include_named, rounds=self.bootstrap_rounds)
        empty = (pd.DataFrame(columns=RATING_COLUMNS), pd.DataFrame(columns=["model"]), pd.DataFrame(columns=["model"]))
        if not board.n_votes:
            return (t("lb_empty", lang), *empty)
        w = {k: board.by_winner.get(k, 0) for k in UI_WINNERS}
        summary = t("lb_summary", lang, votes=board.n_votes, battles=board.n_battles, **w)
        if not board.rows:
            return (summary + "\n\n" + t("lb_no_battles", lang), *empty)
        ratings = pd.DataFrame([{"rank": r["rank"], "model": r["model"], "rating": round(r["rating"]),
                                 "95% CI": (t("anchor", lang) if r["model"] == SFT and r["lo"] == r["hi"]
                                            else f"{r['lo']:.0f} – {r['hi']:.0f}"), "battles": r["battles"],
                                 "win rate": f"{100 * r['win_rate']:.0f}%"} for r in board.rows])
        names = board.names
        rate = pd.DataFrame([[("" if i == j or pd.isna(board.win_rate[i, j]) else f"{100 * board.win_rate[i, j]:.0f}%")
                              for j in range(len(names))] for i in range(len(names))], columns=names)
        rate.insert(0, "model", names)
        counts = pd.DataFrame(board.counts, columns=names)
        counts.insert(0, "model", names)
        return summary, ratings, rate, counts

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
        from .export import export_pairs

        lang = request_language(request)
        user = self.require_admin(request)
        fmt = "hh" if fmt == "hh" else "trl"
        out = Path(tempfile.mkdtemp(prefix="arena-export-")) / f"pairs-{fmt}.jsonl"
        try:
            result = export_pairs(self.store, fmt, out)
        except StoreError as exc:
            raise self._fail(exc, lang) from None
        log.info("export by %s: %s", user or "local admin", result.summary())
        return gr.update(value=str(out), visible=True), t("export_done", lang, summary=result.summary())

    def on_load(self, request: gr.Request):
        user = getattr(request, "username", None)
        names = self.policies()
        newest = self.newest() or SFT
        admin = self.is_admin(user) and (self.users is None or bool(user))
        stats = ""
        if admin:
            try:
                s = self.store.stats()
                stats = (f"**Feedback so far:** {s['votes']} votes ({s['blind_votes']} blind), "
                         f"{s['better_answers']} better answers.")
            except StoreError as exc:
                stats = f"**{html.escape(str(exc))}**"
        who = f"{html.escape(user)} · [log out](/logout)" if user else ""
        return (gr.update(visible=admin), gr.update(choices=names, value=SFT),
                gr.update(choices=names, value=newest), who, stats)

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> gr.Blocks:
        i = self.i18n
        names = self.policies()
        newest = self.newest() or SFT
        with gr.Blocks(title="RLHF Arena", analytics_enabled=False) as demo:
            state = gr.State(None)  # a Round, made at the first event
            with gr.Row():
                gr.Markdown(f"# {i('title')}")
                who = gr.Markdown("", elem_id="who")
            gr.Markdown(i("intro"))
            with gr.Tabs():
                with gr.Tab(i("tab_arena"), id="arena"):
                    mode = gr.Radio([(i("mode_blind"), "blind"), (i("mode_named"), "named")], value="blind",
                                    label=i("mode"), elem_id="mode")
                    with gr.Row(visible=False, elem_id="named-row") as named_row:
                        left_dd = gr.Dropdown(names, value=SFT, label=i("left_policy"), elem_id="left-policy")
                        right_dd = gr.Dropdown(names, value=newest, label=i("right_policy"), elem_id="right-policy")
                        with gr.Accordion(i("sampling"), open=False):
                            temperature = gr.Slider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05,
                                                    label=i("temperature"))
                            top_p = gr.Slider(0.05, 1.0, value=DEFAULT_TOP_P, step=0.05, label=i("top_p"))
                            max_new = gr.Slider(1, self.settings.max_new_tokens, value=self.settings.max_new_tokens,
                                                step=1, label=i("max_new_tokens"))
                            seed = gr.Number(value=-1, precision=0, label=i("seed"))
                    with gr.Row():
                        chat_a = gr.Chatbot(label=i("model_a"), elem_id="chat-a", height=420, sanitize_html=True,
                                            feedback_options=None, buttons=["copy"])
                        chat_b = gr.Chatbot(label=i("model_b"), elem_id="chat-b", height=420, sanitize_html=True,
                                            feedback_options=None, buttons=["copy"])
                    reveal = gr.Markdown("", visible=False, elem_id="reveal")
                    status = gr.Markdown(i("status_idle"), elem_id="status", elem_classes=["arena-status"])
                    with gr.Row(elem_id="vote-row"):
                        vote_btns = [gr.Button(i(f"vote_{w}"), interactive=False, elem_id=f"vote-{w.replace('_', '-')}")
                                     for w in UI_WINNERS]
                    with gr.Row():
                        reasons = gr.CheckboxGroup([(i(f"reason_{r}"), r) for r in REASONS], label=i("reasons"),
                                                   elem_id="reasons", scale=3)
                        comment = gr.Textbox(label=i("comment"), lines=1, max_lines=4, elem_id="comment", scale=2)
                    with gr.Row():
                        msg = gr.Textbox(show_label=False, placeholder=i("placeholder"), scale=8, lines=1,
                                         max_lines=8, elem_id="message", autofocus=True)
                        send_btn = gr.Button(i("send"), variant="primary", scale=1, elem_id="send")
                    with gr.Row():
                        regen_btn = gr.Button(i("regenerate"), interactive=False, elem_id="regenerate")
                        new_btn = gr.Button(i("new_round"), elem_id="new-round")
                    with gr.Accordion(i("better"), open=False, elem_id="better-box"):
                        better = gr.Textbox(show_label=False, placeholder=i("better_placeholder"), lines=3,
                                            elem_id="better")
                        better_btn = gr.Button(i("better_submit"), interactive=False, elem_id="better-submit")

                with gr.Tab(i("tab_leaderboard"), id="leaderboard") as lb_tab:
                    with gr.Row():
                        include_named = gr.Checkbox(False, label=i("include_named"))
                        lb_refresh = gr.Button(i("refresh"), scale=0)
                    lb_summary = gr.Markdown(elem_id="lb-summary")
                    gr.Markdown(f"#### {i('ratings')}")
                    lb_ratings = gr.Dataframe(interactive=False, elem_id="lb-ratings")
                    gr.Markdown(f"#### {i('win_rate')}")
                    lb_rate = gr.Dataframe(interactive=False)
                    gr.Markdown(f"#### {i('battles')}")
                    lb_counts = gr.Dataframe(interactive=False)

                with gr.Tab(i("tab_eval"), id="eval") as eval_tab:
                    gr.Markdown(i("eval_md"))
                    eval_refresh = gr.Button(i("refresh"), scale=0)
                    eval_md = gr.Markdown(elem_id="eval-report")
                    eval_gallery = gr.Gallery(visible=False, columns=2, height="auto", show_label=False)

                with gr.Tab(i("tab_training"), id="training", visible=False) as train_tab:
                    if self.training_ui is not None:
                        self.training_ui(self)
                    else:
                        gr.Markdown(i("training_md"))
                    train_stats = gr.Markdown()
                    with gr.Row():
                        export_trl = gr.Button(i("export_pairs"), elem_id="export-trl")
                        export_hh = gr.Button(i("export_hh"), elem_id="export-hh")
                    export_msg = gr.Markdown()
                    export_file = gr.File(interactive=False, show_label=False, visible=False)

            # -- wiring ------------------------------------------------------------------------
            self.arena_outputs = [state, msg, chat_a, chat_b, status, reveal, *vote_btns, send_btn, regen_btn,
                                  new_btn, better_btn]
            sampling = [temperature, top_p, max_new, seed]
            send_inputs = [msg, state, mode, left_dd, right_dd, *sampling]
            common = dict(outputs=self.arena_outputs, concurrency_limit=self.concurrency, show_progress="hidden")
            send_btn.click(self.send, send_inputs, api_name="send", **common)
            msg.submit(self.send, send_inputs, api_visibility="private", **common)
            regen_btn.click(self.regenerate, [state, *sampling], api_name="regenerate", **common)
            for w, btn in zip(UI_WINNERS, vote_btns):
                btn.click(self._vote_fn(w), [reasons, comment, state], api_name=f"vote_{w}", **common)
            better_btn.click(self.better_answer, [better, state], [state, better], api_name="better_answer",
                             concurrency_limit=self.concurrency, show_progress="hidden")
            reset_outputs = [*self.arena_outputs, reasons, comment, better, named_row, left_dd, right_dd]
            new_btn.click(self.new_round, [mode], reset_outputs, api_name="new_round", show_progress="hidden",
                          concurrency_limit=self.concurrency)
            mode.input(self.new_round, [mode], reset_outputs, api_visibility="private", show_progress="hidden")
            for dd in (left_dd, right_dd):
                dd.input(self.new_round, [mode], reset_outputs, api_visibility="private", show_progress="hidden")
            lb_outputs = [lb_summary, lb_ratings, lb_rate, lb_counts]
            lb_refresh.click(self.leaderboard, [include_named], lb_outputs, api_name="leaderboard")
            lb_tab.select(self.leaderboard, [include_named], lb_outputs, api_visibility="private")
            include_named.input(self.leaderboard, [include_named], lb_outputs, api_visibility="private")
            eval_refresh.click(self.evaluation, None, [eval_md, eval_gallery], api_name="evaluation")
            eval_tab.select(self.evaluation, None, [eval_md, eval_gallery], api_visibility="private")
            export_trl.click(self._export_fn("trl"), None, [export_file, export_msg], api_name="export_trl")
            export_hh.click(self._export_fn("hh"), None, [export_file, export_msg], api_name="export_hh")
            demo.load(self.on_load, None, [train_tab, left_dd, right_dd, who, train_stats], api_visibility="private")
        return demo

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
        return dict(auth=self.users, i18n=self.i18n, css=CSS, head=HEAD, allowed_paths=[str(eval_dir)], theme=theme,
                    footer_links=[], auth_message="RLHF Arena — please log in.")

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
