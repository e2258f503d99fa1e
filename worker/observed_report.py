"""A job's Report as an operator watches it: progress lines in the worker's log, and the trace's phases.

Wraps the JobReporter a training run reports to (worker/report.py), adding only what is seen from outside:
- a log line for the first step, one every PROGRESS_EVERY_S and the last (step/total, loss, ETA), and one per
  evaluation; the log scope of the task (app/core/log_context.py) puts job_id, tenant and attempt on them;
- the `load` and `train` child spans of the attempt's `training` span (app/observability/tracing.py): load until
  the recipe reports the model's parameters, train from there until the run ends. The Redis and SQL checks made at
  every step (cancelled? draining?) are kept out of the trace: a long run would add thousands of spans to it.
"""

import logging
import time
from typing import Any

from app.observability import tracing
from worker.report import JobReporter

log = logging.getLogger("worker.progress")
PROGRESS_EVERY_S = 10.0  # a line per logged step would be thousands of lines for a long job


class ObservedReport:
    def __init__(self, report: JobReporter):
        self._report = report
        self._phase = tracing.start_span("load")
        self._last_line: float | None = None

    def __getattr__(self, name: str) -> Any:  # the rest of JobReporter, as it is
        return getattr(self._report, name)

    def parameters(self, trainable: int, total: int) -> None:
        self._next_phase("train", {"ft.trainable_parameters": trainable, "ft.total_parameters": total})
        self._report.parameters(trainable, total)

    def train_point(self, point: dict[str, Any]) -> None:
        self._report.train_point(point)
        now, step, total = time.monotonic(), point.get("step"), point.get("total_steps")
        if self._last_line is not None and now - self._last_line < PROGRESS_EVERY_S and step != total:
            return
        self._last_line = now
        loss, eta = point.get("loss"), point.get("eta_seconds")
        log.info(
            "step %s/%s loss %s eta %s",
            step,
            total or "?",
            f"{loss:.4f}" if isinstance(loss, float) else loss,
            f"{eta:.0f}s" if isinstance(eta, int | float) else "?",
            extra={"step": step, "total_steps": total, "loss": loss, "eta_seconds": eta},
        )

    def eval_point(self, point: dict[str, Any]) -> None:
        self._report.eval_point(point)
        loss = point.get("eval_loss")
        shown = f"{loss:.4f}" if isinstance(loss, float) else loss
        log.info("step %s eval_loss %s", point.get("step"), shown, extra={"step": point.get("step"), "eval_loss": loss})

    def should_stop(self) -> bool:
        with tracing.untraced():
            return self._report.should_stop()

    def should_drain(self) -> bool:
        with tracing.untraced():
            return self._report.should_drain()

    def close(self) -> None:
        self._next_phase(None)
        self._report.close()

    def _next_phase(self, name: str | None, attributes: dict[str, Any] | None = None) -> None:
        tracing.end_span(self._phase)
        self._phase = tracing.start_span(name, attributes) if name else None
