"""A real S3-compatible endpoint for tests: moto's server in a subprocess on a free port (no mocks in-process)."""

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ftctl.localstack import free_port

# moto accepts any credentials; boto3 insists on having some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint_url: str

    def client(self) -> Any:  # a boto3 S3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1", **_credentials())

    def make_bucket(self, name: str | None = None) -> str:
        bucket = name or f"ft-test-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for obj in listed.get("Contents", []))

    def env(self, bucket: str) -> dict[str, str]:
        """The FT_* and AWS_* variables that point a process of the service at this server."""
        return {
            **CREDENTIALS,
            "FT_STORAGE_BACKEND": "s3",
            "FT_S3_BUCKET": bucket,
            "FT_S3_ENDPOINT_URL": self.endpoint_url,
            "FT_S3_REGION": "us-east-1",
        }


def _credentials() -> dict[str, str]:
    return {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": "testing"}


@contextmanager
def moto_server(log_dir: Path) -> Iterator[S3Server]:
    """Start `moto_server` on a free port, wait until it answers, and stop it afterwards."""
    for name, value in CREDENTIALS.items():
        os.environ.setdefault(name, value)  # for S3Store clients made in this test process
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = (log_dir / f"moto-{port}.log").open("ab")
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited; see {log.name}")
            try:
                httpx.get(server.endpoint_url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer within 30 s; see {log.name}") from None
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
