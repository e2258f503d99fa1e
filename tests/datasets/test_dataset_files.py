"""Upload parsing: every file type users bring, and each bad file refused with the line or row at fault."""

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.core.db import SessionLocal
from app.core.errors import Invalid, UnsupportedMediaType
from app.datasets import files
from app.datasets.files import parse_dataset
from app.main import create_app
from app.tenants.auth import create_key

ROWS = [
    {"quote": "Be yourself; everyone else is already taken.", "tags": ["be-yourself", "honesty"]},
    {"quote": "So many books, so little time.", "tags": ["books", "humor"]},
]


def parquet_bytes(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "content", "fmt"),
    [
        ("q.jsonl", "\n".join(json.dumps(r) for r in ROWS).encode(), "jsonl"),
        ("q.json", json.dumps(ROWS).encode(), "json"),
        ("q.parquet", parquet_bytes(ROWS), "parquet"),
        ("q", parquet_bytes(ROWS), "parquet"),  # no extension: told by its magic bytes
        ("q.txt", "\n".join(json.dumps(r) for r in ROWS).encode(), "jsonl"),  # by content
    ],
)
def test_structured_files_keep_lists(filename: str, content: bytes, fmt: str) -> None:
    parsed = parse_dataset(filename, content)
    assert parsed.format == fmt and parsed.columns == ["quote", "tags"]
    assert parsed.rows == ROWS


def test_json_lines_saved_as_json_are_read_as_lines() -> None:
    parsed = parse_dataset("q.json", "\n".join(json.dumps(r) for r in ROWS).encode())
    assert parsed.rows == ROWS


@pytest.mark.parametrize(
    ("filename", "content", "fmt"),
    [
        ("s.csv", b'quote,tags\n"Hello, world",greeting\nBye,farewell\n', "csv"),
        ("s.tsv", b"quote\ttags\nHello, world\tgreeting\nBye\tfarewell\n", "tsv"),
        ("s.csv", '\ufeffquote,tags\r\n"Hello, world",greeting\r\nBye,farewell\r\n'.encode(), "csv"),  # BOM, CRLF
        ("sheet", b"quote\ttags\nHello, world\tgreeting\nBye\tfarewell\n", "tsv"),
    ],
)
def test_sheets(filename: str, content: bytes, fmt: str) -> None:
    parsed = parse_dataset(filename, content)
    assert parsed.format == fmt and parsed.columns == ["quote", "tags"]
    assert parsed.rows == [{"quote": "Hello, world", "tags": "greeting"}, {"quote": "Bye", "tags": "farewell"}]


def test_multiline_quoted_csv_field() -> None:
    parsed = parse_dataset("s.csv", b'prompt,completion\n"line one\nline two",done\n')
    assert parsed.rows == [{"prompt": "line one\nline two", "completion": "done"}]


@pytest.mark.parametrize(
    ("filename", "content", "words"),
    [
        ("broken.jsonl", b'{"a": 1}\n{"a": 2}\n{"a": \n', "line 3: not valid JSON"),
        ("list.jsonl", b'{"a": 1}\n[1, 2]\n', "line 2: expected a JSON object"),
        ("ragged.csv", b"a,b\n1,2\n3\n", "line 3: 1 fields, but the header has 2"),
        ("ragged.tsv", b"a\tb\n1\t2\t3\n", "line 2: 3 fields"),
        ("dupe.csv", b"a,a\n1,2\n", "line 1: the header needs a unique"),
        ("header-only.csv", b"a,b\n", "no rows"),
        ("empty.jsonl", b"", "empty"),
        ("blank.csv", b"\n\n  \n", "empty"),
        ("latin1.csv", "text\ncaf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 2)"),
        ("utf16.csv", "text\nhello\n".encode("utf-16"), "UTF-16"),
        ("array.json", b'[{"a": 1}, "oops"]', "row 2"),
        ("object.json", b'{"a": [1, 2]', "not valid JSON"),
        ("scalar.json", b'"just a string"', "array of objects"),
        ("fake.parquet", b"PAR1 but not really", "not a readable Parquet file"),
        ("empty-object.jsonl", b'{"a": 1}\n{}\n', "line 2: the object is empty"),
    ],
)
def test_bad_files_name_the_problem(filename: str, content: bytes, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_dataset(filename, content)
    assert words in caught.value.detail


def test_unknown_content_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="cannot tell the format"):
        parse_dataset("weird.bin", b"\x00\x01\x02")


DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE = [  # each once read as a 500: the parser let Python's own limits raise
    ("digits.jsonl", b'{"a": 1}\n{"a": 1' + b"0" * 5000 + b"}\n", "line 2: a number has more than 4,300 digits"),
    ("digits.json", b'[{"a": 1},\n {"a": 1' + b"0" * 5000 + b"}]", "line 2: a number has more than 4,300 digits"),
    ("deep.jsonl", b'{"a": 1}\n{"a": ' + DEEP + b"}\n", "line 2: values nest more than 100 levels deep"),
    ("deep.json", b'[{"a": 1},\n{"a": ' + DEEP + b"}]", "line 2: values nest more than 100 levels deep"),
    ("shallow-but-deep.jsonl", b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}\n", "line 1: values nest more than 100"),
    ("surrogate.jsonl", b'{"a": "ok"}\n{"a": "x\\ud800y"}\n', "line 2: \\ud800 is half of a UTF-16 surrogate pair"),
    ("bad-utf8.jsonl", b'{"a": "ok"}\n{"a": "\xff\xfe"}\n', "not UTF-8 text (byte 0xff on line 2)"),
]


@pytest.mark.parametrize(("filename", "content", "words"), HOSTILE)
def test_hostile_values_are_422_naming_the_line(filename: str, content: bytes, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_dataset(filename, content)
    assert words in caught.value.detail and "500" not in caught.value.detail


def test_paired_surrogates_and_deep_enough_values_are_kept() -> None:
    emoji = b'{"a": "\\ud83d\\ude00", "b": ' + b"[" * 99 + b"]" * 99 + b"}\n"
    assert parse_dataset("ok.jsonl", emoji).rows[0]["a"] == "\U0001f600"


def test_any_other_parser_failure_is_422_not_500(monkeypatch: pytest.MonkeyPatch) -> None:
    def unforeseen(text: str) -> list:  # stands for an error no branch of the parser names yet
        raise KeyError("something the parser did not expect")

    monkeypatch.setattr(files, "_parse_jsonl", unforeseen)
    with pytest.raises(Invalid, match=r"could not be read as JSONL \(KeyError: .*check that it is valid JSONL"):
        parse_dataset("x.jsonl", b'{"a": 1}\n')


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    command.upgrade(Config(str(Path(__file__).resolve().parents[2] / "alembic.ini")), "head")
    with SessionLocal() as session:
        key = create_key(session, "parser", tenant="parser-tests")
        session.commit()
    yield TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=False)


@pytest.mark.parametrize(("filename", "content", "words"), HOSTILE)
def test_hostile_uploads_are_422_naming_the_line(client: TestClient, filename: str, content: bytes, words: str) -> None:
    refused = client.post("/datasets", files={"file": (filename, content)})
    assert refused.status_code == 422 and words in refused.json()["detail"]
