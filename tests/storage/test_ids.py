"""Random identifiers drawn a block at a time: each byte handed out once, never shared with a
forked child."""

from __future__ import annotations

import os
import re
import threading
import time

from storage.ids import new_id, random_bytes


def test_ids_are_128_bit_hex_and_distinct_across_many_blocks() -> None:
    ids = [new_id() for _ in range(5000)]  # about 20 blocks of 4 KiB
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert len(set(ids)) == len(ids)


def test_ids_sort_by_creation_time_and_carry_80_random_bits() -> None:
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.003)
    second = new_id()
    after = time.time_ns() // 1_000_000
    assert first < second  # a later id sorts after (index inserts append)
    for value in (first, second):
        assert before <= int(value[:12], 16) <= after
    same_time = {new_id()[12:] for _ in range(1000)}
    assert len(same_time) == 1000  # the rest is random, not a counter


def test_random_bytes_of_any_size() -> None:
    assert len(random_bytes(0)) == 0
    assert len(random_bytes(17)) == 17
    big = random_bytes(10_000)  # larger than a block: straight from the kernel
    assert len(big) == 10_000 and big != bytes(10_000)


def test_threads_never_get_the_same_bytes() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_id() for _ in range(2000))

    threads = [threading.Thread(target=draw, args=(f,)) for f in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for chunk in found for value in chunk]
    assert len(set(every)) == len(every) == 8000


def test_a_forked_child_does_not_replay_the_parents_block() -> None:
    new_id()  # the parent now holds a partly used block
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave without cleanup
        os.close(read_end)
        os.write(write_end, "".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(new_id() for _ in range(8))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 8
    assert not child_ids & parent_ids
