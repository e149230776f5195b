"""The writer's local spill: batches the usage store would not take, kept as JSON lines until it answers again.

Each process appends only to its own file (``spill-<pid>.jsonl``, 0600, in a 0700 directory). Replaying first
renames a file to ``replay-<pid>-<random>.jsonl``: the rename is atomic, so one process takes each file, and a
process that dies mid-replay leaves a file the next one takes (batches are written idempotently by id, so a
batch replayed twice is stored once). Files of processes that are still alive are left to them.

What is replayed goes into the store as the gateway's own records, so the directory is trusted only as the
tokenizer cache is: one of another user (or not a directory) is refused; one of ours that others could write is
closed (0700) and the files found in it are set aside as ``*.untrusted``, as anyone may have put them there.
Only regular files of this user with mode 0600 are replayed (others are set aside too), and each record is
checked (types, ranges) first.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from .record import UsageBatch, UsageRecord, record_from_dict, record_to_dict

log = logging.getLogger("aigw")

_MAX_STRING = 16_384  # longer than any string the gateway records (paths and request ids are bounded before)
_MAX_TOKENS = 1_000_000_000  # per record: far above any context window or cache saving
_MAX_MICRO_USD = 10**15  # a billion USD for one record
_MAX_COUNT = 100_000_000  # requests one aggregated refusal row (one address, code and minute) stands for
_MAX_TIME_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z
_MAX_MS = 1e10  # about 116 days
_BATCH_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # as the summariser accepts them


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: type  # str, bool, int or float (an int is a float too)
    optional: bool = False
    low: float = 0
    high: float = 0


_STR, _OPT_STR, _BOOL = _Rule(str), _Rule(str, optional=True), _Rule(bool)
_TOKENS = _Rule(int, high=_MAX_TOKENS)
_MONEY = _Rule(int, optional=True, high=_MAX_MICRO_USD)
# How each field of a spilled record is checked. A field of UsageRecord missing here is refused, so a new one
# must be given its rule before records carrying it are replayed.
_FIELDS: dict[str, _Rule] = {
    "record_id": _STR,
    "request_id": _STR,
    "tenant": _STR,
    "user": _STR,
    "key_id": _OPT_STR,
    "method": _STR,
    "path": _STR,
    "deployment": _OPT_STR,
    "model": _OPT_STR,
    "backend": _OPT_STR,
    "region": _OPT_STR,
    "token_source": _STR,
    "cache": _STR,
    "limit_rule": _OPT_STR,
    "error_code": _OPT_STR,
    "client_ip": _OPT_STR,
    "stream": _BOOL,
    "internal": _BOOL,
    "time_s": _Rule(float, high=_MAX_TIME_S),
    "status": _Rule(int, high=999),
    "prompt_tokens": _TOKENS,
    "completion_tokens": _TOKENS,
    "cached_prompt_tokens": _TOKENS,
    "reasoning_tokens": _TOKENS,
    "saved_tokens": _TOKENS,
    "maybe_billed_tokens": _TOKENS,
    "cost_micro_usd": _MONEY,
    "saved_micro_usd": _MONEY,
    "attempts": _Rule(int, high=1_000),
    "count": _Rule(int, low=1, high=_MAX_COUNT),
    "ttfb_ms": _Rule(float, optional=True, high=_MAX_MS),
    "latency_ms": _Rule(float, high=_MAX_MS),
}
_RECORD_FIELDS = frozenset(UsageRecord.__dataclass_fields__)


class SpillDirError(OSError):
    """The spill directory cannot be trusted (another user's, or not a directory): nothing is spilled to it or
    replayed from it."""


def checked_record(data: object) -> UsageRecord:
    """The record ``data`` describes, if every field has its type and a sane range; ValueError naming the field
    otherwise. Fields UsageRecord does not know (a newer version's) are ignored, as ``record_from_dict`` does."""
    if not isinstance(data, dict):
        raise ValueError("a record is not an object")
    for name, value in data.items():
        if name not in _RECORD_FIELDS:
            continue
        rule = _FIELDS.get(name)
        if rule is None or not _fits(value, rule):
            raise ValueError(f"field {name} out of type or range")
    return record_from_dict(data)


def _fits(value: object, rule: _Rule) -> bool:
    if value is None:
        return rule.optional
    if rule.kind is str:
        return isinstance(value, str) and len(value) <= _MAX_STRING
    if rule.kind is bool or isinstance(value, bool):
        return rule.kind is bool and isinstance(value, bool)
    if not isinstance(value, int | float) or (rule.kind is int and not isinstance(value, int)):
        return False
    return math.isfinite(value) and rule.low <= value <= rule.high


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
        self.private()
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
        fd = os.open(self.own, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
        return True

    def private(self) -> None:
        """Make the directory (0700) if it is missing; refuse it (``SpillDirError``) unless it is a directory of
        this user; close one of ours that others could open (0700), and if they could write it, set aside the
        files found in it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise SpillDirError(f"usage spill directory {self.directory} is not a directory of this user")
        if info.st_mode & 0o077:
            self.directory.chmod(0o700)
        if info.st_mode & 0o022:  # others could have put files here: none of them is replayed
            for path in self.directory.glob("*.jsonl"):
                log.error(
                    "usage spill directory %s was open to other users (mode %o): %s set aside as .untrusted, "
                    "not replayed",
                    self.directory,
                    stat.S_IMODE(info.st_mode),
                    path.name,
                )
                path.rename(path.with_name(path.name + ".untrusted"))

    def claim(self) -> list[Path]:
        """Take this process's file and those of processes that are gone, each renamed to a name of its own.
        Files that are not regular files of this user with mode 0600 are logged and set aside (``.untrusted``)."""
        try:
            if not self.directory.exists():
                return []
            self.private()
            candidates = sorted(self.directory.glob("*.jsonl"))
        except OSError as exc:
            log.error("usage spill directory %s not replayed: %s", self.directory, exc)
            return []
        claimed = []
        for path in candidates:
            owner = _owner(path)
            if owner is None or (owner != os.getpid() and _alive(owner)):
                continue
            if not _ours(path):  # set aside for an operator (logged once, not at every replay)
                log.error("usage spill file %s is not a 0600 file of this user: set aside as .untrusted", path)
                path.rename(path.with_name(path.name + ".untrusted"))
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
        """The batches in ``path``; a line that does not parse (a torn write at a crash) or holds a record that
        fails its checks is logged and skipped."""
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
            raw = file.read()
        batches = []
        for number, line in enumerate(raw.splitlines(), 1):
            try:
                batches.append(_batch(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("usage spill file %s line %d is not a batch (%s): skipped", path, number, exc)
        return batches


def _batch(data: object) -> UsageBatch:
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError("no records")
    batch_id = data.get("batch_id")
    if not isinstance(batch_id, str) or not _BATCH_ID.match(batch_id):
        raise ValueError("no batch id")
    return UsageBatch(batch_id, tuple(checked_record(r) for r in data["records"]))


def _ours(path: Path) -> bool:
    """A regular file (not a link) of this user that only this user may read or write."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o600


def _owner(path: Path) -> int | None:
    parts = path.stem.split("-")
    if len(parts) < 2 or parts[0] not in ("spill", "replay") or not parts[1].isdigit():
        return None
    return int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a name no pid can have
        return False
    except PermissionError:
        return True  # someone else's process
    return True
