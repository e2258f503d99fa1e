"""Routes for /datasets: upload, list, get, preview, delete."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel

from app import storage
from app.core import http
from app.core.db import SessionDep
from app.core.schemas import DeletedPublic
from app.datasets import service as datasets_service
from app.datasets.schemas import DatasetPublic, DatasetsPublic
from app.tenants.auth import CallerDep
from app.tenants.limits import LIMITED, UploadRate

router = APIRouter(prefix="/datasets", tags=["datasets"])
ROWS = '{"text": "The capital of France is Paris."}\n'  # the example file in the schema: one JSONL row


class DatasetPreview(BaseModel):
    dataset_id: str
    rows: int
    columns: list[str]
    data: list[dict[str, Any]]


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    dependencies=[UploadRate],
    responses={
        200: {"model": DatasetPublic, "description": "The same file again: the dataset that holds it."},
        **LIMITED,
    },
)
def upload_dataset(
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="JSONL, JSON array, CSV, TSV or Parquet", examples=[ROWS])],
    name: Annotated[str | None, Form(max_length=200, examples=["support tickets"])] = None,
) -> DatasetPublic:
    dataset, created = datasets_service.create_dataset(session, caller, file.file, file.filename, name)
    session.commit()  # before the response: a client's next request must find the dataset
    if created:
        http.locate(request, response, "get_dataset", dataset_id=dataset.id)
    else:
        response.status_code = 200  # the same file again: the dataset that already holds it
    return DatasetPublic.of(dataset)


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    caller: CallerDep,
    session: SessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=500, description="`next_cursor` of the previous page.")] = None,
    tenant: Annotated[str | None, Query(max_length=200, description="Admin keys: another tenant, or `*`.")] = None,
) -> DatasetsPublic:
    """The caller's datasets, newest first, a page at a time (`next_cursor`, and `Link: rel="next"`)."""
    datasets, next_cursor = datasets_service.list_datasets(session, caller, limit, cursor, tenant)
    http.link_next_page(request, response, next_cursor)
    return DatasetsPublic(data=[DatasetPublic.of(d) for d in datasets], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> DatasetPublic:
    return DatasetPublic.of(datasets_service.get_dataset(session, caller, dataset_id, admin_may_read=True))


@router.get("/{dataset_id}/preview", response_model=DatasetPreview)
def preview_dataset(
    dataset_id: str,
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many rows, from the first.")] = 10,
) -> DatasetPreview:
    """The first rows as stored (what the worker reads), whatever the uploaded file's format."""
    dataset = datasets_service.get_dataset(session, caller, dataset_id, admin_may_read=True)
    rows = datasets_service.read_rows(dataset.id, limit)
    return DatasetPreview(dataset_id=dataset.id, rows=dataset.rows, columns=dataset.columns, data=rows)


@router.delete(
    "/{dataset_id}",
    response_model=DeletedPublic,
    responses={409: {"description": "A queued or running job trains or evaluates on the dataset."}},
)
def delete_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> DeletedPublic:
    """Delete the dataset and its stored rows; 409 while a queued or running job uses it."""
    dataset = datasets_service.delete_dataset(session, caller, dataset_id)
    session.commit()  # the record goes first: a failure after it leaves files the sweep removes, never a dangling row
    freed = storage.remove(storage.dataset_prefix(dataset.id))
    return DeletedPublic(id=dataset.id, object="dataset", freed_bytes=freed)
