"""Fifty followers of one live run: every event reaches each exactly once, in order, from one Redis reader.

A private stack (its own redis-server, so CLIENT LIST shows this API's connections only; SQLite) trains one job
while 50 SSE followers watch it from the start and others join late: from the beginning (a replay, then the live
events without a gap or a repeat) and with a Last-Event-ID. Redis holds one blocked XREAD for the job the whole
time, not one per follower (app/observability/fanout.py).
"""

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.watchers import exactly_once, follow, reader_connections
from tests.conftest import MODELS_DIR
from tests.integration.conftest import Stack, private_stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl

pytestmark = pytest.mark.own_stacks  # `make test` runs these beside the rest (Makefile)

STEPS = 16
FOLLOWERS = 50


@pytest.fixture(scope="module")
def watched(tiny_model: Path, session_dir: Path) -> Iterator[Stack]:
    root = session_dir / "watchers"
    env = {**os.environ, "FT_DATA_DIR": str(root / "data"), "FT_MODELS_DIR": str(MODELS_DIR)}
    env["FT_MAX_EVENT_STREAMS"] = str(FOLLOWERS + 20)  # one tenant follows with all of them
    env.pop("FT_DATABASE_URL", None)
    with private_stack("watchers", root, env, worker=True) as stack:
        yield stack


async def _watch(stack: Stack, job_id: str) -> dict:
    headers = {"Authorization": f"Bearer {stack.key}"}
    limits = httpx.Limits(max_connections=FOLLOWERS + 20)
    async with httpx.AsyncClient(base_url=stack.local.base_url, headers=headers, limits=limits, timeout=60) as http:
        early = [asyncio.create_task(follow(http, job_id)) for _ in range(FOLLOWERS)]
        late: list[asyncio.Task] = []
        resumed_after, samples = None, []
        while not all(task.done() for task in early):
            samples.append(reader_connections(stack.local.env["FT_REDIS_URL"]))
            job = (await http.get(f"/jobs/{job_id}")).json()
            if not late and job["progress"]["step"] >= 5:  # mid-run: from the start, and from an event id
                assert job["status"] == "running", "the job ended before the late followers could join mid-run"
                replay = (await http.get(f"/jobs/{job_id}/events", params={"follow": "false"})).text
                ids = [line[4:] for line in replay.splitlines() if line.startswith("id: ")]
                resumed_after = ids[len(ids) // 2]
                late = [asyncio.create_task(follow(http, job_id)) for _ in range(3)]
                late += [asyncio.create_task(follow(http, job_id, resumed_after)) for _ in range(3)]
            await asyncio.sleep(0.3)
        truth = await follow(http, job_id)
        return {
            "early": await asyncio.gather(*early),
            "late": await asyncio.gather(*late),
            "resumed_after": resumed_after,
            "truth": truth,
            "samples": samples,
        }


def test_fifty_followers_get_every_event_once_in_order_from_one_redis_reader(watched: Stack) -> None:
    dataset = watched.upload("quotes.jsonl", quotes_jsonl())
    submitted = watched.client.post("/jobs", json=qlora_spec(dataset["id"], max_steps=STEPS, eval_every_steps=4))
    assert submitted.status_code == 201, submitted.text
    seen = asyncio.run(_watch(watched, submitted.json()["id"]))

    truth = seen["truth"]
    assert [e.json()["step"] for e in truth if e.event == "metric"] == list(range(1, STEPS + 1))
    assert truth[-1].event == "status" and truth[-1].json()["status"] == "succeeded"
    assert all(exactly_once(got, truth) for got in seen["early"]), "an early follower missed or repeated an event"
    late, resumed = seen["late"][:3], seen["late"][3:]
    assert late and all(exactly_once(got, truth) for got in late), "a late follower's replay and live events differ"
    cut = next(i for i, e in enumerate(truth) if e.id == seen["resumed_after"]) + 1
    assert all(exactly_once(got, truth[cut:]) for got in resumed), "a resumed follower got what it had already"

    most_connections = max(named for named, _ in seen["samples"])
    most_blocked = max(blocked for _, blocked in seen["samples"])
    assert 1 <= most_connections <= 2 and most_blocked <= 1, (
        f"{FOLLOWERS}+ followers of one job held {most_connections} stream connections, {most_blocked} blocked "
        f"XREADs at once; one reader should serve them all"
    )
