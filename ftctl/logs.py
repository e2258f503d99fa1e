"""What a terminal shows of a running job and a download: a line per event, or rich progress bars on a tty."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import typer
from finetune_client import TERMINAL_STATUSES, Job, SseEvent


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes:02d}:{secs:02d}"


def on_terminal() -> bool:
    return sys.stdout.isatty()


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

    def seen(self, job: Job) -> None:
        """The same fields from a polled job (`submit --wait`) instead of an event."""
        progress = job["progress"]
        self.step, self.total, self.eta = progress["step"], progress["total_steps"], progress["eta_seconds"]
        self.loss = job["latest"]["loss"]
        self.outcome = job["status"] if job["status"] in TERMINAL_STATUSES else None

    def summary(self) -> str:
        loss = f"{self.loss:.4f}" if self.loss is not None else "-"
        return f"step {self.step}/{self.total or '?'} loss {loss} eta {format_eta(self.eta)}"


def show_logs(events: Iterator[SseEvent], view: ProgressLine, bar: bool) -> None:
    """A line per event, or on a terminal a live bar with the other events printed above it."""
    if not bar:
        for event in events:
            typer.echo(view.describe(event))
        return
    with _job_bar(view) as update:
        for event in events:
            line = view.describe(event)
            update(None if event.event == "metric" else line)


@contextmanager
def _job_bar(view: ProgressLine) -> Iterator[Callable[[str | None], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(view.job_id, total=None, info="waiting for the first step")

        def update(line: str | None) -> None:
            loss = f"{view.loss:.4f}" if view.loss is not None else "-"
            info = f"loss {loss}  eta {format_eta(view.eta)}"
            progress.update(task, completed=view.step, total=view.total, info=info)
            if line:
                progress.console.print(line)

        yield update


@contextmanager
def job_progress(view: ProgressLine, bar: bool) -> Iterator[Callable[[Job], None]]:
    """An `on_progress` for `jobs.wait`: the bar on a terminal, else a line whenever status or step changes."""
    last: list[tuple[str, int]] = []

    def as_lines(job: Job) -> None:
        view.seen(job)
        state = (job["status"], view.step)
        if not last or last[-1] != state:
            last.append(state)
            typer.echo(f"{job['status']:<10} {view.summary()}", err=True)

    if not bar:
        yield as_lines
        return
    with _job_bar(view) as update:
        statuses: list[str] = []

        def on_job(job: Job) -> None:
            view.seen(job)
            changed = not statuses or statuses[-1] != job["status"]
            statuses.append(job["status"])
            update(f"status {job['status']}" if changed else None)

        yield on_job


@contextmanager
def download_progress(name: str, bar: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    """An `on_progress` for `jobs.download`: a bytes bar on a terminal, nothing otherwise."""
    if not bar:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()) as progress:
        task = progress.add_task(name, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)
