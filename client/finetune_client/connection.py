"""Where the API is and who is asking: arguments first, then FT_API_URL / FT_API_KEY, as ftctl reads them."""

import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
# Event streams stay open for hours; the server pings every few seconds, so a silent minute means a dead link.
EVENTS_READ_TIMEOUT_S = 90.0

try:
    __version__ = version("finetune-client")
except PackageNotFoundError:  # installed as part of finetune-service (`pip install .` at its root)
    try:
        __version__ = version("finetune-service")
    except PackageNotFoundError:
        __version__ = "0+unknown"


@dataclass(frozen=True)
class Connection:
    base_url: str
    api_key: str | None

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None) -> "Connection":
        url = base_url or os.environ.get("FT_API_URL") or DEFAULT_URL
        return cls(url.rstrip("/"), api_key or os.environ.get("FT_API_KEY") or None)

    def headers(self) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return {"User-Agent": f"finetune-client/{__version__} httpx/{httpx.__version__}", **auth}


def events_timeout(timeout: float) -> httpx.Timeout:
    return httpx.Timeout(timeout, read=EVENTS_READ_TIMEOUT_S)


def next_cursor(body: dict, previous: str | None) -> str | None:
    """The next page's cursor, or None at the end (a cursor that does not move ends it too, never a loop)."""
    cursor = body.get("next_cursor")
    return cursor if cursor and cursor != previous else None


def reconnect_delay(failures: int) -> float:
    """Backoff between event-stream reconnects: 1, 2, 4 ... seconds, at most 30."""
    return float(min(2 ** (failures - 1), 30))


def query(**params: object) -> dict[str, object]:
    """Query parameters without the ones left out (None)."""
    return {name: value for name, value in params.items() if value is not None}
