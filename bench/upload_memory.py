"""The API's memory under uploads: resident-memory growth of a real uvicorn while it takes large dataset files.

    python -m bench.upload_memory                                   # the figures in docs/operations.md
    python -m bench.upload_memory --size-mb 20 --concurrent 0 --formats jsonl,csv  # a quick look

It starts the API alone (`uvicorn app.main:app`, migrations on a SQLite file in a temporary FT_DATA_DIR, Redis
from FT_REDIS_URL or redis://127.0.0.1:6379/7), makes a key, uploads one small file of each format (so that
one-time costs such as importing pyarrow are paid first), then for each format: one upload of `--size-mb`, and
`--concurrent` uploads at once of `--limit-mb` each (different files, so none is a repeat). The files are
generated while they are sent (Parquet is written to a scratch file first, row group by row group): the bench
itself never holds one in memory. Growth is the API process's peak resident memory during the uploads
(/proc/PID/status VmHWM, reset through /proc/PID/clear_refs before each) minus its resident memory after the
warm-up, so that memory an earlier upload left behind counts against the later ones.

The helpers (generated files, the streamed multipart body, the memory probe) are also what
tests/datasets/test_upload_streaming.py uses.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ftctl.localstack import LocalStack

MIB = 1024 * 1024
BOUNDARY = "ft-bench-upload-boundary"
ROWS_PER_CHUNK = 4096  # rows joined per chunk sent: about 1 MB


# --- generated files, made while they are sent ---


def _text(i: int, seed: int, width: int) -> str:
    head = f"example {i:010d} of file {seed:04d}: "
    return head + ("the quick brown fox jumps over the lazy dog " * (width // 44 + 1))[: width - len(head)]


def _chunked(lines: Iterable[str], head: str = "", tail: str = "") -> Iterator[bytes]:
    batch = [head] if head else []
    for line in lines:
        batch.append(line)
        if len(batch) >= ROWS_PER_CHUNK:
            yield "".join(batch).encode()
            batch = []
    if tail:
        batch.append(tail)
    if batch:
        yield "".join(batch).encode()


@dataclass
class GeneratedFile:
    """A file of about `size` bytes, its bytes produced on demand (as often as asked, always the same)."""

    filename: str
    size: int
    chunks: Callable[[], Iterator[bytes]]
    rows: int = 0  # the good rows it holds (0: not counted)


def jsonl_file(size: int, seed: int = 0, width: int = 180, bad_last_row: bool = False) -> GeneratedFile:
    row = len(json.dumps({"text": _text(0, seed, width), "label": "positive"})) + 1
    n = max(1, size // row)
    tail = '{"text": "the last row is cut short\n' if bad_last_row else ""

    def lines() -> Iterator[str]:
        for i in range(n):
            yield json.dumps({"text": _text(i, seed, width), "label": "positive" if i % 2 else "negative"}) + "\n"

    return GeneratedFile("big.jsonl", n * row + len(tail.encode()), lambda: _chunked(lines(), tail=tail), n)


def csv_file(size: int, seed: int = 0, width: int = 180, delimiter: str = ",") -> GeneratedFile:
    head = f"text{delimiter}label\n"
    row = len(f'"{_text(0, seed, width)}"{delimiter}positive\n')
    n = max(1, (size - len(head)) // row)

    def lines() -> Iterator[str]:
        for i in range(n):
            yield f'"{_text(i, seed, width)}"{delimiter}{"positive" if i % 2 else "negative"}\n'

    suffix = "csv" if delimiter == "," else "tsv"
    return GeneratedFile(f"big.{suffix}", len(head) + n * row, lambda: _chunked(lines(), head=head), n)


def json_array_file(size: int, seed: int = 0, width: int = 180) -> GeneratedFile:
    row = len(json.dumps({"text": _text(0, seed, width), "label": "positive"})) + 2
    n = max(1, (size - 3) // row)

    def lines() -> Iterator[str]:
        for i in range(n):
            end = ",\n" if i < n - 1 else "\n"
            yield json.dumps({"text": _text(i, seed, width), "label": "positive" if i % 2 else "negative"}) + end

    return GeneratedFile("big.json", 2 + n * row, lambda: _chunked(lines(), head="[\n", tail="]"), n)


def parquet_file(path: Path, size: int, seed: int = 0, width: int = 180, row_group_rows: int = 100_000) -> Path:
    """A Parquet file of about `size` bytes (uncompressed, so its size is its decoded size), written a row group
    at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = max(1, size // (width + 16))  # per row: the text, the label (8) and a 4-byte length before each
    schema = pa.schema([("text", pa.string()), ("label", pa.string())])
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as writer:
        for start in range(0, n, row_group_rows):
            ids = range(start, min(n, start + row_group_rows))
            texts = [_text(i, seed, width) for i in ids]
            labels = ["positive" if i % 2 else "negative" for i in ids]
            writer.write_table(pa.table({"text": texts, "label": labels}, schema=schema))
    return path


def file_on_disk(path: Path) -> GeneratedFile:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as fh:
            while chunk := fh.read(MIB):
                yield chunk

    return GeneratedFile(path.name, path.stat().st_size, chunks)


def generated(fmt: str, size: int, seed: int, scratch: Path) -> GeneratedFile:
    """One generated file of `fmt` (jsonl, csv, tsv, json, parquet) of about `size` bytes."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        upload = file_on_disk(parquet_file(scratch / f"upload-{seed}.parquet", size, seed))
        upload.rows = pq.read_metadata(scratch / upload.filename).num_rows
        return upload
    makers = {
        "jsonl": jsonl_file,
        "csv": csv_file,
        "tsv": lambda s, n: csv_file(s, n, delimiter="\t"),
        "json": json_array_file,
    }
    return makers[fmt](size, seed)


# --- the multipart body, streamed ---


def multipart_body(upload: GeneratedFile) -> tuple[dict[str, str], Iterator[bytes]]:
    """Headers (with the exact Content-Length, as curl sends) and the body of a `file` form upload, as chunks."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{upload.filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        for chunk in upload.chunks():
            sent += len(chunk)
            yield chunk
        assert sent == upload.size, f"generated {sent} bytes, declared {upload.size}"
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(head) + upload.size + len(tail)),
    }
    return headers, body()


def post_upload(base_url: str, key: str, upload: GeneratedFile, timeout: float = 600) -> httpx.Response:
    headers, body = multipart_body(upload)
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        return client.post("/datasets", content=body, headers={**headers, "Authorization": f"Bearer {key}"})


# --- the API process's memory ---


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh from the current resident size (Linux: `5` to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Measured:
    growth_mib: float  # the peak during the uploads over `baseline_mib`
    baseline_mib: float
    peak_mib: float
    seconds: float
    responses: list[httpx.Response]

    @property
    def statuses(self) -> list[int]:
        return [r.status_code for r in self.responses]


def measure_uploads(base_url: str, key: str, pid: int, uploads: list[GeneratedFile], baseline: float) -> Measured:
    """Send the uploads at once (a thread each); the API's peak resident memory meanwhile, over `baseline` (MiB:
    its resident memory once warmed up, so that memory an earlier upload left behind counts too)."""
    responses: list[httpx.Response | None] = [None] * len(uploads)

    def send(i: int) -> None:
        responses[i] = post_upload(base_url, key, uploads[i])

    reset_peak(pid)
    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    peak = peak_mib(pid)
    answered = [r for r in responses if r is not None]
    assert len(answered) == len(uploads), "an upload raised instead of answering (see above)"
    return Measured(peak - baseline, baseline, peak, seconds, answered)


def warm_up(base_url: str, key: str, pid: int, formats: list[str], scratch: Path) -> float:
    """One small upload of each format (imports, pools and threads are made once); returns the RSS after (MiB)."""
    for fmt in formats:
        warm = post_upload(base_url, key, generated(fmt, 64 * 1024, 9000 + len(fmt), scratch))
        assert warm.status_code == 201, warm.text
    return rss_mib(pid)


# --- the bench ---


def start_api(root: Path, limit_bytes: int, extra_env: dict[str, str] | None = None) -> tuple[LocalStack, str]:
    """The API alone on loopback (LocalStack: migrations, then uvicorn) with FT_DATA_DIR under root, and a key."""
    env = {
        **os.environ,
        "FT_DATA_DIR": str(root / "data"),
        "FT_REDIS_URL": os.environ.get("FT_REDIS_URL", "redis://127.0.0.1:6379/7"),
        "FT_MAX_UPLOAD_BYTES": str(limit_bytes),
        "FT_MAX_DATASET_STORAGE_BYTES": str(1024**4),
        "FT_UPLOAD_RATE_PER_MINUTE": "1000",
        **(extra_env or {}),
    }
    env.pop("FT_DATABASE_URL", None)
    local = LocalStack(env=env, log_dir=root / "logs")
    try:
        local.start(worker=False)
        return local, _make_key(root / "data" / "finetune.db")
    except BaseException:
        local.stop()
        raise


def _make_key(database: Path) -> str:
    # What `ftctl keys create` does, without starting another process (seconds on a loaded machine).
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from app.tenants.auth import create_key

    engine = create_engine(f"sqlite:///{database}")
    try:
        with Session(engine) as session:
            key = create_key(session, "uploads")
            session.commit()
    finally:
        engine.dispose()
    return key


def run(formats: list[str], size_mb: int, concurrent: int, limit_mb: int, s3: bool = False) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="ft-upload-bench-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        env = {}
        if s3:  # the rows go on to a real S3 endpoint (moto's server), as with FT_STORAGE_BACKEND=s3
            from tests.s3_server import moto_server

            server = stack.enter_context(moto_server(root / "logs"))
            env = server.env(server.make_bucket())
        local, key = start_api(root, limit_mb * MIB, env)
        try:
            pid = local.processes["api"].pid
            baseline = warm_up(local.base_url, key, pid, formats, root)
            print(json.dumps({"api_rss_after_warm_up_mib": round(baseline, 1)}), flush=True)
            # Concurrent uploads "at the limit": a little under it, as the multipart framing counts too.
            scenarios = [(f"{size_mb} MB", 1, size_mb * 1_000_000), ("at the limit", concurrent, limit_mb * MIB - MIB)]
            for fmt in formats:
                for label, count, size in scenarios[: 2 if concurrent else 1]:
                    uploads = [generated(fmt, size, 100 * len(results) + i, root) for i in range(count)]
                    got = measure_uploads(local.base_url, key, pid, uploads, baseline)
                    row = {
                        "format": fmt + (" (s3)" if s3 else ""),
                        "uploads": f"{count} × {label}",
                        "bytes_each": uploads[0].size,
                        "growth_mib": round(got.growth_mib, 1),
                        "seconds": round(got.seconds, 1),
                        "statuses": got.statuses,
                    }
                    if errors := [r.text[:300] for r in got.responses if r.status_code >= 300]:
                        row["errors"] = errors
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    for path in root.glob("upload-*.parquet"):
                        path.unlink()
        finally:
            local.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="jsonl,csv,json,parquet")
    parser.add_argument("--size-mb", type=int, default=150, help="the single upload's size (MB, 10^6 bytes)")
    parser.add_argument("--concurrent", type=int, default=4, help="uploads at once, each at the limit (0: none)")
    parser.add_argument("--limit-mb", type=int, default=512, help="FT_MAX_UPLOAD_BYTES for the API (MiB)")
    parser.add_argument("--s3", action="store_true", help="FT_STORAGE_BACKEND=s3, on moto's S3 server")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    results = run(args.formats.split(","), args.size_mb, args.concurrent, args.limit_mb, args.s3)
    print("\n| format | uploads | bytes each | API memory growth | seconds | statuses |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        cells = [r["format"], r["uploads"], f"{r['bytes_each']:,}", f"{r['growth_mib']} MiB", r["seconds"]]
        print("| " + " | ".join(map(str, [*cells, ", ".join(map(str, r["statuses"]))])) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if any(s >= 300 for r in results for s in r["statuses"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
