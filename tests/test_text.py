"""Text input: the three input shapes and an error that names the problem for each bad input."""

import json

import pytest

from lmlab.data.text import input_files, iter_documents, load_documents
from lmlab.errors import LmlabError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_txt_is_one_document(tmp_path):
    p = tmp_path / "a.txt"
    text = "First line.\n\nSecond paragraph, naïve café 日本.\n"
    p.write_text(text, encoding="utf-8")
    assert load_documents(p) == [text]


def test_jsonl_one_document_per_line_blank_lines_skipped(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "one"}\n\n   \n{"text": "two\\nlines", "id": 3}\n{"body": "x", "text": "three"}',
                 encoding="utf-8")
    assert load_documents(p) == ["one", "two\nlines", "three"]


def test_jsonl_custom_field_and_crlf(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"content": "a"}\r\n{"content": "b"}\r\n')
    assert load_documents(p, field="content") == ["a", "b"]


def test_directory_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("bz", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "a1"}\n{"text": "a2"}\n', encoding="utf-8")
    (tmp_path / "c.txt").write_text("c", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert load_documents(tmp_path) == ["a1", "a2", "bz", "c"]
    assert [f.name for f in input_files(tmp_path)] == ["a.jsonl", "z.txt", "c.txt"]
    assert list(iter_documents(tmp_path)) == ["a1", "a2", "bz", "c"]


def test_whitespace_documents_dropped(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "  "}, {"text": "x"}, {"text": ""}])
    assert load_documents(tmp_path / "a.jsonl") == ["x"]


def test_missing_path(tmp_path):
    with pytest.raises(LmlabError, match="not found: .*nope.txt"):
        load_documents(tmp_path / "nope.txt")


def test_directory_without_text_files(tmp_path):
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(LmlabError, match="no .txt or .jsonl files"):
        load_documents(tmp_path)


def test_unsupported_extension(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("a,b", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"unsupported text input .*data\.csv"):
        load_documents(p)


def test_empty_input(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text(" \n\t\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="empty"):
        load_documents(p)
    q = tmp_path / "e.jsonl"
    q.write_text("\n\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="empty"):
        load_documents(q)


def test_bad_encoding_names_file_and_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"abc caf\xe9 ok")
    with pytest.raises(LmlabError, match=r"latin1\.txt: not valid UTF-8 at byte offset 7"):
        load_documents(p)
    q = tmp_path / "bad.jsonl"
    q.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(LmlabError, match=r"bad\.jsonl: not valid UTF-8 at byte offset 25"):
        load_documents(q)


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(LmlabError, match=r"a\.jsonl:3: invalid JSON"):
        load_documents(p)


def test_missing_field_names_line_and_field(tmp_path):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, [{"text": "ok"}, {"body": "no text here"}])
    with pytest.raises(LmlabError, match=r"a\.jsonl:2: missing field 'text'"):
        load_documents(p)


def test_non_string_field(tmp_path):
    p = tmp_path / "a.jsonl"
    write_jsonl(p, [{"text": 42}])
    with pytest.raises(LmlabError, match=r"a\.jsonl:1: field 'text' must be a string, got int"):
        load_documents(p)
    write_jsonl(p, [["text"]])
    with pytest.raises(LmlabError, match=r"a\.jsonl:1: expected a JSON object"):
        load_documents(p)
