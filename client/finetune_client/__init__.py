"""finetune_client: the Python client of finetune-service, sync (`Client`) and async (`AsyncClient`).

from finetune_client import Client

with Client() as ft:  # FT_API_URL, FT_API_KEY
    dataset = ft.datasets.upload("train.jsonl")
    job = ft.jobs.create({"base_model": "tiny-llama", "dataset": dataset["id"]})
    job = ft.jobs.wait(job["id"])
    ft.jobs.download(job["id"], "adapter", "adapter.tar.gz")
"""

from finetune_client.aio import AsyncClient
from finetune_client.connection import __version__
from finetune_client.errors import (
    ChecksumMismatch,
    Conflict,
    FinetuneError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    ServerError,
    TooLarge,
    Unauthorized,
    Unreachable,
)
from finetune_client.sse import TERMINAL_STATUSES, SseEvent, iter_sse
from finetune_client.sync import Client
from finetune_client.types import Artifact, Dataset, DatasetPreview, Job, Metrics

__all__ = [
    "TERMINAL_STATUSES",
    "Artifact",
    "AsyncClient",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "Dataset",
    "DatasetPreview",
    "FinetuneError",
    "Forbidden",
    "Invalid",
    "Job",
    "Metrics",
    "NotFound",
    "RateLimited",
    "ServerError",
    "SseEvent",
    "TooLarge",
    "Unauthorized",
    "Unreachable",
    "__version__",
    "iter_sse",
]
