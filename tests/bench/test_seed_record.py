"""bench/seed_record.py writes rows the service reads as its own: counts, ids, times, curves and queue positions."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from app.jobs import service as jobs_service
from app.jobs.schemas import JobPublic
from app.models import Artifact, Job, MetricPoint
from app.observability import metrics_service
from app.tenants.auth import Caller
from bench.seed_record import seed

ROOT = Path(__file__).resolve().parents[2]


def test_a_seeded_record_reads_like_the_services_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'finetune.db'}"
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["url"] = url
    command.upgrade(config, "head")
    engine = create_engine(url)
    seeded = seed(engine, "seeded", queued=300, finished=20, points=5_000, big_job_points=1_200)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(MetricPoint)) == seeded.points == 5_000
        assert session.scalar(select(func.count()).select_from(Artifact)) == 20
        newest = session.get(Job, seeded.queued_ids[-1])
        public = JobPublic.of(newest, jobs_service.queue_position(session, newest))
        assert public.status == "queued" and public.spec["training"]["max_steps"] == 400
        assert public.queue_position is not None and 1 <= public.queue_position <= 300
        jobs, _ = jobs_service.list_jobs(session, Caller("k", "seeded", False), "queued", 50, None)
        assert jobs_service.queue_positions(session, jobs)[newest.id] == public.queue_position
        big = session.get(Job, seeded.big_job_id)
        assert big.step == seeded.big_job_points
        curve = metrics_service.curve(session, big, "train", None, 100)
        assert len(curve) <= 100 and curve[0]["step"] == 1 and curve[-1]["step"] == big.step
        assert curve[0]["time"].endswith("Z"), "times read back as the service stores them"
    engine.dispose()
