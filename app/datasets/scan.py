"""One pass over an upload's bytes before it is parsed: its size (413 over the limit), sha256, head, and UTF-8.

The upload is read a chunk at a time from wherever it was spooled (Starlette keeps the first MiB of a multipart
file in memory, the rest in a temporary file), so nothing here holds more than one chunk. The pass comes first
because a repeat upload (the same sha256) is answered with the dataset that already holds it, before parsing;
it also finds the first byte that is not UTF-8, which is reported before any row (as when the file was decoded
whole), with its line.
"""

import codecs
import hashlib
from dataclasses import dataclass
from typing import BinaryIO

from app.core.errors import TooLarge

CHUNK_BYTES = 1 << 20
HEAD_BYTES = 4096  # what format detection looks at


@dataclass(frozen=True)
class UploadScan:
    size: int
    sha256: str
    head: bytes  # the first HEAD_BYTES bytes
    blank: bool  # nothing but ASCII whitespace (or nothing at all)
    not_utf8: str | None  # the first byte that is not UTF-8, in words, or None


class _Utf8Check:
    """Decodes chunk by chunk (keeping nothing but a split character's bytes) and notes the first bad byte."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.newlines = 0  # b"\n" in them
        self.problem: str | None = None

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if self.problem is not None:
            return
        pending = self.decoder.getstate()[0]  # an incomplete character kept from the last chunk (never a newline)
        try:
            self.decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            data = pending + chunk
            line = self.newlines + data.count(b"\n", 0, exc.start) + 1
            bad = data[exc.start]
            self.problem = f"the file is not UTF-8 text (byte 0x{bad:02x} on line {line}); re-save it as UTF-8"
            return
        self.newlines += chunk.count(b"\n")


def scan_upload(upload: BinaryIO, limit: int, source: str = "FT_MAX_UPLOAD_BYTES") -> UploadScan:
    """Read the upload once from its start; 413 as soon as it passes `limit` bytes (`source` names the setting)."""
    upload.seek(0)
    digest, utf8 = hashlib.sha256(), _Utf8Check()
    size, head, blank = 0, b"", True
    while chunk := upload.read(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the upload is larger than the {limit:,}-byte limit ({source})")
        digest.update(chunk)
        utf8.feed(chunk)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        blank = blank and not chunk.strip()
    utf8.feed(b"", final=True)
    upload.seek(0)
    return UploadScan(size=size, sha256=digest.hexdigest(), head=head, blank=blank, not_utf8=utf8.problem)
