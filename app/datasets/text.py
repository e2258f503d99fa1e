"""An uploaded text file (JSONL, JSON, CSV, TSV) read as UTF-8 a line or a chunk at a time, never whole.

Lines end as Python's universal newlines end them (`\\n`, `\\r\\n` or `\\r`, kept, like `io.StringIO(text,
newline="")`), so CSV's quoted line breaks and its line numbers are what they were when the file was decoded whole.
One line (one row) may hold at most MAX_ROW_CHARS characters: memory per upload is bounded by a row, not by the file.
"""

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from app.core.errors import Invalid, TooLarge

# The longest row: a line of JSONL, CSV or TSV, or one item of a JSON array. Far above any example a job can train
# on (max_seq_length is at most 131,072 tokens, under a megabyte of text), and what bounds an upload's memory.
MAX_ROW_CHARS = 4 * 1024 * 1024
BOMS = [  # UTF-32 first: its little-endian mark starts like UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]


def check_utf8(head: bytes, not_utf8: str | None) -> None:
    """422 for UTF-16/32 text (told by its byte-order mark) and for any byte that is not UTF-8 (found by the scan)."""
    for bom, name in BOMS:
        if head.startswith(bom):
            raise Invalid(f"the file is {name} text; re-save it as UTF-8")
    if not_utf8 is not None:
        raise Invalid(not_utf8)


@contextmanager
def text_of(source: BinaryIO) -> Iterator[io.TextIOWrapper]:
    """The file from its start as text (a UTF-8 byte-order mark dropped); the binary file is left open."""
    source.seek(0)
    text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")  # type: ignore[type-var]
    try:
        yield text
    finally:
        text.detach()  # a TextIOWrapper closes its file when it goes; the upload's owner closes it


def too_long(where: str) -> TooLarge:
    return TooLarge(
        f"{where} is longer than {MAX_ROW_CHARS:,} characters, the most one row may hold: shorten it or split it "
        "into several rows"
    )


def physical_lines(text: io.TextIOWrapper) -> Iterator[str]:
    """The file's lines with their endings; a line longer than MAX_ROW_CHARS is cut there (callers refuse it)."""
    while line := text.readline(MAX_ROW_CHARS + 1):
        yield line


def bounded_lines(text: io.TextIOWrapper) -> Iterator[str]:
    """The file's lines with their endings; 413 naming the first line longer than MAX_ROW_CHARS."""
    for number, line in enumerate(physical_lines(text), start=1):
        if len(line) > MAX_ROW_CHARS:
            raise too_long(f"line {number}")
        yield line
