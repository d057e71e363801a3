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


def test_a_caller_may_reword_the_faults_but_not_the_checks(tmp_path):
    wording = {"nul": "contains a NUL byte (column {column})", "json": "invalid JSON ({reason})"}
    with pytest.raises(JsonlError) as err:
        parse_line(b'{"a": "b\x00"}', "x:3", wording=wording)
    assert str(err.value) == "x:3: contains a NUL byte (column 9)"
    with pytest.raises(JsonlError) as err:
        parse_line(b'{"a": ', "x:3", wording=wording)
    assert str(err.value) == "x:3: invalid JSON (Expecting value)"
    with pytest.raises(JsonlError) as err:  # keys not given keep the shared wording
        parse_line(b'{"a": "caf\xe9"}', "x:3", wording=wording)
    assert str(err.value) == "x:3: invalid UTF-8 at byte 11 of the line"
    with pytest.raises(ValueError, match="unknown wording keys"):
        parse_line(b"{}", "x:3", wording={"nul_byte": "typo"})


def test_text_lines_check_each_line_like_jsonl(tmp_path):
    from rlhf_demo.jsonl import text_lines

    path = tmp_path / "p.txt"
    path.write_bytes(b"  first \n\n\tsecond\r\n")
    assert list(text_lines(path)) == [(1, f"{path}:1", "first"), (3, f"{path}:3", "second")]
    for data, message in [(b"ok\nbad\x00line\n", "NUL byte at column 4"),
                          (b"ok\n\xff\xfe\n", "invalid UTF-8 at byte 1 of the line")]:
        path.write_bytes(data)
        with pytest.raises(MyError) as err:
            list(text_lines(path, MyError))
        assert str(err.value) == f"{path}:2: {message}"
    gz = tmp_path / "p.txt.gz"
    gz.write_bytes(gzip.compress(b"one\ntwo\n"))
    assert [t for _, _, t in text_lines(gz)] == ["one", "two"]


def test_metrics_log_reads_through_the_shared_reader_and_skips_torn_lines(tmp_path):
    from rlhf_demo.metrics_log import read_metrics

    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []  # no run yet
    path.write_bytes(b'{"step": 1}\n[1]\n\n{"step": 2}\n{"step": 3, "lo')  # a non-object and a torn last line
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
