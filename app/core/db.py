"""Database engine and sessions; SQLite (WAL, waits on locks) and PostgreSQL alike."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import settings


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pool as large as the API's busy threads: a connection opened per request re-reads the schema and
        # re-runs the pragmas below (SQLAlchemy's default keeps 5 and closes the rest on return).
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            # WAL lets the API read while a worker writes; the API and workers share one file.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # Kept connections for the API's busy threads, as for SQLite: with SQLAlchemy's default 5, eight concurrent
    # requests opened and closed a PostgreSQL session for each overflow (253 in 8 s of wrk -c8 on GET /jobs/{id},
    # a backend fork each: docs/operations.md, Throughput). At most 20 + 10 (the default overflow) per process.
    return create_engine(url, pool_pre_ping=True, pool_size=20)


engine = make_engine(settings.sqlalchemy_url)
SessionLocal = sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (workers and the CLI)."""
    session = SessionLocal()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def get_session(request: Request):  # noqa: ANN201 - a FastAPI generator dependency
    """The request's session. Async, so FastAPI does not hop to a worker thread to open it (a session touches no
    database until its first query); the commit, which may write and fsync, still runs in a worker thread."""
    session = request.app.state.sessionmaker()
    try:
        yield session
        await run_in_threadpool(session.commit)
    finally:
        session.close()  # rolls back whatever was not committed (an error) and returns the connection


# scope="function": the commit happens before the response is sent. (A request-scoped dependency's exit code runs
# after the response; a client acting on a 200 could then race the commit, e.g. a revoked key still accepted.)
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
