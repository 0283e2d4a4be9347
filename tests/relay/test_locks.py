"""Per-key locks: one holder per key at a time, other keys free, nothing left behind."""

from __future__ import annotations

import asyncio

from relay.locks import KeyedLocks


async def test_one_holder_per_key_and_nothing_left_behind() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}

    async def hold(key: str) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await asyncio.sleep(0.01)
            inside[key] -= 1

    tasks = [asyncio.create_task(hold(k)) for k in "aaaaabbbbb"]
    await asyncio.sleep(0.005)
    assert len(locks) == 2  # two keys held or waited for, not ten locks
    await asyncio.gather(*tasks)
    assert most == {"a": 1, "b": 1}
    assert len(locks) == 0


async def test_a_waiter_keeps_the_lock_it_waits_for() -> None:
    """Between a release and the next waiter's turn the lock looks free: a newcomer must
    still queue behind that waiter, not get a fresh lock of its own."""
    locks = KeyedLocks()
    order: list[str] = []
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("k"):
            await release.wait()
            order.append("first")

    async def second() -> None:
        async with locks.hold("k"):
            order.append("second start")
            await asyncio.sleep(0.01)
            order.append("second end")

    async def third() -> None:
        async with locks.hold("k"):
            order.append("third")

    one = asyncio.create_task(first())
    await asyncio.sleep(0)
    two = asyncio.create_task(second())
    await asyncio.sleep(0)
    release.set()
    await one  # released: "second" is woken but has not run yet
    three = asyncio.create_task(third())
    await asyncio.gather(two, three)
    assert order == ["first", "second start", "second end", "third"]


async def test_none_holds_nothing() -> None:
    locks = KeyedLocks()
    async with locks.hold(None), locks.hold(None):
        assert len(locks) == 0
