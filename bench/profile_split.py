#!/usr/bin/env python3
"""profile_split.py RAW -> the event-loop thread's samples of a py-spy raw profile, by what the work is for.

Each sample goes to the category of its deepest frame that names one (a store hop's future callbacks count as
the store hop, not as the policy that awaited it); samples whose innermost frame is the event loop's own C
code (uvloop, shown by py-spy as ``Runner.run``) are socket I/O, callbacks and thread wake-ups. Also prints
each thread's share: py-spy counts a pool thread waiting for work as active, so read the store threads'
frames, not their totals. Stdlib only.
"""

import collections
import re
import sys

CATEGORIES = [
    (
        "store hops (executor submit, futures, the SQLite adapter on the loop)",
        r"_SqliteThread\.run|_hand_back|ThreadPoolExecutor\.submit|_chain_future|_copy_future_state|_call_set_state|"
        r"wrap_future|storage/sqlite\.py",
    ),
    ("prompt token counting (tiktoken)", r"tokens/counting\.py|tiktoken/"),
    ("upstream call (aiohttp client, forwarder)", r"aiohttp/|providers/client\.py"),
    ("cache policy's own work", r"policies/cache\.py|gateway_core/cache/"),
    ("limits policy's own work", r"policies/limits\.py|gateway_core/limits/"),
    ("uuid4 (request ids)", r"uuid\.py"),
    ("rest of the pipeline (auth, validate, context, routing, accounting)", r"gateway_core/"),
    ("HTTP server (uvicorn httptools, the ASGI adapter)", r"httptools_impl|aigw/asgi\.py"),
]


def category(frames: list[str]) -> str:
    if frames[-1].startswith("Runner.run"):
        return "event loop's C code (socket I/O, callbacks, wake-ups)"
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if re.search(pattern, frame):
                return name
    return "other"


def main() -> None:
    threads: collections.Counter[str] = collections.Counter()
    loop: collections.Counter[str] = collections.Counter()
    with open(sys.argv[1]) as f:
        lines = f.read().splitlines()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        n = int(count)
        head, *frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ?", "", head) or head
        threads[thread] += n
        if thread.startswith("MainThread") and frames:
            loop[category(frames)] += n
    total = sum(threads.values())
    print(f"samples {total}")
    for thread, n in threads.most_common():
        print(f"{n:6d} {100 * n / total:5.1f}%  thread {thread}")
    main_total = sum(loop.values())
    print(f"\nevent-loop thread: {main_total} samples")
    for name, n in loop.most_common():
        print(f"{n:6d} {100 * n / main_total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
