"""Usage records and summaries as Table Storage entities, and back: ``None`` left absent, money and large
integers as Int64, strings cut to what a property holds, long lists split over several properties."""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from typing import Any

from ..usage.record import SummaryKey, SummaryTotals, UsageRecord
from .tables_keys import record_partition, record_row, summary_row

_CHUNK_CHARS = 30_000  # a String property holds 64 KiB (UTF-16): long lists are split over several
# A record's strings are cut here: one 40,000-character path (a client's) would fail its whole batch, forever.
MAX_STRING_CHARS = 16_000
_HINTS = typing.get_type_hints(UsageRecord)


def record_entity(record: UsageRecord, batch_id: str) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": record_partition(record.day, record.tenant),
        "RowKey": record_row(record),
        "batch_id": batch_id,
    }
    for f in fields(UsageRecord):
        value = getattr(record, f.name)
        if value is None:
            continue  # absent property: None is never confused with 0 or ""
        if isinstance(value, str):
            value = value[:MAX_STRING_CHARS]
        money = f.name.endswith("micro_usd")
        if isinstance(value, int) and not isinstance(value, bool) and (money or not -(2**31) <= value < 2**31):
            value = int64(value)
        entity[f.name] = value
    return entity


def int64(value: int) -> Any:
    from azure.data.tables import EdmType, EntityProperty

    return EntityProperty(value, EdmType.INT64)


def value_of(entity: dict[str, Any], name: str) -> Any:
    value = entity.get(name)
    return getattr(value, "value", value)  # Int64 properties come back as EntityProperty


def record_from(entity: dict[str, Any]) -> UsageRecord:
    values: dict[str, Any] = {}
    for f in fields(UsageRecord):
        if f.name not in entity:
            if f.default is MISSING:  # a required field written as None (key_id): absent stands for None
                values[f.name] = None
            continue
        value = value_of(entity, f.name)
        # A Double property written as 2.0 may be read back as 2: the record's own type decides.
        if float in typing.get_args(_HINTS[f.name]) or _HINTS[f.name] is float:
            value = float(value)
        values[f.name] = value
    return UsageRecord(**values)


def summary_entity(day: str, key: SummaryKey, totals: SummaryTotals) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": day, "RowKey": summary_row(key), "day": day}
    entity.update(tenant=key.tenant, user=key.user, deployment=key.deployment, model=key.model)
    for name in SummaryTotals.__slots__:
        entity[name] = int64(getattr(totals, name))
    return entity


def summary_from(entity: dict[str, Any]) -> tuple[SummaryKey, SummaryTotals]:
    key = SummaryKey(entity["day"], entity["tenant"], entity["user"], entity["deployment"], entity["model"])
    totals = SummaryTotals(**{name: int(value_of(entity, name) or 0) for name in SummaryTotals.__slots__})
    return key, totals


def put_long(entity: dict[str, Any], name: str, text: str) -> None:
    chunks = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]
    entity[f"{name}_chunks"] = len(chunks)
    for n, chunk in enumerate(chunks):
        entity[f"{name}_{n}"] = chunk


def get_long(entity: dict[str, Any], name: str) -> str:
    return "".join(entity[f"{name}_{n}"] for n in range(int(value_of(entity, f"{name}_chunks"))))
