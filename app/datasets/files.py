"""Read an uploaded dataset file (JSONL, JSON array, CSV, TSV, Parquet) as rows, naming bad rows.

An upload is read as a stream, a row at a time (a row group at a time for Parquet), and each row goes on as soon
as it is read (`store_rows` writes the normalised JSON Lines copy), so memory does not grow with the file.
"""

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from app.core.config import settings
from app.core.errors import DomainError, Invalid, UnsupportedMediaType
from app.datasets.json_rows import JsonLinesInstead
from app.datasets.json_rows import parse_json as _parse_json
from app.datasets.json_rows import parse_jsonl as _parse_jsonl
from app.datasets.scan import UploadScan, scan_upload
from app.datasets.tabular import parse_delimited as _parse_delimited
from app.datasets.tabular import parse_parquet as _parse_parquet
from app.datasets.text import check_utf8, text_of

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
PARQUET_MAGIC = b"PAR1"
# Archives are refused, not unpacked: a few kilobytes of gzip can expand to terabytes.
COMPRESSED_MAGIC = [
    (re.compile(rb"^\x1f\x8b"), "gzip"),
    (re.compile(rb"^PK\x03\x04"), "zip"),
    (re.compile(rb"^BZh[1-9]1AY&SY"), "bzip2"),
    (re.compile(rb"^\xfd7zXZ\x00"), "xz"),
    (re.compile(rb"^\x28\xb5\x2f\xfd"), "zstd"),
    (re.compile(rb"^7z\xbc\xaf\x27\x1c"), "7z"),
]
COMPRESSED_SUFFIXES = {".gz", ".gzip", ".tgz", ".zip", ".bz2", ".xz", ".zst", ".7z"}
NORMALISED = json.JSONEncoder(ensure_ascii=False, default=str)  # json.dumps(row, ensure_ascii=False, default=str)
MAX_COLUMNS = 10_000  # distinct keys over all rows: a file whose every row has keys of its own is no table


@dataclass
class ParsedDataset:
    format: str
    rows: list[dict[str, Any]]
    columns: list[str]


@dataclass
class StoredRows:
    """What `store_rows` wrote: the format read, how many rows, and their columns in the order first seen."""

    format: str
    rows: int
    columns: list[str]


def detect_format(filename: str, head: bytes) -> str:
    """Parquet by its magic bytes, else by extension, else by content; 415 when nothing says what it is."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    suffix = Path(filename).suffix.lower()
    kind = next((name for magic, name in COMPRESSED_MAGIC if magic.match(head)), None)
    if kind or suffix in COMPRESSED_SUFFIXES:
        raise UnsupportedMediaType(
            f"{filename!r} is compressed ({kind or suffix}): compressed uploads are not accepted, as they can expand "
            "without bound; upload the uncompressed file (Parquet's own compression is fine)"
        )
    if suffix in FORMATS:
        return FORMATS[suffix]
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "jsonl"
    first_line = stripped.split(b"\n", 1)[0]
    if b"\t" in first_line:
        return "tsv"
    if b"," in first_line:
        return "csv"
    raise UnsupportedMediaType(
        f"cannot tell the format of {filename!r}: upload JSONL, JSON (an array of objects), CSV, TSV or Parquet "
        "with a matching extension"
    )


def _text_rows(fmt: str, source: BinaryIO) -> Iterator[dict[str, Any]]:
    parsers = {
        "jsonl": _parse_jsonl,
        "json": _parse_json,
        "csv": lambda t: _parse_delimited(t, ","),
        "tsv": lambda t: _parse_delimited(t, "\t"),
    }
    with text_of(source) as text:
        try:
            yield from parsers[fmt](text)
            return
        except JsonLinesInstead:
            pass
    with text_of(source) as text:  # JSON Lines saved as .json: read it as what it is
        yield from _parse_jsonl(text)


def _rows(fmt: str, source: BinaryIO) -> Iterator[dict[str, Any]]:
    if fmt == "parquet":
        return _parse_parquet(source, settings.max_upload_bytes)
    return _text_rows(fmt, source)


def read_rows(filename: str, source: BinaryIO, scan: UploadScan) -> tuple[str, Iterator[dict[str, Any]]]:
    """The format, and the rows as they are read; every way the file can be unreadable is a 422 (415/413) saying
    how to fix it, raised before the first row or while they are read."""
    if scan.blank:
        raise Invalid("the file is empty: upload at least one row")
    fmt = detect_format(filename, scan.head)
    if fmt != "parquet":
        check_utf8(scan.head, scan.not_utf8)
    return fmt, _guarded(fmt, _rows(fmt, source))


def _guarded(fmt: str, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    # Only the parser's own failures are the file's: what the caller does with a row (writing it) is not wrapped.
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except (DomainError, MemoryError):
            raise
        except Exception as exc:  # a parser failure no branch foresaw: the file's, so a 422, never a 500
            raise Invalid(
                f"the file could not be read as {fmt.upper()} ({type(exc).__name__}: {exc}); check that it is "
                f"valid {fmt.upper()} in UTF-8, or upload it as JSON Lines"
            ) from None
        yield row


def _columns_of(rows: Iterator[dict[str, Any]], columns: dict[str, None]) -> Iterator[dict[str, Any]]:
    for number, row in enumerate(rows, start=1):
        if not columns.keys() >= row.keys():  # the usual row has no new column
            columns.update(dict.fromkeys(row))
        if len(columns) > MAX_COLUMNS:
            raise Invalid(
                f"row {number}: the rows have more than {MAX_COLUMNS:,} different columns (keys) between them; "
                "a dataset's rows share their columns: put what varies in values, not in keys"
            )
        yield row


def store_rows(filename: str, source: BinaryIO, scan: UploadScan, out: TextIO) -> StoredRows:
    """Read the upload row by row and write each, normalised, as one line of JSON to `out`."""
    fmt, rows = read_rows(filename, source, scan)
    columns: dict[str, None] = {}
    count = 0
    for row in _columns_of(rows, columns):
        out.write(NORMALISED.encode(row) + "\n")
        count += 1
    if not count:
        raise Invalid("the file has no rows: upload at least one example")
    return StoredRows(format=fmt, rows=count, columns=list(columns))


def parse_dataset(filename: str, data: bytes) -> ParsedDataset:
    """Rows and columns of a file in memory (Hub files, tests): the same checks and errors as an upload."""
    source = io.BytesIO(data)
    fmt, rows = read_rows(filename, source, scan_upload(source, len(data)))
    columns: dict[str, None] = {}
    parsed = list(_columns_of(rows, columns))
    if not parsed:
        raise Invalid("the file has no rows: upload at least one example")
    return ParsedDataset(format=fmt, rows=parsed, columns=list(columns))
