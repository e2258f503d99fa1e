"""Schema types every domain's responses share: UTC datetimes, the body of a DELETE."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# SQLite hands back naive datetimes (every one stored here is UTC): shown with their offset, as RFC 3339 says.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class DeletedPublic(BaseModel):
    id: str
    object: str  # "dataset" or "job"
    deleted: bool = True
    cancelled: bool = False  # a queued or running job was cancelled first
    kept_metrics: bool = False  # the job's record and metrics stay; only its files went
    freed_bytes: int
