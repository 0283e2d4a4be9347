"""Redis implementation of :class:`storage.bus.EventBus`, shared by every node of a deployment.

History: one Redis stream per channel, key ``<prefix>stream:<channel>``, appended with
``XADD ... MAXLEN ~ max_len`` (approximate trimming: whole radix-tree nodes are dropped, so a
stream holds *at least* ``max_len`` events and a little more) and read with ``XRANGE`` from an
exclusive start ``(<offset>`` (Redis >= 6.2). Offsets are the stream entry IDs.

Live delivery: pub/sub on ``<prefix>live:<channel>``, each message being
``<offset> "\\n" <payload>``. Chosen over ``XREAD BLOCK`` because a node holds thousands of
subscribers (one per WebSocket client): ``XREAD BLOCK`` needs one connection per blocked
reader, whereas one pub/sub connection per node multiplexes every channel and Redis pushes to
it. Pub/sub is fire-and-forget, which is acceptable because the stream is the record: a
subscriber that may have missed anything (connection lost, dropped as too slow) is told so and
resumes from the stream (:func:`storage.bus.resume`). The pub/sub connection is never silently
re-established, since events published meanwhile would be lost without notice.

Publishing runs ``XADD`` and ``PUBLISH`` in one Lua script: atomically, so no event is seen live
before it can be read from the stream, and live order equals stream order even when several
nodes publish on the same channel.

Every Redis round trip is bounded by ``timeout`` and failures raise
:class:`~storage.errors.BusError`; the pub/sub connection is pinged when idle for
``ping_interval`` so a silently dead peer is noticed too. Commands are not retried: a publish
that timed out may or may not have been stored, and only the caller can decide what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.bus import (
    DEFAULT_MAX_LEN,
    DEFAULT_SUBSCRIBER_QUEUE,
    BusEvent,
    OffsetExpired,
    Subscription,
    _check_channel,
    _check_limits,
    is_expired,
    offset_order,
)
from storage.errors import BusError

_PUBLISH = r"""
local offset = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', ARGV[2])
redis.call('PUBLISH', ARGV[3], offset .. '\n' .. ARGV[2])
return offset
"""
_PAYLOAD_FIELD = b"p"


class RedisBus:
    """:class:`~storage.bus.EventBus` over Redis (streams + pub/sub), see the module docstring.

    ``url`` is a ``redis://`` or ``rediss://`` URL; ``prefix`` namespaces every key and pub/sub
    channel, so several deployments (or test runs) can share one Redis. Nothing connects before
    the first call.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "relais:",
        max_len: int = DEFAULT_MAX_LEN,
        subscriber_queue: int = DEFAULT_SUBSCRIBER_QUEUE,
        timeout: float = 5.0,
        ping_interval: float = 15.0,
    ) -> None:
        _check_limits(max_len, subscriber_queue)
        if timeout <= 0 or ping_interval <= 0:
            raise ValueError("timeout and ping_interval must be positive")
        self._url = url
        self._prefix = prefix
        self._max_len = max_len
        self._subscriber_queue = subscriber_queue
        self._timeout = timeout
        self._ping_interval = ping_interval
        # No retries: a retried XADD could store an event twice; callers see a BusError instead.
        self._redis: Redis[bytes] = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._link: _LiveLink | None = None
        self._link_lock = asyncio.Lock()
        self._closed = False

    async def publish(self, channel: str, payload: bytes) -> str:
        """See :meth:`storage.bus.EventBus.publish`."""
        _check_channel(channel)
        if not isinstance(payload, bytes):
            raise TypeError("payload must be bytes")
        keys = [self._key(channel)]
        args: list[bytes | str | int] = [self._max_len, payload, self._live_channel(channel)]
        async with self._guard("publish"):
            offset: bytes = await self._publish_script(keys=keys, args=args)
        return offset.decode("ascii")

    def subscribe(self, *channels: str) -> Subscription:
        """See :meth:`storage.bus.EventBus.subscribe`."""
        return Subscription(self, channels, self._subscriber_queue)

    async def read_from(
        self, channel: str, after: str | None, *, limit: int = 100
    ) -> list[BusEvent]:
        """See :meth:`storage.bus.EventBus.read_from`."""
        _check_channel(channel)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = "-" if after is None else f"({after}"
        if after is not None:
            offset_order(after)  # refuse a malformed offset before it reaches Redis
        key = self._key(channel)
        async with self._guard("read"), self._redis.pipeline(transaction=True) as pipe:
            # One MULTI/EXEC: the first retained entry is read atomically with the page, so a
            # concurrent trim cannot hide a gap.
            pipe.xrange(key, start, "+", count=limit)
            pipe.xrange(key, "-", "+", count=1)
            entries, first = await pipe.execute()
        if after is not None and is_expired(after, first[0][0].decode() if first else None):
            raise OffsetExpired(f"offset too old for the retained history of {channel!r}")
        return [
            BusEvent(channel, raw_id.decode(), fields[_PAYLOAD_FIELD]) for raw_id, fields in entries
        ]

    async def close(self) -> None:
        """See :meth:`storage.bus.EventBus.close`."""
        self._closed = True
        if self._link is not None:
            await self._link.shutdown()
            self._link = None
        # redis-py >= 5 names it aclose(); older releases (and the stubs) only know close().
        closer: Callable[[], Awaitable[None]] = getattr(self._redis, "aclose", self._redis.close)
        await closer()

    async def _attach(self, subscription: Subscription) -> None:
        self._check_open()
        async with self._link_lock:
            if self._link is None or self._link.error is not None:
                self._link = await _LiveLink.open(self)
            link = self._link
        await link.add(subscription)

    async def _detach(self, subscription: Subscription) -> None:
        if self._link is not None:
            await self._link.remove(subscription)

    def _key(self, channel: str) -> str:
        return f"{self._prefix}stream:{channel}"

    def _live_channel(self, channel: str) -> str:
        return f"{self._prefix}live:{channel}"

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("the event bus is closed")

    @contextlib.asynccontextmanager
    async def _guard(self, action: str) -> AsyncIterator[None]:
        """Bound one Redis round trip by the timeout; turn Redis failures into BusError."""
        self._check_open()
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (TimeoutError, RedisTimeoutError) as exc:  # before OSError, TimeoutError's base
            raise BusError(f"event bus: Redis {action} timed out after {self._timeout:g}s") from exc
        except (RedisError, OSError) as exc:
            raise BusError(f"event bus: Redis {action} failed: {exc}") from exc


class _LiveLink:
    """One pub/sub connection multiplexing every channel this node's subscribers follow.

    Once it fails (``error`` set) it stays dead: its subscriptions end with a BusError and the
    bus opens a new link for later subscriptions.
    """

    def __init__(self, bus: RedisBus, connection: AbstractConnection) -> None:
        self._bus = bus
        self._connection = connection
        self._subscribers: dict[str, set[Subscription]] = {}
        # Channels whose last command sent was SUBSCRIBE -> resolved when Redis confirms it.
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        # Confirmations still expected per channel, in order (None: for an UNSUBSCRIBE).
        self._pending: dict[str, deque[asyncio.Future[None] | None]] = {}
        self._send_lock = asyncio.Lock()
        self.error: BusError | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, bus: RedisBus) -> _LiveLink:
        # A connection of our own, in RESP2 whatever the URL or redis-py's default says: pub/sub
        # messages are then ordinary replies, whereas RESP3 pushes would go to redis-py's push
        # handler instead of read_response().
        options: dict[str, Any] = {**parse_url(bus._url), "protocol": 2}
        connection_class = options.pop("connection_class", Connection)
        connection: AbstractConnection = connection_class(
            **options,
            socket_timeout=bus._timeout,
            socket_connect_timeout=bus._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        async with bus._guard("connect"):
            await connection.connect()
        link = cls(bus, connection)
        link._reader = asyncio.create_task(link._read_loop(), name="event-bus-pubsub")
        return link

    async def add(self, subscription: Subscription) -> None:
        """Route the channels to ``subscription``; return once Redis confirmed SUBSCRIBE."""
        for channel in subscription.channels:
            self._subscribers.setdefault(channel, set()).add(subscription)
        loop = asyncio.get_running_loop()
        # Decide under the send lock, so commands reach Redis in the order of our decisions.
        async with self._send_lock:
            new = [ch for ch in subscription.channels if ch not in self._subscribed]
            for channel in new:
                confirmed = self._subscribed[channel] = loop.create_future()
                self._pending.setdefault(channel, deque()).append(confirmed)
            if new:
                await self._send("SUBSCRIBE", *map(self._bus._live_channel, new))
            waits = [self._subscribed[ch] for ch in subscription.channels]
        try:
            async with asyncio.timeout(self._bus._timeout):
                await asyncio.gather(*map(asyncio.shield, waits))
        except TimeoutError:
            self._fail(f"Redis did not confirm SUBSCRIBE within {self._bus._timeout:g}s")
        if self.error is not None:
            raise BusError(str(self.error))

    async def remove(self, subscription: Subscription) -> None:
        """Stop routing to ``subscription``; UNSUBSCRIBE channels nobody follows any more."""
        for channel in subscription.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None and subscription in subscribers:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[channel]
        if self.error is not None:
            return
        async with self._send_lock:
            gone = [
                ch
                for ch in subscription.channels
                if ch in self._subscribed and ch not in self._subscribers
            ]
            for channel in gone:
                del self._subscribed[channel]
                self._pending.setdefault(channel, deque()).append(None)
            if gone:
                with contextlib.suppress(BusError):  # a dead link has nothing to unsubscribe
                    await self._send("UNSUBSCRIBE", *map(self._bus._live_channel, gone))

    async def shutdown(self) -> None:
        """Close the connection; the subscriptions' iterations end normally."""
        self._stop(BusError("event bus: closed"), closing=True)
        if self._reader is not None:
            await asyncio.wait([self._reader])

    async def _send(self, *args: Any) -> None:
        """Send one command; the caller holds ``_send_lock``."""
        if self.error is not None:
            raise BusError(str(self.error))
        # redis-py would transparently reconnect a dropped connection, losing subscriptions.
        if not self._connection.is_connected:
            self._fail("lost the Redis pub/sub connection")
            raise BusError(str(self.error))
        try:
            async with asyncio.timeout(self._bus._timeout):
                await self._connection.send_command(*args, check_health=False)
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            self._fail(f"could not send to Redis pub/sub: {exc!r}")
            raise BusError(str(self.error)) from exc

    async def _read_loop(self) -> None:
        pinged = False
        try:
            while True:
                wait = self._bus._timeout if pinged else self._bus._ping_interval
                # With an explicit timeout redis-py returns None when nothing arrived.
                reply = await self._connection.read_response(timeout=wait)
                if reply is None:
                    if pinged:
                        self._fail(f"Redis did not answer PING within {wait:g}s")
                        return
                    async with self._send_lock:
                        await self._send("PING")
                    pinged = True
                    continue
                pinged = False
                if isinstance(reply, list):
                    self._dispatch(reply)
        except BusError:
            pass  # _send already failed the link
        except Exception as exc:  # connection lost, or anything unexpected: never hang silently
            self._fail(f"lost the Redis pub/sub connection: {exc}")
        finally:
            await self._connection.disconnect(nowait=True)

    def _dispatch(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind not in (b"message", b"subscribe", b"unsubscribe"):
            return  # e.g. the answer to our PING
        channel = reply[1].decode().removeprefix(self._bus._live_channel(""))
        if kind == b"message":
            offset, _, payload = reply[2].partition(b"\n")
            event = BusEvent(channel, offset.decode("ascii"), payload)
            for subscription in tuple(self._subscribers.get(channel, ())):
                subscription._deliver(event)
        elif kind in (b"subscribe", b"unsubscribe"):
            pending = self._pending.get(channel)
            if pending:
                confirmed = pending.popleft()
                if not pending:
                    del self._pending[channel]
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    def _fail(self, message: str) -> None:
        self._stop(BusError(f"event bus: {message}"), closing=False)

    def _stop(self, error: BusError, *, closing: bool) -> None:
        """Mark the link dead for good and end its subscriptions (with a BusError on failure)."""
        if self.error is not None:
            return
        self.error = error
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription._end(None if closing else BusError(str(error)))
        self._subscribers.clear()
        for pending in self._pending.values():
            for confirmed in pending:
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)  # waiters then see self.error
        self._pending.clear()
        self._subscribed.clear()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
