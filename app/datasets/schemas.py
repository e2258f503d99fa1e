"""Responses of /datasets."""

from pydantic import BaseModel

from app.core.schemas import UtcDatetime
from app.models import Dataset


class DatasetPublic(BaseModel):
    id: str
    tenant: str | None = None
    name: str
    filename: str
    format: str
    rows: int
    columns: list[str]
    size_bytes: int
    sha256: str
    created_at: UtcDatetime

    @classmethod
    def of(cls, row: Dataset) -> "DatasetPublic":
        return cls.model_validate(row, from_attributes=True)


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = None
