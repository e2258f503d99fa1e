"""The FastAPI application: routes, error handlers and the database session factory."""

from fastapi import FastAPI

from app.api import datasets, health, jobs
from app.db import SessionLocal
from app.errors import install_error_handlers


def create_app() -> FastAPI:
    app = FastAPI(
        title="finetune-service",
        version="0.1.0",
        description="Fine-tune language models with LoRA and QLoRA on your own data, and download the adapters.",
    )
    app.state.sessionmaker = SessionLocal
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    return app


app = create_app()
