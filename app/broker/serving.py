"""The embedded serving backend's queue and answers, in Redis: what the API and the inference worker share.

A completion request is a JSON record under `<prefix>:req:<call id>`; its id waits in its tenant's list
`<prefix>:q:<tenant>`. Tenants with waiting requests are a sorted set scored by when each was last served, so the
worker takes requests round-robin across tenants, oldest-served first: one tenant's burst cannot starve another's
single request. `<prefix>:pending` holds every request not yet answered, scored by its deadline, so the queue's
length is bounded (FT_SERVING_MAX_QUEUE) and a request whose worker died stops counting once its deadline passes.

Answers go to a Redis stream per call, `<prefix>:out:<call id>`, entry by entry as tokens are generated:
`{"type": "delta", "index", "text"}`, `{"type": "done", "index", "finish_reason"}`, then one
`{"type": "usage", "prompt_tokens", "completion_tokens"}`, or `{"type": "error", "kind", "message"}`.

The worker trusts none of this: it re-reads the job, the adapter and its checksum from SQL by id and checks the
tenant (worker/serving.py).
"""

import json
import time
from typing import Any

import redis

from app.core.config import settings

ANSWER_TTL_S = 600  # an answer stream outlives its request by this long, for a client that reconnects late


class QueueFull(Exception):
    """FT_SERVING_MAX_QUEUE requests are already waiting: answer 429."""

    def __init__(self, waiting: int):
        super().__init__(f"{waiting} completions are waiting")
        self.waiting = waiting


def prefix() -> str:
    return f"ft:serve:{settings.training_queue}"  # deployments sharing one Redis keep apart, as webhooks do


def request_key(call_id: str) -> str:
    return f"{prefix()}:req:{call_id}"


def answer_key(call_id: str) -> str:
    return f"{prefix()}:out:{call_id}"


# KEYS: pending, tenants, queue, request. ARGV: now, max, call id, deadline, tenant, record, ttl.
_ENQUEUE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local waiting = redis.call('ZCARD', KEYS[1])
if waiting >= tonumber(ARGV[2]) then return -waiting - 1 end
redis.call('SET', KEYS[4], ARGV[6], 'EX', tonumber(ARGV[7]))
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
return waiting + 1
"""

# KEYS: tenants. ARGV: queue key prefix, most to take, now. Round-robin: one request per tenant per pass,
# least recently served tenant first; a tenant is re-scored when served and dropped when its list is empty.
_TAKE = """
local taken = {}
local limit = tonumber(ARGV[2])
while #taken < limit do
  local tenants = redis.call('ZRANGE', KEYS[1], 0, -1)
  if #tenants == 0 then break end
  local before = #taken
  for _, tenant in ipairs(tenants) do
    if #taken >= limit then break end
    local id = redis.call('LPOP', ARGV[1] .. tenant)
    if id then
      table.insert(taken, id)
      redis.call('ZADD', KEYS[1], ARGV[3] + #taken / 1000000, tenant)
    end
    if redis.call('LLEN', ARGV[1] .. tenant) == 0 then redis.call('ZREM', KEYS[1], tenant) end
  end
  if #taken == before then break end
end
return taken
"""


class ServingQueue:
    """The queue as both sides see it, over a synchronous Redis client (the worker's, or the API's in a thread)."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.pending_key, self.tenants_key, self.queue_prefix = (
            f"{prefix()}:pending",
            f"{prefix()}:tenants",
            f"{prefix()}:q:",
        )
        self._enqueue = client.register_script(_ENQUEUE)
        self._take = client.register_script(_TAKE)

    def enqueue(self, request: dict[str, Any]) -> int:
        """Queue a request (`id`, `tenant`, `deadline` as a Unix time, and the rest); returns how many now wait.

        QueueFull when FT_SERVING_MAX_QUEUE are already waiting."""
        call_id, tenant = request["id"], request["tenant"]
        ttl = max(1, int(request["deadline"] - time.time()) + ANSWER_TTL_S)
        keys = [self.pending_key, self.tenants_key, self.queue_prefix + tenant, request_key(call_id)]
        args = [time.time(), settings.serving_max_queue, call_id, request["deadline"], tenant, json.dumps(request), ttl]
        waiting = int(self._enqueue(keys=keys, args=args))
        if waiting < 0:
            raise QueueFull(-waiting - 1)
        return waiting

    def take(self, limit: int) -> list[dict[str, Any]]:
        """The worker's side: up to `limit` waiting requests, round-robin across tenants; expired ones are dropped."""
        now = time.time()
        requests = []
        for call_id in self._take(keys=[self.tenants_key], args=[self.queue_prefix, limit, now]):
            raw = self.client.get(request_key(call_id))
            record = json.loads(raw) if raw else None
            # A record is the call's own (a forged one naming another call's id is dropped), and still awaited.
            if record is None or record.get("id") != call_id or record.get("deadline", 0) < now:
                self.finish(call_id)
                continue
            requests.append(record)
        return requests

    def waiting(self) -> int:
        self.client.zremrangebyscore(self.pending_key, "-inf", time.time())
        return int(self.client.zcard(self.pending_key))

    def publish(self, call_id: str, **entry: Any) -> None:
        """Append one answer entry (see the module docstring) to the call's stream."""
        pipe = self.client.pipeline()
        pipe.xadd(answer_key(call_id), {"data": json.dumps(entry)})
        pipe.expire(answer_key(call_id), ANSWER_TTL_S)
        pipe.execute()

    def finish(self, call_id: str) -> None:
        """The request is answered (or given up): it no longer counts against the queue."""
        pipe = self.client.pipeline()
        pipe.zrem(self.pending_key, call_id)
        pipe.delete(request_key(call_id))
        pipe.execute()
