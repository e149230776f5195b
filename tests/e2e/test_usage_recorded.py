"""Requests through a running `aigw serve` leave their usage records in its embedded SQLite store, summarised
by its in-process consumer: N requests, N records, summaries equal to their sum; a graceful stop flushes; a
store that stays down spills to the local file, replayed once it answers; a hard kill loses at most about one
flush interval of records.

Waits poll for a condition with a generous deadline; nothing asserts how fast it happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from gateway_core.usage.record import UsageRecord, summarise
from tests.servers import (
    CLIENT_KEY,
    GATEWAY_ENV,
    THIRD_KEY,
    eventually,
    gateway_config,
    run_aigw,
    stored_usage,
    write_yaml,
)

CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
HELLO = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
ADMIN = {"api-key": THIRD_KEY}


def stored(db: Path) -> tuple[list[UsageRecord], dict[Any, Any]]:
    """Every record and summary row in the usage store file (read while the gateway runs, or after)."""
    return stored_usage(f"sqlite:///{db}")


def send(url: str, n: int, *, workers: int = 8) -> list[float]:
    """``n`` chat requests, ``workers`` at a time; the monotonic time each answer arrived."""
    with httpx.Client(base_url=url, headers={"api-key": CLIENT_KEY}, timeout=30) as client:

        def one(_: int) -> float:
            assert client.post(CHAT, json=HELLO).status_code == 200
            return time.monotonic()

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, range(n)))


def config_file(tmp_path: Path, sim_url: str, **usage: Any) -> Path:
    return write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url, usage={"enabled": True, **usage}))


def test_n_requests_leave_n_records_and_summaries_equal_to_their_sum(sim_url: str, tmp_path: Path) -> None:
    n = 60
    config = config_file(tmp_path, sim_url, flush_interval_s=0.2)
    db = tmp_path / ".aigw" / "usage.db"
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV, cwd=tmp_path) as gateway:
        send(gateway.url, n)

        def summed() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(f"{gateway.url}/usage/summary?group_by=user", headers=ADMIN).json()
            return body if body["total"]["requests"] >= n else None

        summary = eventually(summed)  # written by the writer, summarised by the in-process consumer
        records, rows = stored(db)
        # Alice's n chats; carol's summary reads are recorded too, and may still be on their way.
        chats = [r for r in records if r.user == "alice"]
        assert len(chats) == n and len({r.record_id for r in chats}) == n
        assert all(r.path.endswith("chat/completions") and r.cost_micro_usd for r in chats)
        assert {k: v for k, v in rows.items() if k.user == "alice"} == summarise(chats)
        (alice,) = [row for row in summary["data"] if row["user"] == "alice"]
        assert alice["requests"] == n
        assert alice["cost_micro_usd"] == sum(r.cost_micro_usd or 0 for r in chats)


def test_a_graceful_stop_flushes_every_record_and_summarises_it(sim_url: str, tmp_path: Path) -> None:
    n = 30
    config = config_file(tmp_path, sim_url, flush_interval_s=300, flush_max_records=1000)  # never due by itself
    db = tmp_path / ".aigw" / "usage.db"
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV, cwd=tmp_path) as gateway:
        send(gateway.url, n)
        assert stored(db)[0] == []  # all still buffered
    # run_aigw's exit sent SIGTERM: the writer flushed and the consumer summarised before the process ended.
    records, rows = stored(db)
    assert len(records) == n
    assert rows == summarise(records)


def test_a_store_that_stays_down_spills_and_is_replayed_when_it_answers(sim_url: str, tmp_path: Path) -> None:
    n = 20
    blocker = tmp_path / "state"
    blocker.write_text("a file where the store's directory should be: the store cannot open")
    config = write_yaml(
        tmp_path / "gateway.yaml",
        gateway_config(
            sim_url,
            stores={"health": "memory://", "usage": "sqlite:///state/usage.db"},
            usage={"flush_interval_s": 0.1, "retry_initial_s": 0.05, "spill_after_failures": 2, "spill_after_s": 1},
        ),
    )
    spill_dir = tmp_path / ".aigw" / "usage-spill"
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV, cwd=tmp_path) as gateway:
        send(gateway.url, n)
        eventually(lambda: spill_dir.exists() and sum(len(p.read_bytes().splitlines()) for p in spill_dir.iterdir()))
        # The writer's replay tries (every spill_after_s) may rename the spill file or add a replay file beside it
        # for a moment: every file there, whatever its name, must be private.
        modes = eventually(lambda: _file_modes(spill_dir))
        assert modes == {"0o600"}
        blocker.unlink()  # the store can open again: the spilled batches are replayed

        def all_there() -> bool:
            response = httpx.get(f"{gateway.url}/usage/records?limit=1000", headers=ADMIN)
            return response.status_code == 200 and len(response.json()["data"]) >= n

        eventually(all_there)
        eventually(lambda: list(spill_dir.iterdir()) == [])
    records, rows = stored(tmp_path / "state" / "usage.db")
    assert len([r for r in records if r.path.endswith("chat/completions")]) == n
    assert rows == summarise(records)


def test_a_hard_kill_loses_at_most_about_one_flush_interval(sim_url: str, tmp_path: Path) -> None:
    n = 437  # not a multiple of usage.flush_max_records (100): the last batch is cut by age, not size
    interval_s = 1.0  # the default usage.flush_interval_s
    config = config_file(tmp_path, sim_url, flush_interval_s=interval_s)
    db = tmp_path / ".aigw" / "usage.db"
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV, cwd=tmp_path) as gateway:
        answered = send(gateway.url, n)
        killed_s = time.monotonic()
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait()
    records, _ = stored(db)
    lost = n - len(records)
    # Records taken in the last interval (plus one batch being written) may be lost; everything older is stored.
    at_risk = sum(1 for t in answered if killed_s - t <= 2 * interval_s)
    last_interval = sum(1 for t in answered if killed_s - t <= interval_s)
    print(f"hard kill: {lost} of {n} records lost; {last_interval} answered in the last {interval_s:.0f} s")
    assert 0 <= lost <= at_risk
    # The next start's sweep summarises what the killed process wrote but never summarised.
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV, cwd=tmp_path) as gateway:

        def summed() -> bool:
            body = httpx.get(f"{gateway.url}/usage/summary", headers=ADMIN).json()
            return bool(body["total"]["requests"] >= len(records))

        eventually(summed)
    records, rows = stored(db)
    assert rows == summarise(records)


def _file_modes(directory: Path) -> set[str]:
    modes = set()
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):  # renamed or removed between the listing and the stat
            modes.add(oct(path.stat().st_mode & 0o777))
    return modes
