"""Prometheus metrics at GET /metrics: jobs by status, queue depth, training done, API latency.

Job figures are read from the SQL record at scrape time (so every API replica reports the same
numbers); request latency is a histogram kept per process by a small ASGI middleware.
"""

import time
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.broker import events, queue
from app.core.db import SessionDep
from app.models import Job, JobStatus, MetricPoint
from app.tenants.auth import CallerDep

STATUSES = tuple(s.value for s in JobStatus)
UNTIMED_ROUTES = {"/jobs/{job_id}/events"}  # a stream lasts as long as its job: not a latency

REQUEST_SECONDS = Histogram(
    "ft_http_request_duration_seconds",
    "API request latency, by method, route template and status code.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

router = APIRouter(tags=["observability"])


@dataclass
class JobStats:
    by_status: dict[str, int] = field(default_factory=dict)
    steps_trained: int = 0
    tokens_trained: int = 0
    broker_queue_length: int | None = None


def job_stats(session: Session, tenant: str | None = None) -> JobStats:
    """Counts by status and the training done so far, in two small queries (the jobs table, one index probe each).

    `tenant`: only that tenant's jobs (what a non-admin key is shown); None: every tenant's.
    """
    stats = JobStats(by_status=dict.fromkeys(STATUSES, 0))
    mine = [Job.tenant == tenant] if tenant is not None else []
    for status, count in session.execute(select(Job.status, func.count()).where(*mine).group_by(Job.status)):
        stats.by_status[status] = count
    stats.steps_trained = session.scalar(select(func.coalesce(func.sum(Job.step), 0)).where(*mine)) or 0
    # Tokens seen so far by each job are on its latest point: one probe of the (job, split, step) index per job.
    latest_point = and_(MetricPoint.job_id == Job.id, MetricPoint.split == "train", MetricPoint.step == Job.step)
    tokens = (
        select(func.coalesce(func.sum(MetricPoint.num_tokens), 0))
        .select_from(Job)
        .join(MetricPoint, latest_point)
        .where(*mine)
    )
    stats.tokens_trained = session.scalar(tokens) or 0
    try:
        stats.broker_queue_length = queue.broker_queue_length(events.redis_client())
    except Exception:  # Redis down: say nothing rather than 0
        stats.broker_queue_length = None
    return stats


class JobStatsCollector(Collector):
    def __init__(self, stats: JobStats):
        self.stats = stats

    def collect(self):  # noqa: ANN201 - prometheus_client's Collector protocol
        by_status = GaugeMetricFamily("ft_jobs", "Jobs on record, by status.", labels=["status"])
        for status, count in sorted(self.stats.by_status.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "ft_queue_depth", "Jobs queued and waiting for a worker.", self.stats.by_status["queued"]
        )
        running = self.stats.by_status["running"] + self.stats.by_status["cancelling"]
        yield GaugeMetricFamily("ft_running_jobs", "Jobs training now (running or cancelling).", running)
        yield CounterMetricFamily("ft_trained_steps", "Optimizer steps trained, all jobs.", self.stats.steps_trained)
        yield CounterMetricFamily("ft_trained_tokens", "Tokens trained on, all jobs.", self.stats.tokens_trained)
        if self.stats.broker_queue_length is not None:
            yield GaugeMetricFamily(
                "ft_broker_queue_length",
                "Training messages waiting in the broker queue.",
                self.stats.broker_queue_length,
            )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus_metrics(caller: CallerDep, session: SessionDep) -> Response:
    """Prometheus text format; scrape with an API key (`authorization` in the scrape config).

    Job figures are the key's tenant's own (an admin key's: every tenant's); the broker queue and request
    latency are the service's, shared by all.
    """
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(JobStatsCollector(job_stats(session, None if caller.is_admin else caller.tenant)))
    body = generate_latest(REGISTRY) + generate_latest(scrape)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class RequestTimingMiddleware:
    """Observes each HTTP request's duration under its route template (`/jobs/{job_id}`), not its raw path."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if route not in UNTIMED_ROUTES:
                REQUEST_SECONDS.labels(scope["method"], route, str(status)).observe(time.perf_counter() - started)


def install_observability(app: FastAPI) -> None:
    app.add_middleware(RequestTimingMiddleware)
    app.include_router(router)
