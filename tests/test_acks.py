"""FastAcks: the publisher's windowed publishes, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import APIError, NoStreamResponseError

from fleet.messages import HostState
from fleet.nats.acks import FastAcks
from fleet.nats.hosts import KvHostSlots
from fleet.nats.server import EmbeddedNats


async def test_acks_duplicates_and_errors(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        async with FastAcks(nc, js) as acks:
            first = await acks.publish_async("t.a", b"1", stream="T", headers={"Nats-Msg-Id": "x"})
            again = await acks.publish_async("t.a", b"1", stream="T", headers={"Nats-Msg-Id": "x"})
            other = await acks.publish_async("t.b", b"2", stream="T")
            ack1, ack2, ack3 = await asyncio.wait_for(asyncio.gather(first, again, other), 5)
            assert (ack1.stream, ack1.seq, ack1.duplicate) == ("T", 1, False)
            assert ack2.duplicate and ack2.seq == 1
            assert ack3.seq == 2 and not ack3.duplicate
            with pytest.raises(APIError):  # the subject's stream is not the expected one
                await asyncio.wait_for(await acks.publish_async("t.c", b"", stream="U"), 5)
            with pytest.raises(NoStreamResponseError):  # no stream on the subject at all
                await asyncio.wait_for(await acks.publish_async("nostream.x", b""), 5)
            ack = await acks.publish("t.d", b"4", stream="T")
            assert ack.seq == 3
        info = await js.stream_info("T")
        assert info.state.messages == 3
    finally:
        await nc.close()


async def test_host_slots_compare_and_set_through_fast_acks(nats_server: EmbeddedNats) -> None:
    """Two workers' slots (one on FastAcks, one on kv.update) bump one origin's state at once:
    every bump lands exactly once, conflicts are retried."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="hosts_t", history=1, direct=True)
        async with FastAcks(nc, js) as acks:
            fast = KvHostSlots(kv, acks=acks, bucket="hosts_t")
            plain = KvHostSlots(kv)

            def bump(state: HostState | None) -> tuple[HostState | None, int]:
                n = int(state.throttled) + 1 if state is not None else 1
                return HostState(origin="http://a:80", throttled=n), n

            async def bumps(slots: KvHostSlots) -> list[int]:
                return [await slots.transact("http://a:80", bump) for _ in range(25)]

            got = await asyncio.gather(bumps(fast), bumps(plain))
        seen = sorted(n for run in got for n in run)
        assert seen == list(range(1, 51))
        state = await plain.get("http://a:80")
        assert state is not None and state.throttled == 50
    finally:
        await nc.close()
