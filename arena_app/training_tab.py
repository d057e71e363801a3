"""The arena's Training tab (admins only): run the loop from the browser.

Shows how much feedback arrived since the last pipeline run, starts ``python -m arena_app.pipeline``
as a background process (its own process group; one run at a time — the pipeline's lock file), and
follows it: stage, PPO iteration, the tail of its log and the PPO curves. Cancel sends SIGTERM to
the whole process group (SIGKILL after a grace period). A cancelled or failed run changes nothing
that is served: the registry publishes by atomic rename, and a version appears in the arena at the
next round only once it is complete.

Plugged in through ``build_app(..., training_ui=TrainingTab.factory(extra_args))``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr

from arena_app.i18n import request_language, t
from rlhf_demo.metrics_log import read_metrics
from rlhf_demo.pipeline_state import lock_held, new_feedback, new_run_dir, pipeline_dir

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
LOG_LINES = 40


def settings_args(settings) -> list[str]:
    """The shared settings as flags, so the pipeline sees the same data dir, model and database."""
    args = ["--data-dir", str(settings.data_dir), "--base-model", settings.base_model, "--device", settings.device,
            "--dtype", settings.dtype, "--load-in-4bit" if settings.load_in_4bit else "--no-load-in-4bit",
            "--online" if settings.online else "--no-online"]
    if settings.db_url:
        args += ["--db-url", settings.db_url]
    return args


def tail(path: Path, n: int = LOG_LINES) -> list[str]:
    """Last ``n`` lines of a log; a tqdm line redrawn with carriage returns shows its last state."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64_000))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
             for line in text.split("\n")]
    return [line for line in lines if line.strip()][-n:]


class TrainingTab:
    """State and handlers of the tab; one instance per app."""

    def __init__(self, app, extra_args: list[str] | None = None, grace_s: float = 15.0):
        self.app = app
        self.settings = app.settings
        self.extra_args = list(extra_args or [])
        self.grace_s = grace_s
        self.dir = pipeline_dir(self.settings)
        self.proc: subprocess.Popen | None = None
        self.run_dir: Path | None = None
        self._lock = threading.Lock()
        self._plot_lock = threading.Lock()
        self._curves: tuple[float, object] | None = None

    @classmethod
    def factory(cls, extra_args: list[str] | None = None, **kw):
        """The ``training_ui`` hook: builds the tab inside the app's Training tab."""
        def build(app):
            tab = cls(app, extra_args, **kw)
            app.training_tab = tab
            tab.build()
            return tab
        return build

    # -- state ----------------------------------------------------------------------------------
    def running(self) -> bool:
        if self.proc is not None and self.proc.poll() is None:
            return True
        return lock_held(self.settings)

    def _current(self) -> dict:
        try:
            return json.loads((self.dir / "current.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def latest_run_dir(self) -> Path | None:
        if self.running():
            cur = self._current().get("run_dir")
            if cur:
                return Path(cur)
            if self.run_dir is not None:
                return self.run_dir
        runs = sorted((p for p in (self.dir / "runs").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime) \
            if (self.dir / "runs").is_dir() else []
        return runs[-1] if runs else self.run_dir

    # -- actions --------------------------------------------------------------------------------
    def start(self) -> Path:
        with self._lock:
            if self.running():
                raise RuntimeError("a training run is already in progress (one at a time)")
            run_dir = new_run_dir(self.settings, "-ui")
            cmd = [sys.executable, "-m", "arena_app.pipeline", "--run-dir", str(run_dir),
                   *settings_args(self.settings), *self.extra_args]
            (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
            out = open(run_dir / "output.log", "ab")
            env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
            try:
                self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            finally:
                out.close()
            self.run_dir = run_dir
            log.info("training pipeline started (pid %d): %s", self.proc.pid, run_dir)
            return run_dir

    def cancel(self) -> str:
        """SIGTERM to the run's process group; SIGKILL after ``grace_s`` if it is still alive."""
        with self._lock:
            pid = self.proc.pid if self.proc is not None and self.proc.poll() is None else self._current().get("pid")
            if not pid or not self.running():
                return "no run in progress"
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                return "no run in progress"
            own_group = pgid == pid  # started by this tab (its own session): kill the whole group

            def send(sig):
                try:
                    os.killpg(pgid, sig) if own_group else os.kill(pid, sig)
                except ProcessLookupError:
                    pass

            send(signal.SIGTERM)
            proc = self.proc if self.proc is not None and self.proc.pid == pid else None

            def reaper():
                deadline = time.monotonic() + self.grace_s
                while time.monotonic() < deadline:
                    if (proc.poll() is not None) if proc is not None else not _alive(pid):
                        return
                    time.sleep(0.2)
                log.warning("pipeline %d ignored SIGTERM for %.0f s: SIGKILL", pid, self.grace_s)
                send(signal.SIGKILL)
                if proc is not None:
                    proc.wait()

            threading.Thread(target=reaper, daemon=True).start()
            log.info("training pipeline %d cancelled", pid)
            return f"cancelling run (pid {pid})"

    # -- view -----------------------------------------------------------------------------------
    def feedback_md(self, lang: str = "en") -> str:
        try:
            s = new_feedback(self.settings)
        except Exception as exc:  # noqa: BLE001 - the database may be down; the tab still works
            return t("train_db_down", lang, error=html.escape(str(exc))[:300])
        winners = ", ".join(f"{t('winner_' + k, lang) if lang != 'en' else k}: {v}"
                            for k, v in sorted(s["by_winner"].items())) or t("train_none_word", lang)
        last = s.get("last_run")
        last_txt = (t("train_last_run", lang, outcome=html.escape(_word("state", last.get("outcome"), lang)))
                    + (f" → `{last['published']}`" if last.get("published") else "")
                    + (f" — {html.escape(str(last.get('reason') or ''))[:300]}" if last.get("reason") else "")
                    ) if last else t("train_no_last_run", lang)
        return (t("train_feedback", lang, votes=s["votes"], blind=s["blind_votes"], winners=winners,
                  better=s["better_answers"]) + f"  \n{last_txt}")

    def status_md(self, run_dir: Path | None, lang: str = "en") -> str:
        if run_dir is None:
            return t("train_no_run", lang)
        try:
            st = json.loads((run_dir / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            st = {"state": "starting" if self.running() else "unknown"}
        state = st.get("state", "?")
        if state == "running" and not self.running():
            state = "stopped"
        parts = [t("train_run", lang, name=run_dir.name, state=html.escape(_word("state", state, lang)))]
        if st.get("stage"):
            parts.append(t("train_stage", lang, i=st.get("stage_index"), n=len(st.get("stages", [])),
                           stage=_word("stage", st["stage"], lang)))
        if st.get("stage") == "ppo" and st.get("ppo_dir"):
            rows = read_metrics(Path(st["ppo_dir"]) / "metrics.jsonl")
            if rows:
                parts.append(t("train_ppo_iteration", lang, step=rows[-1]["step"],
                               total=st.get("ppo_iterations", "?")))
        line = " · ".join(parts)
        if st.get("published"):
            line += "  \n" + t("train_published", lang, name=st["published"])
        elif st.get("reason"):
            line += f"  \n{html.escape(str(st['reason']))[:600]}"
        return line

    def log_text(self, run_dir: Path | None) -> str:
        if run_dir is None:
            return ""
        lines = tail(run_dir / "pipeline.log", LOG_LINES // 2)
        out = [line for line in tail(run_dir / "output.log", LOG_LINES) if not line.startswith("[pipeline] ")]
        out = out[-(LOG_LINES // 2):]  # the process's own output (progress bars, warnings), less the echoed lines
        return "\n".join(lines + (["", "── output ──"] + out if out else []))

    def curves(self, run_dir: Path | None):
        """The PPO curves (live, from metrics.jsonl) as a PIL image, redrawn only when new rows arrive."""
        if run_dir is None:
            return None
        metrics = run_dir / "ppo" / "metrics.jsonl"
        try:
            stamp = metrics.stat().st_mtime
        except OSError:
            return None
        with self._plot_lock:
            if self._curves and self._curves[0] == (str(metrics), stamp):
                return self._curves[1]
            from PIL import Image

            from training.ppo import plot_curves  # matplotlib and the trainer load only when a run is shown

            png = run_dir / "ui-curves.png"
            if plot_curves(read_metrics(metrics), png) is None:
                return None
            with Image.open(png) as im:
                img = im.convert("RGB")
            self._curves = ((str(metrics), stamp), img)
            return img

    def view(self, lang: str = "en"):
        run_dir = self.latest_run_dir()
        running = self.running()
        return (self.feedback_md(lang), self.status_md(run_dir, lang), self.log_text(run_dir), self.curves(run_dir),
                gr.update(interactive=not running), gr.update(interactive=running), gr.Timer(active=running))

    # -- Gradio ---------------------------------------------------------------------------------
    def build(self) -> None:
        i = self.app.i18n  # labels in the browser's language (arena_app/i18n.py)
        gr.Markdown(i("train_intro"))
        feedback = gr.Markdown(elem_id="train-feedback")
        with gr.Row():
            start = gr.Button(i("train_start"), variant="primary", elem_id="train-start")
            cancel = gr.Button(i("train_cancel"), variant="stop", interactive=False, elem_id="train-cancel")
            refresh = gr.Button(i("refresh"), elem_id="train-refresh", scale=0)
        status = gr.Markdown(elem_id="train-status")
        logbox = gr.Textbox(label=i("train_log"), lines=14, max_lines=14, interactive=False, autoscroll=True,
                            elem_id="train-log")
        curves = gr.Image(label=i("train_curves"), type="pil", interactive=False, elem_id="train-curves")
        timer = gr.Timer(2.0, active=False)
        outputs = [feedback, status, logbox, curves, start, cancel, timer]

        def do_start(request: gr.Request):
            self.app.require_admin(request)
            lang = request_language(request)
            try:
                self.start()
            except RuntimeError as exc:
                msg = t("train_busy", lang) if self.running() else str(exc)
                raise gr.Error(msg, title=t("title", lang), print_exception=False) from None
            return self.view(lang)

        def do_cancel(request: gr.Request):
            self.app.require_admin(request)
            self.cancel()
            time.sleep(0.5)
            return self.view(request_language(request))

        def do_view(request: gr.Request):
            self.app.require_admin(request)
            return self.view(request_language(request))

        def do_tick(request: gr.Request):
            user = getattr(request, "username", None)
            if not self.app.is_admin(user):
                return [gr.skip()] * (len(outputs) - 1) + [gr.Timer(active=False)]
            return self.view(request_language(request))

        start.click(do_start, None, outputs, api_name="train_start", concurrency_limit=1)
        cancel.click(do_cancel, None, outputs, api_name="train_cancel", concurrency_limit=1)
        refresh.click(do_view, None, outputs, api_name="train_status")
        timer.tick(do_tick, None, outputs, api_visibility="private", show_progress="hidden")
        from gradio.context import Context

        root = Context.root_block
        if root is not None:  # fill the tab (and resume following a run in progress) when an admin loads the page
            root.load(do_tick, None, outputs, api_visibility="private", show_progress="hidden")


def _word(kind: str, value, lang: str) -> str:
    """A run state or stage name in ``lang`` (an unknown one as it is)."""
    key = f"{kind}_{value}"
    word = t(key, lang)
    return str(value) if word == key else word


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
