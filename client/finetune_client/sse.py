"""Server-Sent Events as the API sends them (`GET /jobs/{id}/events`), parsed line by line for sync and async reads."""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class SseEvent:
    """One event: `event` is metric, eval, status, checkpoint, warning ...; `id` resumes the stream after it."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> dict[str, Any]:
        return json.loads(self.data) if self.data else {}

    @property
    def ends_job(self) -> bool:
        """A status event with a final status: nothing follows it."""
        return self.event == "status" and self.json().get("status") in TERMINAL_STATUSES


class SseParser:
    """Feed it the response's lines one at a time; it hands back each event when its blank line arrives."""

    def __init__(self) -> None:
        self._current, self._data = SseEvent(), []

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            event = None
            if self._data or self._current.id is not None:
                self._current.data = "\n".join(self._data)
                event = self._current
            self._current, self._data = SseEvent(), []
            return event
        if line.startswith(":"):
            return None  # a keep-alive or a note from the server
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._current.event = value
        elif name == "id":
            self._current.id = value
        return None


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events from an iterable of text lines (e.g. `response.iter_lines()`)."""
    parser = SseParser()
    for line in lines:
        if (event := parser.feed(line)) is not None:
            yield event
