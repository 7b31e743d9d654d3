"""The sweep of stranded URLs (fleet/sweep.py) against a real nats-server.

A test-side pull subscription on the workers' consumer plays the workers: each delivery it
takes and never answers is a worker crashing with the URL in hand. Closing it is every
worker stopped. Nothing pulls afterwards, so only the sweep can move the URLs.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, SequenceInfo

from fleet.disposition import Settler
from fleet.indexer import indexed_since
from fleet.messages import UrlTask, dead_letter_decoder, url_task_encoder
from fleet.nats.session import NatsSession, nats_session
from fleet.nats.streams import WORKERS_CONSUMER
from fleet.settings import Settings
from fleet.sinks import Sink, open_sink
from fleet.sweep import Sweeper, stranded_upto
from tests.conftest import wait_for
from tests.pipeline_helpers import sample_page


def info(*, delivered: int, floor: int, ack_pending: int) -> ConsumerInfo:
    return ConsumerInfo(
        name=WORKERS_CONSUMER,
        stream_name="FLEET_URLS",
        config=ConsumerConfig(),
        created=datetime.now(UTC),
        delivered=SequenceInfo(consumer_seq=delivered, stream_seq=delivered),
        ack_floor=SequenceInfo(consumer_seq=floor, stream_seq=floor),
        num_ack_pending=ack_pending,
    )


@pytest.mark.parametrize(
    ("delivered", "floor", "ack_pending", "upto"),
    [
        (0, 0, 0, 0),  # nothing delivered yet
        (10, 10, 0, 10),  # all acked: anything still there up to 10 is stranded
        (10, 4, 0, 10),  # nothing pending, floor left behind a stranded one
        (10, 4, 3, 4),  # URLs pending above the floor: only below it
    ],
)
def test_stranded_upto_reads_the_consumer_state(
    delivered: int, floor: int, ack_pending: int, upto: int
) -> None:
    assert stranded_upto(info(delivered=delivered, floor=floor, ack_pending=ack_pending)) == upto


@dataclass
class Queue:
    """The URLs stream and the workers' consumer, with a test-side "worker"."""

    session: NatsSession
    sub: JetStreamContext.PullSubscription
    settings: Settings

    @property
    def js(self) -> JetStreamContext:
        return self.session.js

    async def publish(self, name: str) -> UrlTask:
        task = UrlTask(url=f"http://127.0.0.1:9/{name}", id=name, published_at=time.time())
        await self.js.publish(self.settings.urls_subject, url_task_encoder.encode(task))
        return task

    async def take(self, n: int = 1) -> list[Msg]:
        """Deliver ``n`` URLs to a worker that will never answer (it crashes)."""
        msgs: list[Msg] = await self.sub.fetch(n, timeout=5)
        return msgs

    async def consumer(self) -> ConsumerInfo:
        ci: ConsumerInfo = await self.js.consumer_info(self.settings.urls_stream, WORKERS_CONSUMER)
        return ci

    async def urls_left(self) -> int:
        return (await self.js.stream_info(self.settings.urls_stream)).state.messages

    async def letters(self) -> list[tuple[str, str, int]]:
        sub = await self.js.subscribe(f"{self.settings.dlq_subject}.>", ordered_consumer=True)
        out = []
        total = (await self.js.stream_info(self.settings.dlq_stream)).state.messages
        try:
            for _ in range(total):
                msg = await sub.next_msg(timeout=5)
                d = dead_letter_decoder.decode(msg.data)
                out.append((d.url, d.reason, d.attempts))
        finally:
            await sub.unsubscribe()
        return out

    def sweeper(self, sink: Sink | None = None) -> Sweeper:
        s = self.settings
        settler = Settler(self.js, s, stage="worker", max_deliver=s.max_deliver)
        indexed = None if sink is None else functools.partial(indexed_since, sink)
        return Sweeper(self.session.nc, self.js, settler, s, indexed=indexed)


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[Queue]:
    settings = settings.replace(max_deliver=2, ack_wait_s=1.0, sweep_interval_s=0.2)
    async with nats_session(settings, name="test") as session:
        sub = await session.js.pull_subscribe_bind(
            durable=WORKERS_CONSUMER, stream=settings.urls_stream
        )
        yield Queue(session, sub, settings)


async def wait_expired(seconds: float = 1.3) -> None:
    """Let the AckWait (1 s) of the deliveries in hand run out."""
    await asyncio.sleep(seconds)


async def exhaust(q: Queue, name: str) -> UrlTask:
    """Publish a URL and let both of its deliveries end unanswered (worker crashes)."""
    task = await q.publish(name)
    for attempt in (1, 2):
        (msg,) = await q.take()
        assert msg.metadata.num_delivered == attempt
        await wait_expired()
    return task


async def test_a_url_stranded_with_every_worker_stopped_is_dead_lettered_once(
    queue: Queue,
) -> None:
    # Two sweepers at once (two indexers): one dead letter between them.
    first, second = queue.sweeper(), queue.sweeper()
    for sweeper in (first, second):
        await sweeper.listen()
    task = await exhaust(queue, "crashed")
    await queue.sub.unsubscribe()  # every worker stopped: nothing pulls any more

    async def drained() -> bool:
        await asyncio.gather(first.sweep(), second.sweep())
        return await queue.urls_left() == 0

    await wait_for(drained, timeout=30, interval=0.2)
    for _ in range(3):  # more sweeps change nothing
        await asyncio.gather(first.sweep(), second.sweep())
    assert await queue.letters() == [(task.url, "max_deliveries", 2)]
    assert first.swept + second.swept == 1
    assert (await queue.consumer()).num_ack_pending == 0


async def test_a_stranded_url_is_swept_while_others_are_pending(queue: Queue) -> None:
    # The stranded URL is the oldest: the ack floor stays below it while the others are
    # pending, so only the server's advisory says which one it is.
    sweeper = queue.sweeper()
    await sweeper.listen()
    stranded = await exhaust(queue, "crashed")
    in_flight = await queue.publish("in-flight")  # a live worker's, heartbeats keep it
    waiting = await queue.publish("waiting")  # its worker crashed, one delivery left
    fresh = await queue.publish("fresh")  # never delivered
    # A URL deferred for politeness: a scheduled message, not one for the workers.
    await queue.js.publish(f"{queue.settings.deferred_subject}.later.1", b"{}")
    held, crashed = await queue.take(2)
    assert {held.data, crashed.data} == {url_task_encoder.encode(t) for t in (in_flight, waiting)}
    if held.data != url_task_encoder.encode(in_flight):
        held, crashed = crashed, held
    await wait_expired(0.6)
    await held.in_progress()
    await wait_expired(0.6)

    deadline = time.monotonic() + 20
    while await queue.urls_left() > 4 and time.monotonic() < deadline:
        await held.in_progress()
        await sweeper.sweep()
        await asyncio.sleep(0.2)
    for _ in range(3):
        await held.in_progress()
        await sweeper.sweep()
        await asyncio.sleep(0.2)

    assert await queue.letters() == [(stranded.url, "max_deliveries", 2)]
    assert await queue.urls_left() == 4  # in flight, waiting, fresh, deferred
    # The probes delivered nothing: the crashed one comes back on its second (last)
    # delivery, the fresh one on its first, and the held one is still held.
    await held.ack()
    got = {m.data: m.metadata.num_delivered for m in await queue.take(2)}
    assert got == {url_task_encoder.encode(waiting): 2, url_task_encoder.encode(fresh): 1}


async def test_urls_with_deliveries_left_are_not_swept_when_every_worker_stopped(
    queue: Queue,
) -> None:
    sweeper = queue.sweeper()
    await sweeper.listen()
    first = await queue.publish("first-try")
    (msg,) = await queue.take()
    await wait_expired()
    await queue.sub.unsubscribe()
    for _ in range(4):
        assert await sweeper.sweep() == 0
        await asyncio.sleep(0.2)
    assert await queue.urls_left() == 1
    assert await queue.letters() == []
    # Still there for the next worker, with its last delivery to come.
    again = await queue.js.pull_subscribe_bind(
        durable=WORKERS_CONSUMER, stream=queue.settings.urls_stream
    )
    (msg,) = await again.fetch(1, timeout=5)
    assert (msg.data, msg.metadata.num_delivered) == (url_task_encoder.encode(first), 2)
    await msg.ack()


async def test_a_url_left_below_the_ack_floor_is_swept_without_advisory(queue: Queue) -> None:
    # The advisory went out while no sweeper listened (indexer down): the state finds it
    # once the URLs after it are done.
    stranded = await exhaust(queue, "crashed")
    later = await queue.publish("later")
    (msg,) = await queue.take()  # this pull makes the server settle the stranded one
    assert msg.data == url_task_encoder.encode(later)
    await msg.ack()
    await queue.sub.unsubscribe()

    sweeper = queue.sweeper()  # not listening: it never saw the advisory

    async def drained() -> bool:
        await sweeper.sweep()
        return await queue.urls_left() == 0

    await wait_for(drained, timeout=30, interval=0.2)
    assert await queue.letters() == [(stranded.url, "max_deliveries", 2)]


async def test_a_url_whose_page_was_indexed_after_it_was_published_leaves_without_a_letter(
    queue: Queue,
) -> None:
    # A cluster's stream can keep a URL whose ack was lost in a leader change: its page is
    # in the sink, fetched after the URL was published. It leaves the stream, no dead letter;
    # a page stored before the URL was published (an older fetch) does not count.
    done = await exhaust(queue, "done")
    older = await exhaust(queue, "older")
    await queue.sub.unsubscribe()
    sink = open_sink(queue.settings)
    await sink.open()
    try:
        stored = [
            msgspec.structs.replace(
                sample_page("done", title="Done", text="indexed"),
                id=done.id,
                fetched_at=done.published_at + 1,
            ),
            msgspec.structs.replace(
                sample_page("older", title="Older", text="indexed"),
                id=older.id,
                fetched_at=older.published_at - 3600,
            ),
        ]
        assert await sink.upsert(stored) == []
        sweeper = queue.sweeper(sink)
        await sweeper.listen()

        async def drained() -> bool:
            await sweeper.sweep()
            return await queue.urls_left() == 0

        await wait_for(drained, timeout=30, interval=0.2)
    finally:
        await sink.close()
    assert (sweeper.removed, sweeper.swept) == (1, 1)
    assert await queue.letters() == [(older.url, "max_deliveries", 2)]
