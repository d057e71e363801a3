"""A real PostgreSQL server for the tests, started with ``initdb`` + ``pg_ctl`` in a temporary directory.

Found in ``$RLHF_ARENA_PG_BIN`` (when set, only there), else ``/usr/lib/postgresql/<newest>/bin`` (Debian's
layout) or on ``PATH``.
PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` system user (Debian's
package creates it) in a directory owned by that user. It listens on 127.0.0.1 on a free port with
``trust`` authentication, ``fsync=on`` and ``synchronous_commit=on`` (the defaults, set explicitly: a
commit returns only after its WAL is flushed). The tests get a fresh database per test.

Absent binaries skip the PostgreSQL tests with the reason, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

DRIVER = "postgresql+psycopg"


def find_bin_dir() -> Path | None:
    env = os.environ.get("RLHF_ARENA_PG_BIN")
    if env:  # given: that directory or nothing
        return Path(env) if (Path(env) / "initdb").is_file() and (Path(env) / "pg_ctl").is_file() else None
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """``start()``: initdb + pg_ctl start; ``url(db)``; ``create_database()``; ``stop()``."""

    def __init__(self, bin_dir: Path, superuser: str = "arena"):
        self.bin_dir = Path(bin_dir)
        self.superuser = superuser
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="arena-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.run_as = None
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam(os.environ.get("RLHF_ARENA_PG_USER", "postgres"))
            except KeyError as exc:
                raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL as "
                                   "(set RLHF_ARENA_PG_USER to an unprivileged user)") from exc
            os.chown(self.root, self.run_as.pw_uid, self.run_as.pw_gid)
        os.chmod(self.root, 0o755)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        kw = {}
        if self.run_as is not None:
            kw = dict(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[])
        res = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True,
                             timeout=timeout, cwd=self.root, env=dict(os.environ, LC_ALL="C.UTF-8"), **kw)
        if res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}\n"
                               f"{self.log_tail()}")
        return res

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> "PgServer":
        self._run("initdb", "-D", str(self.data), "-U", self.superuser, "--auth=trust", "-E", "UTF8",
                  "--no-instructions")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"{DRIVER}://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.superuser} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        # immediate: no shutdown checkpoint (the data is thrown away; a checkpoint of every test database with
        # fsync on can take minutes on a busy disk)
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def wait_ready(server: PgServer, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={server.port} user={server.superuser} dbname=postgres"):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
