"""The arena's layout: Gradio components of the four tabs and their wiring to :class:`arena_app.ui.ArenaApp`'s
handlers. The handlers (what a click does) live in ``arena_app/ui.py``."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from rlhf_demo.arena import REASONS  # noqa: E402
from rlhf_demo.leaderboard import CATEGORIES, UNCATEGORISED  # noqa: E402
from rlhf_demo.registry import SFT  # noqa: E402

# Layer three of "nothing from the text executes or loads": no images, media or plugins from other hosts.
HEAD = ("<meta http-equiv=\"Content-Security-Policy\" content=\"img-src 'self' data: blob:; "
        "media-src 'self' data: blob:; object-src 'none'\">")
CSS = """
#vote-row button { min-width: 8em; }
.arena-status { min-height: 1.6em; }
footer { display: none !important; }
#examples-row { align-items: center; }
#examples-row .arena-example { white-space: normal; text-align: left; font-weight: normal; }
/* the Chatbot's own "clear" icon would only blank the pane in the browser: the round lives on the server */
#chat-a .top-panel button, #chat-b .top-panel button { display: none !important; }
"""
DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_REPETITION = 0.7, 0.9, 1.1
UI_WINNERS = ("left", "right", "tie", "both_bad")
RATING_COLUMNS = ["rank", "model", "rating", "95% CI", "length-controlled", "battles", "win rate"]


def category_choices(i) -> list[tuple]:
    """(label, value) of the prompt-category views: the pools' kinds, then typed prompts (no category)."""
    return [*[(i("cat_" + c.replace("-", "_")), c) for c in CATEGORIES], (i("cat_uncategorised"), UNCATEGORISED)]


def build_layout(app) -> gr.Blocks:
    """The Blocks of the arena: the Arena, Leaderboard, Evaluation and Training tabs, wired to ``app``'s handlers
    (:class:`arena_app.ui.ArenaApp`). Layout only: every handler lives on the app."""
    i = app.i18n
    names = app.policies()
    newest = app.newest() or SFT
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
                        max_new = gr.Slider(1, app.settings.max_new_tokens, value=app.settings.max_new_tokens,
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
                    msg = gr.Textbox(label=i("message"), show_label=False, placeholder=i("placeholder"), scale=8,
                                     lines=1, max_lines=8, elem_id="message", autofocus=True)
                    send_btn = gr.Button(i("send"), variant="primary", scale=1, elem_id="send")
                with gr.Row(elem_id="examples-row"):  # the prompt pool: click an example to send it, or draw one
                    gr.Markdown(i("examples"), elem_id="examples-label")
                    first = app.examples("en")
                    example_btns = [gr.Button(first[k].text if k < len(first) else "", size="sm",
                                              elem_id=f"example-{k}", elem_classes=["arena-example"],
                                              visible=k < len(first)) for k in range(3)]
                    suggest_btn = gr.Button(i("suggest"), size="sm", elem_id="suggest")
                suggestion = gr.State(None)  # the session's last "Suggest a prompt" draw
                with gr.Row():
                    regen_btn = gr.Button(i("regenerate"), interactive=False, elem_id="regenerate")
                    new_btn = gr.Button(i("new_round"), elem_id="new-round")
                with gr.Accordion(i("better"), open=False, elem_id="better-box"):
                    better = gr.Textbox(label=i("better"), show_label=False, placeholder=i("better_placeholder"),
                                        lines=3, elem_id="better")
                    better_btn = gr.Button(i("better_submit"), interactive=False, elem_id="better-submit")

            with gr.Tab(i("tab_leaderboard"), id="leaderboard") as lb_tab:
                with gr.Row():
                    include_named = gr.Checkbox(False, label=i("include_named"))
                    lb_category = gr.Dropdown([(i("cat_all"), "all"), *category_choices(i)], value="all",
                                              label=i("prompt_category"), elem_id="lb-category")
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
                eval_gallery = gr.Gallery(label=i("tab_eval"), visible=False, columns=2, height="auto",
                                          show_label=False)

            with gr.Tab(i("tab_training"), id="training", visible=False) as train_tab:
                if app.training_ui is not None:
                    app.training_ui(app)
                else:
                    gr.Markdown(i("training_md"))
                train_stats = gr.Markdown()
                with gr.Row():
                    export_trl = gr.Button(i("export_pairs"), elem_id="export-trl")
                    export_hh = gr.Button(i("export_hh"), elem_id="export-hh")
                export_msg = gr.Markdown(elem_id="export-msg")
                export_file = gr.File(label=i("export_pairs"), elem_id="export-file", interactive=False,
                                      show_label=False, visible=False)

            from arena_app import review  # the Data review tab (admins): browse votes, void one

            review_tab = review.build_review_tab(app, i)

        # -- wiring ------------------------------------------------------------------------
        app.arena_outputs = [state, msg, chat_a, chat_b, status, reveal, *vote_btns, send_btn, regen_btn,
                              new_btn, better_btn]
        sampling = [temperature, top_p, max_new, seed]
        send_inputs = [msg, state, mode, left_dd, right_dd, *sampling, suggestion]
        common = dict(outputs=app.arena_outputs, concurrency_limit=app.concurrency, show_progress="hidden")
        send_btn.click(app.send, send_inputs, api_name="send", **common)
        msg.submit(app.send, send_inputs, api_visibility="private", **common)
        for k, btn in enumerate(example_btns):
            btn.click(app._example_fn(k), [state, mode, left_dd, right_dd, *sampling], api_name=f"example_{k}",
                      **common)
        suggest_btn.click(app.suggest, None, [msg, suggestion], api_name="suggest_prompt", show_progress="hidden")
        regen_btn.click(app.regenerate, [state, *sampling], api_name="regenerate", **common)
        for w, btn in zip(UI_WINNERS, vote_btns):
            btn.click(app._vote_fn(w), [reasons, comment, state], api_name=f"vote_{w}", **common)
        better_btn.click(app.better_answer, [better, state], [state, better], api_name="better_answer",
                         concurrency_limit=app.concurrency, show_progress="hidden")
        reset_outputs = [*app.arena_outputs, reasons, comment, better, named_row, left_dd, right_dd]
        new_btn.click(app.new_round, [mode], reset_outputs, api_name="new_round", show_progress="hidden",
                      concurrency_limit=app.concurrency)
        mode.input(app.new_round, [mode], reset_outputs, api_visibility="private", show_progress="hidden")
        for dd in (left_dd, right_dd):
            dd.input(app.new_round, [mode], reset_outputs, api_visibility="private", show_progress="hidden")
        lb_outputs = [lb_summary, lb_ratings, lb_rate, lb_counts]
        lb_inputs = [include_named, lb_category]
        lb_refresh.click(app.leaderboard, lb_inputs, lb_outputs, api_name="leaderboard")
        lb_tab.select(app.leaderboard, lb_inputs, lb_outputs, api_visibility="private")
        for control in (include_named, lb_category):
            control.input(app.leaderboard, lb_inputs, lb_outputs, api_visibility="private")
        eval_refresh.click(app.evaluation, None, [eval_md, eval_gallery], api_name="evaluation")
        eval_tab.select(app.evaluation, None, [eval_md, eval_gallery], api_visibility="private")
        export_trl.click(app._export_fn("trl"), None, [export_file, export_msg], api_name="export_trl")
        export_hh.click(app._export_fn("hh"), None, [export_file, export_msg], api_name="export_hh")
        demo.load(app.example_labels, None, example_btns, api_visibility="private")
        demo.load(app.on_load, None, [train_tab, left_dd, right_dd, who, train_stats], api_visibility="private")

        def review_visibility(request: gr.Request):
            return review.on_load(app, request)
        demo.load(review_visibility, None, [review_tab], api_visibility="private")
    return demo
