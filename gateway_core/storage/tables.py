"""The Azure Storage account behind ``tables://`` (usage only): where it is (a connection string, or an account
reached with DefaultAzureCredential), its Table and Queue service clients, the one ``StorageError`` its SDK
failures become, and calls run a few at a time. The usage store is in tables_usage.py (its keys in
tables_keys.py, its entities in tables_entities.py), the usage queue in tables_queue.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..store_urls import TablesURL
from .ports import StorageError

_PARALLEL = 8  # transactions or queries in flight for one call
# The SDKs' own retries are short (3, within seconds; Storage's default waits 15 s and more between tries): the
# usage writer retries whole batches with its own backoff, and a Functions invocation must not hang on one call.
_TIMEOUTS: dict[str, Any] = {"connection_timeout": 10, "read_timeout": 30}


@dataclass(frozen=True, slots=True)
class TablesTarget:
    """Where a ``tables://`` URL points: a connection string, or an account reached with DefaultAzureCredential."""

    url: TablesURL
    connection_string: str | None

    def credential(self) -> Any:
        """DefaultAzureCredential for an account (managed identity in Azure; a user-assigned identity is chosen
        by ``AZURE_CLIENT_ID``), None with a connection string. Its owner closes it."""
        if self.connection_string is not None:
            return None
        from azure.identity.aio import DefaultAzureCredential

        return DefaultAzureCredential()

    def table_service(self, credential: Any) -> Any:
        from azure.data.tables.aio import TableServiceClient

        options = {**_TIMEOUTS, "retry_total": 3, "retry_backoff_factor": 0.2, "retry_backoff_max": 2}
        if self.connection_string is not None:
            return TableServiceClient.from_connection_string(self.connection_string, **options)
        endpoint = f"https://{self.url.account}.table.core.windows.net"
        return TableServiceClient(endpoint, credential=credential, **options)

    def queue_service(self, credential: Any) -> Any:
        from azure.storage.queue.aio import QueueServiceClient

        # The SDK's ExponentialRetry waits initial + base**n s (give or take the jitter): here about 2 s each.
        options = {**_TIMEOUTS, "retry_total": 3, "initial_backoff": 1, "increment_base": 1, "random_jitter_range": 1}
        if self.connection_string is not None:
            return QueueServiceClient.from_connection_string(self.connection_string, **options)
        endpoint = f"https://{self.url.account}.queue.core.windows.net"
        return QueueServiceClient(endpoint, credential=credential, **options)

    @property
    def where(self) -> str:
        return f"account {self.url.account}" if self.url.account else f"${self.url.connection_env}"


class AccountClient:
    """One credential and one service client (Table or Queue) of the account, made on first use and kept for
    ``close`` even if what its owner does next (creating tables or queues) fails."""

    def __init__(self, target: TablesTarget, make_service: Callable[[Any], Any]) -> None:
        self._target = target
        self._make_service = make_service  # TablesTarget.table_service or .queue_service
        self._credential: Any = None
        self._service: Any = None

    def service(self) -> Any:
        if self._service is None:
            with sdk_errors(self._target, "connect"):  # a malformed connection string is a ValueError
                self._credential = self._target.credential()
                self._service = self._make_service(self._credential)
        return self._service

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()
        self._credential = self._service = None


@contextlib.contextmanager
def sdk_errors(target: TablesTarget, what: str) -> Iterator[None]:
    """SDK and network failures become one ``StorageError`` that names the store, not its keys."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except (AzureError, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise StorageError(f"Table Storage ({target.where}): {what}: {type(exc).__name__}: {first}") from exc


async def bounded(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Every call's result, ``_PARALLEL`` at a time; the first failure is raised once all have ended."""
    gate = asyncio.Semaphore(_PARALLEL)
    waiting = list(calls)
    started: set[int] = set()

    async def one(index: int, call: Awaitable[Any]) -> Any:
        async with gate:
            started.add(index)
            return await call

    try:
        results = await asyncio.gather(*(one(n, c) for n, c in enumerate(waiting)), return_exceptions=True)
    finally:
        # Cancelled (a writer closing, an outage's deadline): calls still queued at the gate never ran. Close
        # them, or each is garbage-collected as a "coroutine was never awaited" warning.
        for index, call in enumerate(waiting):
            if index not in started and inspect.iscoroutine(call):
                call.close()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
