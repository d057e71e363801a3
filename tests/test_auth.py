"""Users file: salted scrypt hashes, the CLI, and the Gradio auth callable."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from arena_app.auth import AuthError, UserDB, add_user, check_password, hash_password, load_users, remove_user

ROOT = Path(__file__).resolve().parents[1]


def test_hashes_are_salted_and_verify(tmp_path):
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a["salt"] != b["salt"] and a["hash"] != b["hash"]  # same password, different hashes
    assert check_password("correct horse", a) and not check_password("wrong horse", a)
    assert not check_password("x", {"algo": "md5", "hash": "…"})
    assert not check_password("x", {"algo": "scrypt", "salt": "zz"})


def test_users_file_never_holds_a_password_and_is_private(tmp_path):
    f = tmp_path / "users.json"
    add_user(f, "alice", "s3cret-password")
    text = f.read_text()
    assert "s3cret-password" not in text
    assert set(json.loads(text)["users"]["alice"]) >= {"salt", "hash", "algo", "n", "r", "p"}
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    with pytest.raises(AuthError, match="exists"):
        add_user(f, "alice", "another-password")
    with pytest.raises(AuthError, match="short"):
        add_user(f, "bob", "short")
    with pytest.raises(AuthError, match="invalid user name"):
        add_user(f, "../bob", "long-enough-password")
    remove_user(f, "alice")
    assert load_users(f) == {}


def test_userdb_is_the_gradio_auth_callable_and_rereads_the_file(tmp_path):
    f = tmp_path / "users.json"
    add_user(f, "alice", "alice-password")
    db = UserDB(f)
    assert db("alice", "alice-password")
    assert not db("alice", "wrong") and not db("mallory", "alice-password") and not db("alice", None)
    add_user(f, "bob", "bob-password")
    assert db("bob", "bob-password") and db.names == ["alice", "bob"]
    with pytest.raises(AuthError, match="no such file"):
        UserDB(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text('{"users": {}}')
    with pytest.raises(AuthError, match="no users"):
        UserDB(tmp_path / "empty.json")


def test_cli_add_list_remove(tmp_path):
    f = tmp_path / "users.json"
    run = lambda *a, inp=None: subprocess.run([sys.executable, "-m", "arena_app.auth", *a, "--file", str(f)],  # noqa: E731
                                              input=inp, capture_output=True, text=True, cwd=ROOT, timeout=60)
    out = run("add", "carol", "--password-stdin", inp="carol-password\n")
    assert out.returncode == 0, out.stderr
    assert run("list").stdout.split() == ["carol"]
    assert UserDB(f)("carol", "carol-password")
    bad = run("add", "carol", "--password-stdin", inp="carol-password\n")
    assert bad.returncode == 1 and "exists" in bad.stderr
    assert run("remove", "carol").returncode == 0 and run("list").stdout.strip() == ""
