"""Contract of the event bus, run against both implementations, plus Redis-only behaviour.

Every test in the first part runs twice: on :class:`InMemoryBus` and on :class:`RedisBus`
against a real ``redis-server`` (session fixture ``redis_url``), each test under its own key
prefix. Tests that crash or freeze Redis start their own server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterator
from typing import Protocol, TypeVar

import pytest
from redis.asyncio import Redis

from storage.bus import (
    BusEvent,
    EventBus,
    InMemoryBus,
    InvalidOffset,
    OffsetExpired,
    Subscription,
    SubscriptionOverflow,
    offset_order,
    resume,
)
from storage.errors import BusError
from storage.redis_bus import RedisBus
from tests.harness import RedisServer, free_port, redis_server

T = TypeVar("T")
WAIT = 5.0  # generous upper bound for anything that should happen at once


class BusFactory(Protocol):
    def __call__(self, *, max_len: int = ..., subscriber_queue: int = ...) -> EventBus: ...


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Creates buses of the parametrized kind; Redis ones share one prefix (one "cluster")."""
    created: list[EventBus] = []
    prefix = f"test-{uuid.uuid4().hex}:"
    redis_url: str | None = None
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")

    def make(*, max_len: int = 10_000, subscriber_queue: int = 1_000) -> EventBus:
        bus: EventBus
        if redis_url is None:
            bus = InMemoryBus(max_len=max_len, subscriber_queue=subscriber_queue)
        else:
            bus = RedisBus(
                redis_url, prefix=prefix, max_len=max_len, subscriber_queue=subscriber_queue
            )
        created.append(bus)
        return bus

    yield make
    for bus in created:
        await bus.close()


@pytest.fixture
def bus(make_bus: BusFactory) -> EventBus:
    return make_bus()


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


async def take(events: AsyncIterable[BusEvent], count: int) -> list[BusEvent]:
    """The next ``count`` events, failing the test if they do not come promptly."""

    async def collect() -> list[BusEvent]:
        taken: list[BusEvent] = []
        if count == 0:
            return taken
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                break
        return taken

    return await within(collect())


def payloads(events: list[BusEvent]) -> list[bytes]:
    return [event.payload for event in events]


# --- publish / subscribe ------------------------------------------------------------------


async def test_subscriber_receives_events_in_publish_order(bus: EventBus) -> None:
    async with bus.subscribe("user:1") as subscription:
        offsets = [await bus.publish("user:1", b"m%d" % i) for i in range(20)]
        received = await take(subscription, 20)
    assert payloads(received) == [b"m%d" % i for i in range(20)]
    assert [event.offset for event in received] == offsets
    assert {event.channel for event in received} == {"user:1"}


async def test_subscription_only_sees_events_published_after_entering(bus: EventBus) -> None:
    await bus.publish("user:1", b"before")
    async with bus.subscribe("user:1") as subscription:
        await bus.publish("user:1", b"after")
        assert payloads(await take(subscription, 1)) == [b"after"]


async def test_subscription_follows_several_channels_and_only_those(bus: EventBus) -> None:
    async with bus.subscribe("user:1", "team:7") as subscription:
        await bus.publish("user:1", b"a1")
        await bus.publish("user:2", b"not mine")
        await bus.publish("team:7", b"t1")
        await bus.publish("user:1", b"a2")
        received = await take(subscription, 3)
    assert [(e.channel, e.payload) for e in received] == [
        ("user:1", b"a1"),
        ("team:7", b"t1"),
        ("user:1", b"a2"),
    ]


async def test_every_subscriber_gets_every_event(bus: EventBus) -> None:
    async with (
        bus.subscribe("room:1") as first,
        bus.subscribe("room:1") as second,
        bus.subscribe("room:1", "room:2") as third,
    ):
        await bus.publish("room:1", b"offer")
        await bus.publish("room:2", b"other room")
        assert payloads(await take(first, 1)) == [b"offer"]
        assert payloads(await take(second, 1)) == [b"offer"]
        assert payloads(await take(third, 2)) == [b"offer", b"other room"]
        # One subscriber leaving must not cut the channel off for the others.
        async with bus.subscribe("room:1") as leaving:
            pass
        assert [event async for event in leaving] == []
        await bus.publish("room:1", b"answer")
        assert payloads(await take(first, 1)) == [b"answer"]
        assert payloads(await take(third, 1)) == [b"answer"]


async def test_channel_can_be_left_and_followed_again_at_once(bus: EventBus) -> None:
    for round_ in range(3):
        first = bus.subscribe("user:9")
        await first.__aenter__()
        # Leave and join concurrently: the joining subscription must end up live.
        second = bus.subscribe("user:9")
        await within(asyncio.gather(first.__aexit__(None, None, None), second.__aenter__()))
        try:
            await bus.publish("user:9", b"round %d" % round_)
            assert payloads(await take(second, 1)) == [b"round %d" % round_]
        finally:
            await second.__aexit__(None, None, None)


async def test_iteration_ends_when_the_subscription_is_left(bus: EventBus) -> None:
    async with bus.subscribe("user:1") as subscription:
        await bus.publish("user:1", b"x")
        await take(subscription, 1)
    await bus.publish("user:1", b"after leaving")
    assert [event async for event in subscription] == []


async def test_subscription_must_be_entered_before_use(bus: EventBus) -> None:
    subscription = bus.subscribe("user:1")
    with pytest.raises(RuntimeError):
        await anext(subscription)
    with pytest.raises(ValueError, match="at least one channel"):
        bus.subscribe()
    with pytest.raises(ValueError, match="non-empty"):
        bus.subscribe("")


async def test_payloads_are_binary_safe(bus: EventBus) -> None:
    samples = [b"", bytes(range(256)), b"\n\n\x00\r\n", b"-1\n", os.urandom(64 * 1024)]
    async with bus.subscribe("blobby") as subscription:
        offsets = [await bus.publish("blobby", sample) for sample in samples]
        received = await take(subscription, len(samples))
    assert payloads(received) == samples
    assert [event.offset for event in received] == offsets
    assert payloads(await bus.read_from("blobby", None)) == samples


# --- offsets and history -----------------------------------------------------------------


async def test_offsets_strictly_increase_per_channel(bus: EventBus) -> None:
    offsets = [await bus.publish("c", b"%d" % i) for i in range(50)]
    await bus.publish("d", b"another channel in between")
    offsets += [await bus.publish("c", b"more")]
    keys = [offset_order(offset) for offset in offsets]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert [event.offset for event in await bus.read_from("c", None)] == offsets


async def test_read_from_is_exclusive_and_paged(bus: EventBus) -> None:
    offsets = [await bus.publish("c", b"%d" % i) for i in range(5)]
    assert payloads(await bus.read_from("c", None)) == [b"0", b"1", b"2", b"3", b"4"]
    assert payloads(await bus.read_from("c", offsets[1])) == [b"2", b"3", b"4"]
    assert await bus.read_from("c", offsets[4]) == []
    assert payloads(await bus.read_from("c", None, limit=2)) == [b"0", b"1"]
    assert payloads(await bus.read_from("c", offsets[1], limit=2)) == [b"2", b"3"]
    assert await bus.read_from("never-used", None) == []
    events = await bus.read_from("c", offsets[3])
    assert events == [BusEvent("c", offsets[4], b"4")]


async def test_read_from_refuses_malformed_offsets(bus: EventBus) -> None:
    await bus.publish("c", b"x")
    for forged in ["", "abc", "1-2-3", "-1-0", "1", "1-", "0x1-0", "1-0; DROP"]:
        with pytest.raises(InvalidOffset) as caught:
            await bus.read_from("c", forged)
        assert caught.value.http_status == 400
    with pytest.raises(ValueError, match="limit"):
        await bus.read_from("c", None, limit=0)


async def test_offset_unknown_to_the_channel_history_is_expired(bus: EventBus) -> None:
    # An offset for a channel with no history (e.g. issued before the bus restarted).
    with pytest.raises(OffsetExpired):
        await bus.read_from("fresh", "1-0")
    await bus.publish("fresh", b"new")
    with pytest.raises(OffsetExpired):
        await bus.read_from("fresh", "1-0")


async def test_history_is_trimmed_and_too_old_offsets_are_detected(
    make_bus: BusFactory,
) -> None:
    bus = make_bus(max_len=10)
    offsets = [await bus.publish("c", b"%d" % i) for i in range(250)]
    retained = await bus.read_from("c", None, limit=1_000)
    # Redis trims approximately (whole stream nodes): at least max_len, never everything.
    assert 10 <= len(retained) < 250
    assert [event.offset for event in retained] == offsets[-len(retained) :]
    with pytest.raises(OffsetExpired) as caught:
        await bus.read_from("c", offsets[0])
    assert caught.value.http_status == 410
    assert caught.value.code == "resync_required"
    # Conservative at the edge: the newest trimmed offset is reported expired too.
    with pytest.raises(OffsetExpired):
        await bus.read_from("c", offsets[-len(retained) - 1])
    assert await bus.read_from("c", retained[0].offset, limit=1_000) == retained[1:]
    assert await bus.read_from("c", offsets[-1]) == []


# --- resuming without gap ----------------------------------------------------------------


async def test_resume_replays_history_then_follows_live(bus: EventBus) -> None:
    offsets = [await bus.publish("user:1", b"old %d" % i) for i in range(5)]
    async with contextlib.aclosing(resume(bus, "user:1", offsets[1], page=2)) as events:
        replayed = await take(events, 3)
        await bus.publish("user:1", b"new")
        live = await take(events, 1)
    assert payloads(replayed + live) == [b"old 2", b"old 3", b"old 4", b"new"]


async def test_resume_from_none_replays_all_retained_history(bus: EventBus) -> None:
    for i in range(3):
        await bus.publish("user:1", b"%d" % i)
    async with contextlib.aclosing(resume(bus, "user:1", None)) as events:
        assert payloads(await take(events, 3)) == [b"0", b"1", b"2"]


class PublishAroundReads:
    """A real bus on which another node publishes right before and right after each read.

    This forces the two races :func:`resume` must handle: an event both in the history and
    live (published before the read), and one only live (published after the read).
    """

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def publish(self, channel: str, payload: bytes) -> str:
        return await self.bus.publish(channel, payload)

    def subscribe(self, *channels: str) -> Subscription:
        return self.bus.subscribe(*channels)

    async def read_from(
        self, channel: str, after: str | None, *, limit: int = 100
    ) -> list[BusEvent]:
        await self.bus.publish(channel, b"during read")
        events = await self.bus.read_from(channel, after, limit=limit)
        await self.bus.publish(channel, b"after read")
        return events

    async def close(self) -> None:
        await self.bus.close()


async def test_resume_has_no_gap_and_no_duplicate_around_the_read(bus: EventBus) -> None:
    first = await bus.publish("user:1", b"seen")
    await bus.publish("user:1", b"missed")
    racy = PublishAroundReads(bus)
    async with contextlib.aclosing(resume(racy, "user:1", first)) as events:
        received = await take(events, 3)
        await bus.publish("user:1", b"later")
        received += await take(events, 1)
    assert payloads(received) == [b"missed", b"during read", b"after read", b"later"]


async def test_resume_without_gap_under_concurrent_publishing(bus: EventBus) -> None:
    total = 300
    offsets: list[str] = []
    halfway = asyncio.Event()

    async def publisher() -> None:
        for i in range(total):
            offsets.append(await bus.publish("room:1", b"%d" % i))
            if i == 40:
                halfway.set()
            await asyncio.sleep(0)

    publishing = asyncio.create_task(publisher())
    await within(halfway.wait())
    start = len(offsets) - 20
    async with contextlib.aclosing(resume(bus, "room:1", offsets[start - 1], page=7)) as events:
        received = await take(events, total - start)
    await within(publishing)
    assert [event.offset for event in received] == offsets[start:]
    assert payloads(received) == [b"%d" % i for i in range(start, total)]


async def test_resume_recovers_by_itself_when_dropped_as_slow(make_bus: BusFactory) -> None:
    bus = make_bus(subscriber_queue=4)
    await bus.publish("user:1", b"0")
    async with contextlib.aclosing(resume(bus, "user:1", None)) as events:
        received = await take(events, 1)
        # While the consumer is busy, far more than 4 events arrive: its live buffer overflows.
        for i in range(1, 21):
            await bus.publish("user:1", b"%d" % i)
        await asyncio.sleep(0.1)
        received += await take(events, 20)
        await bus.publish("user:1", b"21")
        received += await take(events, 1)
    assert payloads(received) == [b"%d" % i for i in range(22)]


async def test_resume_from_a_too_old_offset_raises_offset_expired(make_bus: BusFactory) -> None:
    bus = make_bus(max_len=10)
    offsets = [await bus.publish("user:1", b"%d" % i) for i in range(250)]
    async with contextlib.aclosing(resume(bus, "user:1", offsets[0])) as events:
        with pytest.raises(OffsetExpired):
            await within(anext(events))


# --- slow subscribers and closing --------------------------------------------------------


async def test_slow_subscriber_is_dropped_without_blocking_anyone(make_bus: BusFactory) -> None:
    bus = make_bus(subscriber_queue=5)
    async with bus.subscribe("room:1") as slow, bus.subscribe("room:1") as fast:
        offsets = []
        for i in range(20):
            offsets.append(await within(bus.publish("room:1", b"%d" % i), 1.0))
            assert payloads(await take(fast, 1)) == [b"%d" % i]
        # The slow one gets what it buffered, then learns it was dropped.
        kept = await take(slow, 5)
        assert payloads(kept) == [b"0", b"1", b"2", b"3", b"4"]
        with pytest.raises(SubscriptionOverflow) as caught:
            await within(anext(slow))
        assert caught.value.ws_close == 1013
        assert [event async for event in slow] == []
        # ...and catches up from the history, from its last offset.
        async with contextlib.aclosing(resume(bus, "room:1", kept[-1].offset)) as events:
            assert [e.offset for e in await take(events, 15)] == offsets[5:]


async def test_close_ends_iterators_and_refuses_further_use(bus: EventBus) -> None:
    subscription = bus.subscribe("user:1")
    await subscription.__aenter__()
    await bus.publish("user:1", b"handled")
    await take(subscription, 1)

    async def consume() -> list[BusEvent]:
        return [event async for event in subscription]

    consuming = asyncio.create_task(consume())
    await asyncio.sleep(0.01)  # the consumer now waits for the next event
    await within(bus.close())
    assert await within(consuming) == []
    await subscription.__aexit__(None, None, None)
    with pytest.raises(BusError, match="closed"):
        await bus.publish("user:1", b"x")
    with pytest.raises(BusError, match="closed"):
        await bus.read_from("user:1", None)
    with pytest.raises(BusError, match="closed"):
        async with bus.subscribe("user:1"):
            pass
    await bus.close()  # idempotent


# --- offsets (pure) ----------------------------------------------------------------------


def test_offset_order_parses_stream_ids() -> None:
    assert offset_order("1526985054069-0") == (1526985054069, 0)
    assert offset_order("0-12") < offset_order("1-0") < offset_order("1-1") < offset_order("2-0")
    assert offset_order("10-0") > offset_order("9-99")
    with pytest.raises(InvalidOffset):
        offset_order("1-0 ")


# --- Redis only --------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis for this test alone, since the test crashes or freezes it."""
    with redis_server() as server:
        yield server


@contextlib.asynccontextmanager
async def redis_bus(
    url: str, *, timeout: float, ping_interval: float = 15.0
) -> AsyncIterator[RedisBus]:
    prefix = f"test-{uuid.uuid4().hex}:"
    bus = RedisBus(url, prefix=prefix, timeout=timeout, ping_interval=ping_interval)
    try:
        yield bus
    finally:
        await bus.close()


async def test_two_nodes_on_one_redis_see_each_others_events(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    node_a, node_b = RedisBus(redis_url, prefix=prefix), RedisBus(redis_url, prefix=prefix)
    elsewhere = RedisBus(redis_url, prefix=f"other-{prefix}")
    try:
        async with node_b.subscribe("room:1") as on_b, elsewhere.subscribe("room:1") as isolated:
            published = []
            for i in range(10):  # both nodes publish on the same channel, interleaved
                node = node_a if i % 2 == 0 else node_b
                published.append(await node.publish("room:1", b"from %d" % i))
            received = await take(on_b, 10)
            history = await node_a.read_from("room:1", None)
            await elsewhere.publish("room:1", b"other deployment")
            assert payloads(await take(isolated, 1)) == [b"other deployment"]
        # Live order is the stream order, whichever node published.
        assert [event.offset for event in received] == published
        assert history == received
        assert payloads(await elsewhere.read_from("room:1", None)) == [b"other deployment"]
    finally:
        for bus in (node_a, node_b, elsewhere):
            await bus.close()


async def test_idle_redis_subscription_stays_alive(redis_url: str) -> None:
    # The link pings Redis when idle; a healthy Redis answers, so nothing is torn down.
    async with (
        redis_bus(redis_url, timeout=0.3, ping_interval=0.05) as bus,
        bus.subscribe("user:1") as subscription,
    ):
        await asyncio.sleep(0.5)
        await bus.publish("user:1", b"still here")
        assert payloads(await take(subscription, 1)) == [b"still here"]


async def test_redis_unsubscribes_channels_nobody_follows(redis_url: str) -> None:
    client: Redis[bytes] = Redis.from_url(redis_url)

    async def followers(*channels: str) -> list[int]:
        live = [f"{prefix}live:{channel}" for channel in channels]
        return [count for _, count in await client.pubsub_numsub(*live)]

    async def eventually(channels: tuple[str, ...], expected: list[int]) -> None:
        deadline = time.monotonic() + WAIT
        while await followers(*channels) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert await followers(*channels) == expected

    prefix = f"test-{uuid.uuid4().hex}:"
    bus = RedisBus(redis_url, prefix=prefix)
    try:
        async with bus.subscribe("a", "b"):
            async with bus.subscribe("b", "c"):
                # One pub/sub connection per node, whatever the number of subscriptions.
                await eventually(("a", "b", "c"), [1, 1, 1])
            await eventually(("a", "b", "c"), [1, 1, 0])
        await eventually(("a", "b", "c"), [0, 0, 0])
    finally:
        await bus.close()
        await getattr(client, "aclose", client.close)()  # aclose() since redis-py 5


async def test_redis_killed_midway_raises_bus_error_promptly(own_redis: RedisServer) -> None:
    async with (
        redis_bus(own_redis.url, timeout=1.0, ping_interval=0.5) as bus,
        bus.subscribe("user:1") as subscription,
    ):
        await bus.publish("user:1", b"before")
        await take(subscription, 1)
        own_redis.kill()
        started = time.monotonic()
        with pytest.raises(BusError, match="lost the Redis pub/sub connection"):
            await within(anext(subscription), 2.0)
        with pytest.raises(BusError, match="publish failed"):
            await within(bus.publish("user:1", b"after"), 2.0)
        with pytest.raises(BusError, match="read failed"):
            await within(bus.read_from("user:1", None), 2.0)
        with pytest.raises(BusError):
            async with bus.subscribe("user:2"):
                pass
        assert time.monotonic() - started < 2.0


async def test_bus_works_again_once_redis_is_back(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("redis-restart")
    with redis_server(directory) as server:
        port, url = server.port, server.url
        async with redis_bus(url, timeout=1.0) as bus:
            offset = await bus.publish("user:1", b"before the crash")
            server.kill()
            with pytest.raises(BusError):
                await bus.publish("user:1", b"lost")
            with redis_server(directory, port=port):
                async with bus.subscribe("user:1") as subscription:
                    await bus.publish("user:1", b"after restart")
                    assert payloads(await take(subscription, 1)) == [b"after restart"]
                # Redis kept nothing: the client's offset is expired, it must refresh.
                with pytest.raises(OffsetExpired):
                    await bus.read_from("user:1", offset)


async def test_frozen_redis_times_out_instead_of_hanging(own_redis: RedisServer) -> None:
    async with redis_bus(own_redis.url, timeout=0.3, ping_interval=0.2) as bus:
        async with bus.subscribe("user:1") as subscription:
            own_redis.freeze()
            started = time.monotonic()
            with pytest.raises(BusError, match="timed out"):
                await within(bus.publish("user:1", b"x"), 2.0)
            with pytest.raises(BusError, match="did not answer PING"):
                await within(anext(subscription), 2.0)
            assert time.monotonic() - started < 2.0
        own_redis.thaw()


async def test_unreachable_redis_raises_bus_error() -> None:
    async with redis_bus(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0) as bus:
        with pytest.raises(BusError, match="publish failed"):
            await within(bus.publish("user:1", b"x"), 2.0)
        with pytest.raises(BusError, match="connect failed"):
            async with bus.subscribe("user:1"):
                pass


# --- in-memory only ----------------------------------------------------------------------


async def test_in_memory_offsets_from_a_previous_process_are_expired() -> None:
    before_restart = InMemoryBus()
    offset = await before_restart.publish("user:1", b"old")
    await asyncio.sleep(0.005)  # a restart takes longer than a millisecond
    after_restart = InMemoryBus()
    await after_restart.publish("user:1", b"new")
    with pytest.raises(OffsetExpired):
        await after_restart.read_from("user:1", offset)


async def test_in_memory_trims_exactly_to_max_len() -> None:
    bus = InMemoryBus(max_len=3)
    offsets = [await bus.publish("c", b"%d" % i) for i in range(5)]
    assert [e.offset for e in await bus.read_from("c", None)] == offsets[2:]
