"""The Leaderboard tab's tables and the admins' Data review tab (browse votes; void one with a reason).

Data review (admins only, every handler checks with ``app.require_admin``): filter the stored votes
(:func:`rlhf_demo.review.filter_votes`: version, winner, reason, user, dates, status, flagged users) and read them
(:func:`rlhf_demo.review.review_rows`); *void* a vote with a reason: :meth:`Store.void_vote` adds a record, the
vote stays in the database, and export, leaderboard and training leave it out from then on. A void of an unknown
or already voided vote, or without a reason, is refused with the store's message.
"""

from __future__ import annotations

import html
import logging

import gradio as gr
import pandas as pd

from arena_app.i18n import request_language, t
from arena_app.layout import RATING_COLUMNS, UI_WINNERS, category_choices
from rlhf_demo.arena import REASONS
from rlhf_demo.review import STATUSES, filter_votes, review_rows
from rlhf_demo.store import StoreError, VoidRefused

log = logging.getLogger(__name__)
REVIEW_COLUMNS = ["id", "when", "user", "left", "right", "winner", "reasons", "comment", "prompt", "left answer",
                  "right answer", "voided"]
RATING_KEYS = ["col_rank", "col_model", "col_rating", "col_ci", "col_lc", "col_battles", "col_win_rate"]
AGREEMENT_KEYS = ["col_user", "col_items", "col_agrees", "col_agree_ci", "col_kappa", "col_others_agree", "col_flagged"]


def headers(frame: pd.DataFrame, english: list[str], keys: list[str], lang: str) -> pd.DataFrame:
    """``frame`` with its English column names (``english``) shown in ``lang`` (i18n ``keys``, same order)."""
    return frame.rename(columns={e: t(k, lang) for e, k in zip(english, keys)}) if lang != "en" else frame
MAX_ROWS = 500  # newest first


# -- leaderboard --------------------------------------------------------------------------------------------
def leaderboard_outputs(board, lang: str):
    """(summary, ratings, win rates, battle counts) of a :class:`rlhf_demo.leaderboard.Leaderboard`; the tables'
    headers in ``lang``."""
    model = t("col_model", lang)
    empty = (headers(pd.DataFrame(columns=RATING_COLUMNS), RATING_COLUMNS, RATING_KEYS, lang),
             pd.DataFrame(columns=[model]), pd.DataFrame(columns=[model]))
    if not board.n_votes:
        return (t("lb_empty", lang), *empty)
    w = {k: board.by_winner.get(k, 0) for k in UI_WINNERS}
    summary = t("lb_summary", lang, votes=board.n_votes, battles=board.n_battles, **w)
    pos = board.position
    if pos.get("decisive"):
        summary += "\n\n" + t("lb_position", lang, rate=f"{100 * pos['left_win_rate']:.0f}",
                               lo=f"{100 * pos['ci'][0]:.0f}", hi=f"{100 * pos['ci'][1]:.0f}",
                               left=pos["left_wins"], n=pos["decisive"], p=f"{pos['p_value']:.2g}")
    if not board.rows:
        return (summary + "\n\n" + t("lb_no_battles", lang), *empty)
    summary += "\n\n" + t("lb_min_battles", lang, n=board.min_battles)

    def interval(r, lo, hi):
        if r["preliminary"]:  # too few battles for a rank or an interval (never a zero-width "720 – 720")
            return t("preliminary", lang)
        if r["anchor"] and r[lo] == r[hi]:
            return t("anchor", lang)
        return f"{r[lo]:.0f} – {r[hi]:.0f}"

    def lc(r):
        if "lc_rating" not in r:
            return ""
        if r["preliminary"] or r["anchor"]:
            return f"{r['lc_rating']:.0f}"
        return f"{r['lc_rating']:.0f} ({interval(r, 'lc_lo', 'lc_hi')})"
    ratings = pd.DataFrame([{"rank": r["rank"] if r["rank"] is not None else "–", "model": r["model"],
                             "rating": round(r["rating"]), "95% CI": interval(r, "lo", "hi"),
                             "length-controlled": lc(r), "battles": r["battles"],
                             "win rate": f"{100 * r['win_rate']:.0f}%"} for r in board.rows], columns=RATING_COLUMNS)
    names = board.names
    rate = pd.DataFrame([[("" if i == j or pd.isna(board.win_rate[i, j]) else f"{100 * board.win_rate[i, j]:.0f}%")
                          for j in range(len(names))] for i in range(len(names))], columns=names)
    rate.insert(0, model, names)
    counts = pd.DataFrame(board.counts, columns=names)
    counts.insert(0, model, names)
    return summary, headers(ratings, RATING_COLUMNS, RATING_KEYS, lang), rate, counts


# -- data review ----------------------------------------------------------------------------------------------
def _error(text: str, lang: str = "en") -> gr.Error:
    return gr.Error(html.escape(text), title=t("title", lang), print_exception=False)


def review(app, version, winner, reason, user, since, until, status, flagged, category=None, *, request: gr.Request):
    """(summary, table) of the votes matching the filters. Admins only."""
    from rlhf_demo.agreement import agreement_report

    lang = request_language(request)
    app.require_admin(request)
    try:
        votes = app.store.votes(include_voided=True)
        voids = app.store.voids()
    except StoreError as exc:
        raise app._fail(exc, lang) from None
    outliers = ()
    if flagged:
        outliers = [u for u, r in agreement_report(votes, n_resamples=0)["users"].items() if r["flagged"]]
    try:
        chosen = filter_votes(votes, version=version or None, winner=winner or None, reason=reason or None,
                              user=(user or "").strip() or None, since=since, until=until, status=status or "all",
                              flagged_users=outliers, flagged_only=bool(flagged), category=category or None)
    except ValueError as exc:
        raise _error(t("review_bad_filter", lang, why=str(exc)), lang) from None
    rows = review_rows(chosen, voids)[:MAX_ROWS]
    if lang != "en":  # the winner's side word in the page's language ("left (sft)" -> "左侧 (sft)")
        for r in rows:
            side, sep, rest = str(r["winner"]).partition(" ")
            if side in UI_WINNERS:
                r["winner"] = t(f"winner_{side}", lang) + sep + rest
            if r["voided"] == "yes":  # voided without a recorded reason
                r["voided"] = t("status_voided", lang)
    summary = t("review_summary", lang, shown=len(rows), matched=len(chosen), total=len(votes), voided=len(voids))
    keys = ["col_" + c.replace(" ", "_") for c in REVIEW_COLUMNS]
    return summary, headers(pd.DataFrame(rows, columns=REVIEW_COLUMNS), REVIEW_COLUMNS, keys, lang)


def void(app, vote_id, reason, *filters, request: gr.Request):
    """Void vote ``vote_id`` with ``reason`` (a new record; the vote stays); then the refreshed table. Admins only."""
    lang = request_language(request)
    admin = app.require_admin(request)
    if vote_id is None or str(vote_id).strip() == "":
        raise _error(t("void_refused", lang, why=t("void_no_id", lang)), lang)
    try:
        vid = int(float(vote_id))
        app.store.void_vote(vid, reason, user=admin or "local admin")
    except (TypeError, ValueError):
        why = f"vote id must be a number, not {str(vote_id)[:40]!r}"
        raise _error(t("void_refused", lang, why=why), lang) from None
    except VoidRefused as exc:
        raise _error(t("void_refused", lang, why=str(exc)), lang) from None
    except StoreError as exc:
        raise app._fail(exc, lang) from None
    log.info("vote %s voided by %s: %s", vid, admin or "local admin", str(reason)[:200])
    summary, table = review(app, *filters, request=request)
    return t("void_done", lang, id=vid), summary, table


def agreement(app, request: gr.Request):
    """(summary, per-user table) of rater agreement on the overlap set (:mod:`rlhf_demo.agreement`). Admins only."""
    from rlhf_demo.agreement import agreement_report

    lang = request_language(request)
    app.require_admin(request)
    try:
        rep = agreement_report(app.store.votes())
    except StoreError as exc:
        raise app._fail(exc, lang) from None
    columns = ["user", "items", "agrees with the others", "95% CI", "Cohen's kappa (95% CI)", "others agree",
               "flagged"]
    if not rep["fleiss"]:
        return t("agreement_none", lang), headers(pd.DataFrame(columns=columns), columns, AGREEMENT_KEYS, lang)
    f = rep["fleiss"]
    summary = t("agreement_summary", lang, items=rep["items"], votes=rep["votes"], kappa=f"{f['kappa']:.2f}",
                lo=f"{f['ci'][0]:.2f}", hi=f"{f['ci'][1]:.2f}", agree=f"{100 * f['agreement']:.0f}")
    rows = [{"user": u, "items": r["items"], "agrees with the others": f"{100 * r['rate']:.0f}%",
             "95% CI": f"{100 * r['ci'][0]:.0f}–{100 * r['ci'][1]:.0f}%",
             "Cohen's kappa (95% CI)": (f"{r['kappa']['kappa']:.2f} ({r['kappa']['ci'][0]:.2f} – "
                                        f"{r['kappa']['ci'][1]:.2f})" if r["kappa"]["kappa"] == r["kappa"]["kappa"]
                                        else "–"),
             "others agree": f"{100 * r['others_rate']:.0f}%" if r["others_rate"] is not None else "–",
             "flagged": t("agreement_flag", lang) if r["flagged"] else ""} for u, r in rep["users"].items()]
    return summary, headers(pd.DataFrame(rows, columns=columns), columns, AGREEMENT_KEYS, lang)


def build_review_tab(app, i):
    """The Data review tab (hidden until :func:`on_load` shows it to an admin) and its wiring."""
    with gr.Tab(i("tab_review"), id="review", visible=False) as tab:
        gr.Markdown(i("review_md"))
        with gr.Row():
            version = gr.Dropdown([(i("any"), ""), *app.policies()], value="", label=i("review_version"),
                                  allow_custom_value=True, elem_id="review-version")
            winner = gr.Dropdown([(i("any"), ""), *[(i(f"winner_{w}"), w) for w in UI_WINNERS]], value="",
                                 label=i("review_winner"), allow_custom_value=True, elem_id="review-winner")
            reason = gr.Dropdown([(i("any"), ""), *[(i(f"reason_{r}"), r) for r in REASONS]], value="",
                                 label=i("review_reason"), elem_id="review-reason")
            user = gr.Textbox(label=i("review_user"), elem_id="review-user")
        with gr.Row():
            since = gr.Textbox(label=i("review_since"), placeholder="2026-11-29", elem_id="review-since")
            until = gr.Textbox(label=i("review_until"), placeholder="2026-11-30", elem_id="review-until")
            status = gr.Radio([(i(f"status_{s}"), s) for s in STATUSES], value="all", label=i("review_status"),
                              elem_id="review-status")
            category = gr.Dropdown([(i("any"), ""), *category_choices(i)], value="", label=i("prompt_category"),
                                   elem_id="review-category")
            flagged = gr.Checkbox(False, label=i("review_flagged"), elem_id="review-flagged")
        show = gr.Button(i("review_show"), elem_id="review-show")
        summary = gr.Markdown(elem_id="review-summary")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="review-table")
        with gr.Row():
            vote_id = gr.Textbox(label=i("void_id"), elem_id="void-id", scale=1)
            why = gr.Textbox(label=i("void_reason"), elem_id="void-reason", scale=3)
            void_btn = gr.Button(i("void_submit"), variant="stop", elem_id="void-submit", scale=1)
        void_msg = gr.Markdown(elem_id="void-msg")
        with gr.Accordion(i("agreement_title"), open=False):
            agree_btn = gr.Button(i("agreement_show"), elem_id="agreement-show")
            agree_md = gr.Markdown(elem_id="agreement-summary")
            agree_table = gr.Dataframe(interactive=False, elem_id="agreement-table")
    filters = [version, winner, reason, user, since, until, status, flagged, category]

    def review_fn(version, winner, reason, user, since, until, status, flagged, category, request: gr.Request):
        return review(app, version, winner, reason, user, since, until, status, flagged, category, request=request)

    def void_fn(vote_id, reason_text, version, winner, reason, user, since, until, status, flagged, category,
                request: gr.Request):
        return void(app, vote_id, reason_text, version, winner, reason, user, since, until, status, flagged,
                    category, request=request)
    review_fn.__name__, void_fn.__name__ = "review", "void_vote"
    show.click(review_fn, filters, [summary, table], api_name="review")
    tab.select(review_fn, filters, [summary, table], api_visibility="private")
    void_btn.click(void_fn, [vote_id, why, *filters], [void_msg, summary, table], api_name="void_vote")

    def agreement_fn(request: gr.Request):
        return agreement(app, request)
    agree_btn.click(agreement_fn, None, [agree_md, agree_table], api_name="agreement")
    return tab


def on_load(app, request: gr.Request):
    """Show the Data review tab to admins only (the handlers check again on every call)."""
    user = getattr(request, "username", None)
    return gr.update(visible=app.is_admin(user) and (app.users is None or bool(user)))
