"""The batched usage writer: the ``UsageSink`` of `aigw serve` and the Functions app.

``record`` only appends to a buffer. A batch is cut when the buffer holds ``flush_max_records`` or its oldest
record is ``flush_interval_s`` old, and written off the request path by a background task (or by ``flush``,
which the Functions host awaits before an invocation ends): ``write_batch``, then a queue message naming the
batch for the summariser. A failed write is retried with the same batch id (writes are idempotent by id), with
backoff; if the store stays down (``spill_after_failures`` failures or ``spill_after_s``), the batch goes to a
local spill file and is replayed once the store answers again (and at start). A failed enqueue is only logged:
the batch is stored and pending, and the summariser's sweep finds it.

A store that holds the summaries in the same database (SQLite: ``SummarisingUsageStore``) gets each batch in one
transaction with its summary rows (``write_summarised``) and no message: nothing is left for the summariser but
its sweep of batches an older version left pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..config import UsageSettings
from ..ids import new_id
from ..storage.ports import StorageError, SummarisingUsageStore, UsageQueue, UsageStore
from .record import UsageBatch, UsageRecord
from .spill import SpillFile

log = logging.getLogger("aigw")
_MAX_BACKOFF_S = 30.0


@dataclass(slots=True)
class _Pending:
    batch: UsageBatch
    failures: int = 0
    first_failure_s: float = 0.0
    stored: bool = False  # write_batch succeeded; only the enqueue is left


class UsageWriter:
    def __init__(self, store: UsageStore, queue: UsageQueue, settings: UsageSettings) -> None:
        self._store = store
        self._queue = queue
        # Summarised as written, in one transaction: half the CPU per record of the queue path (bench/README.md).
        self._summarising = store if isinstance(store, SummarisingUsageStore) else None
        self._settings = settings
        self.spill = SpillFile(Path(settings.spill_dir), settings.spill_max_bytes)
        self._buffer: list[UsageRecord] = []
        self._oldest_s = 0.0  # monotonic time the oldest buffered record arrived
        self._outbox: deque[_Pending] = deque()
        self._outbox_records = 0
        self._retry_at_s = 0.0
        self._replay_due = True  # at start, and after anything was spilled
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.idle = False  # the background task waits with no deadline (nothing buffered, nothing to retry)
        self._closed = False
        self.written_records = 0
        self.spilled_records = 0
        self.replayed_records = 0
        self._replay_at_s = 0.0  # monotonic; a replay that failed waits spill_after_s before the next try

    def record(self, record: UsageRecord) -> None:
        try:
            if not self._buffer:
                self._oldest_s = time.monotonic()
                self._wake.set()  # the background task may be waiting with no deadline: give it this one's
            self._buffer.append(record)
            if len(self._buffer) >= self._settings.flush_max_records:
                self._wake.set()
            if self._closed or len(self._buffer) + self._outbox_records > self._settings.max_buffered_records:
                # The store is behind (or we are closing): memory stays bounded, the records go to disk now.
                for batch in self._cut():
                    self._spill(batch)
        except Exception:  # a sink never fails the request it records
            log.exception("usage record %s could not be taken", record.record_id)

    def start(self) -> None:
        """Write in the background from now on (replaying any spilled batches first); call inside the loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Write every record taken so far; what the store refuses is spilled (retried at the next flush)."""
        self._outbox.extend(_Pending(b) for b in self._cut_counted())
        await self._drain(final=True)

    async def close(self) -> None:
        """Stop the background task, then write what is left; what cannot be written is spilled."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            # Waits for the task's end without taking its CancelledError for ours: a caller that cancels close()
            # (a shutdown deadline) still cancels it.
            await asyncio.wait([task])
        self._closed = True  # from here on a late record goes straight to the spill file
        # A replay the cancel cut short left its claimed file on disk: the last flush takes it again.
        self._replay_due = True
        await self.flush()

    @property
    def buffered_records(self) -> int:
        return len(self._buffer) + self._outbox_records

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep writing: a bug in one step must not stop recording for good
                log.exception("usage writer step failed")
                await asyncio.sleep(self._settings.retry_initial_s)

    async def _step(self) -> None:
        if self._replay_due and not self._outbox and time.monotonic() >= self._replay_at_s:
            async with self._lock:
                await self._replay()
        timeout = self._next_due_s()
        if timeout is None or timeout > 0:
            self.idle = timeout is None
            # asyncio.timeout, not wait_for: on Python 3.11 a cancel that lands as the wake-up completes was taken
            # by wait_for for a wake-up, so close() waited for a task that went on writing (for ever, with a store
            # that stays down: every spill_after_s it replayed the spill file and spilled it again).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self.idle = False
        self._wake.clear()
        now_s = time.monotonic()
        if self._buffer and (
            len(self._buffer) >= self._settings.flush_max_records
            or now_s - self._oldest_s >= self._settings.flush_interval_s
        ):
            self._outbox.extend(_Pending(b) for b in self._cut_counted())
        if self._outbox and now_s >= self._retry_at_s:
            await self._drain(final=False)

    def _next_due_s(self) -> float | None:
        """Seconds until the buffer is due or a retry is, None if there is nothing to do."""
        now_s = time.monotonic()
        due = []
        if self._buffer:
            due.append(self._oldest_s + self._settings.flush_interval_s - now_s)
        if self._outbox:
            due.append(self._retry_at_s - now_s)
        elif self._replay_due:
            due.append(self._replay_at_s - now_s)
        return max(0.0, min(due)) if due else None

    def _cut(self) -> list[UsageBatch]:
        """The buffer as batches of at most ``flush_max_records``, each with a new id; the buffer is emptied."""
        size = self._settings.flush_max_records
        records, self._buffer = self._buffer, []
        return [UsageBatch(new_id(), tuple(records[i : i + size])) for i in range(0, len(records), size)]

    def _cut_counted(self) -> list[UsageBatch]:
        batches = self._cut()
        self._outbox_records += sum(len(b.records) for b in batches)
        return batches

    async def _drain(self, *, final: bool) -> None:
        """Write the outbox in order. On a failure: retry later with backoff, or (store down, or ``final``)
        spill everything left."""
        async with self._lock:
            while self._outbox:
                pending = self._outbox[0]
                try:
                    await self._write(pending)
                except StorageError as exc:
                    if self._give_up(pending, final):
                        log.error("usage store unreachable, spilling %d records: %s", self._outbox_records, exc)
                        while self._outbox:
                            self._spill(self._pop().batch)
                    else:
                        backoff_s = min(self._settings.retry_initial_s * 2 ** (pending.failures - 1), _MAX_BACKOFF_S)
                        self._retry_at_s = time.monotonic() + backoff_s
                        log.warning("usage batch write failed (retry in %.1f s): %s", backoff_s, exc)
                    return
                self.written_records += len(self._pop().batch.records)
            if self._replay_due:
                await self._replay()

    def _give_up(self, pending: _Pending, final: bool) -> bool:
        now_s = time.monotonic()
        pending.failures += 1
        if pending.failures == 1:
            pending.first_failure_s = now_s
        return (
            final
            or pending.failures >= self._settings.spill_after_failures
            or now_s - pending.first_failure_s >= self._settings.spill_after_s
        )

    def _pop(self) -> _Pending:
        pending = self._outbox.popleft()
        self._outbox_records -= len(pending.batch.records)
        return pending

    async def _write(self, pending: _Pending) -> None:
        if self._summarising is not None:
            await self._summarising.write_summarised(pending.batch)
            return
        if not pending.stored:
            await self._store.write_batch(pending.batch)
            pending.stored = True
        try:
            await self._queue.send(pending.batch.batch_id)
        except StorageError as exc:  # stored and pending: the sweep summarises it
            log.warning(
                "usage batch %s stored but not enqueued (the sweep will summarise it): %s", pending.batch.batch_id, exc
            )

    def _spill(self, batch: UsageBatch) -> None:
        try:
            spilled = self.spill.append(batch)
        except OSError as exc:
            log.error(
                "USAGE RECORDS LOST: %d records could not be spilled to %s: %s", len(batch.records), self.spill.own, exc
            )
            return
        if spilled:
            self.spilled_records += len(batch.records)
            self._replay_due = True
            self._replay_at_s = time.monotonic() + self._settings.spill_after_s

    async def _replay(self) -> None:
        """Write the spilled batches (this process's and those of processes that are gone); stop at a failure,
        putting what is left back in this process's spill file. Called with the lock held."""
        self._replay_due = False
        try:
            paths = await asyncio.to_thread(self.spill.claim)
        except Exception:  # logged, never raised: close() must not fail on the spill directory
            log.exception("usage spill directory %s could not be read", self.spill.directory)
            return
        for path in paths:
            try:
                await self._replay_file(path)
            except Exception:  # a spill file never stops the writer (nor close): set aside for an operator
                log.exception("usage spill file %s could not be replayed: moved aside as .bad", path)
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + ".bad"))
            if self._replay_due:  # it failed: the remaining files wait for the next success
                return

    async def _replay_file(self, path: Path) -> None:
        try:
            batches = await asyncio.to_thread(self.spill.read, path)
        except OSError as exc:  # left where it is, for an operator: retrying would only log the same
            log.error("usage spill file %s cannot be read: %s", path, exc)
            return
        for index, batch in enumerate(batches):
            try:
                await self._write(_Pending(batch))
            except StorageError as exc:
                log.warning("usage store still unreachable, %d spilled batches kept: %s", len(batches) - index, exc)
                for left in batches[index:]:
                    self._spill(left)
                break
            self.written_records += len(batch.records)
            self.replayed_records += len(batch.records)
        await asyncio.to_thread(path.unlink, missing_ok=True)


def usage_sink_for(store: UsageStore, queue: UsageQueue, settings: UsageSettings) -> UsageWriter:
    """The default usage sink: records batched to ``store`` with messages on ``queue``."""
    return UsageWriter(store, queue, settings)
