"""`ftctl jobs ...`: a client of the HTTP API (FT_API_URL, FT_API_KEY) — list, show, cancel, and follow logs."""

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import typer

from app.models import TERMINAL_STATUSES

jobs = typer.Typer(
    help="Jobs, through the HTTP API (FT_API_URL and FT_API_KEY, or --api-url / --api-key).", no_args_is_help=True
)
ApiUrl = Annotated[str, typer.Option(envvar="FT_API_URL", help="The API's base URL.")]
ApiKey = Annotated[str, typer.Option(envvar="FT_API_KEY", help="An API key (from `ftctl keys create`).")]
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> dict[str, Any]:
        return json.loads(self.data) if self.data else {}


def iter_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from a response's text lines (the parts of the format the API sends)."""
    current, data = SseEvent(), []
    for line in lines:
        if not line:
            if data or current.id is not None:
                current.data = "\n".join(data)
                yield current
            current, data = SseEvent(), []
        elif line.startswith(":"):
            continue  # a keep-alive comment
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value


def _client(api_url: str, api_key: str, timeout: float | httpx.Timeout = 30) -> httpx.Client:
    if not api_key:
        typer.echo(
            "error: no API key: set FT_API_KEY or pass --api-key (make one with `ftctl keys create NAME`)", err=True
        )
        raise typer.Exit(2)
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)


def _check(response: httpx.Response) -> Any:
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        typer.echo(f"error: HTTP {response.status_code}: {detail}", err=True)
        raise typer.Exit(1)
    return response.json()


def follow_events(client: httpx.Client, job_id: str, follow: bool = True, retries: int = 10) -> Iterator[SseEvent]:
    """The job's events until it ends; reconnects after a dropped connection where it left off."""
    last_id, failures = None, 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, params={"follow": follow}) as r:
                if r.is_error:
                    r.read()
                    _check(r)
                ended = False
                for event in iter_sse(r.iter_lines()):
                    failures = 0
                    last_id = event.id or last_id
                    ended = ended or (event.event == "status" and event.json().get("status") in TERMINAL_STATUSES)
                    yield event
            if ended or not follow:
                return  # the job ended (or, without follow, we are caught up)
            # else the server closed a long stream (FT_STREAM_MAX_SECONDS): go on after the last event
        except httpx.TransportError as exc:  # includes a connection dropped mid-stream
            failures += 1
            if failures > retries:
                raise
            typer.echo(f"connection lost ({type(exc).__name__}); reconnecting after event {last_id}", err=True)
            time.sleep(min(2**failures, 30))


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes:02d}:{secs:02d}"


@dataclass
class ProgressLine:
    """What `logs` shows for a job: step/total, loss and ETA, drawn as a bar on a terminal."""

    job_id: str
    step: int = 0
    total: int | None = None
    loss: float | None = None
    eta: float | None = None
    outcome: str | None = None
    lines: list[str] = field(default_factory=list)

    def describe(self, event: SseEvent) -> str | None:
        data = event.json()
        if event.event == "metric":
            self.step, self.total = data.get("step", self.step), data.get("total_steps") or self.total
            self.loss, self.eta = data.get("loss"), data.get("eta_seconds")
            return self.summary()
        if event.event == "status":
            self.outcome = data.get("status") if data.get("status") in TERMINAL_STATUSES else None
            error = data.get("error") or {}
            return f"status {data.get('status')}" + (f": {error.get('message')}" if error else "")
        if event.event == "eval":
            return f"eval step {data.get('step')} eval_loss {data.get('eval_loss')}"
        if event.event == "checkpoint":
            return f"checkpoint at step {data.get('step')}"
        if event.event == "warning":
            return f"warning: {data.get('message')}"
        return f"{event.event} {event.data}"

    def summary(self) -> str:
        loss = f"{self.loss:.4f}" if self.loss is not None else "-"
        return f"step {self.step}/{self.total or '?'} loss {loss} eta {_format_eta(self.eta)}"


def _show_logs(events: Iterator[SseEvent], view: ProgressLine, bar: bool) -> None:
    if not bar:
        for event in events:
            typer.echo(view.describe(event))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(view.job_id, total=None, info="waiting for the first step")
        for event in events:
            line = view.describe(event)
            if event.event == "metric":
                loss = f"{view.loss:.4f}" if view.loss is not None else "-"
                info = f"loss {loss}  eta {_format_eta(view.eta)}"
                progress.update(task, completed=view.step, total=view.total, info=info)
            elif line:
                progress.console.print(line)


@jobs.command("logs")
def jobs_logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep watching until the job ends.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """The job's events; with --follow, a live progress bar (step/total, loss, ETA) until it ends."""
    view = ProgressLine(job_id)
    with _client(api_url, api_key, timeout=httpx.Timeout(30, read=None)) as client:
        _show_logs(follow_events(client, job_id, follow=follow), view, bar=follow and sys.stdout.isatty())
    if follow:
        typer.echo(f"job {job_id} {view.outcome or 'stream ended'} at {view.summary()}")
        raise typer.Exit(0 if view.outcome == "succeeded" else 1)


@jobs.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Your jobs, newest first: id, status, step/total (a queued job: its place in line), latest loss, name."""
    params = {"limit": limit, **({"status": status} if status else {})}
    with _client(api_url, api_key) as client:
        for job in _check(client.get("/jobs", params=params))["data"]:
            progress, loss = job["progress"], job["latest"]["loss"]
            steps = f"{progress['step']}/{progress['total_steps'] or '?'}"
            if job.get("queue_position"):
                steps = f"#{job['queue_position']} in line"
            loss_text = f"{loss:.4f}" if loss is not None else "-"
            typer.echo(f"{job['id']}  {job['status']:<10} {steps:>11}  loss {loss_text:<8} {job['name'] or ''}")


@jobs.command("show")
def jobs_show(job_id: str, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = "") -> None:
    """One job, as JSON."""
    with _client(api_url, api_key) as client:
        typer.echo(json.dumps(_check(client.get(f"/jobs/{job_id}")), indent=2))


@jobs.command("cancel")
def jobs_cancel(job_id: str, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = "") -> None:
    """Cancel a queued or running job."""
    with _client(api_url, api_key) as client:
        typer.echo(f"job {job_id}: {_check(client.post(f'/jobs/{job_id}/cancel'))['status']}")
