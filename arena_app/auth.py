"""Users of the arena: a JSON file of salted scrypt password hashes, and a small CLI.

    python -m arena_app.auth add alice --file users.json      # asks for the password twice
    python -m arena_app.auth remove alice --file users.json
    python -m arena_app.auth list --file users.json
    python app.py --auth users.json --admin alice

The file holds, per user, a random 16-byte salt and ``hashlib.scrypt(password, salt, n=2**14,
r=8, p=1)`` (hex); never a password. It is written atomically with mode 0600. Passwords are
compared in constant time. The app reads the file at start-up and again when it changes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import getpass
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
from pathlib import Path

from rlhf_demo.atomic import write_text

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8


class AuthError(ValueError):
    """A bad user name, password or users file."""


def hash_password(password: str, salt: bytes | None = None, **params) -> dict:
    salt = salt if salt is not None else secrets.token_bytes(16)
    p = {**SCRYPT, **params}
    digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=p["n"], r=p["r"], p=p["p"],
                            dklen=32)
    return {"algo": "scrypt", "salt": salt.hex(), "hash": digest.hex(), **p}


def check_password(password: str, entry: dict) -> bool:
    if not isinstance(entry, dict) or entry.get("algo") != "scrypt":
        return False
    try:
        salt = bytes.fromhex(entry["salt"])
        digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=int(entry["n"]),
                                r=int(entry["r"]), p=int(entry["p"]), dklen=32)
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), str(entry.get("hash", "")))


def check_user_name(name: str) -> str:
    if not isinstance(name, str) or not USER_RE.match(name):
        raise AuthError(f"invalid user name {name!r}: 1-64 letters, digits, '_', '.', '@' or '-'")
    return name


def load_users(path: Path) -> dict[str, dict]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuthError(f"{path}: unreadable users file ({exc})") from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise AuthError(f"{path}: expected {{\"users\": {{name: {{salt, hash, …}}}}}}")
    return users


def save_users(path: Path, users: dict[str, dict]) -> None:
    """The users file, atomically and readable by its owner only (0600)."""
    write_text(path, json.dumps({"users": users}, indent=2, sort_keys=True) + "\n", mode=0o600)


def add_user(path: Path, name: str, password: str, replace: bool = False) -> None:
    check_user_name(name)
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password too short: at least {MIN_PASSWORD} characters")
    users = load_users(path)
    if name in users and not replace:
        raise AuthError(f"user {name!r} exists already (use --replace to set a new password)")
    entry = hash_password(password)
    entry["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    users[name] = entry
    save_users(path, users)


def remove_user(path: Path, name: str) -> None:
    users = load_users(path)
    if name not in users:
        raise AuthError(f"no user {name!r} in {path}")
    del users[name]
    save_users(path, users)


class UserDB:
    """The users file as Gradio's ``auth=`` callable; re-read when the file changes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise AuthError(f"--auth {self.path}: no such file; create it with "
                            f"`python -m arena_app.auth add USER --file {self.path}`")
        self._lock = threading.Lock()
        self._stamp = None
        self._users: dict[str, dict] = {}
        self._reload()
        if not self._users:
            raise AuthError(f"--auth {self.path}: the file has no users; add one with "
                            f"`python -m arena_app.auth add USER --file {self.path}`")

    def _reload(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            return  # keep the users we have
        with self._lock:
            if stamp != self._stamp:
                self._users = load_users(self.path)
                self._stamp = stamp

    @property
    def names(self) -> list[str]:
        self._reload()
        return sorted(self._users)

    def __call__(self, username: str, password: str) -> bool:
        try:
            self._reload()
        except AuthError:
            pass
        entry = self._users.get(username)
        if entry is None:
            check_password(password or "", hash_password("x", b"0" * 16))  # same work for unknown users
            return False
        return check_password(password or "", entry)


def _read_password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise AuthError("the passwords differ")
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arena_app.auth",
                                     description="Manage the arena's users file (salted scrypt hashes).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd, help_ in (("add", "add a user (asks for the password twice)"), ("remove", "remove a user"),
                       ("list", "list user names")):
        sp = sub.add_parser(cmd, help=help_)
        if cmd != "list":
            sp.add_argument("user", help="the user name (letters, digits, '_', '.', '@', '-')")
        sp.add_argument("--file", type=Path, default=Path("users.json"),
                        help="the users file (default: %(default)s); pass it to `python app.py --auth`")
        if cmd == "add":
            sp.add_argument("--password-stdin", action="store_true",
                            help="read the password from the first line of standard input (for scripts)")
            sp.add_argument("--replace", action="store_true", help="set a new password for an existing user")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "add":
            add_user(args.file, check_user_name(args.user), _read_password(args.password_stdin), args.replace)
            print(f"added {args.user} to {args.file}")
        elif args.cmd == "remove":
            remove_user(args.file, args.user)
            print(f"removed {args.user} from {args.file}")
        else:
            for name in sorted(load_users(args.file)):
                print(name)
    except AuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
