"""`aigw serve` with its usage in Table Storage: Azurite given as ``AzureWebJobsStorage`` (the Functions app's
setting) makes it the usage store by default; the in-process consumer summarises from the Storage queue and its
start sweep finds a dead gateway's unsummarised batch; /usage/* answers from the tables.

Waits poll for a condition with a generous deadline; nothing asserts how fast it happened.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx

from gateway_core.storage.factory import usage_queue, usage_store
from gateway_core.usage.record import UsageBatch, UsageRecord
from tests.azurite import run_azurite
from tests.e2e.test_usage_serve import ADMIN, rec
from tests.servers import CLIENT_KEY, GATEWAY_ENV, eventually, gateway_config, run_aigw, write_yaml

DEFAULT = "tables://?connection_env=AzureWebJobsStorage&create_if_missing=true"  # what the gateway opens


async def write(env: dict[str, str], records: list[UsageRecord], *, enqueue: bool) -> None:
    """A batch written by another gateway: with its queue message, or without (it died before sending it)."""
    store, queue = usage_store(DEFAULT, env), usage_queue(DEFAULT, env)
    await store.start()
    await queue.start()
    batch = UsageBatch(uuid.uuid4().hex, tuple(records))
    await store.write_batch(batch)
    if enqueue:
        await queue.send(batch.batch_id)
    await store.close()
    await queue.close()


def test_serve_keeps_usage_in_table_storage_from_azurewebjobsstorage(sim_url: str, tmp_path: Path) -> None:
    with run_azurite(tmp_path / "azurite") as azurite:
        env = {"AzureWebJobsStorage": azurite.connection_string}
        orphaned = [rec("alice", "contoso", 10 + n) for n in range(3)]
        asyncio.run(write(env, orphaned, enqueue=False))
        config = write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))
        with run_aigw(["serve", "--config", str(config)], env={**GATEWAY_ENV, **env}, cwd=tmp_path) as gateway:
            # (Once requests are recorded, these reads are too: rows of deployment "", never "gpt-4o".)
            def gpt_4o(requests: int, query: str = "") -> Any:
                def check() -> dict[str, Any] | None:
                    body = httpx.get(f"{gateway.url}/usage/summary?group_by=deployment{query}", headers=ADMIN).json()
                    row = next((r for r in body["data"] if r["deployment"] == "gpt-4o"), None)
                    return row if row is not None and row["requests"] == requests else None

                return check

            eventually(gpt_4o(3))  # the start sweep summarised the batch no message named
            queued = [rec("bob", "fabrikam", 100), rec("alice", "contoso", 7)]
            asyncio.run(write(env, queued, enqueue=True))
            row = eventually(gpt_4o(5))  # the consumer took the message off the Storage queue
            assert row["cost_micro_usd"] == sum(r.cost_micro_usd or 0 for r in orphaned + queued)
            assert eventually(gpt_4o(4, "&user=alice")) and eventually(gpt_4o(1, "&user=bob"))
            alices = httpx.get(f"{gateway.url}/usage/records", headers={"api-key": CLIENT_KEY}).json()["data"]
            expected = [r for r in orphaned + queued if r.user == "alice"]
            got = [r["record_id"] for r in alices if r["deployment"] == "gpt-4o"]
            assert sorted(got) == sorted(r.record_id for r in expected)
        # Nothing of it went to the embedded SQLite store.
        assert not (tmp_path / ".aigw" / "usage.db").exists()
