"""Parse an uploaded dataset file (JSONL, JSON array, CSV, TSV, Parquet) into rows, naming bad rows."""

import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.config import settings
from app.core.errors import DomainError, Invalid, TooLarge, UnsupportedMediaType

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
PARQUET_BATCH_ROWS = 64  # decoded a batch at a time, so one batch of huge values is all that can be in memory
BOMS = [  # UTF-32 first: its little-endian mark starts like UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]


MAX_NESTING = 100  # rows nest a few levels (tool schemas about 10); far deeper ones break later steps' recursion
INT_DIGITS = sys.get_int_max_str_digits()  # Python refuses to read longer integers (0: no limit)
HUGE_INTEGER = re.compile(rf"\d{{{INT_DIGITS + 1},}}") if INT_DIGITS else None
# A \uD800-\uDFFF escape that is not half of a pair: JSON allows it, but it is no character and cannot be stored.
LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class _Unreadable(Exception):
    """JSON that json.loads refused (or read) for a reason other than syntax; `offset` is where, when known."""

    def __init__(self, offset: int | None, message: str):
        super().__init__(message)
        self.offset = offset
        self.message = message


@dataclass
class ParsedDataset:
    format: str
    rows: list[dict[str, Any]]
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


def _decode(data: bytes) -> str:
    for bom, name in BOMS:
        if data.startswith(bom):
            raise Invalid(f"the file is {name} text; re-save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise Invalid(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); re-save it as UTF-8"
        ) from None


def _check_object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise Invalid(f"{where}: expected a JSON object with your columns, got {type(row).__name__}")
    if not row:
        raise Invalid(f"{where}: the object is empty")
    return row


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _too_deep_at(text: str) -> int | None:
    depth = 0
    for token in JSON_TOKENS.finditer(text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(token.group(), 0)
        if depth > MAX_NESTING:
            return token.start()
    return None


def _has_unstorable_text(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _loads(text: str) -> Any:
    """json.loads, its failures other than syntax (JSONDecodeError) and values no later step can use as _Unreadable:
    huge integers, deep nesting, lone surrogate escapes."""
    too_deep = f"values nest more than {MAX_NESTING} levels deep: flatten them"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise _Unreadable(_too_deep_at(text), too_deep) from None
    except ValueError:  # Python's limit on integer digits
        match = HUGE_INTEGER.search(text) if HUGE_INTEGER else None
        raise _Unreadable(
            match.start() if match else None,
            f"a number has more than {INT_DIGITS:,} digits, more than Python reads: write it as a string in quotes",
        ) from None
    if text.count("[") + text.count("{") > MAX_NESTING and _depth(value) > MAX_NESTING:
        raise _Unreadable(_too_deep_at(text), too_deep)
    if (match := LONE_SURROGATE.search(text)) and _has_unstorable_text(value):
        raise _Unreadable(
            match.start(),
            f"{match.group()} is half of a UTF-16 surrogate pair, not a character: remove it or give the whole pair",
        )
    return value


def _parse_jsonl(text: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = _loads(line)
        except json.JSONDecodeError as exc:
            raise Invalid(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except _Unreadable as exc:
            raise Invalid(f"line {number}: {exc.message}") from None
        rows.append(_check_object(value, f"line {number}"))
    return rows


def _parse_json(text: str) -> list[dict[str, Any]]:
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _parse_jsonl(text)  # JSON Lines saved as .json: read it as what it is
        raise Invalid(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _Unreadable as exc:
        where = "" if exc.offset is None else f"line {text.count(chr(10), 0, exc.offset) + 1}: "
        raise Invalid(f"{where}{exc.message}") from None
    if not isinstance(value, list):
        raise Invalid("a .json dataset must be an array of objects (or upload JSON Lines as .jsonl)")
    return [_check_object(row, f"row {i} (item {i} of the array)") for i, row in enumerate(value, start=1)]


def _parse_delimited(text: str, delimiter: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise Invalid(f"line 1: {exc}") from None
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise Invalid("line 1: the header needs a unique, non-empty name for every column")
    rows = []
    try:
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise Invalid(
                    f"line {reader.line_num}: {len(fields)} fields, but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that contain the delimiter"
                )
            rows.append(dict(zip(header, fields, strict=True)))
    except csv.Error as exc:
        raise Invalid(f"line {reader.line_num}: {exc}") from None
    return rows


def _parse_parquet(data: bytes, max_bytes: int) -> list[dict[str, Any]]:
    """Rows of a Parquet file, refused with 413 once they would decode to more than `max_bytes`.

    Parquet is compressed inside, so a small file can decode to terabytes: the sizes its metadata declares
    are checked first, then the decoded size is counted batch by batch, in case the metadata lies.
    """
    import pyarrow.parquet as pq  # pyarrow is heavy; only Parquet uploads pay for it

    def too_large(size: int) -> TooLarge:
        return TooLarge(
            f"the Parquet file decodes to more than {size:,} bytes, over the {max_bytes:,}-byte limit "
            "(FT_MAX_UPLOAD_BYTES applies to the decoded data)"
        )

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        meta = parquet.metadata
        declared = 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            column_sizes = sum(group.column(c).total_uncompressed_size for c in range(group.num_columns))
            declared += max(group.total_byte_size, column_sizes)
        if declared > max_bytes:
            raise too_large(declared)
        rows: list[dict[str, Any]] = []
        decoded = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            decoded += batch.nbytes
            if decoded > max_bytes:
                raise too_large(decoded)
            rows.extend(batch.to_pylist())
    except TooLarge:
        raise
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise Invalid(f"not a readable Parquet file: {exc}") from None
    return rows


def _parse(fmt: str, data: bytes) -> list[dict[str, Any]]:
    if fmt == "parquet":
        return _parse_parquet(data, settings.max_upload_bytes)
    text = _decode(data)
    return {
        "jsonl": _parse_jsonl,
        "json": _parse_json,
        "csv": lambda t: _parse_delimited(t, ","),
        "tsv": lambda t: _parse_delimited(t, "\t"),
    }[fmt](text)


def parse_dataset(filename: str, data: bytes) -> ParsedDataset:
    """Rows and columns of an uploaded file; every way it can be unreadable is a 422 (415/413) saying how to fix it."""
    if not data.strip():
        raise Invalid("the file is empty: upload at least one row")
    fmt = detect_format(filename, data[:4096])
    try:
        rows = _parse(fmt, data)
    except (DomainError, MemoryError):
        raise
    except Exception as exc:  # a parser failure no branch above foresaw: the file's, so a 422, never a 500
        raise Invalid(
            f"the file could not be read as {fmt.upper()} ({type(exc).__name__}: {exc}); check that it is valid "
            f"{fmt.upper()} in UTF-8, or upload it as JSON Lines"
        ) from None
    if not rows:
        raise Invalid("the file has no rows: upload at least one example")
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return ParsedDataset(format=fmt, rows=rows, columns=list(columns))
