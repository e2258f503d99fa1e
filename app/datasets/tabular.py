"""Rows of tables: CSV and TSV a line at a time, Parquet a row group (and within it a batch of rows) at a time."""

import csv
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

from app.core.errors import Invalid, TooLarge
from app.datasets.text import bounded_lines

PARQUET_BATCH_ROWS = 64  # decoded a batch at a time, so one batch of huge values is all that can be in memory
PARQUET_BATCH_BYTES = 4 * 1024 * 1024  # fewer rows a batch where the metadata says rows are large
PARQUET_READ_BUFFER = 1 << 20  # column chunks are read through a buffer this size, not whole
# Parquet files decoded at once by one process; more wait their turn (their bodies are on disk meanwhile). Each
# reader holds 10-15 MiB of pyarrow's buffers (four 200 MB files at once grew the API by 58 MiB, two at a time by
# 30 MiB), and rows become Python objects under the GIL anyway: more readers at once would not read much faster.
PARQUET_READERS = threading.BoundedSemaphore(2)


def parse_delimited(text: io.TextIOWrapper, delimiter: str) -> Iterator[dict[str, Any]]:
    """Rows keyed by the header's names; 422 naming the first line that does not fit it."""
    reader = csv.reader(bounded_lines(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise Invalid(f"line 1: {exc}") from None
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise Invalid("line 1: the header needs a unique, non-empty name for every column")
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            raise Invalid(f"line {reader.line_num}: {exc}") from None
        if fields is None:
            return
        if not fields:
            continue
        if len(fields) != len(header):
            raise Invalid(
                f"line {reader.line_num}: {len(fields)} fields, but the header has {len(header)} "
                f"({', '.join(header)}); quote fields that contain the delimiter"
            )
        yield dict(zip(header, fields, strict=True))


def parse_parquet(source: BinaryIO, max_bytes: int) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file, refused with 413 once they would decode to more than `max_bytes`.

    Parquet is compressed inside, so a small file can decode to terabytes: the sizes its metadata declares
    are checked first, then the decoded size is counted batch by batch, in case the metadata lies.
    """
    with PARQUET_READERS:  # held while the rows are read, released when they are done or the upload fails
        try:
            batches = _batches(source, max_bytes)
            while True:
                try:
                    batch = next(batches, None)
                    rows = None if batch is None else batch.to_pylist()
                except TooLarge:
                    raise
                except Exception as exc:  # pyarrow raises several types for a corrupt file
                    raise Invalid(f"not a readable Parquet file: {exc}") from None
                if rows is None:
                    return
                yield from rows
        finally:
            batches.close()
            _return_freed_memory()


def _return_freed_memory() -> None:
    """Give back what pyarrow's default pool (mimalloc) kept: Parquet's page buffers come from it whatever pool the
    reader is given, and it holds them per thread, so each thread that ever read a large file kept 10-15 MiB."""
    pa = sys.modules.get("pyarrow")  # None: it could not even be imported
    if pa is not None:
        pa.default_memory_pool().release_unused()


def _batches(source: BinaryIO, max_bytes: int) -> Iterator[Any]:
    import pyarrow as pa  # pyarrow is heavy; only Parquet uploads pay for it
    from pyarrow._parquet import ParquetReader  # what pq.ParquetFile wraps; unlike it, it takes a memory pool

    def too_large(size: int) -> TooLarge:
        return TooLarge(
            f"the Parquet file decodes to more than {size:,} bytes, over the {max_bytes:,}-byte limit "
            "(FT_MAX_UPLOAD_BYTES applies to the decoded data)"
        )

    # The system allocator for the decoded batches: it gives back what a batch took (pyarrow's default pool, with
    # its default options, kept 60-80 MB after one large file). No pre-buffering: it reads a row group's column
    # chunks whole, ahead of decoding them. No threads: a batch is a few rows, and each of pyarrow's threads would
    # keep a malloc arena of its own (+10 MB).
    source.seek(0)
    reader = ParquetReader(memory_pool=pa.system_memory_pool())
    reader.open(source, buffer_size=PARQUET_READ_BUFFER, pre_buffer=False, arrow_extensions_enabled=True)
    meta = reader.metadata
    sizes = []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        column_sizes = sum(group.column(c).total_uncompressed_size for c in range(group.num_columns))
        sizes.append(max(group.total_byte_size, column_sizes))
    if sum(sizes) > max_bytes:
        raise too_large(sum(sizes))
    decoded = 0
    for i, size in enumerate(sizes):
        rows = meta.row_group(i).num_rows
        batch_rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES * rows // max(size, 1)))
        for batch in reader.iter_batches(batch_rows, [i], use_threads=False):
            decoded += batch.nbytes
            if decoded > max_bytes:
                raise too_large(decoded)
            yield batch
