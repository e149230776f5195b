"""Ids are idempotence keys (usage records and batches): uniqueness across threads, processes, forks and a
counter that runs out is what these prove."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import subprocess
import sys
import threading

from gateway_core import ids
from gateway_core.ids import IdSource, new_id

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
    assert len({made[:20] for made in every}) == 4  # one prefix per process


def _child_ids(queue: multiprocessing.Queue[list[str]]) -> None:
    queue.put([new_id() for _ in range(1000)])


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_id()  # the parent has handed out ids: a child that kept its state would hand out the next ones too
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = context.Queue()
    children = [context.Process(target=_child_ids, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    from_children = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join()
    mine = [new_id() for _ in range(1000)]
    every = mine + from_children[0] + from_children[1]
    assert len(set(every)) == len(every)


def test_a_counter_that_runs_out_draws_a_new_prefix() -> None:
    source = IdSource()
    prefix = source.new()[:20]
    source._state = (prefix, itertools.count(ids._COUNTER_LIMIT - 2))
    last = [source.new(), source.new()]
    after = source.new()
    assert [made[20:] for made in last] == [f"{ids._COUNTER_LIMIT - 2:012x}", f"{ids._COUNTER_LIMIT - 1:012x}"]
    assert HEX32.match(after) and after[:20] != prefix and after[20:] == "0" * 12
