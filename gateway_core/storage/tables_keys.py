"""The keys of the Table Storage usage tables: names escaped into key parts, and the UTC days partitions are by.

Key parts are escaped (``key_part``): Table keys forbid ``/ \\ # ?`` and control characters, ``|`` separates the
parts and ``~`` starts marker rows, so everything outside ``[A-Za-z0-9._@-]`` becomes ``!XX`` per UTF-8 byte;
an escaped name longer than 100 characters is cut and ends with ``~`` and a SHA-256 of the whole name (Table
keys hold at most 1 KiB). The names themselves are properties of each entity, and reads compare them too.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

from ..usage.record import SummaryKey, UsageRecord

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@-")
_MAX_KEY_PART = 100
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)


def key_part(name: str) -> str:
    """``name`` as one part of a Table key: escaped, reversible up to 100 characters, hashed beyond."""
    escaped = "".join(c if c in _SAFE else _hex(c) for c in name)
    if len(escaped) <= _MAX_KEY_PART:
        return escaped
    cut = escaped[:60]
    cut = cut[: cut.rfind("!")] if "!" in cut[-2:] else cut  # never half an escape
    return f"{cut}~{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


def _hex(char: str) -> str:
    return "".join(f"!{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def unescape(part: str) -> str:
    """The name an unhashed ``key_part`` part stands for (for people reading the tables)."""
    data = bytearray()
    i = 0
    while i < len(part):
        if part[i] == "!":
            data.append(int(part[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(part[i].encode())
            i += 1
    return data.decode("utf-8", "surrogatepass")


def record_partition(day: str, tenant: str) -> str:
    return f"{day}|{key_part(tenant)}"


def record_row(record: UsageRecord) -> str:
    return f"{max(0, int(record.time_s * 1000)):013d}-{key_part(record.record_id)}"


def summary_row(key: SummaryKey) -> str:
    return "|".join(key_part(part) for part in (key.tenant, key.user, key.deployment, key.model))


def days_between(from_day: str, to_day: str) -> list[str]:
    """Every UTC day from ``from_day`` to ``to_day`` inclusive, newest first."""
    try:
        first, last = date.fromisoformat(from_day), date.fromisoformat(to_day)
    except ValueError:
        return []
    return [(last - timedelta(days=n)).isoformat() for n in range(max(0, (last - first).days + 1))]


def day_ms(day: str) -> int:
    """Unix ms at the start of UTC ``day``."""
    return (date.fromisoformat(day) - _EPOCH).days * DAY_MS


def utc_day_of_ms(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=max(0, ms))).isoformat()
