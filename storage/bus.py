"""Event bus: per-channel streams with live delivery, in memory or across nodes via Redis.

Later features carry push events ("new message for user 42") and WebRTC signaling over it.
A *channel* is a name such as ``"user:42"`` or ``"room:7f3a"``. Publishing appends the payload
to the channel's *stream* (bounded history) and notifies live subscribers. Each event gets an
*offset*: opaque, strictly increasing per channel, and accepted back by :meth:`read_from`.

Code above this module cannot tell the in-memory bus (one process) from the Redis bus (several
nodes): both implement :class:`EventBus` and pass the same contract tests.

Gap-free reconnection
---------------------
A client that reconnects knows the offset of the last event it handled. Reading the history
and *then* subscribing loses whatever is published in between; so do it the other way round:

1. subscribe (from then on every new event is buffered for us);
2. ``read_from(channel, last_offset)`` page by page, handling each event;
3. handle the live events, skipping those whose offset is not above the last one handled
   (they were already in the history read at step 2).

:func:`resume` does exactly that. If it raises :class:`OffsetExpired`, the offset is older than
the retained history: the client must reload its state in full, then resume from the latest
offset.

Slow subscribers
----------------
Every subscription buffers at most ``subscriber_queue`` events. A publisher never waits for
subscribers: when a buffer is full the subscription is *dropped*. Its iterator first yields the
events it already buffered, then raises :class:`SubscriptionOverflow`; the client resumes from
the last offset it handled (:func:`resume` does so by itself). Dropping the oldest events
instead would open silent gaps, which is why both implementations drop the subscriber.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from storage.errors import BusError
from storage.errors import InvalidOffset as InvalidOffset  # re-exported for bus users
from storage.errors import OffsetExpired as OffsetExpired
from storage.errors import SubscriptionOverflow as SubscriptionOverflow

DEFAULT_MAX_LEN = 10_000
"""Events retained per channel stream, by default."""

DEFAULT_SUBSCRIBER_QUEUE = 1_000
"""Events a subscription buffers before it is dropped as too slow, by default."""

# Offsets look like Redis stream IDs, "<milliseconds>-<sequence>", in both implementations,
# so that the in-memory bus orders them the same way and survives a restart (see InMemoryBus).
_OFFSET = re.compile(r"(\d{1,20})-(\d{1,20})")


@dataclass(frozen=True)
class BusEvent:
    """One event of a channel's stream."""

    channel: str
    offset: str
    """Opaque, strictly increasing per channel; can be passed back to ``read_from``."""
    payload: bytes


def offset_order(offset: str) -> tuple[int, int]:
    """Sort key of an offset: ``a`` came before ``b`` on a channel iff key(a) < key(b).

    Raises :class:`InvalidOffset` for anything the bus did not issue.
    """
    match = _OFFSET.fullmatch(offset) if isinstance(offset, str) else None
    if match is None:
        raise InvalidOffset("malformed event offset")
    return int(match[1]), int(match[2])


def is_expired(after: str, first_retained: str | None) -> bool:
    """Whether events after ``after`` may be missing from a stream starting at ``first_retained``.

    Trimming removes the oldest events, so the history is complete after ``after`` when
    ``after`` is not older than the first retained event. The check is conservative at the
    edge (``after`` being exactly the last trimmed event is reported expired) because neither
    implementation remembers trimmed offsets. An offset for a stream that holds nothing (for
    instance issued before an in-memory bus or a Redis without persistence restarted) is
    expired too: the events it followed are gone.
    """
    if first_retained is None:
        return True
    return offset_order(after) < offset_order(first_retained)


class _Hub(Protocol):
    """What a bus implementation provides to route live events to a :class:`Subscription`."""

    async def _attach(self, subscription: Subscription) -> None: ...

    async def _detach(self, subscription: Subscription) -> None: ...


class Subscription:
    """Live events of one or more channels, from the moment ``async with`` is entered.

    ::

        async with bus.subscribe("user:42", "team:7") as subscription:
            async for event in subscription:
                ...

    Iteration ends when the bus is closed or the ``async with`` block exits. It raises
    :class:`SubscriptionOverflow` (after the buffered events) when the subscriber was too slow,
    and :class:`~storage.errors.BusError` when the bus lost its connection: in both cases
    follow up with :func:`resume` from the last offset handled.
    """

    def __init__(self, hub: _Hub, channels: tuple[str, ...], capacity: int) -> None:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        for channel in channels:
            _check_channel(channel)
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(channels))
        self._hub = hub
        self._capacity = capacity
        self._buffer: deque[BusEvent] = deque()
        self._wakeup = asyncio.Event()
        self._entered = False
        self._accepting = False
        self._error: BusError | None = None

    async def __aenter__(self) -> Subscription:
        if self._entered:
            raise RuntimeError("a Subscription can be entered only once")
        self._entered = True
        self._accepting = True
        try:
            await self._hub._attach(self)
        except BaseException:
            self._accepting = False
            await self._hub._detach(self)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end(None)
        self._buffer.clear()
        await self._hub._detach(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusEvent:
        if not self._entered:
            raise RuntimeError("enter the subscription with 'async with' before iterating")
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if not self._accepting:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    # Called by the bus implementations only.

    def _deliver(self, event: BusEvent) -> None:
        """Buffer ``event``; drop the subscription if its buffer is full (never block)."""
        if not self._accepting:
            return
        if len(self._buffer) >= self._capacity:
            self._end(
                SubscriptionOverflow(
                    f"subscriber dropped: more than {self._capacity} events waiting on "
                    f"{event.channel!r}; resume from the last offset handled"
                )
            )
            return
        self._buffer.append(event)
        self._wakeup.set()

    def _end(self, error: BusError | None) -> None:
        """Stop accepting events; iteration ends (or raises ``error``) once the buffer is empty."""
        if not self._accepting:
            return
        self._accepting = False
        self._error = error
        self._wakeup.set()


class EventBus(Protocol):
    """Per-channel event streams with live delivery. See the module docstring."""

    async def publish(self, channel: str, payload: bytes) -> str:
        """Append ``payload`` to the channel's stream, notify live subscribers; return its offset.

        Never waits for subscribers. Raises :class:`~storage.errors.BusError` when the event
        could not be stored (it was then delivered to nobody).
        """
        ...

    def subscribe(self, *channels: str) -> Subscription:
        """Live events of ``channels`` from the moment the returned subscription is entered."""
        ...

    async def read_from(
        self, channel: str, after: str | None, *, limit: int = 100
    ) -> list[BusEvent]:
        """Up to ``limit`` retained events strictly after offset ``after``, oldest first.

        ``after=None`` starts at the oldest retained event. Raises :class:`OffsetExpired`
        when events following ``after`` are no longer retained, :class:`InvalidOffset` when
        ``after`` is malformed.
        """
        ...

    async def close(self) -> None:
        """Release connections; every open subscription's iteration ends."""
        ...


async def resume(
    bus: EventBus, channel: str, after: str | None, *, page: int = 100
) -> AsyncGenerator[BusEvent, None]:
    """Every event of ``channel`` after offset ``after``, then live events, without gap or repeat.

    Subscribes first, replays the history, then yields live events whose offset is above the
    last one yielded (the gap-free pattern of the module docstring). When the subscriber is
    dropped for being slow it starts over from the last event yielded, transparently.
    It ends when the bus is closed; raises :class:`OffsetExpired` if ``after`` (or, during a
    long replay, the replay position) falls out of the retained history, and
    :class:`~storage.errors.BusError` if the bus loses its connection. ``after=None`` replays
    the whole retained history first.

    Close it deterministically: ``async with contextlib.aclosing(resume(...)) as events:``.
    """
    if page < 1:
        raise ValueError("page must be at least 1")
    last = after
    while True:
        try:
            async with bus.subscribe(channel) as live:
                while True:
                    history = await bus.read_from(channel, last, limit=page)
                    for event in history:
                        last = event.offset
                        yield event
                    if len(history) < page:
                        break
                async for event in live:
                    if last is not None and offset_order(event.offset) <= offset_order(last):
                        continue  # already replayed from the history
                    last = event.offset
                    yield event
                return
        except SubscriptionOverflow:
            continue  # dropped for being slow: replay from the last event yielded


def _check_channel(channel: str) -> None:
    if not isinstance(channel, str) or not channel:
        raise ValueError("a channel name is a non-empty string")


def _check_limits(max_len: int, subscriber_queue: int) -> None:
    if max_len < 1:
        raise ValueError("max_len must be at least 1")
    if subscriber_queue < 1:
        raise ValueError("subscriber_queue must be at least 1")


@dataclass
class _Stream:
    events: deque[BusEvent] = field(default_factory=deque)
    last: tuple[int, int] = (0, 0)


class InMemoryBus:
    """:class:`EventBus` for a single process: asyncio only, no I/O.

    Offsets are ``<wall-clock ms>-<sequence>`` like Redis stream IDs (monotonic even if the
    clock steps back), so an offset kept by a client across a restart of the process is older
    than anything the new process holds, hence reported as :class:`OffsetExpired` instead of
    silently skipping the events the client never saw.
    """

    def __init__(
        self,
        *,
        max_len: int = DEFAULT_MAX_LEN,
        subscriber_queue: int = DEFAULT_SUBSCRIBER_QUEUE,
    ) -> None:
        _check_limits(max_len, subscriber_queue)
        self._max_len = max_len
        self._subscriber_queue = subscriber_queue
        self._streams: dict[str, _Stream] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._closed = False

    async def publish(self, channel: str, payload: bytes) -> str:
        """See :meth:`EventBus.publish`."""
        self._check_open()
        _check_channel(channel)
        if not isinstance(payload, bytes):
            raise TypeError("payload must be bytes")
        stream = self._streams.setdefault(channel, _Stream())
        now_ms = time.time_ns() // 1_000_000
        ms, seq = stream.last
        stream.last = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        event = BusEvent(channel, f"{stream.last[0]}-{stream.last[1]}", payload)
        stream.events.append(event)
        if len(stream.events) > self._max_len:
            stream.events.popleft()
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription._deliver(event)
        return event.offset

    def subscribe(self, *channels: str) -> Subscription:
        """See :meth:`EventBus.subscribe`."""
        return Subscription(self, channels, self._subscriber_queue)

    async def read_from(
        self, channel: str, after: str | None, *, limit: int = 100
    ) -> list[BusEvent]:
        """See :meth:`EventBus.read_from`."""
        self._check_open()
        _check_channel(channel)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        stream = self._streams.get(channel)
        events = stream.events if stream is not None else deque[BusEvent]()
        start = 0
        if after is not None:
            key = offset_order(after)
            if is_expired(after, events[0].offset if events else None):
                raise OffsetExpired(f"offset too old for the retained history of {channel!r}")
            start = bisect.bisect_right(events, key, key=lambda event: offset_order(event.offset))
        return [events[i] for i in range(start, min(start + limit, len(events)))]

    async def close(self) -> None:
        """See :meth:`EventBus.close`."""
        self._closed = True
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription._end(None)
        self._subscribers.clear()

    async def _attach(self, subscription: Subscription) -> None:
        self._check_open()
        for channel in subscription.channels:
            self._subscribers.setdefault(channel, set()).add(subscription)

    async def _detach(self, subscription: Subscription) -> None:
        for channel in subscription.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[channel]

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("the event bus is closed")
