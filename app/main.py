"""The FastAPI application: routes, error handlers and the database session factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.checks import endpoints as validate
from app.core import openapi
from app.core.config import settings
from app.core.db import SessionLocal
from app.core.errors import install_error_handlers
from app.core.loops import PeriodicLoop
from app.core.security import install_security
from app.datasets import endpoints as datasets
from app.inference import evaluations, exports, generate, predict
from app.inference.reaper import reaper
from app.jobs import endpoints as jobs
from app.jobs.reconciler import reconciler
from app.jobs.retention import retention_sweeper
from app.jobs.webhook_senders import WebhookDeliverer
from app.observability import health, logs, metrics, request_ids, tracing
from app.observability import stream as events
from app.observability.prometheus import install_observability
from app.openai import endpoints as openai_compat
from app.serving import endpoints as serving
from app.tenants import endpoints as admin
from app.tenants import secret_box, usage
from app.tenants.auth import authenticate
from app.tenants.limits import RateLimitHeaders
from app.web import mount_dashboard
from app.web.docs import mount_docs


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    make_session = app.state.sessionmaker
    secret_box.check_key()  # a bad FT_SECRETS_KEY stops the API here; unset, the key file's warning is logged
    loops: list[PeriodicLoop] = [WebhookDeliverer()]  # sends what finished jobs queued for their webhook_url
    if settings.reconcile_every_seconds > 0:  # lost jobs re-sent, dead leases ended, dead exports/evaluations failed
        loops += [
            reconciler(make_session, settings.reconcile_every_seconds),
            reaper(make_session, settings.reconcile_every_seconds),
        ]
    if settings.retention_sweep_every_seconds > 0:  # FT_RETENTION_*: expired checkpoints, artifacts, datasets
        loops.append(retention_sweeper(make_session, settings.retention_sweep_every_seconds))
    for loop in loops:
        loop.start()
    yield
    for loop in reversed(loops):
        loop.stop()


def create_app() -> FastAPI:
    logs.configure_logging("api")  # FT_LOG_FORMAT, FT_LOG_LEVEL; every logger, uvicorn's too
    tracing.configure("finetune-api")  # only when OTEL_* asks for traces; else nothing of the SDK is imported
    app = FastAPI(
        telemetry=tracing.fastapi_telemetry(),  # FastAPI's own request spans, on exactly when tracing is
        lifespan=lifespan,
        title="finetune-service",
        version="0.1.0",
        description="Fine-tune language models with LoRA and QLoRA on your own data, and download the adapters.",
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: ours are served from a package (mount_docs)
        redoc_url=None,
        openapi_tags=openapi.TAGS,  # every router tag, described, in the order a user meets them
        generate_unique_id_function=openapi.operation_id,  # stable operation ids: `jobs-create`, ...
    )
    app.state.sessionmaker = SessionLocal
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(validate.router)  # before jobs: /jobs/validate is not a job id
    app.include_router(jobs.router)
    app.include_router(generate.router)
    app.include_router(predict.router)
    app.include_router(exports.router)
    app.include_router(evaluations.router)
    app.include_router(metrics.router)
    app.include_router(events.router)
    app.include_router(openai_compat.router)
    app.include_router(serving.router)  # /v1/models, /v1/chat/completions, /v1/completions
    app.include_router(usage.router)
    app.include_router(admin.router)
    app.include_router(admin.limits_router)
    install_observability(app)  # GET /metrics and request latency
    app.add_middleware(RateLimitHeaders)  # RateLimit-* on every response of a rate-limited route
    mount_dashboard(app)  # the web dashboard at /
    mount_docs(app)  # /docs and /redoc, their scripts from an installed package
    install_security(app, check_key=authenticate)  # headers, body limits, key before body; errors in the schema
    app.add_middleware(request_ids.RequestIds)  # outermost: X-Request-ID on every answer, the ids on every line
    request_ids.carry_request_ids()  # ... and in the header of every task message sent
    return app


app = create_app()
