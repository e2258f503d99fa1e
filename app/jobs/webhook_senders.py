"""The webhook senders: each API process sends due deliveries from a small thread pool, fair between tenants.

One loop thread claims as many due deliveries as there are idle senders (never more, so a claimed delivery
never waits in a queue while its lease runs), reads each from SQL and hands it to a sender, unless its tenant
already has FT_WEBHOOK_SENDERS_PER_TENANT deliveries in flight: then it goes back to the outbox, due again
shortly, and the loop claims the next one. A receiver that trickles its answer holds one sender for at most
FT_WEBHOOK_TIMEOUT_S (the egress guard's deadline), and only its own tenant's share of them.
"""

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.broker import events
from app.core.config import settings
from app.core.loops import PeriodicLoop
from app.jobs.webhooks import Delivery, Outbox, load_claimed, send

log = logging.getLogger(__name__)
PUT_BACK_S = 1.0  # a delivery whose tenant's senders are all busy is claimed again after this long
MAX_ROUNDS = 20  # claims per round at most, so a long run of one busy tenant's deliveries cannot spin the loop


class WebhookDeliverer(PeriodicLoop):
    """The loop in each API process starting due deliveries every `interval` seconds (Redis down: they wait)."""

    def __init__(
        self,
        interval: float = 1.0,
        outbox: Outbox | None = None,
        senders: int | None = None,
        per_tenant: int | None = None,
    ):
        super().__init__("webhooks", interval, self.dispatch)
        self.outbox = outbox
        self.senders = senders or settings.webhook_senders
        self.per_tenant = per_tenant or settings.webhook_senders_per_tenant
        self.pool = ThreadPoolExecutor(self.senders, thread_name_prefix="webhook-sender")
        self.busy: Counter[str] = Counter()
        self.lock = threading.Lock()

    def in_flight(self) -> int:
        with self.lock:
            return sum(self.busy.values())

    def dispatch(self) -> int:
        """Start as many due deliveries as there are idle senders, within each tenant's share; returns how many."""
        self.outbox = outbox = self.outbox or Outbox(events.redis_client())
        started = 0
        for _ in range(MAX_ROUNDS):
            free = self.senders - self.in_flight()
            claimed = outbox.claim_due(limit=free) if free > 0 else []
            if not claimed:
                break
            for delivery_id, record in claimed:
                delivery = load_claimed(outbox, delivery_id, record)
                if delivery is None:
                    continue
                if not self._reserve(delivery.tenant):
                    outbox.put_back(delivery_id, PUT_BACK_S)
                    continue
                self.pool.submit(self._send, outbox, delivery, record)
                started += 1
        return started

    def _reserve(self, tenant: str) -> bool:
        with self.lock:
            if self.busy[tenant] >= self.per_tenant:
                return False
            self.busy[tenant] += 1
            return True

    def _send(self, outbox: Outbox, delivery: Delivery, record: dict[str, Any]) -> None:
        try:
            send(outbox, delivery, record)
        except Exception:  # Redis went away mid-delivery: the lease runs out and it is claimed again
            log.exception("webhook %s: sending failed", delivery.delivery_id)
        finally:
            with self.lock:
                self.busy[delivery.tenant] -= 1
                if self.busy[delivery.tenant] <= 0:
                    del self.busy[delivery.tenant]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no delivery is in flight (tests, shutdown); False if some still are after `timeout`."""
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.in_flight()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
