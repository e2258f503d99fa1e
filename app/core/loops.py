"""One shape for the API's periodic background work (reconciler, reaper, retention sweep, webhook sender).

Each is a daemon thread that runs one round every `interval` seconds until stopped; a round that fails (Redis or
the database is down) is logged and tried again next round, never ending the thread.
"""

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicLoop(threading.Thread):
    """A daemon thread calling `one_round()` every `interval` seconds until `stop()`."""

    def __init__(self, name: str, interval: float, one_round: Callable[[], object]):
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.one_round = one_round
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.one_round()
            except Exception as exc:  # a dependency is down: try again next round
                log.warning(
                    "%s round failed (%s: %s); retrying in %ss", self.name, type(exc).__name__, exc, self.interval
                )
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
