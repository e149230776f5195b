"""The read side: ``GET /usage/prices``, ``/usage/records`` and ``/usage/summary``.

Admin keys see everything; any other key sees only its own user's records and rows, and naming another user
or tenant is refused (403), so a key never learns whether someone else used the gateway. Every query parameter
is checked: a bad one is a 400 that names it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..context import EndpointKind, GatewayResponse, Principal, RequestContext
from ..errors import BadRequest, NotFound, PermissionDenied
from ..storage.ports import UsageStore
from .prices import PriceTable
from .record import MICRO_USD, RecordQuery, SummaryKey, SummaryQuery, SummaryTotals, record_to_dict

_JSON = [("content-type", "application/json")]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")  # a user or tenant name as keys give them
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_DAYS = 366
MAX_LIMIT = 1000
DEFAULT_DAYS = 7
GROUP_BY = ("user", "tenant", "deployment", "model", "day")
_PARAMS = {
    EndpointKind.USAGE_PRICES: (),
    EndpointKind.USAGE_RECORDS: ("request_id", "from", "to", "user", "tenant", "limit"),
    EndpointKind.USAGE_SUMMARY: ("from", "to", "group_by", "user", "tenant"),
}
_MAX_QUERY_CHARS = 2048
_ADMIN_ONLY_FIELDS = ("backend", "region")


async def usage_response(
    ctx: RequestContext, store: UsageStore | None, prices: PriceTable, today: date
) -> GatewayResponse:
    """The answer to a ``/usage/*`` request; raises ``BadRequest``, ``PermissionDenied`` or ``NotFound``."""
    kind = ctx.require_endpoint().kind
    principal = ctx.require_principal()
    params = _params(ctx, _PARAMS[kind])
    if kind is EndpointKind.USAGE_PRICES:
        if not principal.admin:
            raise PermissionDenied("the price table is for admin keys", code="admin_only")
        return _json(prices.as_dict())
    if store is None:
        raise NotFound("usage recording is off on this gateway (usage.enabled: false)", code="usage_disabled")
    from_day, to_day = _days(params, today)
    user, tenant = _scope(principal, params)
    if kind is EndpointKind.USAGE_RECORDS:
        request_id = params.get("request_id")
        if request_id is not None and not _REQUEST_ID.match(request_id):
            raise BadRequest("request_id: not a request id (letters, digits, . _ : -, up to 128)", param="request_id")
        limit = _limit(params.get("limit"))
        records = await store.records(RecordQuery(from_day, to_day, request_id, tenant, user, limit))
        data = [_with_usd(record_to_dict(r), r.cost_micro_usd, r.saved_micro_usd) for r in records]
        if not principal.admin:
            for row in data:  # backends and their regions are operators' business, as on /status
                for name in _ADMIN_ONLY_FIELDS:
                    row.pop(name, None)
        return _json({"object": "list", "from": from_day, "to": to_day, "data": data})
    group_by = params.get("group_by", "day")
    if group_by not in GROUP_BY:
        raise BadRequest(f"group_by: must be one of {', '.join(GROUP_BY)}", param="group_by")
    rows = await store.summaries(SummaryQuery(from_day, to_day, tenant, user))
    return _json(summary_body(rows, group_by, from_day, to_day))


def summary_body(rows: dict[SummaryKey, SummaryTotals], group_by: str, from_day: str, to_day: str) -> dict[str, Any]:
    """Summary rows summed per ``group_by`` value, sorted by it, with the grand total. Users are grouped by
    (tenant, user): a user name is unique only within its tenant, so each row also names the tenant."""
    groups: dict[tuple[str, ...], SummaryTotals] = {}
    total = SummaryTotals()
    fields = ("tenant", "user") if group_by == "user" else (group_by,)
    for key, totals in rows.items():
        group = tuple(getattr(key, name) or "" for name in fields)
        groups.setdefault(group, SummaryTotals()).merge(totals)
        total.merge(totals)
    data = [{**dict(zip(fields, group, strict=True)), **_totals(totals)} for group, totals in sorted(groups.items())]
    return {
        "object": "usage.summary",
        "from": from_day,
        "to": to_day,
        "group_by": group_by,
        "data": data,
        "total": _totals(total),
    }


def _totals(totals: SummaryTotals) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(totals, name) for name in SummaryTotals.__slots__}
    return _with_usd(values, totals.cost_micro_usd, totals.saved_micro_usd)


def _with_usd(values: dict[str, Any], cost: int | None, saved: int | None) -> dict[str, Any]:
    values["cost_usd"] = None if cost is None else str(Decimal(cost) / MICRO_USD)
    values["saved_usd"] = None if saved is None else str(Decimal(saved) / MICRO_USD)
    return values


def _params(ctx: RequestContext, allowed: tuple[str, ...]) -> dict[str, str]:
    request = ctx.request
    raw = request.query_string
    if len(raw) > _MAX_QUERY_CHARS:
        raise BadRequest(f"the query is longer than {_MAX_QUERY_CHARS} characters", param="query")
    pairs = parse_qsl(raw, keep_blank_values=True) if raw else list(request.query.items())
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise BadRequest(f"{name[:64]}: unknown query parameter (known: {known})", param=name[:64])
        if name in params:
            raise BadRequest(f"{name}: given more than once", param=name)
        if not value:
            raise BadRequest(f"{name}: empty", param=name)
        params[name] = value
    return params


def _days(params: dict[str, str], today: date) -> tuple[str, str]:
    to_day = _date(params, "to") or today
    try:
        from_day = _date(params, "from") or to_day - timedelta(days=DEFAULT_DAYS - 1)
    except OverflowError:  # ``to`` within six days of 0001-01-01: no default ``from`` exists
        raise BadRequest("from: give it when to is this early", param="from") from None
    if from_day > to_day:
        raise BadRequest("from: is after to", param="from")
    if (to_day - from_day).days + 1 > MAX_DAYS:
        raise BadRequest(f"to: the range spans more than {MAX_DAYS} days", param="to")
    return from_day.isoformat(), to_day.isoformat()


def _date(params: dict[str, str], name: str) -> date | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        if not _DATE.match(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: not a UTC date as YYYY-MM-DD", param=name) from None


def _limit(value: str | None) -> int:
    if value is None:
        return 100
    if not value.isascii() or not value.isdigit() or len(value) > 4 or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"limit: must be a whole number from 1 to {MAX_LIMIT}", param="limit")
    return int(value)


def _scope(principal: Principal, params: dict[str, str]) -> tuple[str | None, str | None]:
    """The (user, tenant) filters: as asked for an admin key; any other key only ever its own user."""
    for name in ("user", "tenant"):
        value = params.get(name)
        if value is not None and not _NAME.match(value):
            raise BadRequest(f"{name}: not a {name} name (1 to 256 characters, no control characters)", param=name)
    if principal.admin:
        return params.get("user"), params.get("tenant")
    for name, own in (("user", principal.user), ("tenant", principal.tenant)):
        if params.get(name, own) != own:
            raise PermissionDenied(f"{name}: this key may read only its own user's usage", param=name)
    return principal.user, principal.tenant


def _json(data: dict[str, Any]) -> GatewayResponse:
    return GatewayResponse(200, list(_JSON), orjson.dumps(data))


def utc_today(now_s: float) -> date:
    return datetime.fromtimestamp(now_s, UTC).date()
