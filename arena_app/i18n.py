"""English and Chinese text of the UI.

Static labels go through ``gr.I18n`` (the browser translates them from its language). Messages
made at run time (warnings, the reveal line, status) are translated on the server with
:func:`t`, in the language of the request's ``Accept-Language`` header.
"""

from __future__ import annotations

EN = {
    # static
    "title": "RLHF Arena",
    "intro": "Chat with two models at once and say which answer is better. Your votes become training "
             "data for the next version.",
    "tab_arena": "Arena",
    "tab_leaderboard": "Leaderboard",
    "tab_eval": "Evaluation",
    "tab_training": "Training",
    "mode": "Mode",
    "mode_blind": "Blind (names hidden until you vote)",
    "mode_named": "Named (pick two versions)",
    "model_a": "Model A",
    "model_b": "Model B",
    "left_policy": "Model A version",
    "right_policy": "Model B version",
    "sampling": "Sampling settings",
    "temperature": "Temperature",
    "top_p": "Top-p",
    "max_new_tokens": "Max new tokens",
    "seed": "Seed (-1 = random)",
    "message": "Your message",
    "placeholder": "Type a message and press Enter",
    "send": "Send",
    "regenerate": "Regenerate",
    "new_round": "New round",
    "vote_left": "← A is better",
    "vote_right": "B is better →",
    "vote_tie": "Tie",
    "vote_both_bad": "Both are bad",
    "reasons": "Why? (optional)",
    "reason_more_helpful": "more helpful",
    "reason_more_accurate": "more accurate",
    "reason_safer": "safer",
    "reason_refused_rightly": "refused rightly",
    "reason_refused_wrongly": "refused wrongly",
    "reason_clearer": "clearer",
    "reason_shorter": "more concise",
    "comment": "Comment (optional)",
    "better": "Write a better answer (optional)",
    "better_placeholder": "An answer better than both — it is saved as the preferred answer to your last message",
    "better_submit": "Save better answer",
    "refresh": "Refresh",
    "include_named": "Include named-mode votes",
    "ratings": "Ratings (Bradley–Terry, 95% bootstrap interval; SFT is fixed at 1000, and +191 points means "
               "winning 75% of battles against it)",
    "anchor": "anchor",
    "win_rate": "Win rate (row against column; a tie is half a win)",
    "battles": "Battles (row against column)",
    "training_md": "### Training (admins)\n"
                   "The one-command loop will live here: how much new feedback exists since the last run, "
                   "a button that exports the votes, updates the reward model, runs PPO, evaluates and "
                   "publishes a new version only if it passes the gates — with live progress, the log and "
                   "curves, and cancel. New versions appear in the arena without a restart.\n\n"
                   "Until then, run the steps from the command line: `python -m rlhf_demo.export`, "
                   "`python -m training.reward_model`, `python -m training.ppo`, `python -m eval`.",
    "export_pairs": "Download preference pairs (TRL JSONL)",
    "export_hh": "Download preference pairs (HH-RLHF JSONL)",
    "eval_md": "### Evaluation\nThe newest report of `python -m eval` (harmlessness, over-refusal, helpfulness).",
    # dynamic
    "empty_message": "Please write a message first.",
    "too_long": "Your message is {n} characters long; the limit is {limit}. Please shorten it.",
    "max_turns": "This round reached {limit} messages. Vote, then start a new round.",
    "round_over": "You voted on this round. Start a new round to continue.",
    "busy": "Please wait until both answers are complete.",
    "nothing_to_vote": "Ask something first; you can vote once both answers are in.",
    "already_voted": "This round has a vote already; votes are final. Start a new round.",
    "bad_winner": "Unknown vote {winner!r}.",
    "rate_limited": "You reached {limit} votes this hour. Please come back in about {minutes} minutes.",
    "nothing_to_regenerate": "There is no complete answer to regenerate yet.",
    "nothing_to_improve": "Wait for both answers before writing a better one.",
    "better_already_saved": "You saved a better answer for this message already.",
    "empty_better": "The better answer is empty.",
    "comment_too_long": "The comment is too long (limit {limit} characters).",
    "bad_reason": "Unknown reason: {reason}.",
    "unknown_policy": "Unknown version {name!r}. Known: {known}.",
    "bad_policy_name": "Invalid version name {name!r}.",
    "pick_two": "Pick a version for Model A and for Model B.",
    "bad_policies": "Bad --policies {spec!r}: use two names such as sft,newest or the word all.",
    "already_paired": "This round has its models already.",
    "store_down": "Your feedback cannot be saved right now (the feedback database is unavailable). "
                  "The arena keeps working; please try again later.",
    "login_required": "Please log in first.",
    "admin_only": "Only admins can do this.",
    "generation_failed": "The models could not answer: {error}",
    "vote_saved": "Thanks! Your vote is saved.",
    "better_saved": "Thanks! Your better answer is saved.",
    "revealed": "Model A was **{left}** · Model B was **{right}**",
    "status_idle": "Ask anything. Two anonymous models answer side by side.",
    "status_idle_named": "Ask anything. **{left}** answers on the left, **{right}** on the right.",
    "status_streaming": "Both models are answering…",
    "status_ready": "Which answer is better? Vote, or keep chatting (the vote covers the whole conversation).",
    "status_voted": "Vote saved. Start a new round to continue.",
    "status_max_turns": "This round is at its message limit — please vote.",
    "lb_empty": "No votes yet. Vote in the Arena tab and come back.",
    "lb_no_battles": "No battles between two different versions yet (only one version has been rated, e.g. "
                     "SFT against itself). Ratings appear once an RLHF version is published.",
    "lb_summary": "{votes} votes ({battles} between different models) · left {left} · right {right} · "
                  "tie {tie} · both bad {both_bad}",
    "lb_position": "Position bias: the left answer won {rate}% of decisive votes ({left} of {n}; 95% CI {lo}–{hi}%, "
                   "p = {p} against 50%).",
    "lb_min_battles": "A version is ranked after {n} battles; below that it is marked *preliminary* (no rank, no "
                      "interval). *Length-controlled*: the rating once the answers' length difference is accounted "
                      "for (Bradley–Terry with length as a covariate).",
    "preliminary": "preliminary",
    "tab_review": "Data review",
    "review_md": "### Data review (admins)\nBrowse the votes; **void** one cast by mistake or by a spammer. A void is a "
                 "new record with your reason: the vote stays in the database, and export, leaderboard and training "
                 "leave it out.",
    "review_version": "Version (either side)",
    "review_winner": "Winner (side or version)",
    "review_reason": "Reason",
    "review_user": "User",
    "review_since": "From (YYYY-MM-DD)",
    "review_until": "To (YYYY-MM-DD)",
    "review_status": "Status",
    "review_flagged": "Only users flagged as outliers (rater agreement)",
    "review_show": "Show votes",
    "review_summary": "{shown} shown of {matched} matching votes ({total} stored, {voided} voided).",
    "review_bad_filter": "Bad filter: {why}",
    "void_id": "Vote id",
    "void_reason": "Reason for voiding",
    "void_submit": "Void vote",
    "void_done": "Vote {id} voided. It stays in the database; export, leaderboard and training leave it out.",
    "void_refused": "Not voided: {why}",
    "void_no_id": "give the id of the vote to void",
    "agreement_title": "Rater agreement (the same conversation pair voted on by several users)",
    "agreement_show": "Compute agreement",
    "agreement_none": "No overlap yet: no conversation pair has votes from two or more users.",
    "agreement_summary": "{items} conversation pairs with votes from several users ({votes} votes): Fleiss' kappa "
                         "{kappa} (95% CI {lo} – {hi}); {agree}% of rater pairs agree. Per user: agreement with the "
                         "other users' majority; *flagged* = clearly below how often the others agree.",
    "agreement_flag": "outlier",
    "eval_none": "No evaluation report yet — run `python -m eval` and press Refresh.",
    "eval_from": "Report: `{path}`",
    "export_done": "{summary}",
}

ZH = {
    "title": "RLHF 竞技场",
    "intro": "同时与两个模型对话，并选出更好的回答。你的投票会成为下一个版本的训练数据。",
    "tab_arena": "竞技场",
    "tab_leaderboard": "排行榜",
    "tab_eval": "评测",
    "tab_training": "训练",
    "mode": "模式",
    "mode_blind": "盲评（投票后才显示模型名称）",
    "mode_named": "指定模型（选择两个版本）",
    "model_a": "模型 A",
    "model_b": "模型 B",
    "left_policy": "模型 A 的版本",
    "right_policy": "模型 B 的版本",
    "sampling": "采样设置",
    "temperature": "温度",
    "top_p": "Top-p",
    "max_new_tokens": "最大生成长度",
    "seed": "随机种子（-1 表示随机）",
    "message": "你的消息",
    "placeholder": "输入消息后按回车",
    "send": "发送",
    "regenerate": "重新生成",
    "new_round": "新一轮",
    "vote_left": "← A 更好",
    "vote_right": "B 更好 →",
    "vote_tie": "平局",
    "vote_both_bad": "都不好",
    "reasons": "原因（可选）",
    "reason_more_helpful": "更有帮助",
    "reason_more_accurate": "更准确",
    "reason_safer": "更安全",
    "reason_refused_rightly": "拒绝得当",
    "reason_refused_wrongly": "不该拒绝",
    "reason_clearer": "更清楚",
    "reason_shorter": "更简洁",
    "comment": "评论（可选）",
    "better": "写一个更好的回答（可选）",
    "better_placeholder": "比两个回答都好的答案——它会被保存为你上一条消息的首选回答",
    "better_submit": "保存更好的回答",
    "refresh": "刷新",
    "include_named": "包含指定模型模式的投票",
    "ratings": "评分（Bradley–Terry，95% 自助法置信区间；SFT 固定为 1000，高出 191 分表示对它的胜率为 75%）",
    "anchor": "基准",
    "win_rate": "胜率（行对列；平局算半场胜利）",
    "battles": "对战次数（行对列）",
    "training_md": "### 训练（仅管理员）\n"
                   "这里将提供一键训练循环：显示自上次训练以来的新反馈数量；一个按钮即可导出投票、更新奖励模型、"
                   "运行 PPO、评测，并且只有通过门槛的新版本才会发布——带实时进度、日志、曲线和取消功能。"
                   "新版本无需重启即可出现在竞技场中。\n\n"
                   "在此之前，请在命令行中运行：`python -m rlhf_demo.export`、`python -m training.reward_model`、"
                   "`python -m training.ppo`、`python -m eval`。",
    "export_pairs": "下载偏好数据对（TRL JSONL）",
    "export_hh": "下载偏好数据对（HH-RLHF JSONL）",
    "eval_md": "### 评测\n`python -m eval` 的最新报告（无害性、过度拒绝、有用性）。",
    "empty_message": "请先输入消息。",
    "too_long": "你的消息有 {n} 个字符，上限为 {limit}。请缩短。",
    "max_turns": "本轮已达到 {limit} 条消息。请投票后开始新一轮。",
    "round_over": "你已为本轮投票。请开始新一轮。",
    "busy": "请等待两个回答都完成。",
    "nothing_to_vote": "请先提问；两个回答都完成后即可投票。",
    "already_voted": "本轮已经投过票，投票不可更改。请开始新一轮。",
    "bad_winner": "未知的投票 {winner!r}。",
    "rate_limited": "你本小时已投 {limit} 票。请大约 {minutes} 分钟后再来。",
    "nothing_to_regenerate": "还没有可以重新生成的完整回答。",
    "nothing_to_improve": "请等两个回答都完成后再写更好的回答。",
    "better_already_saved": "你已经为这条消息保存过更好的回答。",
    "empty_better": "更好的回答是空的。",
    "comment_too_long": "评论太长（上限 {limit} 个字符）。",
    "bad_reason": "未知原因：{reason}。",
    "unknown_policy": "未知版本 {name!r}。已知版本：{known}。",
    "bad_policy_name": "无效的版本名 {name!r}。",
    "pick_two": "请为模型 A 和模型 B 各选一个版本。",
    "bad_policies": "无效的 --policies {spec!r}：请用两个名称（如 sft,newest）或 all。",
    "already_paired": "本轮的模型已经确定。",
    "store_down": "暂时无法保存你的反馈（反馈数据库不可用）。竞技场仍可使用，请稍后再试。",
    "login_required": "请先登录。",
    "admin_only": "只有管理员可以执行此操作。",
    "generation_failed": "模型无法回答：{error}",
    "vote_saved": "谢谢！你的投票已保存。",
    "better_saved": "谢谢！你写的更好回答已保存。",
    "revealed": "模型 A 是 **{left}** · 模型 B 是 **{right}**",
    "status_idle": "随便问点什么。两个匿名模型会并排回答。",
    "status_idle_named": "随便问点什么。**{left}** 在左边回答，**{right}** 在右边回答。",
    "status_streaming": "两个模型正在回答……",
    "status_ready": "哪个回答更好？请投票，或继续对话（投票针对整段对话）。",
    "status_voted": "投票已保存。请开始新一轮。",
    "status_max_turns": "本轮已达到消息上限——请投票。",
    "lb_empty": "还没有投票。请先在竞技场中投票。",
    "lb_no_battles": "还没有两个不同版本之间的对战（例如只有 SFT 与自己对战）。发布 RLHF 版本后即会显示评分。",
    "lb_summary": "{votes} 票（{battles} 场不同模型之间的对战）· 左 {left} · 右 {right} · 平局 {tie} · 都不好 {both_bad}",
    "lb_position": "位置偏差：在分出胜负的投票中，左侧回答赢了 {rate}%（{n} 票中 {left} 票；95% 置信区间 {lo}–{hi}%，"
                   "相对 50% 的 p = {p}）。",
    "lb_min_battles": "一个版本对战满 {n} 场后才参与排名；不足时标记为*初步*（无名次、无区间）。*长度校正*：扣除回答长度"
                      "差异影响后的评分（以长度为协变量的 Bradley–Terry 模型）。",
    "preliminary": "初步",
    "tab_review": "数据审查",
    "review_md": "### 数据审查（管理员）\n浏览投票；对误投或垃圾投票进行**作废**。作废是一条带有你所填原因的新记录："
                 "投票仍保留在数据库中，但导出、排行榜和训练都不再使用它。",
    "review_version": "版本（任一侧）",
    "review_winner": "胜者（位置或版本）",
    "review_reason": "原因",
    "review_user": "用户",
    "review_since": "起始日期（YYYY-MM-DD）",
    "review_until": "结束日期（YYYY-MM-DD）",
    "review_status": "状态",
    "review_flagged": "仅显示被评分一致性标记为异常的用户",
    "review_show": "显示投票",
    "review_summary": "显示 {shown} 条，共 {matched} 条匹配（已存储 {total} 条，已作废 {voided} 条）。",
    "review_bad_filter": "筛选条件有误：{why}",
    "void_id": "投票编号",
    "void_reason": "作废原因",
    "void_submit": "作废投票",
    "void_done": "投票 {id} 已作废。它仍保留在数据库中；导出、排行榜和训练不再使用它。",
    "void_refused": "未作废：{why}",
    "void_no_id": "请填写要作废的投票编号",
    "agreement_title": "评分一致性（同一对话对由多位用户投票）",
    "agreement_show": "计算一致性",
    "agreement_none": "还没有重叠：没有任何对话对收到两位及以上用户的投票。",
    "agreement_summary": "{items} 个对话对收到多位用户的投票（共 {votes} 票）：Fleiss kappa {kappa}（95% 置信区间 "
                         "{lo} – {hi}）；{agree}% 的评分者对意见一致。按用户：与其他用户多数意见的一致率；*已标记* = "
                         "明显低于其他用户的一致率。",
    "agreement_flag": "异常",
    "eval_none": "还没有评测报告——请运行 `python -m eval` 后点击刷新。",
    "eval_from": "报告：`{path}`",
    "export_done": "{summary}",
}

from arena_app.i18n_extra import EN_MORE, ZH_MORE  # noqa: E402  (suggestions, table headers, Training tab)

EN.update(EN_MORE)
ZH.update(ZH_MORE)
TRANSLATIONS = {"en": EN, "zh": ZH, "zh-CN": ZH, "zh-TW": ZH}


def language(accept_language: str | None) -> str:
    """'zh' when the browser prefers Chinese, else 'en' (the first supported language wins)."""
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"


def request_language(request) -> str:
    try:
        return language(request.headers.get("accept-language"))
    except AttributeError:
        return "en"


def t(key: str, lang: str = "en", **kwargs) -> str:
    table = ZH if lang == "zh" else EN
    text = table.get(key) or EN.get(key) or key
    try:
        return text.format(**kwargs) if kwargs else text
    except (KeyError, IndexError, ValueError):
        return text


def gradio_i18n():
    import gradio as gr

    return gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH, "zh-TW": ZH})


def toast_js() -> str:
    """The page-load script (``launch(js=…)``) that shows a toast's type in Chinese on a Chinese browser: Gradio
    6.31's frontend writes the type itself ("Info", "Warning", …, capitalised) and ignores ``gr.Info(title=…)``.
    The language is the browser's, as for the ``gr.I18n`` labels."""
    import json

    labels = {EN[k]: ZH[k] for k in ("toast_info", "toast_warning", "toast_error", "toast_success")}
    return """() => {
  if (!/^zh/i.test(navigator.language || "")) return;
  const labels = %s;
  const fix = () => document.querySelectorAll(".toast-title").forEach(el => {
    for (const node of el.childNodes) {
      const word = node.nodeType === 3 ? node.textContent.trim() : "";
      if (labels[word]) node.textContent = node.textContent.replace(word, labels[word]);
    }
  });
  new MutationObserver(fix).observe(document.body, {childList: true, subtree: true, characterData: true});
}""" % json.dumps(labels, ensure_ascii=False)
