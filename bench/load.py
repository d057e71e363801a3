"""Load benchmark: simulated users chat and vote against a RUNNING arena; no vote is lost or doubled.

    .venv/bin/python bench/load.py                       # 1, 5 and 20 concurrent users x 10 votes each
    .venv/bin/python bench/load.py --users 1 5 20 --votes 10 --check-users 50 --check-votes 20

It starts ``python app.py`` as a subprocess on 127.0.0.1 (a tiny random-weight Llama with the real
tokenizer by default, so the figures measure the arena — Gradio's queue, the batched policy server,
the feedback database — not the model; ``--base-model embedded:smollm2-135m-instruct`` measures the
real SFT model, or ``--url`` drives an app that is already running). Each simulated user is a
``gradio_client.Client`` (its own session) that repeats: send a prompt and read the two streamed
answers, vote (left / right / tie / both bad in turn) with a unique comment, start a new round.
Reported per concurrency level: p50/p95 of the time to the first streamed token (submit -> the first
update that shows answer text) and of recording a vote (the vote call's round trip: Gradio queue +
the SQLite insert with ``synchronous=FULL``), votes per second, errors. After each level the
feedback database is read back: every acknowledged vote must be there exactly once.

Writes its section of bench/RESULTS.md (unless --no-write) with the command that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

WINNERS = ("left", "right", "tie", "both_bad")


# ---------------------------------------------------------------------------------------------
# the app under test
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_model(out_dir: Path, data_dir: Path) -> Path:
    """A random 2-layer Llama with the embedded model's tokenizer (converted into ``data_dir`` once)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_demo.base_model import load_tokenizer
    from rlhf_demo.config import Settings, apply_offline

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    apply_offline(False)
    tok = load_tokenizer(Settings(data_dir=Path(data_dir)))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


class AppProcess:
    """``python app.py`` in a subprocess on 127.0.0.1; start, wait until it serves, kill, restart."""

    def __init__(self, data_dir: Path, base_model: str, max_new_tokens: int = 8, extra: list[str] | None = None,
                 port: int | None = None, log_path: Path | None = None, nice: int = 0):
        self.data_dir = Path(data_dir)
        self.base_model = str(base_model)
        self.max_new_tokens = max_new_tokens
        self.extra = list(extra or [])
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else self.data_dir / "app.log"
        self.nice = nice
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "feedback.db"

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--base-model", self.base_model, "--device", "cpu",
                "--max-new-tokens", str(self.max_new_tokens), "--votes-per-hour", "1000000", "--max-turns", "50",
                "--seed", "0", "--bootstrap-rounds", "20", "--log-level", "WARNING", *self.extra]

    def start(self, timeout: float = 240.0) -> "AppProcess":
        if not self.data_dir.exists():
            self.data_dir.mkdir(parents=True)
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        cmd = self.command()
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        log = open(self.log_path, "ab")
        log.write(f"\n--- start {self.starts + 1}: {shlex.join(cmd)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.kill()
        raise TimeoutError(f"the app did not serve {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default: no cleanup, no flush — a power cut for the process)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "AppProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# simulated users
# ---------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class LoadResult:
    users: int
    votes_per_user: int
    run_id: str
    app_cpu_s: float | None = None  # CPU time the app process spent during the run
    client_cpu_s: float | None = None  # CPU time of the simulated users (this process)
    first_token_s: list[float] = field(default_factory=list)
    vote_s: list[float] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)  # comments of votes the app acknowledged
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def votes_per_s(self) -> float:
        return len(self.acked) / self.wall_s if self.wall_s else 0.0


def _assistant_text(chat) -> str:
    out = []
    for m in chat or []:
        if isinstance(m, dict) and m.get("role") == "assistant":
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(b.get("text", "") for b in c if isinstance(b, dict))
            out.append(str(c or ""))
    return "".join(out)


def _shows_answer(output) -> bool:
    """Does one streamed output of /send show answer text (in either pane)?"""
    try:
        _msg, a, b = output[:3]
    except (TypeError, ValueError):
        return False
    return bool(_assistant_text(a).strip("…") or _assistant_text(b).strip("…"))


def comment_for(run_id: str, user: int, k: int) -> str:
    return f"load:{run_id}:u{user}:v{k}"


def simulate_user(url: str, user: int, votes: int, run_id: str, result: LoadResult, lock: threading.Lock,
                  auth: tuple[str, str] | None = None, stop: threading.Event | None = None,
                  timeout: float = 600.0) -> None:
    """One person: ``votes`` times (send a prompt, watch both answers stream, vote, new round)."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False, auth=auth)
    except Exception as exc:  # noqa: BLE001
        with lock:
            result.errors.append(f"user {user}: cannot connect: {exc}")
        return
    try:
        for k in range(votes):
            if stop is not None and stop.is_set():
                return
            try:
                t0 = time.perf_counter()
                job = client.submit(f"User {user} asks question {k}: how do plants grow?", api_name="/send")
                first, seen = None, 0
                deadline = time.monotonic() + timeout
                while first is None and time.monotonic() < deadline:
                    outs = job.outputs()
                    for o in outs[seen:]:
                        if _shows_answer(o):
                            first = time.perf_counter() - t0
                            break
                    seen = len(outs)
                    if first is None:
                        if job.done():
                            if not any(_shows_answer(o) for o in job.outputs()):
                                job.result(timeout=timeout)  # raises the app's error, if any
                                raise RuntimeError("the answers never streamed")
                            continue
                        time.sleep(0.005)
                job.result(timeout=timeout)
                comment = comment_for(run_id, user, k)
                t1 = time.perf_counter()
                client.predict([], comment, api_name=f"/vote_{WINNERS[(user + k) % 4]}")
                vote_s = time.perf_counter() - t1
                with lock:  # acknowledged: the app said the vote is saved
                    result.acked.append(comment)
                    result.vote_s.append(vote_s)
                    if first is not None:
                        result.first_token_s.append(first)
                client.predict(api_name="/new_round")
            except Exception as exc:  # noqa: BLE001 - a refused or failed call is counted, not fatal
                with lock:
                    result.errors.append(f"user {user} vote {k}: {type(exc).__name__}: {str(exc)[:200]}")
                if stop is not None and stop.is_set():
                    return
                with contextlib.suppress(Exception):
                    client.predict(api_name="/new_round")
    finally:
        with contextlib.suppress(Exception):
            client.close()


def run_load(url: str, users: int, votes: int, run_id: str | None = None, auth=None,
             stop: threading.Event | None = None, timeout: float = 600.0) -> LoadResult:
    """``users`` concurrent simulated users, ``votes`` rounds each; returns latencies and acknowledgements."""
    result = LoadResult(users, votes, run_id or uuid.uuid4().hex[:8])
    lock = threading.Lock()
    threads = [threading.Thread(target=simulate_user, args=(url, u, votes, result.run_id, result, lock, auth, stop,
                                                            timeout), daemon=True) for u in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout * max(1, votes))
    result.wall_s = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------
# checking the database
# ---------------------------------------------------------------------------------------------
@dataclass
class OnceCheck:
    acked: int
    missing: list[str]
    duplicated: dict[str, int]
    unacknowledged_stored: int  # stored, but the app's answer was lost (allowed: the user saw an error)
    integrity: str

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated and self.integrity == "ok"

    def summary(self) -> str:
        return (f"{self.acked} acknowledged votes: {self.acked - len(self.missing)} stored, "
                f"{len(self.missing)} missing, {len(self.duplicated)} stored twice; "
                f"{self.unacknowledged_stored} stored without an acknowledgement; integrity_check {self.integrity}")


def stored_comments(db_path: Path, prefix: str) -> dict[str, int]:
    """comment -> number of vote rows with it, for votes whose comment starts with ``prefix``."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT comment, COUNT(*) FROM votes WHERE comment LIKE ? GROUP BY comment",
                           (prefix.replace("%", "") + "%",)).fetchall()
    finally:
        con.close()
    return dict(rows)


def integrity(db_path: Path) -> str:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def check_exactly_once(db_path: Path, acked: list[str], run_id: str) -> OnceCheck:
    stored = stored_comments(db_path, f"load:{run_id}:")
    missing = [c for c in acked if c not in stored]
    duplicated = {c: n for c, n in stored.items() if n > 1}
    extra = len(set(stored) - set(acked))
    return OnceCheck(len(acked), missing, duplicated, extra, integrity(db_path))


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def ms(x: float | None) -> str:
    return "–" if x is None else f"{1000 * x:.0f}"


def table(rows: list[tuple[LoadResult, OnceCheck]]) -> str:
    lines = ["| users | votes | first token p50 (ms) | first token p95 (ms) | record vote p50 (ms) | "
             "record vote p95 (ms) | votes/s | app CPU per round (ms) | errors | stored exactly once |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for r, chk in rows:
        per_round = r.app_cpu_s / len(r.acked) if r.app_cpu_s is not None and r.acked else None
        lines.append(f"| {r.users} | {len(r.acked)} | {ms(pct(r.first_token_s, 50))} | {ms(pct(r.first_token_s, 95))} "
                     f"| {ms(pct(r.vote_s, 50))} | {ms(pct(r.vote_s, 95))} | {r.votes_per_s:.1f} | {ms(per_round)} "
                     f"| {len(r.errors)} | {'yes' if chk.ok else 'NO'} ({chk.acked - len(chk.missing)}/{chk.acked}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/load.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[1, 5, 20],
                   help="concurrency levels: simulated users at once (default: %(default)s)")
    p.add_argument("--votes", type=int, default=10, help="votes per user at each level (default: %(default)s)")
    p.add_argument("--check-users", type=int, default=50,
                   help="users of the final exactly-once run (0: skip it; default: %(default)s)")
    p.add_argument("--check-votes", type=int, default=20, help="votes per user of that run (default: %(default)s)")
    p.add_argument("--base-model", default="tiny",
                   help="'tiny' (a random 2-layer Llama with the real tokenizer: measures the arena, not the model), "
                        "'embedded:smollm2-135m-instruct', or a local model dir (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="answer length (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data dir of the app (default: a fresh temp dir; the embedded model is converted there once)")
    p.add_argument("--url", default=None,
                   help="drive an app that is already running (its feedback.db must be --data-dir/feedback.db "
                        "for the exactly-once check)")
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = p.parse_args(argv)
    from bench.results import machine, update_section

    tmp = Path(tempfile.mkdtemp(prefix="arena-load-"))
    data_dir = args.data_dir or tmp / "data"
    app = None
    if args.url:
        url = args.url
        db = data_dir / "feedback.db"
        model_desc = f"the app at {url}"
    else:
        base = args.base_model
        if base == "tiny":
            models = ROOT / ".cache" / "test-data"
            base = str(make_tiny_model(tmp / "tiny-model", models if (models / "models").is_dir() else data_dir))
            model_desc = "a tiny random 2-layer Llama (real SmolLM2 tokenizer)"
        else:
            model_desc = base
        app = AppProcess(data_dir, base, args.max_new_tokens).start()
        url, db = app.url, app.db_path
        print(f"app started at {url} (data dir {data_dir})", file=sys.stderr)
    rows = []
    try:
        levels = [(u, args.votes) for u in args.users]
        if args.check_users:
            levels.append((args.check_users, args.check_votes))
        load_before = os.getloadavg()
        for users, votes in levels:
            app_cpu, own_cpu = cpu_seconds(app.proc.pid) if app else None, sum(os.times()[:2])
            res = run_load(url, users, votes)
            if app_cpu is not None:
                after = cpu_seconds(app.proc.pid)
                res.app_cpu_s = after - app_cpu if after is not None else None
            res.client_cpu_s = sum(os.times()[:2]) - own_cpu
            chk = check_exactly_once(db, res.acked, res.run_id)
            rows.append((res, chk))
            print(f"{users:>3} users x {votes} votes: first token p50 {ms(pct(res.first_token_s, 50))} ms "
                  f"p95 {ms(pct(res.first_token_s, 95))} ms; vote p50 {ms(pct(res.vote_s, 50))} ms "
                  f"p95 {ms(pct(res.vote_s, 95))} ms; {res.votes_per_s:.1f} votes/s; CPU s app "
                  f"{res.app_cpu_s if res.app_cpu_s is not None else float('nan'):.1f} / clients {res.client_cpu_s:.1f} "
                  f"in {res.wall_s:.1f} s wall; {len(res.errors)} errors; {chk.summary()}", file=sys.stderr)
            for e in res.errors[:5]:
                print(f"    {e}", file=sys.stderr)
    finally:
        if app is not None:
            app.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the tiny model, and the data dir unless --data-dir
    md = table(rows)
    print(md)
    ok = all(chk.ok for _, chk in rows)
    if not args.no_write:
        command = "python bench/load.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
        load_after = os.getloadavg()
        cpu_app = sum(r.app_cpu_s or 0 for r, _ in rows)
        cpu_clients = sum(r.client_cpu_s or 0 for r, _ in rows)
        wall = sum(r.wall_s for r, _ in rows)
        body = (f"## Arena under load (`bench/load.py`)\n\n`{command.strip()}` — {machine()}; 1-minute load "
                f"average {load_before[0]:.1f} before and {load_after[0]:.1f} after the run (other jobs shared the "
                "machine).\n\n"
                f"`python app.py` on 127.0.0.1 with {model_desc}, {args.max_new_tokens} new tokens per answer; each "
                "simulated user is a `gradio_client` session that sends a prompt, reads both streamed answers, "
                "votes and starts a new round. *First token*: submit → the first update showing answer text. "
                "*Record vote*: the vote call's round trip (Gradio queue + SQLite insert, WAL, `synchronous=FULL`). "
                "After each run the database is read back: every acknowledged vote must be stored exactly once. "
                "*App CPU per round*: CPU time of the app process per round (send + streamed answers + vote + new "
                "round). The simulated users run on the same cores: over the whole run the app used "
                f"{cpu_app:.0f} CPU-s and the clients {cpu_clients:.0f} CPU-s in {wall:.0f} s wall, "
                f"{(cpu_app + cpu_clients) / max(wall, 1e-9) / (os.cpu_count() or 1):.0%} of the machine's "
                f"{os.cpu_count()} cores (the rest went to other jobs).\n\n"
                + md)
        update_section("load", body)
        print("wrote the 'load' section of bench/RESULTS.md", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
