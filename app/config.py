"""Process settings: one object, read from FT_* environment variables and a .env file."""

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Datasets, checkpoints and artifacts live here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and progress events.")
    models_dir: Path | None = Field(None, description="Local base models; default: data_dir/models.")

    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest dataset upload accepted (413 above).")
    training_queue: str = Field("training", description="Celery queue the API sends training tasks to.")
    visibility_timeout_s: int = Field(
        12 * 3600, description="Redis redelivers an unacked task after this long: longer than any job."
    )
    worker_max_tasks_per_child: int = Field(1, description="1: a fresh process per job frees GPU memory.")

    @cached_property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'finetune.db').resolve()}"

    @cached_property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").resolve()


settings = Settings()
