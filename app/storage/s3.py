"""The S3 store: any S3-compatible object store (AWS S3, MinIO, Ceph) through boto3.

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance
role); FT_S3_* say where. Large files go up and down in parallel multipart transfers.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.storage.backend import CHUNK_BYTES

MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    """Objects in one bucket, each key under an optional prefix (`FT_S3_PREFIX`, e.g. `finetune/`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        presign_expiry_s: int = 3600,
    ):
        if not bucket:
            raise ValueError("FT_S3_BUCKET must be set when FT_STORAGE_BACKEND=s3")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.presign_expiry_s = presign_expiry_s
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
        )

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"not a relative key: {key!r}")
        return self.prefix + key

    def put_file(self, key: str, local_path: Path) -> None:
        self.client.upload_file(str(local_path), self.bucket, self._key(key))

    def get_file(self, key: str, local_path: Path) -> None:
        local_path.parent.mkdir(parents=True, exist_ok=True)
        partial = local_path.with_name(local_path.name + ".partial")
        try:
            self.client.download_file(self.bucket, self._key(key), str(partial))
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
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            found += [(obj["Key"][len(self.prefix) :], int(obj["Size"])) for obj in page.get("Contents", [])]
        return found

    def delete_prefix(self, prefix: str) -> int:
        found = self.list_keys(prefix)
        for start in range(0, len(found), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(key)} for key, _ in found[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
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


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _missing_or(exc: ClientError, key: str) -> Exception:
    return FileNotFoundError(f"no stored object {key!r}") if _code(exc) in MISSING else exc
