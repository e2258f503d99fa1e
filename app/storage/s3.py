"""The S3 store: any S3-compatible object store (AWS S3, MinIO, Ceph) through boto3.

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance
role); FT_S3_* say where. Large files go up and down in parallel multipart transfers.

An endpoint that is away for a while (restarting, a network blip: refused, timed out, 5xx) does not fail a transfer:
file uploads and downloads, listings and deletes retry with backoff for up to FT_S3_RETRY_SECONDS (each try is
whole and replaces what a failed one left). Streamed reads and presigned URLs serve a waiting client, so they
keep boto3's own few retries.
"""

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable

from app.storage.backend import CHUNK_BYTES

log = logging.getLogger(__name__)
T = TypeVar("T")
MISSING = {"404", "NoSuchKey", "NotFound"}
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
FIRST_RETRY_S, MAX_RETRY_S = 0.5, 5.0
# Two parts in flight, not boto3's ten: for the API, which publishes datasets while taking more uploads (each transfer
# thread keeps buffers of its own: 4 uploads at once with ten threads each grew the API by some 40 MiB).
LOW_MEMORY_TRANSFER = TransferConfig(max_concurrency=2)


class S3Store:
    """Objects in one bucket, each key under an optional prefix (`FT_S3_PREFIX`, e.g. `finetune/`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        presign_expiry_s: int = 3600,
        retry_seconds: float = 120,
    ):
        if not bucket:
            raise ValueError("FT_S3_BUCKET must be set when FT_STORAGE_BACKEND=s3")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.presign_expiry_s = presign_expiry_s
        self.retry_seconds = retry_seconds
        config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    @classmethod
    def from_settings(cls, settings: Any) -> "S3Store":
        return cls(
            settings.s3_bucket or "",
            settings.s3_prefix,
            settings.s3_endpoint_url,
            settings.s3_region,
            settings.s3_presign_expiry_s,
            settings.s3_retry_seconds,
        )

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"not a relative key: {key!r}")
        return self.prefix + key

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, tried again with backoff while the endpoint is away, for up to retry_seconds."""
        deadline, delay, failing_since = time.monotonic() + self.retry_seconds, FIRST_RETRY_S, None
        while True:
            try:
                result = call()
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "S3 endpoint unreachable while %s (%s): retrying for up to %.0f s",
                        what,
                        _first_line(exc),
                        self.retry_seconds,
                    )
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            if failing_since is not None:
                log.info("S3 endpoint back after %.1f s: %s done", time.monotonic() - failing_since, what)
            return result

    def put_file(self, key: str, local_path: Path, low_memory: bool = False) -> None:
        config = LOW_MEMORY_TRANSFER if low_memory else None  # None: boto3's TransferConfig()
        self._retrying(
            f"uploading {key}",
            lambda: self.client.upload_file(str(local_path), self.bucket, self._key(key), Config=config),
        )

    def get_file(self, key: str, local_path: Path) -> None:
        local_path.parent.mkdir(parents=True, exist_ok=True)
        partial = local_path.with_name(local_path.name + ".partial")
        try:
            self._retrying(
                f"downloading {key}", lambda: self.client.download_file(self.bucket, self._key(key), str(partial))
            )
        except ClientError as exc:
            partial.unlink(missing_ok=True)
            raise _missing_or(exc, key) from exc
        partial.replace(local_path)

    def open_read(self, key: str) -> tuple[Iterator[bytes], int]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise _missing_or(exc, key) from exc
        body = obj["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()

        return chunks(), int(obj["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in MISSING:
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        def listing() -> list[tuple[str, int]]:
            found = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                found += [(obj["Key"][len(self.prefix) :], int(obj["Size"])) for obj in page.get("Contents", [])]
            return found

        return self._retrying(f"listing {prefix}", listing)

    def delete_prefix(self, prefix: str) -> int:
        found = self.list_keys(prefix)
        for start in range(0, len(found), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(key)} for key, _ in found[start : start + 1000]]
            self._retrying(
                f"deleting {prefix}",
                lambda batch=batch: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )
        return sum(size for _, size in found)

    def size_of_prefix(self, prefix: str) -> int:
        return sum(size for _, size in self.list_keys(prefix))

    def presigned_url(self, key: str, filename: str) -> str | None:
        params = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        }
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.presign_expiry_s)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed call is worth trying again: the endpoint unreachable, a dropped or timed-out connection,
    a 5xx or throttling answer (also when boto3 wraps them: S3UploadFailedError, RetriesExceededError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, EndpointUnreachable | HTTPClientError | RetriesExceededError):
            return True
        if isinstance(seen, ClientError):
            status = int(seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return status >= 500 or _code(seen) in TRANSIENT_CODES
        if not isinstance(seen, S3UploadFailedError):
            return False
        seen = seen.__cause__ or seen.__context__  # boto3 raises it while handling the ClientError
    return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _missing_or(exc: ClientError, key: str) -> Exception:
    return FileNotFoundError(f"no stored object {key!r}") if _code(exc) in MISSING else exc
