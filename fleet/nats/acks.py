"""Windowed JetStream publishes with cheap PubAcks, for the publisher's bulk path.

nats-py's ``publish_async`` costs ~40 us of CPU per message on top of the publish itself:
a ``wait_for`` on a semaphore, a NUID plus random token, a done-callback, and ``json.loads``
+ a dataclass per PubAck. Here each publish gets a reply subject ``<inbox>.<counter>`` on
one wildcard subscription, and the PubAck is decoded by msgspec into a small Struct. The
window (how many are in flight) is the caller's: the Publisher bounds it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

log = logging.getLogger(__name__)

_EXPECTED_STREAM = "Nats-Expected-Stream"
_NO_RESPONDERS = "503"
_PRUNE_AT = 1 << 16


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Reply(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    domain: str | None = None
    duplicate: bool = False
    error: _ApiError | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)


class FastAcks:
    """``publish_async`` / ``publish`` as the Publisher uses them, over one connection.

    ``publish_async`` returns a future resolved with the ``PubAck`` (or the error reply's
    ``APIError``; ``NoStreamResponseError`` when no stream takes the subject). A future the
    caller cancels (its deadline passed) is forgotten when its reply comes. ``publish`` is
    JetStream's own publish-and-wait, for retries.
    """

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._prefix = ""
        self._sub: Subscription | None = None
        self._futures: dict[str, asyncio.Future[PubAck]] = {}
        self._tokens = itertools.count(1)

    async def __aenter__(self) -> FastAcks:
        self._prefix = f"{self._nc.new_inbox()}."
        self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_reply)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Unsubscribe; futures still waiting are cancelled."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a closed connection: nothing left to unsubscribe
                log.debug("unsubscribe of the ack inbox failed: %s", exc)
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[PubAck]:
        """Send; the future resolves to the PubAck. ``wait_stall`` is unused (the caller
        bounds the window)."""
        if self._sub is None:
            raise RuntimeError("FastAcks used outside `async with`")
        token = str(next(self._tokens))
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        if len(self._futures) >= _PRUNE_AT:
            # Futures given up on (cancelled at their deadline) whose reply never came.
            self._futures = {k: f for k, f in self._futures.items() if not f.done()}
        self._futures[token] = future
        if stream is not None:
            headers = (
                {**headers, _EXPECTED_STREAM: stream} if headers else {_EXPECTED_STREAM: stream}
            )
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._futures.pop(token, None)
            raise
        return future

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,  # noqa: ASYNC109 - mirrors JetStreamContext.publish
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """JetStream's publish, waiting for the PubAck (used for retries)."""
        return await self._js.publish(
            subject, payload, timeout=timeout, stream=stream, headers=headers
        )

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            reply = _reply_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(APIError(description=f"undecodable PubAck: {exc}"))
            return
        if reply.error is not None:
            err = reply.error
            future.set_exception(
                APIError(code=err.code, err_code=err.err_code, description=err.description)
            )
            return
        future.set_result(
            PubAck(
                stream=reply.stream, seq=reply.seq, domain=reply.domain, duplicate=reply.duplicate
            )
        )
