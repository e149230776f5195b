"""The usage store side of a running `aigw serve`: the embedded SQLite usage store, the in-process consumer's
sweep at start, the /usage/* API over HTTP and the `aigw usage` CLI against it, and the demo's admin key.

Waits poll for a condition with a generous deadline; nothing asserts how fast it happened.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from gateway_core.storage.factory import usage_store
from gateway_core.usage.record import UsageBatch, UsageRecord, summarise
from tests.servers import CLIENT_KEY, GATEWAY_ENV, THIRD_KEY, eventually, gateway_config, run_aigw, write_yaml

ADMIN = {"api-key": THIRD_KEY}  # carol is an admin


def rec(user: str, tenant: str, tokens: int) -> UsageRecord:
    record_id = uuid.uuid4().hex
    return UsageRecord(
        record_id=record_id,
        time_s=time.time() - 60,
        request_id=f"req-{record_id[:8]}",
        tenant=tenant,
        user=user,
        key_id=user,
        method="POST",
        path="/openai/deployments/gpt-4o/chat/completions",
        status=200,
        deployment="gpt-4o",
        model="gpt-4o",
        prompt_tokens=tokens,
        completion_tokens=3,
        cost_micro_usd=tokens * 2,
    )


async def write_unsummarised(db: Path, records: list[UsageRecord]) -> None:
    """Records a gateway wrote before it died: stored, their queue message lost with its process."""
    store = usage_store(f"sqlite:///{db}")
    await store.start()
    await store.write_batch(UsageBatch(uuid.uuid4().hex, tuple(records)))
    await store.close()


def aigw_usage(*args: str, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigw.cli", "usage", *args, "--key", key],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_batches_left_pending_by_a_dead_gateway_are_summarised_at_start_and_read_over_http(
    sim_url: str, tmp_path: Path
) -> None:
    records = [rec("alice", "contoso", 10 + n) for n in range(5)] + [rec("bob", "fabrikam", 100)]
    asyncio.run(write_unsummarised(tmp_path / ".aigw" / "usage.db", records))
    config = write_yaml(tmp_path / "gateway.yaml", gateway_config(sim_url))
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV, cwd=tmp_path) as gateway:
        url = gateway.url

        # (Where requests are recorded too, these reads are: rows of deployment "", never "gpt-4o".)
        def gpt_4o(query: str = "") -> dict[str, Any] | None:
            body = httpx.get(f"{url}/usage/summary?group_by=deployment{query}", headers=ADMIN).json()
            return next((row for row in body["data"] if row["deployment"] == "gpt-4o"), None)

        row = eventually(gpt_4o)  # the consumer's sweep at start found the batch no message named
        expected = summarise(records)
        assert row["requests"] == len(records)
        assert row["prompt_tokens"] == sum(t.prompt_tokens for t in expected.values())
        assert row["cost_micro_usd"] == sum(r.cost_micro_usd or 0 for r in records)
        assert [(gpt_4o(f"&user={user}") or {}).get("requests") for user in ("alice", "bob")] == [5, 1]

        alices = httpx.get(f"{url}/usage/records", headers={"api-key": CLIENT_KEY}).json()["data"]
        assert {r["user"] for r in alices} == {"alice"}
        assert sorted(r["record_id"] for r in alices if r["deployment"] == "gpt-4o") == sorted(
            r.record_id for r in records if r.user == "alice"
        )
        refused = httpx.get(f"{url}/usage/records?tenant=fabrikam", headers={"api-key": CLIENT_KEY})
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "tenant"
        bad = httpx.get(f"{url}/usage/records?limit=5&limit=6", headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"

        # The CLI prints the same, as a table, CSV or JSON.
        table = aigw_usage("summary", "--url", url, "--group-by", "tenant", "--user", "bob", key=THIRD_KEY)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split()[:2] == ["tenant", "requests"]
        assert [line.split()[:2] for line in lines[1:]] == [["fabrikam", "1"], ["TOTAL", "1"]]
        as_csv = aigw_usage("records", "--url", url, "--format", "csv", key=CLIENT_KEY)
        rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
        assert {row["user"] for row in rows} == {"alice"}
        assert len([row for row in rows if row["deployment"] == "gpt-4o"]) == 5
        as_json = aigw_usage("records", "--url", url, "--format", "json", "--limit", "2", key=THIRD_KEY)
        assert len(json.loads(as_json.stdout)["data"]) == 2
        prices = aigw_usage("prices", "--url", url, key=THIRD_KEY)
        assert prices.returncode == 0 and "gpt-4o-mini-2024-07-18" in prices.stdout
        refused_cli = aigw_usage("prices", "--url", url, key=CLIENT_KEY)
        assert refused_cli.returncode == 1 and "403" in refused_cli.stderr and "admin" in refused_cli.stderr
        bad_cli = aigw_usage("summary", "--url", url, "--from", "2026-02-30", key=THIRD_KEY)
        assert bad_cli.returncode == 1 and "from: not a UTC date" in bad_cli.stderr
    unreachable = aigw_usage("summary", "--url", url, key=THIRD_KEY)  # the gateway has stopped
    assert unreachable.returncode == 2 and "cannot reach the gateway" in unreachable.stderr


def test_the_demo_answers_usage_with_its_admin_key(tmp_path: Path) -> None:
    with run_aigw(["serve", "--demo"], cwd=tmp_path) as demo:
        admin = {"api-key": "aigw-demo-admin"}
        prices = httpx.get(demo.url + "/usage/prices", headers=admin).json()
        for model in ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "text-embedding-3-small"):
            assert model in prices["models"]
        assert httpx.get(demo.url + "/usage/summary", headers=admin).status_code == 200
        assert httpx.get(demo.url + "/usage/records", headers={"api-key": "aigw-demo-key"}).status_code == 200
        assert httpx.get(demo.url + "/usage/prices", headers={"api-key": "aigw-demo-key"}).status_code == 403
    assert (tmp_path / ".aigw" / "usage.db").exists()
