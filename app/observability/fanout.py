"""One Redis reader per followed job in an API process, fanning its events out to every follower of the job.

Fifty followers of one job cost one blocked XREAD (one pooled connection of FT_EVENT_STREAM_CONNECTIONS), not
fifty: a `JobReader` reads the job's stream and hands each batch to its followers' bounded queues. A follower
joins in two parts without a gap or a duplicate: it registers with the reader, which from then on queues every
event after the reader's cursor at that instant (`Follower.joined_at`); what came before, after the client's own
`Last-Event-ID`, it replays from the stream itself (XRANGE, short commands on the other pool).

A follower whose queue fills (its client reads slower than the job writes) is detached rather than waited for:
the others never block on it. It keeps what it had queued, and `app/observability/stream.py` rejoins it from the
last event it sent, replaying the rest from the stream, so a slow client loses nothing either.
"""

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from app.broker import events

log = logging.getLogger(__name__)
READ_BLOCK_MS = 5_000  # one XREAD waits this long before it is sent again (a reader has no other work)
READ_COUNT = 500  # events per XREAD: a busy job's backlog arrives in a few reads
QUEUE_EVENTS = 2_000  # what a follower may fall behind by before it is detached (and rejoins from Redis)
RETRY_S = 1.0  # after a Redis error the reader waits this long, then reads again from its cursor

Entry = tuple[str, dict[str, str]]  # (stream id, fields: type and data)


def id_order(event_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair: `1700000000000-3` -> (1700000000000, 3); `0` -> (0, 0)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class FanoutBusy(Exception):
    """This process already follows as many jobs as it has stream connections for (FT_EVENT_STREAM_CONNECTIONS)."""

    def __init__(self, following: int):
        super().__init__(f"{following} jobs followed")
        self.following = following


@dataclass(eq=False)
class Follower:
    """One open stream's place at its job's reader: the events after `joined_at`, queued in order."""

    reader: "JobReader"
    joined_at: str
    queue: asyncio.Queue[Entry] = field(default_factory=lambda: asyncio.Queue(QUEUE_EVENTS))
    detached: bool = False  # the queue filled up: the reader stopped feeding it
    left: bool = False

    def offer(self, entry: Entry) -> None:
        if self.detached:
            return
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.detached = True  # what is queued stays readable; the rest comes from the stream on rejoin
            self.reader.drop(self)
            log.info("event follower of job %s fell %d events behind: detached", self.reader.job_id, QUEUE_EVENTS)

    def leave(self) -> None:
        """Stop following (idempotent); the reader stops with its last follower."""
        if not self.left:
            self.left = True
            self.reader.drop(self)


class JobReader:
    """Reads one job's stream for every follower of it in this process; stops when the last one leaves."""

    def __init__(self, job_id: str, on_stop: Callable[["JobReader"], None]):
        self.job_id = job_id
        self.cursor = "0"
        self.followers: set[Follower] = set()
        self.ready = asyncio.Event()
        self.stopped = False
        self.error: Exception | None = None  # why it could not start
        self.on_stop = on_stop
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"events-reader-{job_id}")

    def join(self) -> Follower:
        """Register a follower at the current cursor: every event after it reaches the follower's queue. Runs
        with no await between reading the cursor and registering, so no batch can fall between the two."""
        follower = Follower(self, self.cursor)
        self.followers.add(follower)
        return follower

    def drop(self, follower: Follower) -> None:
        self.followers.discard(follower)
        if not self.followers:
            self.stop()

    def stop(self) -> None:
        self.stopped = True
        self.ready.set()  # wakes anyone still waiting to join: they see it stopped and start another
        self.on_stop(self)
        self.task.cancel()

    async def _start_cursor(self) -> str:
        newest = await events.stream_redis_client().xrevrange(events.stream_key(self.job_id), count=1)
        return newest[0][0] if newest else "0"

    async def _run(self) -> None:
        client, key = events.stream_redis_client(), events.stream_key(self.job_id)
        try:
            self.cursor = await self._start_cursor()
        except Exception as exc:  # Redis unreachable: whoever waits to join is told so, now
            self.error = exc
            self.stop()
            return
        self.ready.set()
        while True:
            try:
                result = await client.xread({key: self.cursor}, count=READ_COUNT, block=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("events reader of job %s: Redis error; retrying", self.job_id, exc_info=True)
                await asyncio.sleep(RETRY_S)
                continue
            entries = result[0][1] if result else []
            for entry in entries:  # no await in here: a follower joining now sees the cursor after this batch
                self.cursor = entry[0]
                for follower in list(self.followers):
                    follower.offer(entry)


class Fanout:
    """This event loop's readers, by job id (one API process has one loop; tests may run several)."""

    def __init__(self) -> None:
        self.readers: dict[str, JobReader] = {}

    async def follow(self, job_id: str, limit: int) -> Follower:
        """A follower of the job, sharing its reader; FanoutBusy when a new reader would pass `limit` readers."""
        reader = self.readers.get(job_id)
        if reader is None:
            if len(self.readers) >= limit:
                raise FanoutBusy(len(self.readers))
            reader = self.readers[job_id] = JobReader(job_id, self._forget)
        try:
            await reader.ready.wait()
        except asyncio.CancelledError:  # the client left before the reader was ready: a reader of no one stops
            if not reader.followers:
                reader.stop()
            raise
        if reader.error is not None:
            raise reader.error
        if reader.stopped:  # its followers all left while this one waited: start another
            return await self.follow(job_id, limit)
        return reader.join()

    def _forget(self, reader: JobReader) -> None:
        if self.readers.get(reader.job_id) is reader:
            del self.readers[reader.job_id]


_fanouts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Fanout] = weakref.WeakKeyDictionary()


def fanout() -> Fanout:
    """The running loop's Fanout."""
    loop = asyncio.get_running_loop()
    if loop not in _fanouts:
        _fanouts[loop] = Fanout()
    return _fanouts[loop]
