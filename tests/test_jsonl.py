"""rlhf_demo/jsonl.py: the one strict JSONL reader (file:line errors, the caller's exception type)."""

from __future__ import annotations

import gzip

import pytest

from rlhf_demo.jsonl import JsonlError, iter_jsonl, jsonl_rows, parse_line, read_bytes, text_field


class MyError(ValueError):
    pass


def test_rows_keep_editor_line_numbers_and_skip_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n{"a": 2}\r\n')
    assert list(iter_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", {"a": 2})]
    assert [n for n, _, _ in jsonl_rows(path.read_bytes(), path)] == [1, 4]


def test_gz_is_read_decompressed(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'\n{"x": "y"}\n'))
    assert list(iter_jsonl(path)) == [(f"{path}:2", {"x": "y"})]


@pytest.mark.parametrize("line, message", [
    (b'{"a": "b\x00"}', "NUL byte at column 9"),
    (b'{"a": "caf\xe9"}', "invalid UTF-8 at byte 11 of the line"),
    (b'{"a": ', "bad JSON (Expecting value at column 7)"),
    (b'["a"]', "a row must be a JSON object, got list"),
])
def test_bad_lines_raise_the_callers_error_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"ok": 1}\n' + line + b"\n")
    with pytest.raises(MyError) as err:
        list(iter_jsonl(path, MyError))
    assert str(err.value) == f"{path}:2: {message}"
    with pytest.raises(JsonlError) as err:
        parse_line(line, "x:3")
    assert str(err.value) == f"x:3: {message}"


def test_on_error_skips_bad_lines_and_reports_each(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{\n{"ok": 1}\n[]\n')
    seen = []
    rows = list(iter_jsonl(path, MyError, on_error=seen.append))
    assert rows == [(f"{path}:2", {"ok": 1})]
    assert [str(e).split(": ")[0] for e in seen] == [f"{path}:1", f"{path}:3"]
    assert all(isinstance(e, MyError) for e in seen)


def test_unreadable_file_is_an_error_of_the_callers_type(tmp_path):
    with pytest.raises(MyError, match="cannot read"):
        read_bytes(tmp_path / "missing.jsonl", MyError)
    bad_gz = tmp_path / "b.jsonl.gz"
    bad_gz.write_bytes(b"not gzip")
    with pytest.raises(MyError, match=f"{bad_gz}: cannot read"):
        list(iter_jsonl(bad_gz, MyError))


def test_text_field():
    assert text_field("  hi ", "f:1", "prompt") == "  hi "  # returned as given
    assert text_field(" ", "f:1", "prompt", allow_empty=True) == " "
    for value, message in [(3, "field 'prompt' must be text, got int"), ("a\x00", "field 'prompt' contains a NUL character"),
                           ("  ", "field 'prompt' is empty")]:
        with pytest.raises(MyError) as err:
            text_field(value, "f:1", "prompt", MyError)
        assert str(err.value) == f"f:1: {message}"
