"""Ids are idempotence keys (usage records and batches): uniqueness across threads, processes and forks is what
these prove, and that an id does not give away how many came before it (request ids reach every client)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import threading
import time

from gateway_core.ids import new_id

HEX32 = re.compile(r"^[0-9a-f]{32}$")
_PRINT_IDS = "from gateway_core.ids import new_id\nfor _ in range(2000): print(new_id())"


def test_ids_are_32_hex_like_uuid4_hex() -> None:
    assert all(HEX32.match(new_id()) for _ in range(100))


def test_ids_of_one_process_are_unique() -> None:
    made = [new_id() for _ in range(100_000)]
    assert len(set(made)) == len(made)


def test_ids_from_many_threads_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = list(itertools.chain.from_iterable(made))
    assert len(set(every)) == len(every) == 160_000


def test_ids_of_separate_processes_and_restarts_are_unique() -> None:
    # Each run is a new process (a worker, or the same worker after a restart): its prefix is drawn anew.
    every: list[str] = []
    for _ in range(4):
        out = subprocess.run([sys.executable, "-c", _PRINT_IDS], capture_output=True, text=True, check=True)
        every.extend(out.stdout.split())
    assert len(every) == 8000 and len(set(every)) == len(every)


# Forks in a fresh, single-threaded interpreter: forking the test process (threads of other tests) is unsafe.
_FORKING = """
import os, sys
from gateway_core.ids import new_id
new_id()  # the parent has handed out ids: a child that kept its state would hand out the next ones too
children = []
for _ in range(2):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, " ".join(new_id() for _ in range(1000)).encode())
        os._exit(0)
    os.close(write)
    children.append((pid, read))
for pid, read in children:
    with os.fdopen(read, "rb") as pipe:
        print(pipe.read().decode())
    os.waitpid(pid, 0)
print(" ".join(new_id() for _ in range(1000)))
"""


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    out = subprocess.run([sys.executable, "-c", _FORKING], capture_output=True, text=True, check=True, timeout=60)
    every = out.stdout.split()
    assert len(every) == 3000 and len(set(every)) == len(every)
    # Nor their random parts: random bits are read in blocks, and a child that kept its parent's unread ones
    # would make the parent's next ids in another millisecond (a different id, the same 80 bits).
    assert len({made[12:] for made in every}) == len(every)


def test_consecutive_ids_share_nothing_a_client_could_count_with() -> None:
    # With a per-process prefix and a counter, two request ids a client got told it how many requests the
    # worker served in between. Beyond the millisecond they were made in, ids share no prefix and no order.
    made = [new_id() for _ in range(1000)]
    assert len({m[12:24] for m in made}) == len(made)  # 48 random bits: a chance collision ~1e-9
    assert [m[12:] for m in made] != sorted(m[12:] for m in made)


def test_ids_grow_with_the_millisecond_they_were_made_in() -> None:
    # The usage store keys records by these ids: growing ids append to its b-trees (see gateway_core/ids.py).
    first = new_id()
    time.sleep(0.002)  # a later millisecond, not synchronisation
    second = new_id()
    assert first[:12] < second[:12] and first < second
    assert abs(int(second[:12], 16) - time.time_ns() // 1_000_000) < 60_000
