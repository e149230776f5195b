"""The writer's local spill: batches the usage store would not take, kept as JSON lines until it answers again.

Each process appends only to its own file (``spill-<pid>.jsonl``, 0600, in a 0700 directory). Replaying first
renames a file to ``replay-<pid>-<random>.jsonl``: the rename is atomic, so one process takes each file, and a
process that dies mid-replay leaves a file the next one takes (batches are written idempotently by id, so a
batch replayed twice is stored once). Files of processes that are still alive are left to them.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import orjson

from .record import UsageBatch, record_from_dict, record_to_dict

log = logging.getLogger("aigw")


class SpillFile:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped_records = 0  # records lost because the spill file was full

    @property
    def own(self) -> Path:
        return self.directory / f"spill-{os.getpid()}.jsonl"

    def append(self, batch: UsageBatch) -> bool:
        """Add ``batch`` to this process's file; False (and an error logged) when that would pass ``max_bytes``."""
        line = orjson.dumps({"batch_id": batch.batch_id, "records": [record_to_dict(r) for r in batch.records]})
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            size = self.own.stat().st_size
        except FileNotFoundError:
            size = 0
        if size + len(line) + 1 > self.max_bytes:
            self.dropped_records += len(batch.records)
            log.error(
                "USAGE RECORDS LOST: the usage store is unreachable and the spill file %s is full (%d bytes, "
                "usage.spill_max_bytes); %d records dropped so far",
                self.own,
                size,
                self.dropped_records,
            )
            return False
        fd = os.open(self.own, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
        return True

    def claim(self) -> list[Path]:
        """Take this process's file and those of processes that are gone, each renamed to a name of its own."""
        try:
            candidates = sorted(self.directory.glob("*.jsonl"))
        except OSError:
            return []
        claimed = []
        for path in candidates:
            owner = _owner(path)
            if owner is None or (owner != os.getpid() and _alive(owner)):
                continue
            target = self.directory / f"replay-{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
            try:
                path.rename(target)
            except FileNotFoundError:
                continue  # another process took it first
            claimed.append(target)
        return claimed

    @staticmethod
    def read(path: Path) -> list[UsageBatch]:
        """The batches in ``path``; a line that does not parse (a torn write at a crash) is logged and skipped."""
        batches = []
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                data = orjson.loads(line)
                records = tuple(record_from_dict(r) for r in data["records"])
                batches.append(UsageBatch(str(data["batch_id"]), records))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.error("usage spill file %s line %d is not a batch: skipped", path, number)
        return batches


def _owner(path: Path) -> int | None:
    parts = path.stem.split("-")
    if len(parts) < 2 or parts[0] not in ("spill", "replay") or not parts[1].isdigit():
        return None
    return int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
