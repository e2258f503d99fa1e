"""`Client`: the API from blocking code — datasets, jobs, their live events and adapter downloads."""

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from finetune_client.connection import Connection, events_timeout, next_cursor, query, reconnect_delay
from finetune_client.errors import error_from_response, unreachable
from finetune_client.files import (
    CheckedFile,
    SpecSource,
    UploadSource,
    announced_sha256,
    download_target,
    load_spec,
    upload_part,
)
from finetune_client.sse import TERMINAL_STATUSES, SseEvent, SseParser
from finetune_client.types import Artifact, Dataset, DatasetPreview, Deleted, Job, Metrics

ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


class Client:
    """`Client(base_url, api_key)`; both default to FT_API_URL / FT_API_KEY. Use as a context manager, or close()."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.connection = Connection.resolve(base_url, api_key)
        self.timeout = timeout
        self.http = httpx.Client(
            base_url=self.connection.base_url,
            headers=self.connection.headers(),
            timeout=timeout,
            follow_redirects=True,  # presigned downloads; httpx drops Authorization on another origin
            transport=transport,
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; a 4xx/5xx raises its typed FinetuneError, no answer raises Unreachable."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.connection.base_url, exc) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    def paginate(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paged list, fetching the next page as the last one runs out."""
        cursor: str | None = None
        while True:
            body = self.request("GET", path, params={**params, **({"cursor": cursor} if cursor else {})}).json()
            yield from body["data"]
            if (cursor := next_cursor(body, cursor)) is None:
                return

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Datasets:
    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(self, source: UploadSource, *, name: str | None = None, filename: str | None = None) -> Dataset:
        """Upload JSONL, JSON, CSV, TSV or Parquet from a path, bytes or an open binary file (the same file twice
        gives the dataset that already holds it). `filename` tells the format when `source` is bytes."""
        with upload_part(source, filename) as part:
            return self._client.request("POST", "/datasets", files={"file": part}, data=query(name=name)).json()

    def list(self, *, tenant: str | None = None, page_size: int = 100) -> Iterator[Dataset]:
        """All your datasets, newest first, page by page as you iterate."""
        return self._client.paginate("/datasets", query(limit=page_size, tenant=tenant))

    def get(self, dataset_id: str) -> Dataset:
        return self._client.request("GET", f"/datasets/{dataset_id}").json()

    def preview(self, dataset_id: str, limit: int = 10) -> DatasetPreview:
        """The first `limit` rows as stored (what training reads), whatever the uploaded format."""
        return self._client.request("GET", f"/datasets/{dataset_id}/preview", params={"limit": limit}).json()

    def delete(self, dataset_id: str) -> Deleted:
        return self._client.request("DELETE", f"/datasets/{dataset_id}").json()


class Jobs:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, spec: SpecSource, *, idempotency_key: str | None = None) -> Job:
        """Submit a job from a spec dict or a .json/.yaml file; the same `idempotency_key` never makes two jobs."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._client.request("POST", "/jobs", json=load_spec(spec), headers=headers).json()

    def validate(self, spec: SpecSource) -> dict[str, Any]:
        """What the API would make of the spec (token counts, warnings, the estimate), without submitting it."""
        return self._client.request("POST", "/jobs/validate", json=load_spec(spec)).json()

    def list(self, *, status: str | None = None, tenant: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """All your jobs, newest first (or only those in `status`), page by page as you iterate."""
        return self._client.paginate("/jobs", query(limit=page_size, status=status, tenant=tenant))

    def get(self, job_id: str) -> Job:
        return self._client.request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> Job:
        return self._client.request("POST", f"/jobs/{job_id}/cancel").json()

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job ends and return it (check `status`); `on_progress(job)` after every poll.
        Polls are conditional (`If-None-Match`), so an unchanged job costs the API a 304 and no body."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Job | None = None
        etag: str | None = None
        while True:
            headers = {"If-None-Match": etag} if etag and job else {}
            response = self._client.request("GET", f"/jobs/{job_id}", headers=headers)
            if response.status_code != 304:
                job, etag = response.json(), response.headers.get("ETag")
            assert job is not None
            if on_progress:
                on_progress(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll_interval)

    def events(
        self, job_id: str, *, follow: bool = True, last_event_id: str | None = None, retries: int = 10
    ) -> Iterator[SseEvent]:
        """The job's events from the start (or after `last_event_id`): with `follow`, live until the job ends,
        reconnecting with Last-Event-ID after a dropped connection or a stream the server ended, missing nothing."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            ended = got_any = False
            try:
                for event in self._stream(job_id, follow, headers):
                    failures, last_event_id, got_any = 0, event.id or last_event_id, True
                    ended = ended or event.ends_job
                    yield event
            except httpx.TransportError as exc:
                failures += 1
                if failures > retries:
                    raise unreachable(self._client.connection.base_url, exc) from exc
                time.sleep(reconnect_delay(failures))
                continue
            if ended or not follow:
                return
            if not got_any:  # a stream that ends at once, again and again, must not become a busy loop
                time.sleep(reconnect_delay(1))

    def _stream(self, job_id: str, follow: bool, headers: dict[str, str]) -> Iterator[SseEvent]:
        http, parser = self._client.http, SseParser()
        params = {"follow": str(follow).lower()}
        timeout = events_timeout(self._client.timeout)
        with http.stream("GET", f"/jobs/{job_id}/events", params=params, headers=headers, timeout=timeout) as r:
            if r.is_error:
                r.read()
                raise error_from_response(r)
            for line in r.iter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event

    def metrics(self, job_id: str, *, since_step: int | None = None) -> Metrics:
        """The training and eval curves so far."""
        return self._client.request("GET", f"/jobs/{job_id}/metrics", params=query(since_step=since_step)).json()

    def artifacts(self, job_id: str, *, page_size: int = 100) -> Iterator[Artifact]:
        """The adapter, packed checkpoints and exports, oldest first."""
        return self._client.paginate(f"/jobs/{job_id}/artifacts", {"limit": page_size})

    def download(
        self,
        job_id: str,
        name: str = "adapter",
        path: str | os.PathLike[str] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream an artifact (.tar.gz) to `path` (a file, a directory, or `JOB-NAME.tar.gz` here), checking its
        sha256 against the API's `X-Content-SHA256`; a mismatch removes the file and raises ChecksumMismatch."""
        target = download_target(path, job_id, name)
        try:
            with self._client.http.stream("GET", f"/jobs/{job_id}/artifacts/{name}") as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                out = CheckedFile(target, announced_sha256(response))
                try:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        if on_progress:
                            on_progress(out.written, total)
                except BaseException:
                    out.abandon()
                    raise
        except httpx.TransportError as exc:
            raise unreachable(self._client.connection.base_url, exc) from exc
        return out.finish()
