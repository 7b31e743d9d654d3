"""FastAcks: the publisher's windowed publishes, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import APIError, NoStreamResponseError

from fleet.nats.acks import FastAcks
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
