"""`AsyncClient`: the same API as `Client` for asyncio code (`await`, `async for`), over httpx.AsyncClient."""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
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


class AsyncClient:
    """`AsyncClient(base_url, api_key)`; both default to FT_API_URL / FT_API_KEY. `async with`, or `await aclose()`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.connection = Connection.resolve(base_url, api_key)
        self.timeout = timeout
        self.http = httpx.AsyncClient(
            base_url=self.connection.base_url,
            headers=self.connection.headers(),
            timeout=timeout,
            follow_redirects=True,  # presigned downloads; httpx drops Authorization on another origin
            transport=transport,
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; a 4xx/5xx raises its typed FinetuneError, no answer raises Unreachable."""
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.connection.base_url, exc) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    async def paginate(self, path: str, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Every item of a cursor-paged list, fetching the next page as the last one runs out."""
        cursor: str | None = None
        while True:
            response = await self.request("GET", path, params={**params, **({"cursor": cursor} if cursor else {})})
            body = response.json()
            for item in body["data"]:
                yield item
            if (cursor := next_cursor(body, cursor)) is None:
                return

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Datasets:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def upload(self, source: UploadSource, *, name: str | None = None, filename: str | None = None) -> Dataset:
        """Upload from a path, bytes or an open binary file; see `Client.datasets.upload`."""
        with upload_part(source, filename) as part:  # streamed in chunks: local reads, short enough to block on
            return (await self._client.request("POST", "/datasets", files={"file": part}, data=query(name=name))).json()

    def list(self, *, tenant: str | None = None, page_size: int = 100) -> AsyncIterator[Dataset]:
        """All your datasets, newest first: `async for dataset in client.datasets.list()`."""
        return self._client.paginate("/datasets", query(limit=page_size, tenant=tenant))

    async def get(self, dataset_id: str) -> Dataset:
        return (await self._client.request("GET", f"/datasets/{dataset_id}")).json()

    async def preview(self, dataset_id: str, limit: int = 10) -> DatasetPreview:
        return (await self._client.request("GET", f"/datasets/{dataset_id}/preview", params={"limit": limit})).json()

    async def delete(self, dataset_id: str) -> Deleted:
        return (await self._client.request("DELETE", f"/datasets/{dataset_id}")).json()


class Jobs:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, spec: SpecSource, *, idempotency_key: str | None = None) -> Job:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return (await self._client.request("POST", "/jobs", json=load_spec(spec), headers=headers)).json()

    async def validate(self, spec: SpecSource) -> dict[str, Any]:
        return (await self._client.request("POST", "/jobs/validate", json=load_spec(spec))).json()

    def list(self, *, status: str | None = None, tenant: str | None = None, page_size: int = 50) -> AsyncIterator[Job]:
        return self._client.paginate("/jobs", query(limit=page_size, status=status, tenant=tenant))

    async def get(self, job_id: str) -> Job:
        return (await self._client.request("GET", f"/jobs/{job_id}")).json()

    async def cancel(self, job_id: str) -> Job:
        return (await self._client.request("POST", f"/jobs/{job_id}/cancel")).json()

    async def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll (conditionally, `If-None-Match`) until the job ends and return it; `on_progress(job)` each poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: Job | None = None
        etag: str | None = None
        while True:
            headers = {"If-None-Match": etag} if etag and job else {}
            response = await self._client.request("GET", f"/jobs/{job_id}", headers=headers)
            if response.status_code != 304:
                job, etag = response.json(), response.headers.get("ETag")
            assert job is not None
            if on_progress:
                on_progress(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            await asyncio.sleep(poll_interval)

    async def events(
        self, job_id: str, *, follow: bool = True, last_event_id: str | None = None, retries: int = 10
    ) -> AsyncIterator[SseEvent]:
        """The job's events, live with `follow` until it ends, reconnecting with Last-Event-ID; see `Client`."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            ended = got_any = False
            try:
                async for event in self._stream(job_id, follow, headers):
                    failures, last_event_id, got_any = 0, event.id or last_event_id, True
                    ended = ended or event.ends_job
                    yield event
            except httpx.TransportError as exc:
                failures += 1
                if failures > retries:
                    raise unreachable(self._client.connection.base_url, exc) from exc
                await asyncio.sleep(reconnect_delay(failures))
                continue
            if ended or not follow:
                return
            if not got_any:
                await asyncio.sleep(reconnect_delay(1))

    async def _stream(self, job_id: str, follow: bool, headers: dict[str, str]) -> AsyncIterator[SseEvent]:
        http, parser = self._client.http, SseParser()
        params = {"follow": str(follow).lower()}
        timeout = events_timeout(self._client.timeout)
        async with http.stream("GET", f"/jobs/{job_id}/events", params=params, headers=headers, timeout=timeout) as r:
            if r.is_error:
                await r.aread()
                raise error_from_response(r)
            async for line in r.aiter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event

    async def metrics(self, job_id: str, *, since_step: int | None = None) -> Metrics:
        response = await self._client.request("GET", f"/jobs/{job_id}/metrics", params=query(since_step=since_step))
        return response.json()

    def artifacts(self, job_id: str, *, page_size: int = 100) -> AsyncIterator[Artifact]:
        return self._client.paginate(f"/jobs/{job_id}/artifacts", {"limit": page_size})

    async def download(
        self,
        job_id: str,
        name: str = "adapter",
        path: str | os.PathLike[str] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream an artifact to `path` with its sha256 checked; see `Client.jobs.download`."""
        target = download_target(path, job_id, name)
        try:
            async with self._client.http.stream("GET", f"/jobs/{job_id}/artifacts/{name}") as response:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                out = CheckedFile(target, announced_sha256(response))
                try:
                    async for chunk in response.aiter_bytes(1 << 20):
                        out.write(chunk)
                        if on_progress:
                            on_progress(out.written, total)
                except BaseException:
                    out.abandon()
                    raise
        except httpx.TransportError as exc:
            raise unreachable(self._client.connection.base_url, exc) from exc
        return out.finish()
